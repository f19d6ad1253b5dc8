"""The shared cell operations, target check and seeding of sumofparts.ops."""
from __future__ import annotations

import pytest
import torch

from sumofparts.ops import cell_count, cell_counts, cell_ranks, random_cell_masks, top_cells


def test_cell_ranks_put_invalid_cells_last_and_keep_index_order_on_ties():
    scores = torch.tensor([[0.5, 2.0, 2.0, float("nan"), 9.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    assert cell_ranks(scores, valid).tolist() == [[2, 0, 1, 3, 4]]
    assert top_cells(scores, valid, torch.tensor([2])).tolist() == [[False, True, True, False, False]]


def test_cell_counts_floor_with_a_floor_of_one():
    valid = torch.tensor([[True] * 60 + [False] * 4, [True] * 3 + [False] * 61])
    assert cell_counts(valid, 0.2, at_least_one=True).tolist() == [12, 1]  # 0.2·60 = 11.999… in floating point
    assert cell_counts(valid, 0.2).tolist() == [12, 0]
    assert cell_counts(valid, torch.tensor([0.5, 1.0])).tolist() == [30, 3]
    assert cell_counts(valid, [0.1, 0.5, 1.0]).tolist() == [[6, 30, 60], [0, 1, 3]]
    assert cell_count(60, 0.2) == 12 and cell_count(3, 0.2) == 0 and cell_count(3, 0.2, at_least_one=True) == 1
    with pytest.raises(ValueError, match=r"fractions must be in \[0, 1\]"):
        cell_counts(valid, 1.5)


def test_random_cell_masks_have_the_asked_sizes_on_valid_cells_and_are_uniform():
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False
    counts = torch.tensor([[3, 5], [2, 7]])
    m = random_cell_masks(valid, counts, torch.Generator().manual_seed(0))
    assert m.shape == (2, 2, 10) and m.sum(-1).tolist() == [[3, 5], [2, 7]]
    assert not m[1, :, 7:].any()
    again = random_cell_masks(valid, counts, torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    # uniform: every cell is kept with probability k/N (here 3/10) over many draws
    many = random_cell_masks(torch.ones(4000, 10, dtype=torch.bool), torch.full((4000, 1), 3),
                             torch.Generator().manual_seed(1))
    freq = many[:, 0].float().mean(0)
    assert torch.allclose(freq, torch.full((10,), 0.3), atol=0.03)
