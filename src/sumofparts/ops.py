"""Small operations on cells that several parts of the library share.

* :func:`cell_ranks`: the rank of each cell by descending score among the valid cells;
* :func:`cell_counts`: ``max(1, floor(fraction · n_valid))``, the size of a top-fraction set;
* :func:`top_cells`: the top ``count`` valid cells by score, as a mask;
* :func:`random_cell_masks`: seeded random groups of given sizes over the valid cells.

Shapes: ``scores (..., N)``, ``valid (..., N)`` bool (broadcastable to ``scores``).
"""
from __future__ import annotations

import torch

__all__ = ["cell_ranks", "cell_counts", "top_cells", "random_cell_masks"]


def cell_ranks(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` long: 0 for the valid cell with the highest score, 1 for the next, ...

    Ties keep the cells' index order (stable sort); NaN ranks below every number; invalid
    cells come last. The order is computed in float64, so float32 scores keep their order.
    """
    s = torch.nan_to_num(scores.detach().to(torch.float64), nan=-torch.finfo(torch.float64).max)
    s = s.masked_fill(~valid.expand_as(s), float("-inf"))
    order = torch.argsort(s, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks


def cell_counts(valid: torch.Tensor, fraction: float | torch.Tensor) -> torch.Tensor:
    """``max(1, floor(fraction · n_valid))`` for each row of ``valid (..., N)`` -> ``(...)`` long.

    ``fraction`` may be a tensor broadcastable to ``valid.shape[:-1]``. The ``1e-9`` guards
    against ``0.2 · 60 = 11.999…`` in floating point.
    """
    n_valid = valid.sum(-1).to(torch.float64)
    f = torch.as_tensor(fraction, dtype=torch.float64, device=valid.device)
    return torch.clamp(torch.floor(f * n_valid + 1e-9).to(torch.long), min=1)


def top_cells(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` bool: the ``counts (...)`` valid cells with the highest scores (see :func:`cell_ranks`)."""
    return (cell_ranks(scores, valid) < counts.unsqueeze(-1)) & valid


def random_cell_masks(valid: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random groups: ``valid (B, N)``, ``counts (B, G)`` -> ``(B, G, N)`` bool.

    Group g of input b holds ``counts[b, g]`` valid cells drawn without replacement, every
    subset of that size equally likely.
    """
    B, N = valid.shape
    G = counts.shape[-1]
    scores = torch.rand(B, G, N, generator=generator).to(valid.device)
    return top_cells(scores, valid[:, None, :], counts)
