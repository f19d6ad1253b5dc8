"""Layer and neuron methods: the map on the cells, completeness, the adapters' layer names, the
errors, and how ``sop evaluate`` shows the metrics that do not apply."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit
from torch import nn

from sumofparts.attribution import available_methods, get_method
from sumofparts.attribution.layer import area_resample
from sumofparts.adapters import BertAdapter, CNNAdapter, TabularAdapter, ViTAdapter
from sumofparts.adapters.base import UnknownLayerError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cnn():
    model = tiny_cnn()
    return model, CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(4, 4)), \
        torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))


# --- the map on the cells -------------------------------------------------------------------------
def test_area_resample_splits_each_position_by_overlap():
    v = torch.tensor([[[1.0, 2.0, 4.0]]])  # one row of 3 positions onto 2 cells: [1 + 2/2, 2/2 + 4]
    assert torch.allclose(area_resample(v, (1, 2)), torch.tensor([[[2.0, 5.0]]]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 16, generator=g, dtype=torch.float64)
    blocks = x.reshape(3, 4, 4, 4, 4).sum((2, 4))  # divisible: each cell is the sum of its 4x4 block
    assert torch.allclose(area_resample(x, (4, 4)), blocks)
    y = torch.randn(2, 63, 63, generator=g, dtype=torch.float64)  # the cosmology CNN's conv1 onto 14x14 cells
    assert torch.allclose(area_resample(y, (14, 14)).sum((1, 2)), y.sum((1, 2)))
    assert area_resample(y, (63, 63)) is y


class SmoothCNN(nn.Module):
    """A CNN with smooth activations (Gauss-Legendre quadrature of IG converges fast on it)."""

    input_shape = (1, 16, 16)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.act1, self.pool1 = nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)
        self.conv2, self.act2, self.pool2 = nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        h = self.pool2(self.act2(self.conv2(self.pool1(self.act1(self.conv1(x))))))
        return self.head(torch.flatten(h, 1))


@pytest.mark.parametrize("name", ["layer_intgrad", "layer_conductance"])
def test_layer_cells_carry_the_completeness_of_the_layer(name):
    """Σ over cells = f_t(x) − f_t(0), with conv1's 16×16 map split onto 4×4 cells by area."""
    model = SmoothCNN().eval()
    adapter = CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(4, 4))
    x = 2 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 2])
    method = get_method(name, adapter, layer="conv1", n_steps=32)
    cells = method.attribute_cells(x, t)
    layer_map = method.layer_map(x, t)  # (2, 16, 16): summed over the 6 channels
    assert torch.allclose(cells, layer_map.reshape(2, 4, 4, 4, 4).sum((2, 4)).reshape(2, 16), atol=1e-6)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, t.view(-1, 1)).squeeze(1)
    assert float(gap.abs().min()) > 0.01
    # IG's quadrature is exact to ~1e-7 here; conductance sums gradient × finite differences of the
    # layer along the path, which converges as 1/n_steps (0.002 off at 32 steps, 0.0005 at 128)
    tol = 1e-5 if name == "layer_intgrad" else 3e-3
    assert torch.allclose(cells.sum(1), gap, rtol=0, atol=tol), (cells.sum(1), gap)


def test_layer_gradcam_at_the_default_layer_is_gradcam(cnn):
    """`gradcam` is Layer Grad-CAM at the adapter's default layer; both read the layer through the adapter."""
    model, adapter, x = cnn
    t = torch.tensor([1, 2])
    assert torch.equal(get_method("layer_gradcam", adapter).attribute(x, t),
                       get_method("gradcam", adapter).attribute(x, t))
    vit = ViTAdapter(tiny_vit())
    xv = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(get_method("gradcam", vit, layer="vit.layers.0").attribute(xv, t),
                       get_method("gradcam", vit).attribute(xv, t))
    assert get_method("gradcam", vit, layer_index=0).layer_name() == "vit.embeddings"
    assert get_method("gradcam", vit, layer_index=-1).layer_name() == "vit.layers.0"
    for block in vit.encoder_blocks():  # the view's hook is gone after each call
        assert not block._forward_hooks
    assert not vit.model.vit.embeddings._forward_hooks


