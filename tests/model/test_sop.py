"""The SOP invariants (SPEC §2) on the three backbone families, and the output helpers."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit

from sumofparts import SOPConfig, SumOfParts
from sumofparts.adapters import BertAdapter


def make(family: str, **kw):
    if family == "vit":
        return SumOfParts.from_backbone(tiny_vit(), adapter="vit", **{"num_groups": 6, "tau": 0.2, **kw}), \
            torch.randn(3, 1, 16, 16)
    if family == "cnn":
        return SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", classifier="head",
                                        grid=(4, 4), **{"num_groups": 5, "tau": 0.25, **kw}), torch.randn(3, 1, 16, 16)
    return SumOfParts.from_backbone(tiny_bert(), adapter="bert", **{"num_groups": 4, "tau": 0.3, **kw}), text_batch()


FAMILIES = ["vit", "cnn", "bert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_prediction_is_the_weighted_sum_of_group_predictions(family):
    sop, x = make(family, generator_scale=0.5, selector_scale=1.0)
    out = sop(x)
    manual = torch.einsum("bgc,bg,bgc->bc", out.group_weights, out.scale, out.group_logits)
    assert torch.allclose(out.logits, manual, atol=1e-5)
    assert torch.allclose(out.logits, out.group_attributions.sum(1), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_sparse_distributions_over_groups(family):
    sop, x = make(family, selector_scale=5.0, generator_scale=0.5)
    w = sop(x).group_weights
    assert (w >= 0).all()
    assert torch.allclose(w.sum(1), torch.ones_like(w.sum(1)), atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_every_image_group_has_exactly_floor_tau_n_cells(family):
    sop, x = make(family)
    out = sop(x)
    n = out.masks.shape[-1]
    assert (out.masks.sum(-1) == math.floor(sop.config.tau * n)).all()
    H, W = x.shape[-2:]
    assert out.input_masks.shape == (3, sop.config.num_groups, H, W)


def test_text_groups_never_hold_special_tokens_or_padding():
    sop, x = make("bert")
    out = sop(x)
    valid = sop.backbone.valid_cells(x)
    assert not (out.masks & ~valid[:, None, :]).any()
    n_valid = valid.sum(-1)
    expected = torch.clamp(torch.floor(sop.config.tau * n_valid.double()).long(), min=1)
    assert (out.masks.sum(-1) == expected[:, None]).all()
    # CLS (101), SEP (102) and PAD (0) are never valid
    ids = x["input_ids"]
    assert not valid[(ids == 101) | (ids == 102) | (x["attention_mask"] == 0)].any()


@pytest.mark.parametrize("family", FAMILIES)
def test_group_logits_do_not_depend_on_the_input_outside_the_group(family):
    sop, x = make(family)
    out = sop(x)
    if family == "bert":
        noisy = dict(x)
        ids = x["input_ids"].clone()
        valid = sop.backbone.valid_cells(x)
        g0 = out.masks[:, 0]
        change = valid & ~g0  # outside group 0 only
        ids[change] = (ids[change] + 7) % 90 + 5
        noisy["input_ids"] = ids
        masks = out.masks[:, :1]
    else:
        outside = ~out.input_masks[:, 0].unsqueeze(1)  # (B, 1, H, W)
        noisy = x + 5.0 * torch.randn_like(x) * outside
        masks = out.masks[:, :1]
    y0, _ = sop.backbone.forward_groups(x, masks)
    y1, _ = sop.backbone.forward_groups(noisy, masks)
    assert torch.allclose(y0, y1, atol=1e-5)


def test_patch_dropping_equals_masking_with_zeroed_patches_excluded_from_attention():
    model = tiny_vit()
    sop = SumOfParts.from_backbone(model, adapter="vit", num_groups=4, tau=0.25, drop_patches=True)
    x = torch.randn(2, 1, 16, 16)
    out = sop(x)
    B, G, N = out.masks.shape
    masked = sop.backbone.mask_inputs(x, out.masks)
    keys = torch.cat([torch.ones(B * G, 1), out.masks.reshape(B * G, N).float()], 1)
    ref = model(pixel_values=masked, attention_mask=keys).logits.reshape(B, G, -1)
    assert torch.allclose(out.group_logits, ref, atol=1e-5)
    # with every patch kept the two paths are the same computation
    full = torch.ones(B, 1, N, dtype=torch.bool)
    sop.backbone.drop_patches = True
    dropped, _ = sop.backbone.forward_groups(x, full)
    sop.backbone.drop_patches = False
    zeroed, _ = sop.backbone.forward_groups(x, full)
    assert torch.allclose(dropped, zeroed, atol=1e-5)


def test_groups_are_chunked_by_the_memory_budget_with_identical_results():
    sop, x = make("vit")
    out = sop(x)
    sop.backbone.group_batch_size = 1
    y_small, _ = sop.backbone.forward_groups(x, out.masks)
    assert torch.allclose(y_small, out.group_logits, atol=1e-5)


def test_scale_is_twice_the_top_mass_minus_one_and_carries_the_gradient():
    sop, x = make("vit", generator_scale=0.5)
    sop.train()
    out = sop(x, head=0)
    out.logits.sum().backward()
    gen_grads = [p.grad for p in sop.generator.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in gen_grads)
    assert all(p.grad is None for p in sop.backbone.parameters())
    assert (out.scale <= 1 + 1e-6).all() and (out.scale >= -1 - 1e-6).all()


def test_blurred_generator_runs_and_keeps_the_invariants():
    sop, x = make("vit", blur_kernel=3, blur_sigma=1.0)
    out = sop(x)
    assert torch.allclose(out.logits, out.group_attributions.sum(1), atol=1e-5)


def test_groups_are_listed_best_first_with_zero_weights_flagged():
    sop, x = make("vit", selector_scale=50.0, generator_scale=2.0)
    out = sop(x)
    groups = out.groups(0)
    weights = [g.weight for g in groups]
    assert weights == sorted(weights, reverse=True)
    assert all(g.zero_weight == (g.weight == 0.0) for g in groups)
    assert any(g.zero_weight for g in groups)  # a large selector scale makes sparsemax sparse
    assert all(len(g.cells) == math.floor(0.2 * 16) for g in groups)


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_map_sums_group_shares_over_their_cells(family):
    sop, x = make(family)
    expl = sop.explain(x, target=1)
    attr = expl.group_attributions[:, :, 1]
    manual = (attr.view(*attr.shape, *([1] * (expl.input_masks.ndim - 2))) * expl.input_masks).sum(1)
    assert torch.allclose(expl.attributions, manual, atol=1e-6)
    assert expl.attributions.shape == (x["input_ids"].shape if family == "bert" else (3, 16, 16))


def test_sequential_heads_use_one_head_and_evaluation_all():
    sop, x = make("vit", num_heads=3, num_groups=6)
    valid = sop.backbone.valid_cells(x)
    attn_all = sop.generator(x, valid)
    assert attn_all.shape[1] == 3
    assert sop.generator(x, valid, [1]).shape[1] == 1
    with pytest.raises(ValueError, match="head must be in"):
        sop(x, head=3)


def test_a_head_argument_makes_the_groups_from_that_heads_candidates_only():
    """``sop(x, head=k)`` (sequential training) keeps G candidates of head k alone, evenly spaced over
    its N query cells; ``head=None`` spreads them over all K heads."""
    from sumofparts.model.generator import binarise_top_tau, sample_candidates

    sop, x = make("vit", num_heads=3, num_groups=6, generator_scale=2.0)
    valid = sop.backbone.valid_cells(x)
    with torch.no_grad():
        attn = sop.generator(x, valid)  # (B, 3, N, N)
        for k in range(3):
            out = sop(x, head=k)
            masks, c = binarise_top_tau(sample_candidates(attn[:, k:k + 1], valid, 6), valid, sop.config.tau)
            assert torch.equal(out.masks, masks) and torch.allclose(out.scale, c, atol=1e-6)
        every = sop(x)
        masks, c = binarise_top_tau(sample_candidates(attn, valid, 6), valid, sop.config.tau)
        assert torch.equal(every.masks, masks) and torch.allclose(every.scale, c, atol=1e-6)
    assert not torch.equal(sop(x, head=0).masks, sop(x, head=1).masks)


def test_regression_prediction_is_the_base_plus_the_weighted_shrunk_group_outputs():
    """``logits = b + Σ_i w_i c_i (y_i − b)``, written out from the output's fields, and the group
    attributions add up to the prediction from b."""
    torch.manual_seed(3)
    sop, x = make("cnn", task="regression", base_value=[0.7, -0.2, 1.5, 0.0], generator_scale=1.0)
    out = sop(x)
    b = torch.tensor([0.7, -0.2, 1.5, 0.0])
    manual = b + torch.einsum("bgc,bg,bgc->bc", out.group_weights, out.scale, out.group_logits - b)
    assert torch.allclose(out.logits, manual, atol=1e-5)
    assert torch.allclose(out.logits, out.base_value + out.group_attributions.sum(1), atol=1e-5)
    expl = sop.explain(x, target=2)
    assert torch.allclose(expl.group_attributions[:, :, 2].sum(1), expl.logits[:, 2] - 1.5, atol=1e-5)


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = SOPConfig(num_groups=7, tau=0.3)
    assert SOPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SOPConfig keys \\['tua'\\]"):
        SOPConfig.from_dict({"tua": 0.2})


def test_base_value_is_the_explanations_starting_point_and_the_sum_stays_exact(vit):
    """With a base value b the prediction is b + Σ_i w_i c_i (y_i − b), and the attributions add to it."""
    from sumofparts import SumOfParts

    torch.manual_seed(0)
    plain = SumOfParts.from_backbone(vit, adapter="vit", num_groups=5, tau=0.25, generator_scale=1.0).eval()
    b = [0.5, -1.0, 2.0]
    based = SumOfParts.from_backbone(vit, adapter="vit", num_groups=5, tau=0.25, generator_scale=1.0,
                                     base_value=b).eval()
    based.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 16, 16)
    out, out0 = based(x), plain(x)
    base = torch.tensor(b)
    assert torch.equal(out.base_value, base) and torch.equal(out0.base_value, torch.zeros(3))
    assert torch.allclose(out.logits, base + out.group_attributions.sum(1), atol=1e-5)
    # the same groups and group predictions: b moves the point every group shrinks towards
    assert torch.equal(out.masks, out0.masks) and torch.equal(out.group_logits, out0.group_logits)
    wc = (out.group_weights * out.scale.unsqueeze(-1)).sum(1)  # (B, C): Σ_i w_i c_i
    assert torch.allclose(out.logits - out0.logits, base * (1 - wc), atol=1e-5)
    with pytest.raises(ValueError, match="one per output"):
        SumOfParts.from_backbone(vit, adapter="vit", num_groups=5, tau=0.25, base_value=[0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        SumOfParts.from_backbone(vit, adapter="vit", num_groups=5, tau=0.25, base_value=[0.0, float("nan"), 1.0])


def test_forward_masks_is_the_forward_given_groups(vit):
    from sumofparts import SumOfParts
    from sumofparts.model.generator import binarise_top_tau

    torch.manual_seed(1)
    sop = SumOfParts.from_backbone(vit, adapter="vit", num_groups=5, tau=0.25, generator_scale=1.0,
                                   base_value=[0.1, 0.2, 0.3]).eval()
    x = torch.randn(2, 1, 16, 16)
    probs, valid = sop.candidates(x)
    masks, c = binarise_top_tau(probs, valid, 0.25)
    a, b = sop(x), sop.forward_masks(x, masks, c)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.masks, b.masks)
    # other groups give another prediction, still exactly decomposed
    other = torch.roll(masks, 1, dims=-1)
    o = sop.forward_masks(x, other, c)
    assert not torch.allclose(o.logits, a.logits)
    assert torch.allclose(o.logits, o.base_value + o.group_attributions.sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="bool tensor"):
        sop.forward_masks(x, masks.float(), c)
    with pytest.raises(ValueError, match=r"scale of shape \(2, 5\) \(B, G\), got \(2, 2\)"):
        sop.forward_masks(x, masks, c[:, :2])


def test_the_explained_output_defaults_to_the_prediction_and_regression_asks_for_one():
    """``target=None``: the predicted class (B = 3 inputs, C = 4 classes); a regression model with several
    outputs refuses to guess, one with a single output explains it."""
    from sumofparts.adapters import IdentityHead, TabularAdapter
    from sumofparts.errors import InputError

    torch.manual_seed(0)
    sop, x = make("cnn")
    expl = sop.explain(x)
    assert expl.logits.shape == (3, 4) and torch.equal(expl.target, expl.logits.argmax(-1))
    assert torch.equal(sop.explain(x, target=2).target, torch.full((3,), 2))
    reg, xr = make("cnn", task="regression")
    with pytest.raises(InputError, match="regression model has 4 outputs: pass target="):
        reg.explain(xr)
    single = SumOfParts(TabularAdapter(IdentityHead(torch.nn.Linear(6, 1), 1), num_features=6),
                        SOPConfig(num_groups=3, num_heads=1, tau=0.5, task="regression"))
    assert torch.equal(single.explain(torch.randn(2, 6)).target, torch.zeros(2, dtype=torch.long))
    two = SumOfParts(TabularAdapter(IdentityHead(torch.nn.Linear(6, 2), 2), num_features=6),
                     SOPConfig(num_groups=3, num_heads=1, tau=0.5, task="regression"))
    with pytest.raises(InputError, match="regression model has 2 outputs"):
        two.explain(torch.randn(2, 6))


def test_groups_with_equal_weights_are_listed_by_attribution():
    from sumofparts.model.output import SOPOutput

    w = torch.tensor([[[0.5], [0.5], [0.0]]])  # (B=1, G=3, C=1)
    y = torch.tensor([[[1.0], [3.0], [2.0]]])
    out = SOPOutput(logits=torch.tensor([[2.0]]), group_logits=y, group_weights=w,
                    masks=torch.ones(1, 3, 4, dtype=torch.bool), input_masks=torch.ones(1, 3, 4),
                    scale=torch.ones(1, 3), base_value=torch.zeros(1), task="classification")
    assert [g.index for g in out.groups(0)] == [1, 0, 2]  # w·c·y: 1.5 before 0.5; the zero weight last


def test_groups_describe_each_group_for_the_asked_output():
    sop, x = make("cnn", selector_scale=5.0, generator_scale=1.0)
    out = sop(x)
    assert out.groups() == out.groups(0)
    for index in (0, 2):
        groups = out.groups(index, target=1)
        assert sorted(g.index for g in groups) == list(range(out.num_groups))
        assert [g.weight for g in groups] == sorted(out.group_weights[index, :, 1].tolist(), reverse=True)
        for g in groups:
            i = g.index
            assert g.weight == pytest.approx(out.group_weights[index, i, 1].item())
            assert g.scale == pytest.approx(out.scale[index, i].item())
            assert g.logit == pytest.approx(out.group_logits[index, i, 1].item())
            assert g.attribution == pytest.approx(out.group_attributions[index, i, 1].item())
            assert g.predicted == int(out.group_logits[index, i].argmax())
            assert g.cells == torch.nonzero(out.masks[index, i]).flatten().tolist()
    with pytest.raises(IndexError, match=r"input index must be in \[0, 3\), got 3"):
        out.groups(3)


def test_candidates_follow_the_configured_scheme_on_the_cell_grid():
    """``candidate_queries="spread"`` on a 4×4 CNN grid: the groups come from the lattice's query cells."""
    from sumofparts.model.generator import sample_candidates

    sop, x = make("cnn", num_groups=4, num_heads=2, candidate_queries="spread", generator_scale=2.0)
    valid = sop.backbone.valid_cells(x)
    with torch.no_grad():
        probs, _ = sop.candidates(x)
        attn = sop.generator(x, valid)
    assert torch.equal(probs, sample_candidates(attn, valid, 4, scheme="spread", grid=(4, 4)))
    assert not torch.equal(probs, sample_candidates(attn, valid, 4, scheme="paper"))


