"""Behaviour of every method behind the interface: shapes, targets, the "-F" conversion, FRESH,
RISE, BagNet, SOP, exactness on a linear model, and the errors."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit
from torch import nn
from torch.utils.data import TensorDataset

from sumofparts import SumOfParts
from sumofparts.attribution import (AttributionMethod, BagNetModel, GroupedResult, available_methods,
                                    get_method)
from sumofparts.adapters import BertAdapter, CNNAdapter, TabularAdapter, ViTAdapter
from sumofparts.tasks.synthetic import make_bars

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def setup(family: str):
    g = torch.Generator().manual_seed(5)
    if family == "cnn":
        return CNNAdapter(tiny_cnn(), feature_layer="pool2", classifier="head", grid=(4, 4)), \
            torch.randn(2, 1, 16, 16, generator=g)
    if family == "vit":
        return ViTAdapter(tiny_vit()), torch.randn(2, 1, 16, 16, generator=g)
    if family == "tabular":
        torch.manual_seed(5)
        mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        return TabularAdapter(mlp, num_features=6), torch.randn(2, 6, generator=g)
    return BertAdapter(tiny_bert()), text_batch(2)


FAST = {"smoothgrad": {"nt_samples": 2}, "intgrad": {"n_steps": 4}, "shapley": {"n_samples": 1},
        "kernelshap": {"n_samples": 8}, "lime": {"n_samples": 8}, "rise": {"n_masks": 8}}


def make(name, adapter, **kw):
    base = name[:-2] if name.endswith("-f") else name
    return get_method(name, adapter, **{**FAST.get(base, {}), **kw})


# --- registry ------------------------------------------------------------------------------------
def test_registry_names_are_stable():
    names = available_methods()
    for n in ["saliency", "smoothgrad", "gradxinput", "intgrad", "deeplift", "guided_backprop", "deconvolution",
              "gradcam", "guided_gradcam", "lrp", "feature_ablation", "occlusion", "shapley", "kernelshap", "lime",
              "rise", "fresh", "bagnet", "sop", "lime-f", "kernelshap-f", "rise-f", "intgrad-f", "gradcam-f"]:
        assert n in names
    assert "sop-f" not in names and "fresh-f" not in names
    # methods ask adapters for capabilities: LRP walks a module that maps the input tensor to the logits (not a
    # ViT's output object), FRESH needs a CLS attention (not a CNN), Grad-CAM a layer laid out on the cells
    vit, cnn, tab = setup("vit")[0], setup("cnn")[0], setup("tabular")[0]
    assert "lrp" not in available_methods(adapter=vit) and "fresh" not in available_methods(adapter=cnn)
    assert {"lrp", "intgrad", "lime", "kernelshap", "occlusion", "rise", "lime-f"} <= set(available_methods(adapter=tab))
    assert not {"gradcam", "fresh", "bagnet", "layer_intgrad"} & set(available_methods(adapter=tab))


def test_unknown_names_and_options_are_clear_errors():
    adapter, x = setup("cnn")
    with pytest.raises(ValueError, match="unknown method 'nope'.*saliency"):
        get_method("nope", adapter)
    with pytest.raises(ValueError, match="already self-attributing"):
        get_method("sop-f", adapter)
    with pytest.raises(TypeError, match="unexpected options.*n_sample"):
        get_method("lime", adapter, n_sample=5)
    with pytest.raises(ValueError, match="tau"):
        get_method("lime-f", adapter, tau=1.5)
    with pytest.raises(NotImplementedError, match="needs the backbone capabilities module_forward, which ViTAdapter"):
        get_method("lrp", setup("vit")[0])
    with pytest.raises(NotImplementedError, match="cls_attention"):
        get_method("fresh", adapter)
    with pytest.raises(ValueError, match="model="):
        get_method("bagnet", adapter)
    with pytest.raises(TypeError, match="SumOfParts"):
        get_method("sop", adapter, model=nn.Linear(2, 2))


def test_bad_targets_are_clear_errors():
    adapter, x = setup("cnn")
    m = get_method("saliency", adapter)
    with pytest.raises(ValueError, match=r"target must be in \[0, 4\)"):
        m.attribute(x, 4)
    with pytest.raises(ValueError, match=r"target must be in \[0, 4\)"):
        m.attribute(x, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="one per input"):
        m.attribute(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        m.attribute(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="target is required"):
        m.attribute(x, None)
    with pytest.raises(ValueError, match="expected an image batch"):
        m.attribute(x[0], 1)


# --- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["cnn", "vit", "bert", "tabular"])
def test_every_method_returns_input_shaped_and_cell_scores(family):
    adapter, x = setup(family)
    N = adapter.num_cells(x)
    shape = (2, 12) if family == "bert" else tuple(x.shape)
    for name in available_methods(adapter=adapter):
        if name in ("sop", "bagnet"):
            continue
        if name.endswith("-f") and name not in ("saliency-f", "lime-f", "rise-f", "gradcam-f"):
            continue
        # a model without a layer laid out on the cells has no default layer: the neuron methods name one
        kw = {"layer": "1"} if family == "tabular" and name.startswith("neuron_") else {}
        m = make(name, adapter, **kw)
        assert isinstance(m, AttributionMethod)
        for target in (1, torch.tensor([0, 1]), [1, 0]):
            a = m.attribute(x, target)
            assert tuple(a.shape) == shape, name
            assert torch.isfinite(a).all(), name
        c = m.attribute_cells(x, 1)
        assert tuple(c.shape) == (2, N), name
        assert tuple(m.predict(x).shape) == (2, adapter.num_outputs), name


def test_cell_feature_methods_give_each_cell_its_score_once():
    adapter, x = setup("cnn")
    m = get_method("feature_ablation", adapter)
    a = m.attribute(x, 1)  # (B, 1, 16, 16): each 4x4 cell's score repeated
    cells = m.attribute_cells(x, 1)
    assert torch.equal(a[:, 0, ::4, ::4].reshape(2, 16), cells)
    # and it is the drop of the target logit when the cell is zeroed
    with torch.no_grad():
        x0 = x.clone()
        x0[:, :, 4:8, 8:12] = 0
        drop = adapter(x)[:, 1] - adapter(x0)[:, 1]
    assert torch.allclose(cells[:, 6], drop, atol=1e-6)


def test_text_scores_are_zero_at_special_tokens_and_padding_for_ablation():
    adapter, x = setup("bert")
    a = get_method("feature_ablation", adapter).attribute(x, 1)
    valid = adapter.valid_cells(x)
    assert a[~valid].abs().max() < 1e-6  # unchanged input: only batching round-off


# --- exactness on a linear model -----------------------------------------------------------------------
class LinearImage(nn.Module):
    input_shape = (1, 4, 4)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Identity()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.feat(x), 1))


def test_gradient_x_input_on_a_linear_model_is_w_times_x():
    model = LinearImage().eval()
    adapter = CNNAdapter(model, feature_layer="feat", classifier="head", grid=(2, 2))
    x = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 2, 1])
    w = model.head.weight.detach()[t].view(3, 1, 4, 4)
    assert torch.equal(get_method("gradxinput", adapter).attribute(x, t), w * x)
    assert torch.allclose(get_method("intgrad", adapter).attribute(x, t), w * x, atol=1e-6)
    assert torch.allclose(get_method("deeplift", adapter).attribute(x, t), w * x, atol=1e-6)
    # an additive model: ablating a cell removes exactly its part, so the cell scores sum to f(x) - f(0)
    cells = get_method("feature_ablation", adapter).attribute_cells(x, t)
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, t.view(-1, 1))[:, 0]
    assert torch.allclose(cells.sum(1), diff, atol=1e-5)


# --- LRP --------------------------------------------------------------------------------------------------
class FlattenCNN(nn.Module):
    input_shape = (1, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.flat = nn.Flatten()
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.flat(self.pool(self.conv(x))))


class Exploding(FlattenCNN):
    def forward(self, x):
        h = self.pool(self.conv(x))
        if getattr(self, "explode", False):
            raise RuntimeError("boom")
        return self.head(torch.flatten(h, 1))


def test_lrp_refuses_layers_without_rules_and_cleans_up_after_failure():
    model = FlattenCNN().eval()
    adapter = CNNAdapter(model, feature_layer="conv", classifier="head", grid=(4, 4))
    with pytest.raises(NotImplementedError, match="Flatten"):
        get_method("lrp", adapter).attribute(torch.randn(1, 1, 16, 16), 0)
    model = Exploding().eval()
    del model.flat
    adapter = CNNAdapter(model, feature_layer="conv", classifier="head", grid=(4, 4))
    x = torch.randn(1, 1, 16, 16)
    before = adapter(x)
    model.explode = True
    with pytest.raises(NotImplementedError, match="boom"):
        get_method("lrp", adapter).attribute(x, 0)
    model.explode = False
    for m in model.modules():
        assert not hasattr(m, "rule") and "activations" not in m.__dict__
        assert not m._forward_hooks and not m._forward_pre_hooks or m is adapter.classifier
    assert torch.equal(adapter(x), before)
    assert get_method("lrp", adapter).attribute(x, 0).shape == x.shape


# --- the "-F" conversion ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_f_conversion_keeps_floor_tau_n_cells_and_predicts_with_the_backbone(family):
    adapter, x = setup(family)
    N = adapter.num_cells(x)
    for name, tau in (("saliency-f", 0.2), ("lime-f", 0.3)):
        m = make(name, adapter, tau=tau)
        res = m.explain_groups(x, 1)
        assert isinstance(res, GroupedResult) and m.grouped
        assert res.masks.shape == (2, 1, N)
        assert (res.masks.sum(-1) == math.floor(tau * N)).all()
        # the kept cells are the top cells of the post-hoc attribution
        cells = m.method.attribute_cells(x, 1)
        kept_min = cells.masked_fill(~res.masks[:, 0], float("inf")).min(1).values
        dropped_max = cells.masked_fill(res.masks[:, 0], float("-inf")).max(1).values
        assert (kept_min >= dropped_max).all()
        # the prediction is the frozen backbone on the masked input
        pix = adapter.masks_to_input(res.masks)[:, 0].unsqueeze(1)
        with torch.no_grad():
            expected = adapter(x * pix)
        assert torch.allclose(res.prediction, expected, atol=1e-5)
        assert torch.allclose(res.scores[:, 0], expected[:, 1], atol=1e-6)
        assert torch.allclose(m.attribute_cells(x, 1), res.masks[:, 0] * res.scores, atol=1e-6)


def test_f_conversion_on_text_masks_tokens_and_never_keeps_special_tokens():
    adapter, x = setup("bert")
    m = get_method("saliency-f", adapter, tau=0.3)
    res = m.explain_groups(x, 0)
    valid = adapter.valid_cells(x)
    assert not (res.masks[:, 0] & ~valid).any()
    expected_k = torch.clamp(torch.floor(0.3 * valid.sum(-1).double()).long(), min=1)
    assert torch.equal(res.masks[:, 0].sum(-1), expected_k)
    emb = adapter.model.get_input_embeddings()
    with torch.no_grad():
        e = emb(x["input_ids"])
        hide = valid & ~res.masks[:, 0]
        e = torch.where(hide.unsqueeze(-1), emb.weight[adapter.mask_token_id], e)
        expected = adapter.model(inputs_embeds=e, attention_mask=x["attention_mask"]).logits
    assert torch.allclose(res.prediction, expected, atol=1e-5)


# --- FRESH -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "bert"])
def test_fresh_keeps_top_attention_cells_and_never_special_tokens(family):
    adapter, x = setup(family)
    m = get_method("fresh", adapter, tau=0.25)
    res = m.explain_groups(x, 1)
    valid = adapter.valid_cells(x)
    assert not (res.masks[:, 0] & ~valid).any()
    k = torch.clamp(torch.floor(0.25 * valid.sum(-1).double()).long(), min=1)
    assert torch.equal(res.masks[:, 0].sum(-1), k)
    attn = m.cell_importance(x).masked_fill(~valid, float("-inf"))
    assert torch.equal(res.masks[:, 0], attn >= attn.topk(int(k.max()), -1).values.gather(1, k.view(-1, 1) - 1))
    with torch.no_grad():
        expected = adapter.forward_groups(x, res.masks)[0][:, 0]
    assert torch.allclose(res.prediction, expected)
    assert torch.allclose(res.scores.sum(1), res.prediction[:, 1])


# --- RISE ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "bert"])
def test_rise_is_seeded(family):
    adapter, x = setup(family)
    a = get_method("rise", adapter, n_masks=6, seed=3).attribute(x, 1)
    b = get_method("rise", adapter, n_masks=6, seed=3).attribute(x, 1)
    c = get_method("rise", adapter, n_masks=6, seed=4).attribute(x, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rise_with_keep_probability_one_is_the_target_probability():
    adapter, x = setup("cnn")
    a = get_method("rise", adapter, n_masks=3, p=1.0).attribute(x, 2)
    with torch.no_grad():
        prob = adapter(x).softmax(-1)[:, 2]
    assert torch.allclose(a, prob.view(2, 1, 1, 1).expand_as(a), atol=1e-6)


class _Linear(nn.Module):
    """Two regression outputs, f(x) = W flatten(x) + b on 1×4×4 images; every pixel is a cell."""

    input_shape = (1, 4, 4)

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(16, 2)
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            self.head.weight.copy_(scale * torch.randn(2, 16, generator=g))
            self.head.bias.copy_(torch.tensor([0.3, 0.8]))

    def forward(self, x):
        return self.head(self.feat(x).flatten(1))


def _linear_adapter(scale: float = 1.0):
    return CNNAdapter(_Linear(scale).eval(), feature_layer="feat", classifier="head", grid=(4, 4))


def test_rise_for_regression_weighs_masks_by_the_output_value():
    adapter = _linear_adapter()
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = get_method("rise", adapter, n_masks=3, p=1.0, task="regression").attribute(x, 1)
    with torch.no_grad():
        value = adapter(x)[:, 1]
    assert torch.allclose(a, value.view(3, 1, 1, 1).expand_as(a), atol=1e-6)  # not a softmax over the two targets
    assert get_method("rise", adapter, task="regression").output == "logit"
    assert get_method("rise", adapter).output == "prob"
    with pytest.raises(ValueError, match="not classes"):
        get_method("rise", adapter, task="regression", output="prob")
    with pytest.raises(ValueError, match="task must be"):
        get_method("rise", adapter, task="ranking")


def test_lime_explains_small_regression_outputs_within_the_budget():
    """Output changes of ~1e-3 (Omega_m-like): Captum's Lasso (alpha 0.01) zeroes every coefficient; the ridge does not."""
    from captum._utils.models.linear_model import SkLearnLasso

    from sumofparts.metrics import constant_maps

    adapter = _linear_adapter(scale=1e-3)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(6, 16, dtype=torch.bool)
    ours = get_method("lime", adapter, n_samples=17).attribute_cells(x, 0)
    lasso = get_method("lime", adapter, n_samples=17, interpretable_model=SkLearnLasso(alpha=0.01)).attribute_cells(x, 0)
    assert not constant_maps(ours, valid).any()
    assert constant_maps(lasso, valid).all()
    exact = adapter.classifier.weight[0].detach() * x.flatten(1)
    corr = torch.stack([torch.corrcoef(torch.stack([ours[i], exact[i]]))[0, 1] for i in range(6)])
    assert float(corr.mean()) > 0.3  # it explains something with 17 samples for 16 cells


