"""The pieces of the group generator, each pinned: candidate choice, top-τ with invalid cells, the scale c."""
from __future__ import annotations

import math

import pytest
import torch

from sumofparts.model.generator import (GroupGenerator, binarise_top_tau, candidate_queries, gaussian_kernel,
                                        group_scale, lattice_cells, sample_candidates)


def test_paper_candidates_are_evenly_spaced_in_head_then_query_order():
    valid = torch.ones(1, 64, dtype=torch.bool)
    head, query = candidate_queries(valid, 4, 16, scheme="paper")
    # j = floor(i·256/16) = 16 i; head = j // 64, query = j % 64
    assert head.tolist() == [[0] * 4 + [1] * 4 + [2] * 4 + [3] * 4]
    assert query.tolist() == [[0, 16, 32, 48] * 4]  # the first column of an 8x8 grid, for every head
    head1, query1 = candidate_queries(valid, 1, 16, scheme="paper")  # one head (sequential training)
    assert head1.tolist() == [[0] * 16] and query1.tolist() == [list(range(0, 64, 4))]


def test_paper_candidates_count_only_valid_query_cells():
    valid = torch.tensor([[False, True, True, False, True, True, True, False]])  # valid cells 1, 2, 4, 5, 6
    head, query = candidate_queries(valid, 2, 4, scheme="paper")
    # M = 2·5 = 10; j = 0, 2, 5, 7 -> (head 0, rank 0), (0, 2), (1, 0), (1, 2) -> cells 1, 4, 1, 4
    assert head.tolist() == [[0, 0, 1, 1]] and query.tolist() == [[1, 4, 1, 4]]


def test_spread_candidates_use_a_lattice_on_grids_and_every_head_in_turn():
    valid = torch.ones(2, 64, dtype=torch.bool)
    head, query = candidate_queries(valid, 4, 16, scheme="spread", grid=(8, 8))
    assert query[0].tolist() == lattice_cells((8, 8), 16) == [9, 11, 13, 15, 25, 27, 29, 31, 41, 43, 45, 47, 57, 59,
                                                               61, 63]
    assert head[1].tolist() == [0, 1, 2, 3] * 4
    # training one head at a time uses the same query cells
    head1, query1 = candidate_queries(valid, 1, 16, scheme="spread", grid=(8, 8))
    assert torch.equal(query1, query) and not head1.any()


def test_spread_candidates_on_sequences_take_centred_ranks_of_valid_cells():
    valid = torch.zeros(1, 12, dtype=torch.bool)
    valid[0, 1:11] = True  # 10 valid tokens (special tokens at both ends excluded)
    head, query = candidate_queries(valid, 2, 4, scheme="spread")
    # ranks floor((2i+1)·10/8) = 1, 3, 6, 8 -> cells 2, 4, 7, 9
    assert query.tolist() == [[2, 4, 7, 9]] and head.tolist() == [[0, 1, 0, 1]]
    short = torch.zeros(1, 12, dtype=torch.bool)
    short[0, 1:3] = True  # fewer valid cells than groups: queries repeat, never invalid
    _, q = candidate_queries(short, 2, 4, scheme="spread")
    assert set(q.flatten().tolist()) <= {1, 2}


