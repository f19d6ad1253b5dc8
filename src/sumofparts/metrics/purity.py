"""Purity: how much of the ground-truth foreground an explanation's selected region holds.

Two numbers are reported for a selected region ``m`` and a foreground ``f`` (both bool
at input resolution):

* **coverage** (what the authors' tables call "IoU" / purity): ``|m ∩ f| / |f|``;
* **IoU** (the true intersection over union): ``|m ∩ f| / |m ∪ f|``.

For a grouped explanation the region is a union of groups. The authors sort the groups
by weight *ascending* before taking the union until 20% of the pixels are covered, so
they score the *least* weighted groups; :func:`grouped_purity` takes the *highest*
weighted groups (``descending=True``, the default) and keeps the authors' order only as
an option, to show the difference. An example whose foreground is empty has no purity
(NaN) and is left out of the averages.
"""
from __future__ import annotations

import torch
from ..errors import InputError

from ..ops import cell_counts, top_cells

__all__ = ["purity", "iou", "top_fraction_cells", "grouped_union", "grouped_purity"]


def _pair(masks: torch.Tensor, foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.as_tensor(masks).bool()
    foreground = torch.as_tensor(foreground, device=masks.device).bool()
    if masks.shape != foreground.shape:
        raise InputError(f"masks {tuple(masks.shape)} and foreground {tuple(foreground.shape)} must have the same "
                         "shape (B, H, W) at input resolution")
    if masks.ndim < 2:
        raise InputError(f"expected a batch of masks (B, ...), got shape {tuple(masks.shape)}")
    return masks.reshape(masks.shape[0], -1), foreground.reshape(foreground.shape[0], -1)


def purity(masks: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Coverage ``|m ∩ f| / |f|`` per example: ``masks, foreground (B, H, W)`` bool -> ``(B,)``.

    NaN where the foreground is empty.
    """
    m, f = _pair(masks, foreground)
    inter = (m & f).sum(-1).to(torch.float64)
    size = f.sum(-1).to(torch.float64)
    return torch.where(size > 0, inter / size.clamp(min=1), torch.full_like(inter, float("nan")))


def iou(masks: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Intersection over union ``|m ∩ f| / |m ∪ f|`` per example -> ``(B,)``; NaN where f is empty."""
    m, f = _pair(masks, foreground)
    inter = (m & f).sum(-1).to(torch.float64)
    union = (m | f).sum(-1).to(torch.float64)
    ok = f.sum(-1) > 0
    return torch.where(ok, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def top_fraction_cells(cell_scores: torch.Tensor, fraction: float = 0.2,
                       valid: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, N)`` bool: the top ``max(1, floor(fraction · n_valid))`` valid cells by score.

    The region a post-hoc attribution selects, the one its "-F" conversion predicts from.
    Order and ties as :func:`~sumofparts.metrics.ranking.cell_ranks`: ``keys (B, N)`` a random
    tie-break order, ``None`` by cell index.
    """
    if cell_scores.ndim != 2:
        raise InputError(f"expected cell_scores of shape (B, N), got {tuple(cell_scores.shape)}")
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    valid = torch.ones_like(cell_scores, dtype=torch.bool) if valid is None else valid.bool()
    return top_cells(cell_scores, valid, cell_counts(valid, fraction, at_least_one=True), keys)


def grouped_union(masks: torch.Tensor, scores: torch.Tensor, fraction: float = 0.2, *,
                  descending: bool = True) -> torch.Tensor:
    """The union of groups taken in order of score until it covers ``fraction`` of the input.

    ``masks: (B, G, *S)`` bool (input resolution, or cells); ``scores: (B, G)``.
    Groups are added one by one, best first (``descending=True``), and the union stops
    growing as soon as at least ``fraction`` of the features are covered. With
    ``descending=False`` the groups are taken worst first — the authors' order, a defect
    kept only for comparison. Returns ``(B, *S)`` bool.
    """
    if masks.ndim < 3 or scores.shape != masks.shape[:2]:
        raise InputError(f"expected masks (B, G, ...) and scores (B, G), got {tuple(masks.shape)} and "
                         f"{tuple(scores.shape)}")
    B, G = scores.shape
    flat = masks.reshape(B, G, -1).bool()
    total = flat.shape[-1]
    order = torch.argsort(scores.detach().to(torch.float64), dim=1, descending=descending, stable=True)
    sorted_masks = torch.gather(flat, 1, order[:, :, None].expand_as(flat))
    cumulative = torch.cummax(sorted_masks.to(torch.uint8), dim=1).values.bool()  # (B, G, F): union of first g+1
    covered = cumulative.sum(-1).to(torch.float64) / total  # (B, G)
    reached = covered >= fraction - 1e-12
    # the first g at which the fraction is reached (the last group if it never is)
    first = torch.where(reached.any(1), reached.to(torch.uint8).argmax(1), torch.full((B,), G - 1))
    union = cumulative[torch.arange(B), first]
    return union.reshape(B, *masks.shape[2:])


def grouped_purity(masks: torch.Tensor, scores: torch.Tensor, foreground: torch.Tensor, fraction: float = 0.2, *,
                   descending: bool = True) -> dict[str, torch.Tensor]:
    """Coverage and IoU of the highest-weighted groups' union (see :func:`grouped_union`).

    ``masks: (B, G, H, W)`` bool at input resolution (``adapter.masks_to_input``),
    ``scores: (B, G)`` (SOP: the group weights for the explained class), ``foreground:
    (B, H, W)`` bool. Returns ``{"purity": (B,), "iou": (B,), "union": (B, H, W)}``.
    """
    union = grouped_union(masks, scores, fraction, descending=descending)
    return {"purity": purity(union, foreground), "iou": iou(union, foreground), "union": union}
