"""Insertion/deletion for regression, ties, and the paper's normaliser, on linear models whose answers are known.

A linear model f(x) = w·x + b with every pixel a cell: the exact attribution of cell i is
a_i = w_i x_i (Gradient×Input), f(x_S) = b + Σ_{i∈S} a_i and f(∅) = b.
"""
from __future__ import annotations

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


def _scores(adapter, x, cells, steps=8):
    pc = M.path_curves(adapter, x, cells, steps, target=0, kind="regression",
                       keys=M.tie_keys(range(x.shape[0]), 16, 1, 0))
    return pc, M.path_scores(pc.insertion.numpy(), pc.deletion.numpy(), pc.full.numpy(), pc.empty.numpy(),
                             "regression")


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("bias", [0.0, 3.0, -5.0])
def test_exact_beats_random_beats_reversed_for_both_signs(sign, bias):
    """Mixed-sign weights and inputs; f(x) − f(∅) > 0 (sign +) or < 0 (sign −) for every item."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, generator=g)
    x = torch.randn(48, 1, 4, 4, generator=g)
    contrib = x.flatten(1) * w
    x = x * torch.where(contrib.sum(1) * sign >= 0, 1.0, -1.0).view(-1, 1, 1, 1)  # the sign of f(x) − f(∅)
    adapter = linear_adapter(w.view(1, 16), torch.tensor([bias]))
    exact = x.flatten(1) * w
    assert bool((torch.sign(exact.sum(1)) == sign).all())
    noise = torch.randn(exact.shape, generator=torch.Generator().manual_seed(7))
    pc_e, s_e = _scores(adapter, x, exact)
    pc_r, s_r = _scores(adapter, x, -exact)
    pc_n, s_n = _scores(adapter, x, noise)
    assert s_e["insertion"] > s_n["insertion"] > s_r["insertion"]
    assert s_e["deletion"] < s_n["deletion"] < s_r["deletion"]
    # for an additive model the exact ranking is the best of all rankings at every step of every item
    # (the top-k cells have the largest sum of any k cells), its reverse the worst (docs/evaluation.md)
    for pc in (pc_n, pc_r):
        assert bool((pc_e.insertion >= pc.insertion - 1e-6).all())
        assert bool((pc_e.deletion <= pc.deletion + 1e-6).all())
    assert bool((pc_n.insertion >= pc_r.insertion - 1e-6).all())
    # both paths end at their end point: the whole gap recovered at k = 1, nothing left after deletion
    gap = exact.sum(1).abs().double()
    torch.testing.assert_close(pc_e.insertion[:, -1], gap, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pc_r.deletion[:, -1], torch.zeros(48, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close((pc_e.full - pc_e.empty).abs(), gap, atol=1e-5, rtol=1e-5)


def test_the_value_over_f_x_normaliser_would_rank_the_reverse_first():
    """The defect this definition replaces: mean(output curve) / f(x) flips with the sign of f(x)."""
    w = -torch.linspace(0.2, 1.0, 16)  # every contribution negative: f(x) < f(∅) = 0.3
    adapter = linear_adapter(w.view(1, 16), torch.tensor([0.3]))
    x = torch.ones(4, 1, 4, 4)
    exact = x.flatten(1) * w
    old = {}
    for name, cells in (("exact", exact), ("reversed", -exact)):
        masks = M.path_masks(cells, torch.ones(4, 16, dtype=torch.bool), 8, mode="deletion")[:, 0]
        out = M.masked_outputs(adapter, x, masks)[..., 0]  # (B, S) output values along the path
        old[name] = float((out.mean(1) / adapter(x)[:, 0]).mean())  # the old "deletion"
    assert old["exact"] > old["reversed"]  # under the old number the exact ranking looked worse
    _, s_e = _scores(adapter, x, exact)
    _, s_r = _scores(adapter, x, -exact)
    assert s_e["deletion"] < s_r["deletion"] and s_e["insertion"] > s_r["insertion"]


def test_overshoot_does_not_win():
    """Going past f(x) on insertion counts as reaching it, going past f(∅) on deletion as reaching it."""
    w = torch.tensor([4.0] * 4 + [-1.0] * 12)  # Σ = 4: the positive cells alone reach 16, far past f(x) = 4
    adapter = linear_adapter(w.view(1, 16), torch.tensor([0.0]))
    x = torch.ones(1, 1, 4, 4)
    cells = x.flatten(1) * w
    pc, s = _scores(adapter, x, cells, steps=16)
    values = M.masked_outputs(adapter, x, M.path_masks(cells, torch.ones(1, 16, dtype=torch.bool), 16,
                                                       mode="insertion")[:, 0])[0, :, 0]
    assert float(values.mean()) / 4.0 > 1.5  # the old insertion: overshoot scored above 1
    assert float(pc.insertion.max()) == pytest.approx(4.0) and s["insertion"] <= 1.0 + 1e-9
    assert float(pc.deletion.min()) == 0.0 and s["deletion"] >= 0.0  # removing the positives goes below f(∅) = 0


def test_ties_follow_random_orders_not_the_raster():
    """A constant map has no order: its curve is the random-order curve, whatever the cell numbering."""
    w = torch.linspace(-1.0, 1.5, 16)  # raster order = from the most negative to the most positive cell
    adapter = linear_adapter(w.view(1, 16), torch.tensor([0.0]))
    x = torch.ones(1, 1, 4, 4)
    zero = torch.zeros(1, 16)
    R = 400
    keys = M.tie_keys([0], 16, R, seed=3)
    pc = M.path_curves(adapter, x, zero, 4, target=0, kind="regression", keys=keys)
    # the expectation over uniformly random subsets of size k, by Monte Carlo with other orders
    rng = np.random.default_rng(0)
    contrib = (x.flatten(1) * w)[0].numpy()  # Σ = 4 = f(x) − f(∅)
    mc = np.mean([[min(contrib.sum(), contrib[rng.permutation(16)[:4 * s]].sum()) for s in (1, 2, 3, 4)]
                  for _ in range(4000)], 0)
    np.testing.assert_allclose(pc.insertion[0].numpy(), mc, atol=0.1)
    raster = M.path_curves(adapter, x, zero, 4, target=0, kind="regression",
                           keys=torch.arange(16, dtype=torch.float64).view(1, 1, 16))
    assert float((raster.insertion[0] - pc.insertion[0]).abs().max()) > 1.0  # the raster order is another curve
    # one order per item, seeded by the item's index: the same item gets the same order in any batch
    torch.testing.assert_close(M.tie_keys([5, 9], 16, 2, 0)[1], M.tie_keys([9], 16, 2, 0)[0])
    assert not torch.equal(M.tie_keys([5], 16, 1, 0), M.tie_keys([5], 16, 1, 1))


def test_constant_and_nonfinite_maps_are_recognised():
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 3] = False
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, float("nan")], [1.0, 1.0, 1.0, 5.0]])
    assert M.constant_maps(scores, valid).tolist() == [True, False, True]  # the invalid cell does not count
    assert M.nonfinite_maps(scores, valid).tolist() == [False, True, False]
    ranks = M.cell_ranks(scores, valid)
    assert int(ranks[1, 3]) == 3  # NaN ranks after every finite score
    assert int(ranks[2, 3]) == 3  # the invalid cell last


def test_paper_normaliser_divides_by_the_curve_at_k_1():
    ins = np.array([[0.2, 0.6, 0.9], [0.1, 0.3, 0.5]])
    dele = np.array([[0.5, 0.2, 0.1], [0.4, 0.3, 0.2]])
    full = np.array([0.9, 0.5])
    empty = np.array([0.1, 0.2])
    s = M.path_scores(ins, dele, full, empty, "classification")
    assert s["deletion_paper"] == pytest.approx(np.mean(dele.mean(1) / dele[:, -1]))
    assert s["deletion"] == pytest.approx(np.mean(dele.mean(1) / full))
    assert s["insertion_paper"] == pytest.approx(np.mean(ins.mean(1) / ins[:, -1]))
    assert s["insertion_raw"] == pytest.approx(ins.mean())
    rows, stat = M.path_score_rows(ins, dele, full, empty, "regression")["insertion"]
    assert stat(rows) == pytest.approx(ins.mean(1).sum() / np.abs(full - empty).sum())


def test_bootstrap_resamples_rows_for_a_ratio_of_sums():
    rng = np.random.default_rng(0)
    rows = np.stack([rng.uniform(0, 1, 300), rng.uniform(1, 2, 300)], 1)
    stat = lambda r: r[:, 0].sum() / r[:, 1].sum()  # noqa: E731
    sd = M.bootstrap_std(rows, n_boot=500, seed=0, statistic=stat)
    # delta-method standard error of a ratio of means
    m0, m1 = rows.mean(0)
    cov = np.cov(rows.T) / 300
    delta = np.sqrt(cov[0, 0] / m1 ** 2 - 2 * m0 * cov[0, 1] / m1 ** 3 + m0 ** 2 * cov[1, 1] / m1 ** 4)
    assert sd == pytest.approx(delta, rel=0.15)
    rows[0, 0] = np.inf  # non-finite rows are left out
    assert np.isfinite(M.bootstrap_std(rows, n_boot=100, seed=0, statistic=stat))
