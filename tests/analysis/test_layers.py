"""The adapters' named layers, the generator copy's layers, and the hooks that read them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sumofparts import SOPConfig, SumOfParts
from sumofparts.analysis.layers import LayerError, layer_activations, layer_gradients, select_layers
from sumofparts.adapters import BertAdapter, CNNAdapter, ViTAdapter

from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit

@pytest.fixture(autouse=True)
def _one_blas_thread():
    """On a shared 2-core machine OpenBLAS's own threads make small linear algebra 30x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield



def _families():
    return {
        "vit": (ViTAdapter(tiny_vit()), torch.randn(5, 1, 16, 16)),
        "cnn": (CNNAdapter(tiny_cnn(), feature_layer="pool2", classifier="head", grid=(4, 4)), torch.randn(5, 1, 16, 16)),
        "bert": (BertAdapter(tiny_bert()), text_batch(B=5, L=12)),
    }


def test_named_layers_are_the_models_modules_in_forward_order():
    fam = _families()
    names = {k: list(a.named_layers()) for k, (a, _) in fam.items()}
    assert names["cnn"] == ["conv1", "act1", "pool1", "conv2", "act2", "pool2", "fc", "act3"]
    assert names["vit"] == ["vit.embeddings", "vit.layers.0", "vit.layers.1", "vit.layernorm"]
    assert names["bert"] == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler"]
    for key, (adapter, x) in fam.items():
        modules = dict(adapter.model.named_modules())
        for name, module in adapter.named_layers().items():
            assert modules[name] is module
        assert adapter.classifier not in adapter.named_layers().values()
        # every named layer runs in the backbone's forward, in the order listed
        order = []
        handles = [m.register_forward_hook(lambda m, a, o, n=n: order.append(n))
                   for n, m in adapter.named_layers().items()]
        with torch.no_grad():
            adapter(x)
        for h in handles:
            h.remove()
        assert list(dict.fromkeys(order)) == list(adapter.named_layers()), key


def test_a_fresh_generator_copy_has_the_backbones_activations_layer_for_layer():
    """Before training, the generator's encoder is an exact copy: same names, other modules, equal
    outputs. A wrong mapping (e.g. block i of the copy under the name of block i+1) would differ."""
    for key, (adapter, x) in _families().items():
        sop = SumOfParts(adapter, SOPConfig(num_groups=4, num_heads=1))
        enc = sop.generator.encoder
        copy_layers = adapter.encoder_layers(enc)
        assert copy_layers and set(copy_layers) <= set(adapter.named_layers()), key
        backbone_modules = set(map(id, adapter.model.modules()))
        assert not any(id(m) in backbone_modules for m in copy_layers.values())
        ours = layer_activations(adapter, select_layers(adapter.named_layers(), list(copy_layers)), x)
        theirs = layer_activations(adapter, copy_layers, x, forward=enc)
        for name in copy_layers:
            assert torch.allclose(ours[name], theirs[name], atol=1e-6), (key, name)
    cnn = _families()["cnn"][0]
    assert list(cnn.encoder_layers(cnn.make_encoder())) == ["conv1", "act1", "pool1", "conv2", "act2", "pool2"]


def test_gradients_equal_autograd_on_the_layer_output():
    adapter, x = _families()["cnn"]
    layers = select_layers(adapter.named_layers(), ["pool2", "act3"])
    grads, out = layer_gradients(adapter, layers, x, target=2, batch_size=2)
    # by hand: run the tail of the network from pool2's output
    model = adapter.model
    with torch.no_grad():
        h = model.pool2(model.act2(model.conv2(model.pool1(model.act1(model.conv1(x))))))
    h.requires_grad_(True)
    y = model.head(model.act3(model.fc(torch.flatten(h, 1))))
    (g,) = torch.autograd.grad(y[:, 2].sum(), h)
    assert torch.allclose(grads["pool2"], g.reshape(5, -1), atol=1e-6)
    assert torch.allclose(out, y.detach(), atol=1e-6)
    assert torch.allclose(grads["act3"], model.head.weight[2].expand(5, -1))
    # no parameter was made trainable and the input was left alone
    assert not any(p.requires_grad for p in model.parameters()) and not x.requires_grad


def test_activations_are_flattened_per_example_and_batch_independent():
    adapter, x = _families()["bert"]
    layers = select_layers(adapter.named_layers(), ["bert.encoder.layer.1", "bert.pooler"])
    a = layer_activations(adapter, layers, x, batch_size=2)
    b = layer_activations(adapter, layers, x, batch_size=5)
    assert a["bert.encoder.layer.1"].shape == (5, 12 * 32) and a["bert.pooler"].shape == (5, 32)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5)


def test_unknown_layers_are_named_with_the_ones_that_exist():
    adapter, _ = _families()["vit"]
    with pytest.raises(LayerError, match=r"unknown layers 'layer9', 'head'; this model's layers are: vit.embeddings, "):
        select_layers(adapter.named_layers(), ["vit.layers.0", "layer9", "head"])
    with pytest.raises(LayerError, match="no layers selected"):
        select_layers(adapter.named_layers(), [])


def test_a_layer_that_does_not_run_is_reported():
    adapter, x = _families()["cnn"]
    unused = nn.Linear(2, 2)
    with pytest.raises(LayerError, match="'unused' did not run"):
        layer_activations(adapter, {"unused": unused}, x)