def test_as_many_groups_as_one_heads_candidates_and_checked_heads():
    sop, x = make("cnn", num_groups=16, num_heads=2)  # N = 16 cells: every query of one head is a group
    out = sop(x, head=1)
    assert out.masks.shape == (3, 16, 16)
    for bad in (True, 1.0, -1, 2):
        with pytest.raises(ValueError, match=r"head must be in \[0, 2\)"):
            sop(x, head=bad)


def test_trainable_parameters_are_the_generators_and_the_selectors():
    sop, _ = make("cnn")
    trainable = {id(p) for p in sop.trainable_parameters()}
    expected = {id(p) for p in [*sop.generator.parameters(), *sop.selector.parameters()]}
    assert trainable == expected
    assert not trainable & {id(p) for p in sop.backbone.parameters()}


def test_detach_keeps_every_value_and_drops_the_graph():
    sop, x = make("vit", generator_scale=0.5)
    sop.train()
    out = sop(x, head=0)
    assert out.logits.requires_grad and out.scale.requires_grad
    d = out.detach()
    for f in dataclasses.fields(out):
        a, b = getattr(out, f.name), getattr(d, f.name)
        if isinstance(a, torch.Tensor):
            assert not b.requires_grad and torch.equal(a, b), f.name
        else:
            assert a == b


