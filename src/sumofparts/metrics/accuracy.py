"""Error, MSE and the sparsity curve: how good a method's own prediction is.

Every function takes plain tensors, so it scores any method: the SOP model's logits,
the prediction a grouped method (an "-F" conversion, FRESH, BagNet) makes from its own
groups, or the backbone's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from ..errors import InputError

__all__ = ["per_example_error", "error", "per_example_squared_error", "mse", "per_target_mse", "r2_score",
           "sparsity_curve"]


def _check_logits(pred: torch.Tensor, name: str = "pred_logits") -> torch.Tensor:
    if not isinstance(pred, torch.Tensor) or pred.ndim != 2:
        got = f"shape {tuple(pred.shape)}" if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise InputError(f"expected {name} as a (B, C) tensor, got {got}")
    return pred


def per_example_error(pred_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float: 1 where ``argmax(pred_logits) != label``, else 0.

    ``pred_logits: (B, C)``; ``labels: (B,)`` class indices.
    """
    pred = _check_logits(pred_logits)
    labels = torch.as_tensor(labels, device=pred.device).long().reshape(-1)
    if labels.shape[0] != pred.shape[0]:
        raise InputError(f"expected {pred.shape[0]} labels for {pred.shape[0]} predictions, got {labels.shape[0]}")
    return (pred.argmax(-1) != labels).to(torch.float64)


def error(pred_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 error ``1 − accuracy`` of ``pred_logits (B, C)`` against ``labels (B,)``."""
    return float(per_example_error(pred_logits, labels).mean())


def per_example_squared_error(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the squared error of each example averaged over its T outputs.

    ``pred: (B, T)``; ``targets: (B, T)`` (or ``(B,)`` when T = 1).
    """
    pred = _check_logits(pred, "pred")
    targets = torch.as_tensor(targets, device=pred.device).to(torch.float64).reshape(pred.shape)
    return ((pred.to(torch.float64) - targets) ** 2).mean(-1)


def mse(pred: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error over examples and outputs (the paper's CosmoGrid column)."""
    return float(per_example_squared_error(pred, targets).mean())


def per_target_mse(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(T,)`` float64: the mean squared error of each output over the examples.

    ``pred, targets: (B, T)``.
    """
    pred = _check_logits(pred, "pred").to(torch.float64)
    targets = torch.as_tensor(targets, device=pred.device).to(torch.float64).reshape(pred.shape)
    return ((pred - targets) ** 2).mean(0)


def r2_score(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(T,)`` float64: the coefficient of determination of each output, ``R² = 1 − SSE / SST``.

    ``SSE = Σ_b (pred_b − y_b)²`` and ``SST = Σ_b (y_b − ȳ)²`` with ȳ the mean of the given
    targets: 0 for predicting their mean, 1 for a perfect fit, negative for worse than the mean.
    NaN for an output whose targets are all equal (SST = 0). ``pred, targets: (B, T)``.
    """
    pred = _check_logits(pred, "pred").to(torch.float64)
    targets = torch.as_tensor(targets, device=pred.device).to(torch.float64).reshape(pred.shape)
    sse = ((pred - targets) ** 2).sum(0)
    sst = ((targets - targets.mean(0)) ** 2).sum(0)
    return torch.where(sst > 0, 1.0 - sse / sst.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.full_like(sst, float("nan")))


def sparsity_curve(logits_per_fraction: torch.Tensor, labels: torch.Tensor,
                   fractions: Sequence[float] | None = None, *, task: str = "classification") -> dict:
    """Accuracy (or MSE) as a function of the fraction k of cells the prediction may use.

    ``logits_per_fraction: (B, S, C)``: the prediction made from the top-k cells for each of
    the S fractions (what :func:`~sumofparts.metrics.masked_outputs` or
    :func:`~sumofparts.metrics.sop_curves` return). Returns ``{"fractions": [...],
    "accuracy": [...]}`` (classification) or ``{"fractions": [...], "mse": [...]}``.
    """
    if logits_per_fraction.ndim != 3:
        raise InputError(f"expected logits_per_fraction of shape (B, S, C), got {tuple(logits_per_fraction.shape)}")
    S = logits_per_fraction.shape[1]
    fractions = list(fractions) if fractions is not None else [(i + 1) / S for i in range(S)]
    if len(fractions) != S:
        raise InputError(f"{len(fractions)} fractions for {S} curve steps")
    if task == "regression":
        vals = [mse(logits_per_fraction[:, s], labels) for s in range(S)]
        return {"fractions": fractions, "mse": vals}
    vals = [1.0 - error(logits_per_fraction[:, s], labels) for s in range(S)]
    return {"fractions": fractions, "accuracy": vals}
