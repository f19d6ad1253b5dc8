"""A Captum method called through the project's interface returns exactly what Captum returns
when called directly with the same arguments (and the same seed).

The direct calls below are built from the raw models, not from the adapters, so they also
check what the wrappers feed Captum: the forward, the baselines, the cell feature mask.
"""
from __future__ import annotations

import pytest
import torch
from captum import attr as ca
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit
from torch import nn

from sumofparts.attribution import get_method
from sumofparts.adapters import BertAdapter, CNNAdapter, ViTAdapter

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Logits(nn.Module):
    """A Hugging Face classifier as ``pixels -> logits``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


class EmbedLogits(nn.Module):
    """A Hugging Face text classifier as ``(inputs_embeds, attention_mask, token_type_ids) -> logits``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, e, attention_mask, token_type_ids=None):
        return self.model(inputs_embeds=e, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def cell_ids_16x16(cell: int) -> torch.Tensor:
    """Cell id of each pixel of a 16x16 one-channel image cut into cell x cell squares: (1, 1, 16, 16)."""
    r = torch.arange(16) // cell
    per_row = 16 // cell
    return (r[:, None] * per_row + r[None, :]).view(1, 1, 16, 16)


@pytest.fixture(scope="module")
def cnn_setup():
    model = tiny_cnn()
    adapter = CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(4, 4))
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, adapter, x


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
        base = torch.where(real.unsqueeze(-1), emb.weight[103].expand_as(e), e)  # [MASK] at real tokens
    return model, BertAdapter(model), x, e, base


TARGET = torch.tensor([1, 2])


def same(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), (a - b).abs().max()


# --- images: gradient methods ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_gradient_methods_equal_captum(family, cnn_setup, vit_setup):
    model, adapter, x = cnn_setup if family == "cnn" else vit_setup
    net = model if family == "cnn" else Logits(model)
    zero = torch.zeros_like(x)
    same(get_method("saliency", adapter).attribute(x, TARGET), ca.Saliency(net).attribute(x, target=TARGET))
    same(get_method("gradxinput", adapter).attribute(x, TARGET), ca.InputXGradient(net).attribute(x, target=TARGET))
    same(get_method("intgrad", adapter, n_steps=8).attribute(x, TARGET),
         ca.IntegratedGradients(net).attribute(x, baselines=zero, target=TARGET, n_steps=8))
    same(get_method("deeplift", adapter).attribute(x, TARGET),
         ca.DeepLift(net).attribute(x, baselines=zero, target=TARGET))
    same(get_method("guided_backprop", adapter).attribute(x, TARGET), ca.GuidedBackprop(net).attribute(x, target=TARGET))
    same(get_method("deconvolution", adapter).attribute(x, TARGET), ca.Deconvolution(net).attribute(x, target=TARGET))
    torch.manual_seed(0)
    direct = ca.NoiseTunnel(ca.Saliency(net)).attribute(x, target=TARGET, nt_type="smoothgrad", nt_samples=4,
                                                        stdevs=0.3)
    same(get_method("smoothgrad", adapter, nt_samples=4, stdevs=0.3).attribute(x, TARGET), direct)


def test_lrp_equals_captum(cnn_setup):
    model, adapter, x = cnn_setup
    same(get_method("lrp", adapter).attribute(x, TARGET), ca.LRP(model).attribute(x, target=TARGET))
    assert not any(hasattr(m, "rule") for m in model.modules())


def test_gradcam_equals_captum_cnn(cnn_setup):
    model, adapter, x = cnn_setup
    cam = ca.LayerGradCam(model, model.pool2).attribute(x, target=TARGET, relu_attributions=True)
    up = ca.LayerAttribution.interpolate(cam, (16, 16), interpolate_mode="bilinear")
    same(get_method("gradcam", adapter).attribute(x, TARGET), up)
    same(get_method("guided_gradcam", adapter).attribute(x, TARGET),
         ca.GuidedGradCam(model, model.pool2).attribute(x, target=TARGET))


def test_gradcam_vit_uses_the_patch_grid_entering_the_last_layer(vit_setup):
    """Direct: Grad-CAM computed by hand from the hidden state entering the last layer."""
    model, adapter, x = vit_setup
    vit = model.vit
    h0 = vit.embeddings(x)
    for layer in vit.layers[:-1]:
        h0 = layer(h0)
    h = h0.detach().requires_grad_(True)
    logits = model.classifier(vit.layernorm(vit.layers[-1](h))[:, 0])
    grad, = torch.autograd.grad(logits.gather(1, TARGET.view(-1, 1)).sum(), h)
    patches, g = h[:, 1:].detach(), grad[:, 1:]
    weights = g.mean(1, keepdim=True)  # (B, 1, D): mean over the 16 positions
    cam = torch.relu((weights * patches).sum(-1)).view(2, 1, 4, 4)
    up = ca.LayerAttribution.interpolate(cam, (16, 16), interpolate_mode="bilinear")
    ours = get_method("gradcam", adapter).attribute(x, TARGET)
    assert torch.allclose(ours, up, atol=1e-6)