def test_layer_activation_needs_no_target_and_neuron_conductance_needs_one(cnn):
    _, adapter, x = cnn
    a = get_method("layer_activation", adapter).attribute(x, None)
    assert a.shape == (2, 1, 16, 16) and bool((a >= 0).all())  # an L2 norm over the channels
    with pytest.raises(ValueError, match="target is required"):
        get_method("layer_intgrad", adapter, n_steps=2).attribute(x, None)
    with pytest.raises(ValueError, match="target is required"):
        get_method("neuron_conductance", adapter, neuron=(0, 0, 0), n_steps=2).attribute(x, None)
    with pytest.raises(ValueError, match=r"target must be in \[0, 4\)"):
        get_method("neuron_gradient", adapter, neuron=(0, 0, 0)).attribute(x, 7)


def test_text_layer_maps_are_per_token():
    adapter = BertAdapter(tiny_bert())
    x = text_batch(2)
    m = get_method("layer_gradxactivation", adapter, layer="bert.embeddings")
    assert m.attribute(x, 1).shape == (2, 12) and m.attribute_cells(x, 1).shape == (2, 12)
    assert m.attribute_layer(x, 1).shape == (2, 32, 12)  # (B, D, L)


# --- names and errors ------------------------------------------------------------------------------
def test_adapters_name_their_layers():
    cnn_adapter = CNNAdapter(tiny_cnn(), feature_layer="pool2", classifier="head", grid=(4, 4))
    # leaf modules but the classifier, under the model's own names
    assert list(cnn_adapter.named_layers()) == ["conv1", "act1", "pool1", "conv2", "act2", "pool2", "fc", "act3"]
    assert cnn_adapter.default_layer() == "pool2"
    assert cnn_adapter.layer_positions("conv1") == 2 and cnn_adapter.layer_positions("fc") == 0
    vit = ViTAdapter(tiny_vit())
    assert list(vit.named_layers()) == ["vit.embeddings", "vit.layers.0", "vit.layers.1", "vit.layernorm"]
    assert vit.default_layer() == "vit.layers.0" and vit.layer_entering(0) == "vit.embeddings"
    assert vit.layer_positions("vit.layernorm") == 2
    bert = BertAdapter(tiny_bert())
    assert list(bert.named_layers()) == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1",
                                         "bert.pooler"]
    assert bert.layer("bert.encoder.layer.1") is bert.model.bert.encoder.layer[1]
    assert bert.layer_positions("bert.pooler") == 0 and bert.layer_positions("bert.embeddings") == 1


def test_unknown_layers_are_clear_errors(cnn):
    _, adapter, _ = cnn
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'nope'.*expected one of: conv1, act1, pool1"):
        get_method("layer_intgrad", adapter, layer="nope")
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'vit.layers.9'.*vit.embeddings, vit.layers.0, "
                                                r"vit.layers.1, vit.layernorm"):
        get_method("neuron_gradient", ViTAdapter(tiny_vit()), layer="vit.layers.9")
    with pytest.raises(UnknownLayerError, match="expected one of"):
        get_method("gradcam", adapter, layer="conv9").attribute(torch.zeros(1, 1, 16, 16), 0)
    with pytest.raises(ValueError, match="'fc' has no positions on the input"):
        get_method("layer_gradcam", adapter, layer="fc")
    with pytest.raises(NotImplementedError, match="no encoder blocks"):
        get_method("gradcam", adapter, layer_index=0).attribute(torch.zeros(1, 1, 16, 16), 0)
    with pytest.raises(ValueError, match="interpolate_mode"):
        get_method("layer_gradcam", adapter, interpolate_mode="linear")
    tab = TabularAdapter(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), num_features=3)
    with pytest.raises(UnknownLayerError, match="no default layer: name one of 0, 1$"):
        get_method("neuron_gradient", tab)
    with pytest.raises(NotImplementedError, match="needs the backbone capabilities layer_map, which TabularAdapter"):
        get_method("layer_intgrad", tab, layer="1")
    assert "neuron_intgrad" in available_methods(adapter=tab)
    assert "layer_intgrad" not in available_methods(adapter=tab)


