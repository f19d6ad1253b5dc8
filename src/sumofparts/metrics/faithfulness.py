"""Insertion and deletion curves, their AUCs, insertion/deletion errors, and fidelity.

Shapes: B inputs, N cells, S steps, C outputs.

**Insertion / deletion.** At step s (k = s/S, s = 1..S, so k = 0.1, 0.2, …, 1.0 for
S = 10) the ``floor(k · n_valid)`` valid cells with the highest attribution are kept
(insertion) or removed (deletion); every other valid cell is zeroed (images: pixels set
to 0 after normalisation; text: tokens replaced by the adapter's fill embedding). The
frozen backbone predicts from each masked input — all B·S of them through
``adapter.forward_groups`` in batches — and the curve records the probability of the
originally predicted class (regression: the value of the explained output, as there is
no probability). Cells are ranked by their signed score (higher = more evidence for the
target), ties broken by cell index.

* raw AUC = mean over the S steps of the curve (the right Riemann sum of ∫_0^1 curve dk);
* normalised AUC = raw AUC / p(x), p(x) the probability of the prediction on the full
  input. For insertion p(x) is the curve's last point (k = 1), as in SPEC §5; for deletion
  the full input is k = 0, so the same p(x) is used: both scores are fractions of the
  model's original confidence.

**SOP** is scored with its own groups re-made at each k (:func:`sop_curves`): insertion
uses the model with ``tau = k`` (each group keeps the top ``floor(k · n_valid)`` cells of
its attention distribution, scale c = 2·Σ_kept a − 1, exactly what ``sop.config.tau = k``
computes); deletion removes those cells from every group instead (each group keeps the
cells ranked below the top k). The curve is SOP's own probability of its own original
prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .purity import _ranks
from ..errors import InputError

__all__ = [
    "fractions", "masked_predictions", "curve_from_logits", "insertion_curve", "deletion_curve", "raw_auc",
    "normalised_auc", "SOPCurves", "sop_curves", "fidelity", "insertion_error", "deletion_error",
]


def fractions(steps: int = 10) -> list[float]:
    """``[1/S, 2/S, …, 1]``."""
    if int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    return [(s + 1) / steps for s in range(int(steps))]


def _targets(target: Any, B: int, device: torch.device) -> torch.Tensor:
    if isinstance(target, int) or (isinstance(target, torch.Tensor) and target.ndim == 0):
        return torch.full((B,), int(target), dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device).long().reshape(-1)
    if t.shape[0] != B:
        raise InputError(f"expected one target per input ({B}), got {t.shape[0]}")
    return t


def _step_counts(valid: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, S)``: ``floor(k · n_valid)`` for each fraction k."""
    k = torch.tensor(fractions(steps), dtype=torch.float64, device=valid.device)
    return torch.floor(k[None, :] * valid.sum(-1, keepdim=True).double() + 1e-9).long()