# --- images: perturbation methods on cells ------------------------------------------------------
@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_perturbation_methods_equal_captum(family, cnn_setup, vit_setup):
    model, adapter, x = cnn_setup if family == "cnn" else vit_setup
    net = model if family == "cnn" else Logits(model)
    fm = cell_ids_16x16(4)
    zero = torch.zeros_like(x)
    same(get_method("feature_ablation", adapter, perturbations_per_eval=4).attribute(x, TARGET),
         ca.FeatureAblation(net).attribute(x, baselines=zero, target=TARGET, feature_mask=fm,
                                           perturbations_per_eval=4))
    same(get_method("occlusion", adapter).attribute(x, TARGET),
         ca.Occlusion(net).attribute(x, baselines=zero, target=TARGET, sliding_window_shapes=(1, 4, 4),
                                     strides=(1, 4, 4), perturbations_per_eval=16))
    same(get_method("occlusion", adapter, strides=(1, 2, 2)).attribute(x, TARGET),
         ca.Occlusion(net).attribute(x, baselines=zero, target=TARGET, sliding_window_shapes=(1, 4, 4),
                                     strides=(1, 2, 2), perturbations_per_eval=16))
    torch.manual_seed(0)
    direct = ca.ShapleyValueSampling(net).attribute(x, baselines=zero, target=TARGET, feature_mask=fm, n_samples=2,
                                                    perturbations_per_eval=16)
    same(get_method("shapley", adapter, n_samples=2).attribute(x, TARGET), direct)
    torch.manual_seed(0)
    direct = ca.KernelShap(net).attribute(x, baselines=zero, target=TARGET, feature_mask=fm, n_samples=20,
                                          perturbations_per_eval=16)
    same(get_method("kernelshap", adapter).attribute(x, TARGET), direct)
    # LIME's surrogate is lime's own ridge (alpha 1), not Captum's default Lasso (see attribution/perturbation.py)
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge

    torch.manual_seed(0)
    direct = ca.Lime(net, interpretable_model=SkLearnRidge(alpha=1.0)).attribute(
        x, baselines=zero, target=TARGET, feature_mask=fm, n_samples=20, perturbations_per_eval=16)
    same(get_method("lime", adapter).attribute(x, TARGET), direct)
    torch.manual_seed(0)
    direct = ca.Lime(net).attribute(x, baselines=zero, target=TARGET, feature_mask=fm, n_samples=20,
                                    perturbations_per_eval=16)
    same(get_method("lime", adapter, interpretable_model=SkLearnLasso(alpha=0.01)).attribute(x, TARGET), direct)


def test_sampling_methods_leave_the_global_rng_alone(cnn_setup):
    _, adapter, x = cnn_setup
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    get_method("kernelshap", adapter).attribute(x, TARGET)
    assert torch.equal(torch.rand(3), expected)


# --- text: embeddings, [MASK] baseline, tokens as features -------------------------------------
def test_text_gradient_methods_equal_captum_on_embeddings(bert_setup):
    model, adapter, x, e, base = bert_setup
    net = EmbedLogits(model)
    extra = (x["attention_mask"], None)
    same(get_method("saliency", adapter).attribute(x, TARGET % 2),
         ca.Saliency(net).attribute(e, target=TARGET % 2, additional_forward_args=extra).sum(-1))
    same(get_method("intgrad", adapter, n_steps=8).attribute(x, TARGET % 2),
         ca.IntegratedGradients(net).attribute(e, baselines=base, target=TARGET % 2, additional_forward_args=extra,
                                               n_steps=8).sum(-1))
    same(get_method("gradxinput", adapter).attribute(x, 1),
         ca.InputXGradient(net).attribute(e, target=1, additional_forward_args=extra).sum(-1))
    same(get_method("deeplift", adapter).attribute(x, 1),
         ca.DeepLift(net).attribute(e, baselines=base, target=1, additional_forward_args=extra).sum(-1))


def test_text_perturbation_methods_equal_captum_on_tokens(bert_setup):
    model, adapter, x, e, base = bert_setup
    net = EmbedLogits(model)
    extra = (x["attention_mask"], None)
    L, D = e.shape[1:]
    fm = torch.arange(L).view(1, L, 1).expand(1, L, D).contiguous()
    direct = ca.FeatureAblation(net).attribute(e, baselines=base, target=1, feature_mask=fm,
                                               additional_forward_args=extra, perturbations_per_eval=16)
    ours = get_method("feature_ablation", adapter).attribute(x, 1)
    same(ours, direct[..., 0])
    assert torch.equal(direct, direct[..., :1].expand_as(direct))  # one score per token, repeated over D
    torch.manual_seed(0)
    direct = ca.KernelShap(net).attribute(e, baselines=base, target=1, feature_mask=fm, n_samples=20,
                                          additional_forward_args=extra, perturbations_per_eval=16)
    same(get_method("kernelshap", adapter).attribute(x, 1), direct[..., 0])
