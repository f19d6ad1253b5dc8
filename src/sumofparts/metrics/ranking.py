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

__all__ = ["cell_ranks", "top_cells", "tie_keys", "constant_maps", "nonfinite_maps", "count_of_fraction"]


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


def cell_ranks(scores: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of each cell, 0 = most important: ``scores (..., N)``, ``valid (..., N)`` -> ``(..., N)`` long.

    Descending score among the valid cells, NaN after every finite score, invalid cells last.
    ``keys (..., N)``: ties are ordered by ascending key (a random order, :func:`tie_keys`);
    ``None``: by cell index.
    """
    if scores.shape != valid.shape:
        raise InputError(f"scores {tuple(scores.shape)} and valid cells {tuple(valid.shape)} must have the same shape")
    s = scores.detach().to(torch.float64)
    s = torch.nan_to_num(s, nan=-torch.finfo(torch.float64).max, posinf=torch.finfo(torch.float64).max,
                         neginf=-torch.finfo(torch.float64).max)
    s = s.masked_fill(~valid.bool(), float("-inf"))
    if keys is None:
        order = torch.argsort(s, dim=-1, descending=True, stable=True)
    else:
        if keys.shape != scores.shape:
            raise InputError(f"tie keys {tuple(keys.shape)} must have the scores' shape {tuple(scores.shape)}")
        perm = torch.argsort(keys.to(s.device), dim=-1, stable=True)  # the random order of the cells
        within = torch.argsort(s.gather(-1, perm), dim=-1, descending=True, stable=True)
        order = perm.gather(-1, within)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks


def count_of_fraction(valid: torch.Tensor, fraction: float | Sequence[float], *, at_least_one: bool = False
                      ) -> torch.Tensor:
    """``floor(k · n_valid)`` cells for each fraction k: ``valid (B, N)`` -> ``(B,)`` or ``(B, S)``.

    ``at_least_one``: never fewer than one cell (the "-F" and SOP groups' rule).
    """
    scalar = isinstance(fraction, (int, float))
    k = torch.tensor([float(fraction)] if scalar else [float(f) for f in fraction], dtype=torch.float64,
                     device=valid.device)
    if bool(((k < 0) | (k > 1)).any()):
        raise InputError(f"fractions must be in [0, 1], got {k.tolist()}")
    counts = torch.floor(k[None, :] * valid.sum(-1, keepdim=True).to(torch.float64) + 1e-9).long()
    if at_least_one:
        counts = counts.clamp(min=1)
    return counts[:, 0] if scalar else counts


def top_cells(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor,
              keys: torch.Tensor | None = None) -> torch.Tensor:
    """The ``counts`` best valid cells: ``scores, valid (B, N)``, ``counts (B,)`` -> ``(B, N)`` bool.

    Order and ties as :func:`cell_ranks` (``keys (B, N)`` or ``None``).
    """
    ranks = cell_ranks(scores, valid, keys)
    return (ranks < counts.to(ranks.device).view(-1, 1)) & valid.bool()


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