def test_methods_say_what_their_scores_add_up_to():
    adapter, x = setup("cnn")
    empty = torch.randn(2, 4)
    for name in ("intgrad", "kernelshap", "lime", "shapley", "gradxinput", "deeplift"):
        assert torch.equal(make(name, adapter).completeness_reference(empty), empty), name
    assert torch.equal(make("lrp", adapter).completeness_reference(empty), torch.zeros(2, 4))
    for name in ("saliency", "gradcam", "rise", "occlusion", "feature_ablation", "guided_gradcam", "smoothgrad"):
        m = make(name, adapter)
        assert m.completeness_reference(empty) is None and len(m.not_additive) > 20, name
    assert make("deeplift", adapter, multiply_by_inputs=False).completeness_reference(empty) is None
    assert make("intgrad", adapter).multiplies_by_inputs and not make("saliency", adapter).multiplies_by_inputs


def test_f_conversion_breaks_ties_in_a_seeded_random_order():
    adapter, x = setup("cnn")
    zero = type("Zero", (AttributionMethod,), {"name": "zero", "_attribute": lambda self, i, t, **k: torch.zeros_like(i)})
    from sumofparts.attribution import FConversion

    kept = [FConversion(zero(adapter), tau=0.25, tie_seed=s).explain_groups(x, 0).masks[:, 0] for s in (0, 0, 1)]
    assert torch.equal(kept[0], kept[1]) and not torch.equal(kept[0], kept[2])
    first = torch.zeros(16, dtype=torch.bool)
    first[:4] = True
    assert not all(torch.equal(k, first) for k in kept[0])  # not the first cells in raster order
    raster = FConversion(zero(adapter), tau=0.25, tie_seed=None).explain_groups(x, 0).masks[:, 0]
    assert all(torch.equal(k, first) for k in raster)


