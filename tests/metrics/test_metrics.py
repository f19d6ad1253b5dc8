"""Metrics on cases whose answers are known by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sumofparts import metrics as M
from sumofparts.adapters import CNNAdapter

torch.set_num_threads(1)


class LinearNet(nn.Module):
    """f(x) = W · flatten(x) + b on 1×4×4 images; every pixel is a cell."""

    input_shape = (1, 4, 4)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(16, weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x):
        return self.head(self.feat(x).flatten(1))


def linear_adapter(weight, bias):
    return CNNAdapter(LinearNet(weight, bias), feature_layer="feat", classifier="head", grid=(4, 4))


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 16, generator=g)
    b = torch.randn(3, generator=g)
    x = torch.randn(5, 1, 4, 4, generator=g)
    return linear_adapter(W, b), W, b, x


# -- insertion / deletion ---------------------------------------------------------------------------
def test_gradient_times_input_is_exact_on_a_linear_model(linear):
    adapter, W, b, x = linear
    target = adapter(x).argmax(-1)
    gxi = W[target] * x.flatten(1)  # Gradient×Input, one score per pixel (= cell)
    ins = M.insertion_error(adapter, x, gxi, target, steps=10)
    dele = M.deletion_error(adapter, x, gxi, target, steps=10)
    assert ins.shape == dele.shape == (5, 10)
    assert float(ins.max()) < 1e-5 and float(dele.max()) < 1e-5
    # a wrong attribution is not exact
    assert float(M.insertion_error(adapter, x, gxi + 1.0, target).max()) > 0.5


def test_insertion_and_deletion_curves_by_hand():
    # two classes, logits (0, w·x): p(class 1) = sigmoid(w·x) on whatever is kept
    w = torch.arange(1, 17, dtype=torch.float32) / 10
    W = torch.stack([torch.zeros(16), w])
    adapter = linear_adapter(W, torch.zeros(2))
    x = torch.ones(1, 1, 4, 4)
    contrib = w  # w_i x_i
    scores = contrib.unsqueeze(0)
    ins = M.insertion_curve(adapter, x, scores, steps=4)
    dele = M.deletion_curve(adapter, x, scores, steps=4)
    sorted_c = torch.sort(contrib, descending=True).values
    expect_ins = torch.stack([torch.sigmoid(sorted_c[:4 * s].sum()) for s in (1, 2, 3, 4)])
    expect_del = torch.stack([torch.sigmoid(sorted_c[4 * s:].sum()) for s in (1, 2, 3, 4)])
    torch.testing.assert_close(ins[0].float(), expect_ins)
    torch.testing.assert_close(dele[0].float(), expect_del)
    assert float(dele[0, -1]) == pytest.approx(0.5)  # everything removed: logits (0, 0)
    # the table's numbers: raw = mean of the curve; ours ÷ p(x); the paper's ÷ the curve at k = 1
    p_x = float(torch.sigmoid(contrib.sum()))
    res = M.path_scores(ins.numpy(), dele.numpy(), np.array([p_x]), np.array([0.5]), "classification")
    assert res["insertion_raw"] == pytest.approx(float(expect_ins.mean()))
    assert res["insertion"] == pytest.approx(float(expect_ins.mean()) / p_x)
    assert res["deletion"] == pytest.approx(float(expect_del.mean()) / p_x)
    assert res["insertion_paper"] == pytest.approx(float(expect_ins.mean() / expect_ins[-1]))
    assert res["deletion_paper"] == pytest.approx(float(expect_del.mean()) / 0.5)


def test_a_perfect_attribution_beats_its_reverse_on_an_additive_model(linear):
    adapter, W, b, x = linear
    target = adapter(x).argmax(-1)
    perfect = W[target] * x.flatten(1)
    reverse = -perfect
    ins_good = M.insertion_curve(adapter, x, perfect, target=target)
    ins_bad = M.insertion_curve(adapter, x, reverse, target=target)
    del_good = M.deletion_curve(adapter, x, perfect, target=target)
    del_bad = M.deletion_curve(adapter, x, reverse, target=target)
    # on the logit scale the ordering holds step by step; on probabilities it holds for the AUCs
    assert bool((ins_good.mean(-1) >= ins_bad.mean(-1) - 1e-9).all())
    assert bool((del_good.mean(-1) <= del_bad.mean(-1) + 1e-9).all())
    # both paths end at the full input / the empty input
    torch.testing.assert_close(ins_good[:, -1], ins_bad[:, -1])
    torch.testing.assert_close(del_good[:, -1], del_bad[:, -1])


def test_curve_inputs_are_checked(linear):
    adapter, _, _, x = linear
    with pytest.raises(ValueError, match="cell_scores"):
        M.insertion_curve(adapter, x, torch.zeros(5, 15))
    with pytest.raises(ValueError, match="mode"):
        M.path_masks(torch.zeros(5, 16), torch.ones(5, 16, dtype=torch.bool), 10, mode="sideways")


def test_regression_curves_are_the_progress_between_the_end_points():
    # f(x) = −Σ x_i + 2 (16 cells, x = 1): f(x) = −14 < f(∅) = 2, so s = −1 and the gap is 16
    W = -torch.ones(1, 16)
    adapter = linear_adapter(W, torch.full((1,), 2.0))
    x = torch.ones(1, 1, 4, 4)
    scores = torch.arange(16.0).unsqueeze(0)  # all cells alike for this model
    ins = M.insertion_curve(adapter, x, scores, steps=4, target=0, task="regression")
    dele = M.deletion_curve(adapter, x, scores, steps=4, target=0, task="regression")
    torch.testing.assert_close(ins[0], torch.tensor([4.0, 8.0, 12.0, 16.0], dtype=torch.float64))  # recovered
    torch.testing.assert_close(dele[0], torch.tensor([12.0, 8.0, 4.0, 0.0], dtype=torch.float64))  # surviving
    with pytest.raises(ValueError, match="regression"):
        M.insertion_curve(adapter, x, torch.zeros(1, 16), task="regression")


# -- purity ---------------------------------------------------------------------------------------
def test_purity_and_iou_on_hand_drawn_masks():
    f = torch.zeros(2, 4, 4, dtype=torch.bool)
    f[0, 0, :] = True  # 4 foreground pixels
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[0, 0, :2] = True  # 2 of them ...
    m[0, 1, :2] = True  # ... and 2 background pixels
    m[1, 2, 2] = True  # the second example has no foreground
    cov = M.purity(m, f)
    j = M.iou(m, f)
    assert float(cov[0]) == pytest.approx(2 / 4)
    assert float(j[0]) == pytest.approx(2 / 6)
    assert math.isnan(float(cov[1])) and math.isnan(float(j[1]))
    with pytest.raises(ValueError, match="same"):
        M.purity(m, f[:, :3])


def test_highest_weighted_groups_versus_the_authors_ascending_order():
    # 4x4 input; foreground = top row. Group 0 (weight .7) is the top row, group 1 (weight .1) the
    # bottom row, group 2 (weight .2) the third row. Each group covers 25% >= 20% of the pixels.
    f = torch.zeros(1, 4, 4, dtype=torch.bool)
    f[0, 0] = True
    masks = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[0, 1, 3] = True
    masks[0, 2, 2] = True
    weights = torch.tensor([[0.7, 0.1, 0.2]])
    best = M.grouped_purity(masks, weights, f, fraction=0.2)
    authors = M.grouped_purity(masks, weights, f, fraction=0.2, descending=False)
    assert float(best["purity"][0]) == 1.0 and float(best["iou"][0]) == 1.0
    assert float(authors["purity"][0]) == 0.0  # the least-weighted group: the bottom row
    # a larger fraction takes groups until the union reaches it: 0.4 needs two rows
    two = M.grouped_union(masks, weights, fraction=0.4)
    assert int(two.sum()) == 8 and bool(two[0, 0].all()) and bool(two[0, 2].all())


def test_top_fraction_cells_keeps_floor_of_the_fraction():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.0, 0.2, 0.8, 0.7, 0.6, 0.4]])
    keep = M.top_fraction_cells(scores, 0.2)
    assert keep[0].nonzero().flatten().tolist() == [1, 6]
    valid = torch.ones_like(keep)
    valid[0, 1] = False
    assert M.top_fraction_cells(scores, 0.2, valid)[0].nonzero().flatten().tolist() == [6]  # floor(0.2*9) = 1


# -- fidelity, accuracy -------------------------------------------------------------------------------
def test_fidelity_measures_the_reconstruction_from_the_reference():
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    empty = torch.tensor([[0.3, 4.0, -1.0]])
    complete = logits - empty  # attributions that sum to f(x) − f(∅) (IG, SHAP)
    assert float(M.fidelity(logits, complete, reference=empty)[0]) < 1e-12
    assert float(M.fidelity(logits, complete)[0]) > 0.1  # without the reference it measures f(∅), not the map
    reg = M.fidelity(torch.tensor([[2.0]]), torch.tensor([[1.5]]), reference=torch.tensor([[0.25]]), task="regression")
    assert float(reg[0]) == pytest.approx(0.25 ** 2)


def test_fidelity_is_zero_when_attributions_sum_to_the_logits_and_a_known_kl_otherwise():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    assert float(M.fidelity(logits, logits.clone()).abs().max()) < 1e-12
    assert float(M.fidelity(logits, logits + 5.0).abs().max()) < 1e-12  # a constant shift changes nothing
    kl = M.fidelity(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]))
    # KL((.5, .5) || (.25, .75)) = .5 ln 2 + .5 ln(2/3) = .5 ln(4/3)
    assert float(kl[0]) == pytest.approx(0.5 * math.log(4 / 3))
    assert float(M.fidelity(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 4.0]]), task="regression")[0]) == 2.0


def test_error_mse_and_sparsity_curve():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert M.error(logits, labels) == pytest.approx(0.25)
    assert M.mse(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx(
        (4 / 2 + 2 / 2) / 2)
    per_k = torch.stack([torch.zeros(4, 2), logits], 1)  # k = .5: always class 0; k = 1: the logits
    curve = M.sparsity_curve(per_k, labels)
    assert curve["fractions"] == [0.5, 1.0] and curve["accuracy"] == [0.75, 0.75]


# -- bootstrap ------------------------------------------------------------------------------------
def test_bootstrap_std_is_close_to_the_standard_error():
    rng = np.random.default_rng(1)
    v = rng.normal(0.0, 2.0, size=400)
    se = v.std(ddof=1) / math.sqrt(v.size)  # 0.1
    est = M.bootstrap_std(v, n_boot=2000, seed=0)
    assert est == pytest.approx(se, rel=0.1)
    assert M.bootstrap_std(v, seed=3) == M.bootstrap_std(v, seed=3)  # seeded
    assert M.bootstrap_std(np.r_[v, np.nan], n_boot=2000, seed=0) == pytest.approx(est)  # NaNs dropped
    assert math.isnan(M.bootstrap_std([1.0]))
    # 0/1 errors: the standard error of a proportion sqrt(p(1-p)/n)
    errs = np.r_[np.ones(30), np.zeros(70)]
    assert M.bootstrap_std(errs, n_boot=4000, seed=0) == pytest.approx(math.sqrt(0.3 * 0.7 / 100), rel=0.1)


# -- infidelity, max-sensitivity ----------------------------------------------------------------------
def test_infidelity_uses_yeh_perturbations_and_the_input_factor(linear):
    adapter, W, b, x = linear
    target = adapter(x).argmax(-1)
    gxi = (W[target] * x.flatten(1)).reshape(x.shape)
    grad = W[target].reshape(x.shape)
    # I = x ⊙ R: a linear model's gradient predicts f(x) − f(x − I) exactly ...
    assert float(M.infidelity(adapter, x, grad, target, perturbation="subset").abs().max()) < 1e-8
    # ... and so does Gradient×Input once the input factor is divided out (I / x = R)
    assert float(M.infidelity(adapter, x, gxi, target, perturbation="subset", multiply_by_inputs=True).max()) < 1e-8
    # the input factor counted twice (I ⊙ x ⊙ grad) is not exact: the convention matters
    assert float(M.infidelity(adapter, x, gxi, target, perturbation="subset").min()) > 1e-3
    assert float(M.infidelity(adapter, x, grad, target, perturbation="noise").abs().max()) < 1e-8
    assert float(M.infidelity(adapter, x, torch.zeros_like(x), target, perturbation="subset").min()) > 0
    # β-normalised: any positive rescaling of an exact map is exact too
    assert float(M.infidelity(adapter, x, 7.0 * grad, target, normalize=True).max()) < 1e-8
    with pytest.raises(ValueError, match="perturbation"):
        M.infidelity(adapter, x, grad, target, perturbation="other")
    with pytest.raises(ValueError, match="multiply"):
        M.infidelity(adapter, x, grad, target, perturbation="noise", multiply_by_inputs=True)


def test_max_sensitivity_of_a_constant_gradient_is_zero_and_of_a_zero_map_undefined(linear):
    adapter, W, b, x = linear
    target = adapter(x).argmax(-1)

    def gradient(inp, target):
        return W[target].reshape(inp.shape) + 0 * inp

    def grad_times_input(inp, target):
        return W[target].reshape(inp.shape) * inp

    assert float(M.max_sensitivity(gradient, x, target).abs().max()) < 1e-6
    s = M.max_sensitivity(grad_times_input, x, target, radius=0.02)
    assert float(s.max()) > 0 and bool(torch.isfinite(s).all())
    assert torch.equal(s, M.max_sensitivity(grad_times_input, x, target, radius=0.02))  # seeded
    # ‖Φ(x)‖ = 0: the ratio is undefined, not a perfect 0 (Captum divides by 1 there)
    zero = M.max_sensitivity(lambda inp, target: 0 * inp, x, target)
    assert bool(torch.isnan(zero).all())


# -- SOP's re-made groups ---------------------------------------------------------------------------
@pytest.mark.parametrize("input_scale", [0.0, 0.3])
def test_sop_insertion_at_k_is_the_model_with_tau_k(cnn, input_scale):
    """(With the selector's whole-input term too: the curves weigh the re-made groups against the
    whole input's embedding, computed once, exactly as the model does.)"""
    from sumofparts.model import SOPConfig, SumOfParts
    from sumofparts.tasks.synthetic import make_bars

    torch.manual_seed(0)
    adapter = CNNAdapter(cnn, feature_layer="pool2", classifier="head", grid=(4, 4))
    sop = SumOfParts(adapter, SOPConfig(num_groups=4, num_heads=2, tau=0.25, generator_scale=0.5,
                                        selector_scale=1.0, selector_input_scale=input_scale)).eval()
    x = make_bars(3, seed=1)[0]
    curves = M.sop_curves(sop, x, steps=4)
    assert curves.insertion_logits.shape == curves.deletion_logits.shape == (3, 4, 4)
    with torch.no_grad():
        out = sop(x)
        torch.testing.assert_close(curves.insertion_logits[:, 0], out.logits, rtol=1e-5, atol=1e-5)
        sop.config = sop.config.replace(tau=0.5)
        torch.testing.assert_close(curves.insertion_logits[:, 1], sop(x).logits, rtol=1e-5, atol=1e-5)
        # k = 1: every group is the whole input, so SOP outputs the backbone's logits
        torch.testing.assert_close(curves.insertion_logits[:, -1], adapter(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(curves.target, out.logits.argmax(-1))
    # deletion at k = 1 removes every cell: all groups see the zero image
    zero = adapter(torch.zeros_like(x))
    torch.testing.assert_close(curves.deletion_logits_abs_scale[:, -1], zero, rtol=1e-4, atol=1e-5)
    # the paths: SOP's own output is the full input, SOP with every group emptied the empty one
    t = curves.target
    prob = lambda logits: logits.double().softmax(-1).gather(-1, t.view(-1, *[1] * (logits.ndim - 1)).expand(  # noqa: E731
        *logits.shape[:-1], 1))[..., 0]
    for abs_scale, dele in ((False, curves.deletion_logits), (True, curves.deletion_logits_abs_scale)):
        pc = M.sop_path_curves(curves, "classification", abs_scale=abs_scale)
        torch.testing.assert_close(pc.full, prob(curves.logits))
        torch.testing.assert_close(pc.empty, prob(dele[:, -1]))
        torch.testing.assert_close(pc.insertion, prob(curves.insertion_logits))
        torch.testing.assert_close(pc.deletion, prob(dele))
    assert not torch.allclose(M.sop_path_curves(curves, "classification").deletion,
                              M.sop_path_curves(curves, "classification", abs_scale=True).deletion)


def test_tie_keys_of_no_items_and_of_a_tensor_of_items():
    from sumofparts.metrics.ranking import tie_keys

    assert tie_keys([], 7, samples=3).shape == (0, 3, 7)
    assert torch.equal(tie_keys(torch.tensor([4, 1]), 5), tie_keys([4, 1], 5, samples=1, seed=0))
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        tie_keys([1], 5, samples=0)
    with pytest.raises(ValueError, match=r"item indices must be >= 0, got \[-1\]"):
        tie_keys([-1], 5)


def test_constant_maps_per_row_and_rows_without_valid_cells():
    from sumofparts.metrics.ranking import constant_maps

    scores = torch.tensor([[1.0, 1.0, 5.0], [2.0, 3.0, 2.0], [0.0, 1.0, 2.0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    # row 0: its valid cells tie (the invalid 5 does not count); row 1 ranks; row 2 has nothing to rank
    assert constant_maps(scores, valid).tolist() == [True, False, True]


def test_bootstrap_std_is_the_std_of_the_resampled_statistic_exactly():
    """The resamples are ``default_rng(seed).integers(0, n, (n_boot, n))``; the result is the sample
    standard deviation (ddof = 1) of the statistic over them, for 1-D values, another statistic, and
    whole rows of 2-D values."""
    v = np.array([0.3, 1.7, -0.4, 2.2, 0.9, 5.0])
    idx = np.random.default_rng(4).integers(0, 6, size=(50, 6))
    assert M.bootstrap_std(v, n_boot=50, seed=4) == pytest.approx(np.std(v[idx].mean(1), ddof=1), rel=1e-12)
    assert M.bootstrap_std(v, n_boot=50, seed=4, statistic=np.median) == pytest.approx(
        np.std([np.median(v[i]) for i in idx], ddof=1), rel=1e-12)
    rows = np.stack([v, v ** 2 + 1], 1)  # (6, 2): a ratio of sums, rows resampled whole
    ratio = lambda r: r[:, 0].sum() / r[:, 1].sum()  # noqa: E731
    assert M.bootstrap_std(rows, n_boot=50, seed=4, statistic=ratio) == pytest.approx(
        np.std([ratio(rows[i]) for i in idx], ddof=1), rel=1e-12)
    assert M.bootstrap_std(v) == M.bootstrap_std(v, n_boot=1000, seed=0)  # the defaults
    assert np.isfinite(M.bootstrap_std(v[:2], n_boot=2))  # two examples and two resamples are enough
    assert math.isnan(M.bootstrap_std(v[:1])) and math.isnan(M.bootstrap_std([1.0, float("nan")]))
    with pytest.raises(ValueError, match="n_boot must be >= 2, got 1"):
        M.bootstrap_std(v, n_boot=1)
    with pytest.raises(ValueError, match=r"expected values as \(n,\) or \(n, d\), got shape \(2, 2, 1\)"):
        M.bootstrap_std(np.zeros((2, 2, 1)))


def test_squared_errors_per_example_and_per_output():
    pred = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
    targets = torch.tensor([[0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    assert M.per_example_squared_error(pred, targets).tolist() == [0.5, 2.5, 4.5]  # mean over the T outputs
    assert M.per_target_mse(pred, targets).tolist() == pytest.approx([2 / 3, 13 / 3])  # mean over examples
    assert M.mse(pred, targets) == pytest.approx(7.5 / 3)
    r2 = M.r2_score(pred, targets)
    sst = ((targets - targets.mean(0)) ** 2).sum(0).double()
    assert r2.tolist() == pytest.approx((1 - ((pred - targets) ** 2).sum(0).double() / sst).tolist())
    assert math.isnan(M.r2_score(pred, torch.ones(3, 2))[0])  # constant targets: undefined


def test_sparsity_curve_regression_and_classification():
    labels = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logits = torch.stack([torch.zeros(2, 2), labels], 1)  # (B=2, S=2, T=2): nothing, then exact
    curve = M.sparsity_curve(logits, labels, task="regression")
    assert curve == {"fractions": [0.5, 1.0], "mse": [pytest.approx(5 / 4), 0.0]}
    cls = M.sparsity_curve(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), torch.tensor([1]), fractions=[0.3, 0.6])
    assert cls == {"fractions": [0.3, 0.6], "accuracy": [0.0, 1.0]}
    with pytest.raises(ValueError, match="1 fractions for 2 curve steps"):
        M.sparsity_curve(logits, labels, fractions=[0.5], task="regression")


def test_fidelity_refuses_mismatched_shapes_and_averages_regression_gaps_per_input():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    sums = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    ref = torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    assert M.fidelity(pred, sums, reference=ref, task="regression").tolist() == [0.125, 5.0]
    with pytest.raises(ValueError, match=r"same shape \(B, C\), got \(2, 2\) and \(2, 1\)"):
        M.fidelity(pred, sums[:, :1])
    with pytest.raises(ValueError, match=r"reference \(1, 2\) must have the shape of pred_logits \(2, 2\)"):
        M.fidelity(pred, sums, reference=ref[:1])


def test_path_scores_exact_numbers():
    ins = np.array([[0.2, 0.6, 1.0], [0.0, 0.5, 1.0]])
    dele = np.array([[0.8, 0.4, 0.0], [1.0, 0.5, 0.5]])
    full, empty = np.array([1.0, 2.0]), np.array([0.0, 1.0])
    reg = M.path_scores(ins, dele, full, empty, "regression")
    # regression: Σ AUC / Σ |f(x) − f(∅)| over the items, and the mean gap
    assert reg == {"insertion": pytest.approx((0.6 + 0.5) / 2), "deletion": pytest.approx((0.4 + 2 / 3) / 2),
                   "gap": pytest.approx(1.0), "insertion_raw": pytest.approx(0.55),
                   "deletion_raw": pytest.approx((0.4 + 2 / 3) / 2)}
    cls = M.path_scores(ins, dele, full, empty, "classification")
    assert cls["insertion"] == pytest.approx((0.6 / 1 + 0.5 / 2) / 2)
    assert cls["deletion"] == pytest.approx((0.4 / 1 + (2 / 3) / 2) / 2)
    assert cls["deletion_paper"] == pytest.approx((2 / 3) / 0.5)  # item 0 ends at 0: its ratio is left out
    assert cls["insertion_paper"] == pytest.approx((0.6 / 1.0 + 0.5 / 1.0) / 2)


def test_purity_and_iou_of_a_one_cell_foreground_per_item():
    masks = torch.tensor([[[True, False], [False, False]], [[True, True], [False, False]]])  # (B=2, 2, 2)
    fg = torch.tensor([[[True, False], [False, False]], [[False, False], [True, True]]])
    assert M.purity(masks, fg).tolist() == [1.0, 0.0]  # the one foreground pixel covered / none covered
    assert M.iou(masks, fg).tolist() == [1.0, 0.0]