@pytest.mark.parametrize("grid,count", [((8, 8), 16), ((14, 14), 20), ((8, 8), 20), ((4, 4), 8), ((6, 10), 12)])
def test_lattice_cells_are_distinct_and_cover_the_grid(grid, count):
    cells = lattice_cells(grid, count)
    h, w = grid
    assert len(cells) == count == len(set(cells)) and all(0 <= c < h * w for c in cells)
    rows, cols = {c // w for c in cells}, {c % w for c in cells}
    assert len(rows) >= min(h, 2) and len(cols) >= min(w, 2)  # spread in both directions, not one line


def test_sample_candidates_returns_the_chosen_rows():
    attn = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    valid = torch.ones(2, 4, dtype=torch.bool)
    out = sample_candidates(attn, valid, 3, scheme="paper")
    head, query = candidate_queries(valid, 3, 3, scheme="paper")
    for b in range(2):
        for g in range(3):
            assert torch.equal(out[b, g], attn[b, head[b, g], query[b, g]])
    with pytest.raises(ValueError, match="candidate scheme"):
        candidate_queries(valid, 3, 3, scheme="random")


def test_top_tau_keeps_floor_tau_n_valid_cells_and_never_an_invalid_one():
    probs = torch.tensor([[[0.05, 0.5, 0.1, 0.2, 0.15, 0.0]]])
    valid = torch.tensor([[True, False, True, True, True, True]])  # the most probable cell is invalid
    masks, c = binarise_top_tau(probs, valid, 0.4)
    assert masks.tolist() == [[[False, False, False, True, True, False]]]  # floor(0.4·5) = 2: cells 3 and 4
    assert c.item() == pytest.approx(2 * 0.35 - 1)
    masks1, _ = binarise_top_tau(probs, valid, 0.05)  # floor(0.25) = 0 -> at least one cell
    assert masks1.sum().item() == 1


def test_the_scale_is_twice_the_kept_mass_minus_one_and_carries_the_gradient():
    probs = torch.tensor([[[0.6, 0.3, 0.1]]], requires_grad=True)
    masks = torch.tensor([[[True, False, False]]])
    c = group_scale(probs, masks)
    assert c.item() == pytest.approx(0.2)
    c.sum().backward()
    assert probs.grad.tolist() == [[[2.0, 0.0, 0.0]]]


def _generator(dim: int = 4, heads: int = 2, scale: float = 1.5, **kw) -> GroupGenerator:
    torch.manual_seed(0)
    return GroupGenerator(torch.nn.Identity(), dim=dim, num_heads=heads, attn_dim=dim, scale=scale, **kw)


def _reference_attention(gen: GroupGenerator, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``softmax_valid keys(s_g · (h W_q^k + b_q^k)(h W_k^k)^T)`` per head, written out: ``(B, K, N, N)``."""
    h = gen.norm(h)
    A = gen.attn_dim
    out = []
    for k in range(gen.num_heads):
        wq, bq = gen.query.weight[k * A:(k + 1) * A], gen.query.bias[k * A:(k + 1) * A]
        wk = gen.key.weight[k * A:(k + 1) * A]
        logits = gen.scale * (h @ wq.T + bq) @ (h @ wk.T).transpose(-1, -2)  # (B, N, N)
        logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        out.append(torch.softmax(logits, -1))
    return torch.stack(out, 1)


def test_generator_attention_is_the_scaled_dot_product_over_valid_keys_only():
    """Each query row is a distribution over the valid cells: invalid keys get exactly 0, and the
    logits are s_g · q·k (no 1/sqrt(d))."""
    gen = _generator()
    h = torch.randn(2, 5, 4)
    valid = torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])
    with torch.no_grad():
        attn = gen(h, valid)
        ref = _reference_attention(gen, h, valid)
    assert attn.shape == (2, 2, 5, 5)
    assert torch.allclose(attn, ref, atol=1e-6)
    assert (attn.masked_select(~valid[:, None, None, :].expand_as(attn)) == 0).all()
    assert torch.allclose(attn.sum(-1), torch.ones(2, 2, 5), atol=1e-6)


def test_generator_heads_argument_selects_those_heads_only():
    """Sequential training asks for one head: its maps are that head's maps of the full forward."""
    gen = _generator(heads=3)
    h = torch.randn(2, 6, 4)
    valid = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        every = gen(h, valid)
        for k in range(3):
            assert torch.equal(gen(h, valid, [k]), every[:, k:k + 1])
    assert not torch.allclose(every[:, 0], every[:, 1])  # the heads differ (identity init + noise)


def test_identity_init_starts_every_head_peaked_on_the_query_cell():
    """W_q = W_k = I + noise: each cell attends most to itself, so the groups start with c > 0
    (a uniform attention would give c = 2τ − 1 < 0)."""
    gen = _generator(dim=8, heads=2, scale=4.0, init_noise=0.1)
    h = torch.randn(1, 10, 8)
    valid = torch.ones(1, 10, dtype=torch.bool)
    with torch.no_grad():
        attn = gen(h, valid)
    assert (attn.argmax(-1) == torch.arange(10)).all()
    _, c = binarise_top_tau(attn.reshape(1, 20, 10), valid, 0.2)
    assert (c > 0).all()


def test_training_heads_take_equal_spans_of_the_steps_in_order():
    from sumofparts import SOPConfig

    cfg = SOPConfig(num_heads=3, sequential_heads=True)
    assert [cfg.training_head(s, 9) for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [cfg.training_head(s, 7) for s in range(7)] == [0, 0, 0, 1, 1, 2, 2]  # ⌊s·3/7⌋
    assert [cfg.training_head(s, 2) for s in range(2)] == [0, 1]  # fewer steps than heads: head 2 never trained
    assert cfg.training_head(9, 9) == 2  # never past K − 1
    assert SOPConfig(num_heads=3, sequential_heads=False).training_head(5, 9) is None


def test_the_default_candidate_scheme_is_the_papers():
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, :3] = False
    for got, want in zip(candidate_queries(valid, 3, 5), candidate_queries(valid, 3, 5, scheme="paper")):
        assert torch.equal(got, want)
    attn = torch.rand(2, 3, 16, 16)
    assert torch.equal(sample_candidates(attn, valid, 5), sample_candidates(attn, valid, 5, scheme="paper"))
    with pytest.raises(ValueError, match="one of paper, spread, got 'random'"):
        candidate_queries(valid, 3, 5, scheme="random")


def test_sample_candidates_gives_the_spread_rule_its_grid():
    """On a 4×4 grid the spread queries are the lattice's cells; without the grid they would be the
    centred ranks of a sequence (other cells)."""
    attn = torch.rand(1, 2, 16, 16)
    valid = torch.ones(1, 16, dtype=torch.bool)
    out = sample_candidates(attn, valid, 4, scheme="spread", grid=(4, 4))
    cells = lattice_cells((4, 4), 4)
    assert cells == [5, 7, 13, 15]
    assert torch.equal(out[0], torch.stack([attn[0, i % 2, c] for i, c in enumerate(cells)]))
    assert not torch.equal(out, sample_candidates(attn, valid, 4, scheme="spread"))


def test_lattice_cells_exact_values():
    assert lattice_cells((5, 5), 4) == [6, 8, 16, 18]  # a 2×2 lattice: rows and columns ⌊(2r+1)·5/4⌋ = 1, 3
    assert lattice_cells((2, 4), 8) == list(range(8))  # the lattice is the whole grid (gw = w allowed)
    assert lattice_cells((1, 8), 4) == [1, 3, 5, 7]  # one row (gh = 1 allowed)
    assert lattice_cells((2, 2), 6) == [0, 0, 1, 2, 2, 3]  # more groups than cells: ⌊k·4/6⌋, cells repeat


def test_gaussian_kernel_values():
    k = gaussian_kernel(3, 1.0)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 2)
    assert torch.allclose(k, torch.outer(g, g) / torch.outer(g, g).sum(), atol=1e-7)
    assert k.sum().item() == pytest.approx(1.0)
    k5 = gaussian_kernel(5, 2.0)
    # centred (symmetric about the middle) and exp(−d²/(2σ²)) from it: edge/centre along a row = exp(−4/8)
    assert torch.equal(k5, k5.flip(0)) and torch.equal(k5, k5.flip(1))
    assert (k5[2, 0] / k5[2, 2]).item() == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_spread_candidates_on_full_sequences_and_non_square_grids():
    full = torch.ones(1, 10, dtype=torch.bool)  # a sequence without padding (no grid)
    head, query = candidate_queries(full, 2, 10, scheme="spread")
    assert query.tolist() == [list(range(10))]  # as many groups as cells: every cell once, in order
    assert head.tolist() == [[0, 1] * 5]
    wide = torch.ones(1, 16, dtype=torch.bool)  # a 2×8 grid
    _, q = candidate_queries(wide, 1, 4, scheme="spread", grid=(2, 8))
    assert q.tolist() == [lattice_cells((2, 8), 4)] == [[9, 11, 13, 15]]  # not the ranks 2, 6, 10, 14
