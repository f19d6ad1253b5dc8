"""Ranking cells by score: the one rule every metric and every "-F" region uses.

Shapes: B inputs, N cells, R tie-break orders.

**The order.** Valid cells come first, by descending score; a NaN score ranks after every
finite score; invalid cells (special tokens, padding) come last and are never selected.

**Ties.** Cells with equal scores have no order of their own. Breaking them by cell index
(raster order for images) gives a method whose map is constant, or partly constant, the
curve of the raster order: an all-zero map then scores like a real explanation, better or
worse depending on where the object sits in the raster. Here ties are broken by a random
order of the cells, drawn from a generator seeded by ``(seed, item, r)`` (:func:`tie_keys`),
so the order of an item does not depend on the batch it is in, the process that evaluates it
or the method (every method sees the same R orders). A metric computed over R such orders and
averaged is an unbiased estimate of its expectation over uniformly random tie-breaking; for a
map without ties the R orders give the same masks, which the evaluation computes once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..ops import cell_ranks, top_cells

__all__ = ["cell_ranks", "top_cells", "tie_keys", "constant_maps", "nonfinite_maps"]


def tie_keys(items: Sequence[int] | torch.Tensor, num_cells: int, samples: int = 1, seed: int = 0) -> torch.Tensor:
    """``(B, R, N)`` float64 keys in [0, 1): a random order of the N cells for each item and sample.

    ``items``: the items' global indices ``(B,)`` (their position in the evaluated split);
    key ``[b, r]`` comes from ``numpy.random.default_rng([seed, items[b], r])``, so it depends
    on nothing else.
    """
    ids = [int(i) for i in (items.tolist() if isinstance(items, torch.Tensor) else items)]
    if int(samples) < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    if any(i < 0 for i in ids):
        raise InputError(f"item indices must be >= 0, got {ids}")
    keys = np.stack([np.stack([np.random.default_rng([int(seed), i, r]).random(int(num_cells))
                               for r in range(int(samples))]) for i in ids]) if ids else \
        np.zeros((0, int(samples), int(num_cells)))
    return torch.from_numpy(keys)


def constant_maps(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the map gives every valid cell the same score (all tied: it ranks nothing)."""
    s = scores.detach().to(torch.float64)
    v = valid.bool()
    hi = s.masked_fill(~v, float("-inf")).amax(-1)
    lo = s.masked_fill(~v, float("inf")).amin(-1)
    return (hi == lo) | ~v.any(-1)


def nonfinite_maps(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: some valid cell has a NaN or infinite score."""
    return (~torch.isfinite(scores.detach()) & valid.bool()).any(-1)