# --- BagNet -------------------------------------------------------------------------------------------------
def test_bagnet_patch_scores_sum_to_its_logit():
    adapter, x = setup("cnn")
    model = BagNetModel(1, 4, (16, 16), (4, 4), width=8)
    m = get_method("bagnet", adapter, model=model)
    t = torch.tensor([3, 0])
    with torch.no_grad():
        logit = model(x).gather(1, t.view(-1, 1))[:, 0]
        assert torch.allclose(model.patch_scores(x, t).sum((1, 2)), logit, atol=1e-5)
    assert torch.allclose(m.attribute(x, t).sum((1, 2, 3)), logit, atol=1e-5)
    assert torch.allclose(m.attribute_cells(x, t).sum(1), logit, atol=1e-5)
    assert torch.equal(m.predict(x), model(x).detach())
    # uneven patches (66 px, 14 cells: 5-px patches, the image zero-padded to 70)
    odd = BagNetModel(2, 3, (66, 66), (14, 14), width=4)
    y = torch.randn(2, 2, 66, 66)
    with torch.no_grad():
        assert torch.allclose(odd.patch_scores(y, torch.tensor([1, 2])).sum((1, 2)),
                              odd(y).gather(1, torch.tensor([[1], [2]]))[:, 0], atol=1e-5)