def test_bad_neuron_indices_are_clear_errors(cnn):
    _, adapter, x = cnn
    with pytest.raises(ValueError, match=r"neuron \(3,\) is not a unit of layer 'conv2'.*\(K, p1, p2\) = "
                                         r"\(16, 8, 8\); expected 3 indices"):
        get_method("neuron_gradient", adapter, layer="conv2", neuron=3).attribute(x, None)
    for bad in [(16, 0, 0), (0, 8, 0), (-1, 0, 0)]:
        with pytest.raises(ValueError, match="is not a unit of layer 'conv2'"):
            get_method("neuron_gradient", adapter, layer="conv2", neuron=bad).attribute(x, None)
    for bad in ["3,1,2", (1.0, 2, 2), (True, 0, 0), ()]:
        with pytest.raises(TypeError, match="neuron must be a tuple of ints"):
            get_method("neuron_intgrad", adapter, layer="conv2", neuron=bad)
    bert = BertAdapter(tiny_bert())
    with pytest.raises(ValueError, match=r"\(K, p1\) = \(32, 12\)"):
        get_method("neuron_gradient", bert, neuron=(0, 12)).attribute(text_batch(2), None)


# --- sop evaluate ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sumofparts.pipeline import build_sop
    from sumofparts.training import TrainConfig, train

    root = tmp_path_factory.mktemp("layer-eval")
    sop, data = build_sop("synthetic", cache_dir=root / "cache", size="small", progress=False)
    train(sop, data.train, data.val, TrainConfig(steps=10, batch_size=32, lr=2e-3, warmup_steps=2, eval_every=10),
          root / "run", progress=False)
    return SimpleNamespace(sop=sop.eval(), data=data)


def test_evaluate_shows_inapplicable_metrics_as_na_with_the_reason(trained):
    from sumofparts.evaluation import evaluate_task

    tables = evaluate_task((trained.sop, trained.data), n=8, progress=False, batch_size=8, n_boot=20,
                           methods=["layer_gradcam", "layer_activation", "neuron_gradient"], robustness=True)
    cam, act, neuron = (tables.row("faithfulness", n) for n in ("layer_gradcam", "layer_activation",
                                                               "neuron_gradient"))
    # Grad-CAM's map is not meant to add up to the output: fidelity N/A with the reason (issue 12)
    assert cam["fidelity"] is None and cam["insertion"] is not None
    assert act["fidelity"] is None and act["insertion"] is not None and act["deletion"] is not None
    assert all(neuron[c] is None for c in ("fidelity", "insertion", "deletion", "insertion_raw", "deletion_raw",
                                           "infidelity"))
    assert cam["infidelity"] is not None and neuron["max_sensitivity"] is not None  # a map's own stability applies
    neuron_f = tables.row("accuracy", "neuron_gradient-F")
    assert neuron_f["error"] is None and neuron_f["purity"] is not None and neuron_f["iou"] is not None
    assert tables.row("accuracy", "layer_gradcam-F")["error"] is not None
    notes = "\n".join(tables.notes)
    assert "layer_activation: fidelity: Layer Activation does not depend on the class" in notes
    assert "neuron_gradient: insertion: neuron_gradient explains each input's most active unit of layer 'pool2'" \
        in notes
    assert "neuron_gradient-F: error:" in notes
    assert "neuron_gradient: fidelity: needs one attribution per class" not in notes
    assert "layer_gradcam (top-k cells; backbone): fidelity: N/A: a ReLU'd class-activation map" in notes
    md = tables.markdown()
    assert "| neuron_gradient | top-k cells; backbone | " in md
    assert "neuron_gradient" not in tables.curves or not tables.curves.get("neuron_gradient")