def test_token_dropping_equals_the_shorter_sentence_at_its_own_positions():
    """Mode "drop" of the BERT adapter: a group reads as the sentence of its tokens (and the special
    tokens) alone, each at its original position; the hidden tokens' ids do not matter."""
    model = tiny_bert()
    adapter = BertAdapter(model, special_token_ids=[0, 101, 102], mask_token_id=103, drop_tokens=True)
    x = text_batch()
    valid = adapter.valid_cells(x)
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(*valid.shape[:1], 3, valid.shape[1], generator=g) < 0.4) & valid[:, None]
    masks[:, :, 1] = True  # every group holds the first word
    with torch.no_grad():
        dropped, _ = adapter.forward_groups(x, masks)
        zeroed, _ = adapter.forward_groups(x, masks, mode="zero")
        for b in range(masks.shape[0]):
            for k in range(masks.shape[1]):
                keep = (masks[b, k] | (x["attention_mask"][b].bool() & ~valid[b])).nonzero().squeeze(1)
                ref = model(input_ids=x["input_ids"][b, keep][None], position_ids=keep[None]).logits[0]
                assert torch.allclose(dropped[b, k], ref, atol=1e-6)
        # what stands in the hidden tokens' place is never read
        other = dict(x, input_ids=torch.where(valid & ~masks[:, 0], torch.full_like(x["input_ids"], 7), x["input_ids"]))
        again, _ = adapter.forward_groups(other, masks[:, :1])
    assert torch.allclose(again, dropped[:, :1], atol=1e-6)
    # [MASK] tokens are read: another input (this random model's logits differ between groups by ~1e-4)
    assert (dropped - zeroed).abs().max() > 2e-5
    # restrict_inputs builds the same inputs in the data's own format, and the spec keeps the mode
    restricted = adapter.restrict_inputs(x, masks)
    assert torch.allclose(model(**restricted).logits.reshape(dropped.shape), dropped, atol=1e-6)
    rebuilt = BertAdapter.from_spec(adapter.spec(), model)
    assert rebuilt.drop_tokens and rebuilt.masking_mode == "drop"
    old = {k: v for k, v in adapter.spec().items() if k != "drop_tokens"}  # specs written before the mode
    assert BertAdapter.from_spec(old, model).masking_mode == "zero"