@torch.no_grad()
def masked_predictions(adapter, inputs: Any, cell_scores: torch.Tensor, steps: int = 10, *,
                       mode: str = "insertion", model: Any = None) -> torch.Tensor:
    """Backbone outputs ``(B, S, C)`` on the inputs with the top-k cells kept or removed.

    ``cell_scores: (B, N)`` (e.g. ``method.attribute_cells`` or ``adapter.pool_to_cells``);
    ``mode``: ``"insertion"`` keeps the top ``floor(k·n_valid)`` valid cells, ``"deletion"``
    removes them. All B·S masked inputs go through ``adapter.forward_groups``.
    ``model``: another predictor ``model(masked_inputs) -> (B·S, C)`` to score the masked
    inputs with (e.g. a self-attributing BagNet); the masking is still the adapter's.
    """
    if mode not in ("insertion", "deletion"):
        raise InputError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    valid = adapter.valid_cells(inputs).to(cell_scores.device)
    if cell_scores.shape != valid.shape:
        raise InputError(f"expected cell_scores of shape {tuple(valid.shape)} (B, N), got {tuple(cell_scores.shape)}")
    ranks = _ranks(cell_scores, valid)  # (B, N)
    counts = _step_counts(valid, steps)  # (B, S)
    top = ranks[:, None, :] < counts[:, :, None]  # (B, S, N)
    masks = (top if mode == "insertion" else ~top) & valid[:, None, :]
    masks = masks.to(adapter.device)
    if model is None:
        logits, _ = adapter.forward_groups(inputs, masks)
        return logits
    B, S = masks.shape[:2]
    per_chunk = max(1, adapter.group_batch_size // S)
    out = []
    for start in range(0, B, per_chunk):
        idx = slice(start, min(B, start + per_chunk))
        out.append(model(adapter.mask_inputs(adapter.select(inputs, idx), masks[idx])))
    return torch.cat(out).reshape(B, S, -1)


def curve_from_logits(logits: torch.Tensor, target: Any, *, task: str = "classification") -> torch.Tensor:
    """``(B, S, C)`` outputs -> ``(B, S)`` probability of ``target`` (regression: its value)."""
    B = logits.shape[0]
    t = _targets(target, B, logits.device)
    vals = logits.softmax(-1) if task == "classification" else logits
    return vals.gather(-1, t.view(B, *([1] * (logits.ndim - 2)), 1).expand(*logits.shape[:-1], 1)).squeeze(-1)


def _default_target(adapter, inputs: Any, target: Any, task: str) -> torch.Tensor:
    if target is not None:
        return _targets(target, adapter.batch_size(inputs), adapter.device)
    if task == "regression":
        raise InputError("a regression model has no predicted class: pass target= (the output to follow)")
    with torch.no_grad():
        return adapter(inputs).argmax(-1)


def insertion_curve(adapter, inputs: Any, cell_scores: torch.Tensor, steps: int = 10, *, target: Any = None,
                    task: str = "classification") -> torch.Tensor:
    """``(B, S)``: probability of the original prediction keeping the top-k cells, k = 1/S … 1.

    ``target``: the class followed (default: the backbone's prediction on the full input).
    """
    t = _default_target(adapter, inputs, target, task)
    return curve_from_logits(masked_predictions(adapter, inputs, cell_scores, steps, mode="insertion"), t, task=task)


def deletion_curve(adapter, inputs: Any, cell_scores: torch.Tensor, steps: int = 10, *, target: Any = None,
                   task: str = "classification") -> torch.Tensor:
    """``(B, S)``: probability of the original prediction after removing the top-k cells."""
    t = _default_target(adapter, inputs, target, task)
    return curve_from_logits(masked_predictions(adapter, inputs, cell_scores, steps, mode="deletion"), t, task=task)


def raw_auc(curve: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` -> ``(B,)``: the mean of the curve over its S steps."""
    return curve.to(torch.float64).mean(-1)


def normalised_auc(curve: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)``: ``mean(curve) / reference``; ``reference`` defaults to ``curve[:, -1]`` (k = 1).

    Pass the full-input probability as ``reference`` for deletion curves (see module docs).
    """
    ref = curve[:, -1] if reference is None else torch.as_tensor(reference, device=curve.device)
    return raw_auc(curve) / ref.to(torch.float64)


@dataclass
class SOPCurves:
    """SOP's outputs with groups re-made at each fraction k (see :func:`sop_curves`).

    Attributes:
        fractions: the S values of k.
        insertion_logits: ``(B, S, C)``: SOP with each group the top-k of its distribution (tau = k).
        deletion_logits: ``(B, S, C)``: SOP with the top-k of each group's distribution removed.
        deletion_logits_abs_scale: as ``deletion_logits`` with the scale |c| instead of c
            (c = 2·Σ_kept a − 1 turns negative once the kept cells hold less than half of
            the mass, which flips the sign of the groups' logits; reported for comparison).
        logits: ``(B, C)``: SOP's own output at its trained tau.
        target: ``(B,)``: the followed output (SOP's prediction unless given).
    """

    fractions: list[float]
    insertion_logits: torch.Tensor
    deletion_logits: torch.Tensor
    deletion_logits_abs_scale: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor


@torch.no_grad()
def sop_curves(sop, inputs: Any, steps: int = 10, *, target: Any = None) -> SOPCurves:
    """Re-make SOP's groups at each k and predict with them through :meth:`SumOfParts.forward_masks`.

    The generator's G candidate distributions ``a_i (N,)`` are computed once. At fraction k,
    insertion group i keeps its ``max(1, floor(k · n_valid))`` most probable valid cells
    (the model's own top-tau rule with tau = k); deletion group i keeps the valid cells
    outside its top ``floor(k · n_valid)``. Each group gets scale c_i = 2·Σ_kept a_i − 1,
    and the model's own forward from given groups (backbone on each group, selector,
    weighted sum) gives SOP's output at that k. All 2·S·G groups of an input go through the
    backbone in one batched call.
    """
    from ..model.generator import group_scale

    was_training = sop.training
    sop.eval()
    try:
        adapter = sop.backbone
        out = sop(inputs, validate=False)
        B, C = out.logits.shape
        if target is None:
            if sop.config.task == "regression":
                raise InputError("a regression model has no predicted class: pass target= (the output to follow)")
            t = out.logits.argmax(-1)
        else:
            t = _targets(target, B, out.logits.device)
        probs, valid = sop.candidates(inputs)  # (B, G, N), (B, N)
        G, N = probs.shape[1:]
        ranks = _ranks(probs.reshape(B * G, N), valid.repeat_interleave(G, 0)).reshape(B, G, N)
        counts = _step_counts(valid, steps)  # (B, S)
        S = counts.shape[1]
        ins = (ranks[:, None] < counts.clamp(min=1)[:, :, None, None]) & valid[:, None, None, :]  # (B, S, G, N)
        dele = ~(ranks[:, None] < counts[:, :, None, None]) & valid[:, None, None, :]
        masks = torch.cat([ins, dele], 1).reshape(B * 2 * S, G, N)  # one row per (input, curve point)
        rows = torch.arange(B, device=probs.device).repeat_interleave(2 * S)
        probs_rows = probs[rows]
        scale = group_scale(probs_rows, masks)  # (B·2S, G)
        inputs_rows = adapter.select(inputs, rows)
        logits = sop.forward_masks(inputs_rows, masks, scale).logits.reshape(B, 2 * S, C)
        logits_abs = sop.forward_masks(inputs_rows, masks, scale.abs()).logits.reshape(B, 2 * S, C)
        return SOPCurves(fractions=fractions(steps), insertion_logits=logits[:, :S],
                         deletion_logits=logits[:, S:], deletion_logits_abs_scale=logits_abs[:, S:],
                         logits=out.logits, target=t)
    finally:
        sop.train(was_training)


def fidelity(pred_logits: torch.Tensor, attribution_sums: torch.Tensor, *,
             task: str = "classification") -> torch.Tensor:
    """``(B,)``: KL( softmax(pred_logits) || softmax(attribution_sums) ).

    ``pred_logits: (B, C)``: the model's output (for a grouped method, its own prediction);
    ``attribution_sums: (B, C)``: for each class c, the sum of the attributions computed for
    c (over features, or over groups). Zero exactly when the attributions add up to the
    logits up to a per-example constant (SOP, FRESH). Regression has no distribution: the
    squared difference averaged over outputs is returned instead.
    """
    if pred_logits.shape != attribution_sums.shape or pred_logits.ndim != 2:
        raise InputError(f"expected pred_logits and attribution_sums of the same shape (B, C), got "
                         f"{tuple(pred_logits.shape)} and {tuple(attribution_sums.shape)}")
    p, q = pred_logits.to(torch.float64), attribution_sums.to(torch.float64)
    if task == "regression":
        return ((p - q) ** 2).mean(-1)
    logp, logq = p.log_softmax(-1), q.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)


@torch.no_grad()
def _error_curve(adapter, inputs: Any, cell_scores: torch.Tensor, target: Any, steps: int, mode: str) -> torch.Tensor:
    B = cell_scores.shape[0]
    t = _targets(target, B, adapter.device)
    valid = adapter.valid_cells(inputs).to(cell_scores.device)
    ranks = _ranks(cell_scores, valid)
    counts = _step_counts(valid, steps)
    top = (ranks[:, None, :] < counts[:, :, None]) & valid[:, None, :]  # (B, S, N): the subset S_k
    ends = torch.stack([valid, torch.zeros_like(valid)], 1)  # full input, empty input
    keep = top if mode == "insertion" else valid[:, None, :] & ~top
    logits, _ = adapter.forward_groups(inputs, torch.cat([keep, ends], 1).to(adapter.device))
    f = logits.gather(-1, t.view(B, 1, 1).expand(B, logits.shape[1], 1)).squeeze(-1).double()  # (B, S+2)
    f_sub, f_full, f_empty = f[:, :-2], f[:, -2], f[:, -1]
    alpha = (cell_scores.double()[:, None, :] * top.double()).sum(-1)  # Σ_{i ∈ S_k} α_i
    if mode == "insertion":
        return (f_sub - f_empty[:, None] - alpha).abs()
    return (f_full[:, None] - f_sub - alpha).abs()


def insertion_error(adapter, inputs: Any, cell_scores: torch.Tensor, target: Any, steps: int = 10) -> torch.Tensor:
    """``(B, S)``: InsErr(α, S_k) = |f_t(x_{S_k}) − f_t(0) − Σ_{i∈S_k} α_i| on the insertion path.

    S_k is the set of the top ``floor(k·n_valid)`` cells; f_t the backbone's output
    (logit) for ``target``; α the cell scores. Zero for every k when the attribution is
    exact for the model (e.g. Gradient×Input on a linear model). SPEC §5 sums this over
    all subsets (see :mod:`sumofparts.theory`); here it is evaluated on the S nested
    subsets the curves visit.
    """
    return _error_curve(adapter, inputs, cell_scores, target, steps, "insertion")


def deletion_error(adapter, inputs: Any, cell_scores: torch.Tensor, target: Any, steps: int = 10) -> torch.Tensor:
    """``(B, S)``: DelErr(α, S_k) = |f_t(x) − f_t(x_{∖S_k}) − Σ_{i∈S_k} α_i|."""
    return _error_curve(adapter, inputs, cell_scores, target, steps, "deletion")