def test_bagnet_patches_only_see_their_own_pixels_and_it_trains(tmp_path):
    model = BagNetModel(1, 4, (16, 16), (4, 4), width=16)
    x = torch.randn(1, 1, 16, 16)
    y = x.clone()
    y[..., :4, :4] += 1.0  # change one patch
    with torch.no_grad():
        diff = (model.patch_logits(x) - model.patch_logits(y)).abs().sum(1)[0]
    assert diff[0, 0] > 0 and diff.flatten()[1:].max() == 0
    xs, ys, _ = make_bars(256, seed=0)
    data = TensorDataset(xs, ys)
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(xs), ys).item()
    model.fit(data, steps=40, batch_size=32, progress=False)
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(xs), ys).item()
    assert after < before
    path = model.save(tmp_path / "bagnet.safetensors")
    again = BagNetModel.load(path)
    assert torch.equal(again(xs[:4]), model(xs[:4]))


# --- SOP as a method ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["cnn", "bert"])
def test_sop_method_group_scores_sum_to_its_logit(family):
    adapter, x = setup(family)
    sop = SumOfParts.from_backbone(adapter.model, adapter=adapter, num_groups=4, tau=0.25, generator_scale=0.5,
                                   selector_scale=1.0)
    m = get_method("sop", None, model=sop)
    t = torch.tensor([1, 0])
    res = m.explain_groups(x, t)
    assert res.masks.shape[:2] == (2, 4)
    assert torch.allclose(res.scores.sum(1), res.prediction.gather(1, t.view(-1, 1))[:, 0], atol=1e-5)
    assert torch.allclose(m.predict(x), res.prediction)
    expl = sop.explain(x, t)
    a = m.attribute(x, t)
    if family == "cnn":
        assert torch.equal(a, expl.attributions.unsqueeze(1))
    else:
        assert torch.equal(a, expl.attributions)
    assert torch.allclose(m.attribute_cells(x, t), res.cell_attributions())


class LeakyCNN(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.LeakyReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def test_lrp_passes_relevance_through_leaky_relu_and_removes_the_rule():
    model = LeakyCNN().eval()
    adapter = CNNAdapter(model, feature_layer="pool", classifier="head", grid=(4, 4))
    x = torch.randn(2, 1, 8, 8)
    a = get_method("lrp", adapter).attribute(x, 1)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert not any(hasattr(m, "rule") for m in model.modules())
    with pytest.raises(NotImplementedError, match="LeakyReLU"):
        get_method("lrp", adapter, identity_activations=False).attribute(x, 1)


def test_bagnet_fits_regression_targets_with_mse():
    from torch.utils.data import TensorDataset

    from sumofparts.attribution import BagNetModel

    torch.manual_seed(0)
    x = torch.randn(64, 1, 16, 16)
    y = torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)  # two float targets
    model = BagNetModel(1, 2, (16, 16), (4, 4), width=8, depth=1, seed=0)
    before = torch.nn.functional.mse_loss(model(x), y).item()
    model.fit(TensorDataset(x, y), steps=40, batch_size=16, progress=False)
    assert torch.nn.functional.mse_loss(model(x), y).item() < before
