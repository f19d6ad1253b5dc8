"""The pieces of the group generator, each pinned: candidate choice, top-τ with invalid cells, the scale c."""
from __future__ import annotations

import pytest
import torch

from sumofparts.model.generator import (binarise_top_tau, candidate_queries, group_scale, lattice_cells,
                                        sample_candidates)


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
