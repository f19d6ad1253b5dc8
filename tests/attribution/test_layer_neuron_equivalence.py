"""Layer and neuron methods called through the project's interface return what Captum returns when
called directly on the raw models (bit for bit, or to float precision where the direct call needs a
model written out by hand), for every family where the method applies.

Where Captum can be given the real module (CNN layers; every neuron method; layer methods that
neither replace a layer's value nor average over an axis), it is called on that module and the
result is compared after mapping the layout: ViT ``(B, 1+N, D)`` -> patches on the grid ``(B, D,
h, w)``; BERT ``(B, L, D)`` -> ``(B, D, L)``. Layer IG replaces the layer's value, and on a ViT the
view leaves the CLS token out: it is compared with Captum on a ViT forward written out here with
the patch grid as an explicit module. Grad-CAM on tokens is compared with the formula computed
with autograd (Captum's ``LayerGradCam`` averages over the wrong axis of a ``(B, T, D)`` output).
"""
from __future__ import annotations

import pytest
import torch
from captum import attr as ca
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit
from torch import nn

from sumofparts.attribution import get_method
from sumofparts.adapters import BertAdapter, CNNAdapter, TabularAdapter, ViTAdapter

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TARGET = torch.tensor([1, 2])


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


class EmbedLogits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, e, attention_mask, token_type_ids=None):
        return self.model(inputs_embeds=e, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


class SplitViT(nn.Module):
    """The tiny 2-block ViT written out, with the patch tokens leaving block 0 passing through ``grid``."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.grid = nn.Identity()

    def forward(self, x):
        vit = self.model.vit
        h = vit.layers[0](vit.embeddings(x))
        B, T, D = h.shape
        g = self.grid(h[:, 1:].transpose(1, 2).reshape(B, D, 4, 4))
        h = torch.cat([h[:, :1], g.reshape(B, D, T - 1).transpose(1, 2)], dim=1)
        h = vit.layers[1](h)
        return self.model.classifier(vit.layernorm(h)[:, 0])


def same(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), (a - b).abs().max()


def close(a, b, tol=1e-6):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=1e-5), (a - b).abs().max()


@pytest.fixture(scope="module")
def cnn_setup():
    model = tiny_cnn()
    adapter = CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(4, 4))
    return model, adapter, torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vit_setup():
    model = tiny_vit()
    return model, ViTAdapter(model), torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def bert_setup():
    model = tiny_bert()
    x = text_batch(2)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        e = emb(x["input_ids"])
        ids = x["input_ids"]
        real = (x["attention_mask"] == 1) & (ids != 101) & (ids != 102)
        base = torch.where(real.unsqueeze(-1), emb.weight[103].expand_as(e), e)
    return model, BertAdapter(model), x, e, base


def patches_to_grid(t):
    """ViT layer output (B, 1+16, D) -> (B, D, 4, 4)."""
    return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], 4, 4)


# --- CNN: Captum on the module itself ------------------------------------------------------------
@pytest.mark.parametrize("layer", ["conv1", "pool2"])
def test_cnn_layer_methods_equal_captum(layer, cnn_setup):
    model, adapter, x = cnn_setup
    module = dict(model.named_modules())[layer]
    zero = torch.zeros_like(x)
    direct = {
        "layer_intgrad": ca.LayerIntegratedGradients(model, module).attribute(x, baselines=zero, target=TARGET,
                                                                               n_steps=8),
        "layer_gradcam": ca.LayerGradCam(model, module).attribute(x, target=TARGET, relu_attributions=True),
        "layer_conductance": ca.LayerConductance(model, module).attribute(x, baselines=zero, target=TARGET, n_steps=8),
        "layer_activation": ca.LayerActivation(model, module).attribute(x),
        "layer_gradxactivation": ca.LayerGradientXActivation(model, module).attribute(x, target=TARGET),
    }
    for name, want in direct.items():
        opts = {"n_steps": 8} if name in ("layer_intgrad", "layer_conductance") else {}
        method = get_method(name, adapter, layer=layer, **opts)
        same(method.attribute_layer(x, TARGET), want)
        # the map shown like the others: units reduced, interpolated to the input, same on every channel
        reduced = want.norm(dim=1) if name == "layer_activation" else want.sum(1)
        same(method.attribute(x, TARGET), ca.LayerAttribution.interpolate(reduced[:, None], (16, 16), "bilinear"))


def test_cnn_neuron_methods_equal_captum(cnn_setup):
    model, adapter, x = cnn_setup
    zero = torch.zeros_like(x)
    unit = (3, 1, 2)  # channel 3 of conv2 at row 1, column 2 of its 8x8 map
    same(get_method("neuron_intgrad", adapter, layer="conv2", neuron=unit, n_steps=8).attribute(x, TARGET),
         ca.NeuronIntegratedGradients(model, model.conv2).attribute(x, neuron_selector=unit, baselines=zero,
                                                                    n_steps=8))
    same(get_method("neuron_conductance", adapter, layer="conv2", neuron=unit, n_steps=8).attribute(x, TARGET),
         ca.NeuronConductance(model, model.conv2).attribute(x, neuron_selector=unit, baselines=zero, target=TARGET,
                                                            n_steps=8))
    same(get_method("neuron_gradient", adapter, layer="conv2", neuron=unit).attribute(x, TARGET),
         ca.NeuronGradient(model, model.conv2).attribute(x, neuron_selector=unit))
    # a unit of a layer without positions: (k,)
    same(get_method("neuron_gradient", adapter, layer="fc", neuron=(5,)).attribute(x, None),
         ca.NeuronGradient(model, model.fc).attribute(x, neuron_selector=(5,)))


def test_neuron_default_is_each_inputs_most_active_unit(cnn_setup):
    model, adapter, x = cnn_setup
    with torch.no_grad():
        acts = ca.LayerActivation(model, model.conv2).attribute(x)  # (2, 8, 16, 16)
    ours = get_method("neuron_gradient", adapter, layer="conv2").attribute(x, None)
    for b in range(2):
        unit = tuple(int(v) for v in torch.unravel_index(acts[b].argmax(), acts.shape[1:]))
        same(ours[b:b + 1], ca.NeuronGradient(model, model.conv2).attribute(x[b:b + 1], neuron_selector=unit))


# --- ViT ---------------------------------------------------------------------------------------
def test_vit_layer_methods_equal_captum(vit_setup):
    model, adapter, x = vit_setup
    net, block = Logits(model), model.vit.layers[0]
    zero = torch.zeros_like(x)
    # the default layer is the one entering the last block: vit.layers.0 of 2
    assert get_method("layer_activation", adapter).layer_name == "vit.layers.0"
    same(get_method("layer_activation", adapter).attribute_layer(x),
         patches_to_grid(ca.LayerActivation(net, block).attribute(x)))
    same(get_method("layer_gradxactivation", adapter).attribute_layer(x, TARGET),
         patches_to_grid(ca.LayerGradientXActivation(net, block).attribute(x, target=TARGET)))
    same(get_method("layer_conductance", adapter, n_steps=8).attribute_layer(x, TARGET),
         patches_to_grid(ca.LayerConductance(net, block).attribute(x, baselines=zero, target=TARGET, n_steps=8)))
    split = SplitViT(model)
    close(get_method("layer_intgrad", adapter, n_steps=8).attribute_layer(x, TARGET),
          ca.LayerIntegratedGradients(split, split.grid).attribute(x, baselines=zero, target=TARGET, n_steps=8))
    # the embeddings: the real hidden state 0
    hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    same(get_method("layer_activation", adapter, layer="vit.embeddings").attribute_layer(x), patches_to_grid(hidden[0]))


def test_vit_layer_gradcam_is_the_formula_on_the_patch_grid(vit_setup):
    model, adapter, x = vit_setup
    vit = model.vit
    h = vit.layers[0](vit.embeddings(x)).detach().requires_grad_(True)
    logits = model.classifier(vit.layernorm(vit.layers[1](h))[:, 0])
    grad, = torch.autograd.grad(logits.gather(1, TARGET.view(-1, 1)).sum(), h)
    acts, g = patches_to_grid(h.detach()), patches_to_grid(grad)  # (B, D, 4, 4)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    method = get_method("layer_gradcam", adapter, layer="vit.layers.0")
    close(method.attribute_layer(x, TARGET), cam)
    close(method.attribute_cells(x, TARGET), cam.reshape(2, 16))  # the patch grid is the cell grid


def test_vit_neuron_methods_equal_captum_on_the_block(vit_setup):
    model, adapter, x = vit_setup
    net, block = Logits(model), model.vit.layers[0]
    zero = torch.zeros_like(x)
    d, r, c = 5, 2, 3
    token = (1 + r * 4 + c, d)  # the same unit in the block's own (1+N, D) layout
    same(get_method("neuron_intgrad", adapter, neuron=(d, r, c), n_steps=8).attribute(x, TARGET),
         ca.NeuronIntegratedGradients(net, block).attribute(x, neuron_selector=token, baselines=zero, n_steps=8))
    same(get_method("neuron_gradient", adapter, neuron=(d, r, c)).attribute(x, TARGET),
         ca.NeuronGradient(net, block).attribute(x, neuron_selector=token))
    same(get_method("neuron_conductance", adapter, neuron=(d, r, c), n_steps=8).attribute(x, TARGET),
         ca.NeuronConductance(net, block).attribute(x, neuron_selector=token, baselines=zero, target=TARGET,
                                                    n_steps=8))


# --- BERT: on the input embeddings, [MASK] baseline ----------------------------------------------
def test_bert_layer_methods_equal_captum(bert_setup):
    model, adapter, x, e, base = bert_setup
    net, block = EmbedLogits(model), model.bert.encoder.layer[0]
    extra = (x["attention_mask"], None)
    t = TARGET % 2

    def tokens(a):  # (B, L, D) -> (B, D, L)
        return a.transpose(1, 2)

    same(get_method("layer_intgrad", adapter, n_steps=8).attribute_layer(x, t),
         tokens(ca.LayerIntegratedGradients(net, block).attribute(e, baselines=base, target=t,
                                                                  additional_forward_args=extra, n_steps=8)))
    same(get_method("layer_conductance", adapter, n_steps=8).attribute_layer(x, t),
         tokens(ca.LayerConductance(net, block).attribute(e, baselines=base, target=t, additional_forward_args=extra,
                                                          n_steps=8)))
    same(get_method("layer_activation", adapter).attribute_layer(x),
         tokens(ca.LayerActivation(net, block).attribute(e, additional_forward_args=extra)))
    gxa = ca.LayerGradientXActivation(net, block).attribute(e, target=t, additional_forward_args=extra)
    method = get_method("layer_gradxactivation", adapter)
    same(method.attribute_layer(x, t), tokens(gxa))
    # per token: summed over the units (the same numbers summed in another order: float precision)
    close(method.attribute(x, t), gxa.sum(-1).detach(), tol=1e-9)
    close(method.attribute_cells(x, t), gxa.sum(-1).detach(), tol=1e-9)
    # Grad-CAM on the (D, L) view: the formula with autograd
    h = {}
    handle = block.register_forward_hook(lambda m, a, out: h.setdefault("a", out))
    logits = net(e.clone().requires_grad_(True), *extra)
    handle.remove()
    grad, = torch.autograd.grad(logits.gather(1, t.view(-1, 1)).sum(), h["a"])
    cam = torch.relu((grad.mean(1, keepdim=True) * h["a"]).sum(-1))  # (B, L)
    close(get_method("layer_gradcam", adapter).attribute(x, t), cam)


def test_bert_neuron_methods_equal_captum(bert_setup):
    model, adapter, x, e, base = bert_setup
    net, block = EmbedLogits(model), model.bert.encoder.layer[0]
    extra = (x["attention_mask"], None)
    unit = (7, 3)  # hidden unit 7 at token 3: (D, L) layout; the block's own is (L, D)
    same(get_method("neuron_intgrad", adapter, neuron=unit, n_steps=8).attribute(x, 1),
         ca.NeuronIntegratedGradients(net, block).attribute(e, neuron_selector=(3, 7), baselines=base,
                                                            additional_forward_args=extra, n_steps=8).sum(-1))
    same(get_method("neuron_gradient", adapter, neuron=unit).attribute(x, 1),
         ca.NeuronGradient(net, block).attribute(e, neuron_selector=(3, 7),
                                                 additional_forward_args=extra).abs().sum(-1))
    same(get_method("neuron_conductance", adapter, neuron=unit, n_steps=8).attribute(x, 1),
         ca.NeuronConductance(net, block).attribute(e, neuron_selector=(3, 7), baselines=base, target=1,
                                                    additional_forward_args=extra, n_steps=8).sum(-1))
    # the pooler: (B, D), a layer without positions; its units are indexed (k,)
    same(get_method("neuron_gradient", adapter, layer="bert.pooler", neuron=(5,)).attribute(x, None),
         ca.NeuronGradient(net, model.bert.pooler).attribute(e, neuron_selector=(5,),
                                                             additional_forward_args=extra).abs().sum(-1))
    with pytest.raises(ValueError, match="'bert.pooler' has no positions"):
        get_method("layer_intgrad", adapter, layer="bert.pooler")


# --- tabular: neurons of an MLP ----------------------------------------------------------------------
def test_tabular_neuron_methods_equal_captum():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    adapter = TabularAdapter(mlp, num_features=5)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    zero = torch.zeros_like(x)
    assert list(adapter.named_layers()) == ["0", "1"]  # leaf modules but the classifier
    same(get_method("neuron_intgrad", adapter, layer="1", neuron=(6,), n_steps=8).attribute(x, 0),
         ca.NeuronIntegratedGradients(mlp, mlp[1]).attribute(x, neuron_selector=(6,), baselines=zero, n_steps=8))
    same(get_method("neuron_conductance", adapter, layer="0", neuron=(2,), n_steps=8).attribute(x, 2),
         ca.NeuronConductance(mlp, mlp[0]).attribute(x, neuron_selector=(2,), baselines=zero, target=2, n_steps=8))
    same(get_method("neuron_gradient", adapter, layer="1", neuron=(6,)).attribute(x, None),
         ca.NeuronGradient(mlp, mlp[1]).attribute(x, neuron_selector=(6,)))
