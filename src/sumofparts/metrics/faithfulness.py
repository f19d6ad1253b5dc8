"""Insertion and deletion, fidelity, and the insertion/deletion errors along the path.

Shapes: B inputs, N cells, S steps, R tie-break orders, C outputs. Full definitions, with the
reasons for each choice, are in docs/evaluation.md; in short:

**The path.** At step s (k = s/S, s = 1..S, so k = 0.1 … 1.0 for S = 10) the
``floor(k · n_valid)`` valid cells ranked highest are kept (insertion) or removed (deletion);
every other valid cell is set to the empty value (images: pixels 0 after normalisation; text:
the adapter's fill token). Cells are ranked by :func:`~sumofparts.metrics.ranking.cell_ranks`
(ties in R seeded random orders, averaged). The model scores every masked input; k = 1 of the
insertion path is the full input x, k = 1 of the deletion path the empty input ∅.

**Classification** follows the probability of the class t predicted on the full input:
``ins_k = p_t(x_{S_k})``, ``del_k = p_t(x_{∖S_k})``; the table gives
``insertion = mean_items( mean_k ins_k / p_t(x) )`` and likewise deletion (p_t(x) is the
model's confidence on the full input), the raw AUCs ``mean_k ins_k`` beside them, and the
paper's normaliser ``mean_k curve_k / curve_{k=1}`` (SPEC §5) labelled as such.

**Regression** has no probability and an output of arbitrary sign: a curve of output values
divided by f(x) flips with the sign of f(x), explodes near f(x) = 0, and rewards pushing the
output past the full prediction (insertion) or below the empty one (deletion). The regression
curves measure the progress from the empty input's prediction towards the full input's, in
output units, saturating at the end points as a probability saturates at 1:

    s = sign(f_t(x) − f_t(∅)),   gap = |f_t(x) − f_t(∅)|
    ins_k = min(gap, s · (f_t(x_{S_k}) − f_t(∅)))      (how much of the way the kept cells recover; ≤ gap)
    del_k = max(0,   s · (f_t(x_{∖S_k}) − f_t(∅)))     (how much of the way survives the removal; ≥ 0)
    insertion = Σ_items mean_k ins_k / Σ_items gap    (↑, at most 1)
    deletion  = Σ_items mean_k del_k / Σ_items gap    (↓, at least 0)

Going past f(x) on insertion, or past f(∅) on deletion, counts as reaching it and no more, so
overshoot cannot win; the sign s makes both curves the same whichever side of f(∅) f(x) lies;
the ratio of sums (rather than a mean of per-item ratios) keeps items whose full and empty
predictions almost coincide from dominating. Cells are ranked by ``s · score``: an attribution
says how much a cell raises the output, and the cells that carry the prediction from the empty
input's towards the full input's are those whose score has the sign of that move. For an
additive (linear) model the exact attribution is then the best of all rankings at every step of
both curves, its reverse the worst, and any other ranking lies between (docs/evaluation.md, and
``tests/metrics/test_faithfulness.py``).

**SOP, the paper's protocol** (:func:`sop_curves`): SOP's own groups re-made at each k through
:meth:`SumOfParts.forward_masks`; the curve is SOP's own output. **Any model, the top-k cells
protocol**: :func:`path_curves` with ``model=`` (e.g. SOP itself) scores the same masked inputs as
the post-hoc methods with that model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError

from ..ops import cell_counts, cell_ranks, check_target
from .ranking import tie_keys

__all__ = [
    "fractions", "step_counts", "path_masks", "orient_scores", "masked_outputs", "target_values", "PathCurves",
    "path_curves", "insertion_curve", "deletion_curve", "path_score_rows", "path_scores", "SOPCurves", "sop_curves",
    "sop_path_curves", "fidelity", "insertion_error", "deletion_error",
]

KINDS = ("classification", "regression")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"task kind must be 'classification' or 'regression', got {kind!r}")
    return kind


def fractions(steps: int = 10) -> list[float]:
    """``[1/S, 2/S, …, 1]``."""
    if int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    return [(s + 1) / steps for s in range(int(steps))]


def step_counts(valid: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, S)``: ``floor(k · n_valid)`` for each fraction k."""
    return cell_counts(valid, fractions(steps))


def path_masks(cell_scores: torch.Tensor, valid: torch.Tensor, steps: int, *, mode: str,
               keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, R, S, N)`` bool: the cells kept at each step of the insertion or deletion path.

    ``cell_scores, valid: (B, N)``; ``keys: (B, R, N)`` tie-break orders (``None``: one order,
    by cell index). Insertion keeps the top ``floor(k·n_valid)`` valid cells; deletion keeps
    the other valid cells.
    """
    if mode not in ("insertion", "deletion"):
        raise InputError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if cell_scores.shape != valid.shape or cell_scores.ndim != 2:
        raise InputError(f"expected cell_scores of shape {tuple(valid.shape)} (B, N), got {tuple(cell_scores.shape)}")
    B, N = valid.shape
    R = 1 if keys is None else keys.shape[1]
    scores = cell_scores.detach()[:, None, :].expand(B, R, N)
    v = valid.bool()[:, None, :].expand(B, R, N)
    ranks = cell_ranks(scores, v, None if keys is None else keys.to(scores.device))  # (B, R, N)
    counts = step_counts(valid, steps).to(ranks.device)  # (B, S)
    top = ranks[:, :, None, :] < counts[:, None, :, None]  # (B, R, S, N)
    kept = top if mode == "insertion" else ~top
    return kept & v[:, :, None, :]


def orient_scores(cell_scores: torch.Tensor, full: torch.Tensor, empty: torch.Tensor, kind: str) -> torch.Tensor:
    """Regression: ``sign(f_t(x) − f_t(∅)) · scores`` (a sign of 0 counts as +); classification: unchanged.

    ``full, empty: (B,)`` the followed output on the full and on the empty input.
    """
    if _check_kind(kind) == "classification":
        return cell_scores
    sign = torch.where(full.to(torch.float64) >= empty.to(torch.float64), 1.0, -1.0).to(cell_scores.device)
    return cell_scores * sign.view(-1, 1).to(cell_scores.dtype)


@torch.no_grad()
def masked_outputs(adapter, inputs: Any, masks: torch.Tensor, *, model: Callable[[Any], torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """Outputs ``(B, M, C)`` of a model on each input restricted to each of its M masks ``(B, M, N)``.

    ``model=None``: the frozen backbone, through ``adapter.forward_groups`` (all B·M masked
    inputs in batches). Otherwise ``model(masked_inputs) -> (rows, C)`` scores the masked inputs
    that ``adapter.restrict_inputs`` builds in the inputs' own format (e.g. SOP itself, or
    BagNet), in chunks of ``adapter.group_batch_size`` rows.
    """
    masks = masks.to(adapter.device)
    if model is None:
        logits, _ = adapter.forward_groups(inputs, masks)
        return logits
    B, M = masks.shape[:2]
    per_chunk = max(1, adapter.group_batch_size // max(1, M))
    out = []
    for start in range(0, B, per_chunk):
        idx = slice(start, min(B, start + per_chunk))
        out.append(model(adapter.restrict_inputs(adapter.select(inputs, idx), masks[idx])))
    return torch.cat(out).reshape(B, M, -1)


def target_values(outputs: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``outputs (B, ..., C)`` -> ``(B, ...)``: the softmax probability of ``target[b]`` (classification)
    or the output itself (regression)."""
    vals = outputs.softmax(-1) if _check_kind(kind) == "classification" else outputs
    B = outputs.shape[0]
    idx = target.to(outputs.device).view(B, *([1] * (outputs.ndim - 1))).expand(*outputs.shape[:-1], 1)
    return vals.gather(-1, idx).squeeze(-1)


@dataclass
class PathCurves:
    """The insertion and deletion paths of one explanation of B items (see the module docs).

    Attributes:
        kind: ``"classification"`` or ``"regression"``.
        insertion: ``(B, S)`` float64: classification ``p_t(x_{S_k})``; regression
            ``min(gap, s·(f_t(x_{S_k}) − f_t(∅)))``; averaged over the R tie-break orders.
        deletion: ``(B, S)`` float64: classification ``p_t(x_{∖S_k})``; regression
            ``max(0, s·(f_t(x_{∖S_k}) − f_t(∅)))``.
        full: ``(B,)`` float64: ``p_t(x)`` or ``f_t(x)``, the model on the full input.
        empty: ``(B,)`` float64: ``p_t(∅)`` or ``f_t(∅)``, the model on the empty input.
        insertion_outputs: ``(B, R, S, C)``: the model's outputs along the insertion path (for
            the sparsity curve and the "-F" prediction at k = τ).
        target: ``(B,)`` the followed output.
    """

    kind: str
    insertion: torch.Tensor
    deletion: torch.Tensor
    full: torch.Tensor
    empty: torch.Tensor
    insertion_outputs: torch.Tensor
    target: torch.Tensor


def _curves_from_outputs(kind: str, target: torch.Tensor, ins_out: torch.Tensor, del_out: torch.Tensor,
                         full_out: torch.Tensor, empty_out: torch.Tensor) -> PathCurves:
    """``ins_out, del_out (B, R, S, C)``, ``full_out, empty_out (B, C)`` -> :class:`PathCurves`."""
    ins = target_values(ins_out, target, kind).double()  # (B, R, S)
    dele = target_values(del_out, target, kind).double()
    full = target_values(full_out, target, kind).double()  # (B,)
    empty = target_values(empty_out, target, kind).double()
    if kind == "regression":
        sign = torch.where(full >= empty, 1.0, -1.0).to(ins.dtype)[:, None, None]
        gap = (full - empty).abs()[:, None, None]
        ins = torch.minimum(gap, sign * (ins - empty[:, None, None]))
        dele = (sign * (dele - empty[:, None, None])).clamp(min=0.0)
    return PathCurves(kind=kind, insertion=ins.mean(1), deletion=dele.mean(1), full=full, empty=empty,
                      insertion_outputs=ins_out, target=target)


@torch.no_grad()
def path_curves(adapter, inputs: Any, cell_scores: torch.Tensor, steps: int = 10, *, target: Any, kind: str,
                keys: torch.Tensor | None = None, model: Callable[[Any], torch.Tensor] | None = None,
                full: torch.Tensor | None = None, empty: torch.Tensor | None = None) -> PathCurves:
    """Insertion and deletion paths of ``cell_scores (B, N)`` for the model (default: the backbone).

    ``target``: the followed output, ``(B,)`` or an int. ``keys (B, R, N)``: tie-break orders
    (:func:`~sumofparts.metrics.ranking.tie_keys`; ``None``: one random order per item, seed 0,
    items numbered 0..B-1). ``model``: score the masked inputs with another model (see
    :func:`masked_outputs`). ``full, empty (B, C)``: the model's outputs on the full and empty
    inputs when already known (they are the ends of the paths); computed otherwise.
    All 2·R·S masked inputs of an item go through the model in one batched call.
    """
    kind = _check_kind(kind)
    valid = adapter.valid_cells(inputs).to(cell_scores.device)
    if cell_scores.shape != valid.shape:
        raise InputError(f"expected cell_scores of shape {tuple(valid.shape)} (B, N), got {tuple(cell_scores.shape)}")
    B, N = valid.shape
    t = check_target(target, B, adapter.num_outputs, adapter.device)
    if keys is None:
        keys = tie_keys(range(B), N, 1, 0)
    ends = torch.stack([valid, torch.zeros_like(valid)], 1)  # (B, 2, N): the full and the empty input
    if full is None or empty is None:
        out = masked_outputs(adapter, inputs, ends, model=model)
        full = out[:, 0] if full is None else full
        empty = out[:, 1] if empty is None else empty
    scores = orient_scores(cell_scores, target_values(full, t, "regression"), target_values(empty, t, "regression"),
                           kind)
    ins = path_masks(scores, valid, steps, mode="insertion", keys=keys)  # (B, R, S, N)
    dele = path_masks(scores, valid, steps, mode="deletion", keys=keys)
    R, S = ins.shape[1:3]
    outs = masked_outputs(adapter, inputs, torch.cat([ins, dele], 1).reshape(B, 2 * R * S, N), model=model)
    outs = outs.reshape(B, 2, R, S, -1)
    return _curves_from_outputs(kind, t, outs[:, 0], outs[:, 1], full, empty)


def insertion_curve(adapter, inputs: Any, cell_scores: torch.Tensor, steps: int = 10, *, target: Any = None,
                    task: str = "classification", keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, S)`` insertion curve (:class:`PathCurves`.insertion) of the backbone.

    ``target``: the followed output (default: the backbone's prediction on the full input;
    required for regression).
    """
    t = _default_target(adapter, inputs, target, task)
    return path_curves(adapter, inputs, cell_scores, steps, target=t, kind=task, keys=keys).insertion


def deletion_curve(adapter, inputs: Any, cell_scores: torch.Tensor, steps: int = 10, *, target: Any = None,
                   task: str = "classification", keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, S)`` deletion curve (:class:`PathCurves`.deletion) of the backbone."""
    t = _default_target(adapter, inputs, target, task)
    return path_curves(adapter, inputs, cell_scores, steps, target=t, kind=task, keys=keys).deletion


def _default_target(adapter, inputs: Any, target: Any, task: str) -> torch.Tensor:
    if target is not None:
        return check_target(target, adapter.batch_size(inputs), adapter.num_outputs, adapter.device)
    if _check_kind(task) == "regression":
        raise InputError("a regression model has no predicted class: pass target= (the output to follow)")
    with torch.no_grad():
        return adapter(inputs).argmax(-1)


# -- from per-item curves to the table's numbers ----------------------------------------------------
def _mean_ratio(col: int) -> Callable[[np.ndarray], float]:
    return lambda rows: float(np.mean(rows[:, col]))


def path_score_rows(insertion: np.ndarray, deletion: np.ndarray, full: np.ndarray, empty: np.ndarray, kind: str
                    ) -> dict[str, tuple[np.ndarray, Callable[[np.ndarray], float]]]:
    """Per-item rows and the statistic that turns them into each table number.

    ``insertion, deletion: (n, S)``, ``full, empty: (n,)`` as in :class:`PathCurves`. Returns
    ``name -> (rows (n, d), statistic(rows) -> float)``; the statistic of the rows is the number,
    and resampling the rows (:func:`~sumofparts.metrics.bootstrap_std`) gives its ±. Names:
    ``insertion, deletion, insertion_raw, deletion_raw`` (raw: the mean over items of the mean
    of the curve; regression: in output units) and, for classification, ``insertion_paper,
    deletion_paper`` (mean of the curve over its value at k = 1), for regression ``gap``
    (mean |f(x) − f(∅)|).
    """
    ins = np.asarray(insertion, dtype=np.float64)
    dele = np.asarray(deletion, dtype=np.float64)
    full = np.asarray(full, dtype=np.float64).reshape(-1)
    empty = np.asarray(empty, dtype=np.float64).reshape(-1)
    ins_auc, del_auc = ins.mean(-1), dele.mean(-1)
    out: dict[str, tuple[np.ndarray, Callable[[np.ndarray], float]]] = {}
    if _check_kind(kind) == "classification":
        with np.errstate(divide="ignore", invalid="ignore"):
            out["insertion"] = (np.stack([ins_auc / full], 1), _mean_ratio(0))
            out["deletion"] = (np.stack([del_auc / full], 1), _mean_ratio(0))
            out["insertion_paper"] = (np.stack([ins_auc / ins[:, -1]], 1), _mean_ratio(0))
            out["deletion_paper"] = (np.stack([del_auc / dele[:, -1]], 1), _mean_ratio(0))
    else:
        gap = np.abs(full - empty)
        out["insertion"] = (np.stack([ins_auc, gap], 1), lambda r: float(r[:, 0].sum() / r[:, 1].sum()))
        out["deletion"] = (np.stack([del_auc, gap], 1), lambda r: float(r[:, 0].sum() / r[:, 1].sum()))
        out["gap"] = (np.stack([gap], 1), _mean_ratio(0))
    out["insertion_raw"] = (np.stack([ins_auc], 1), _mean_ratio(0))
    out["deletion_raw"] = (np.stack([del_auc], 1), _mean_ratio(0))
    return out


def path_scores(insertion: np.ndarray, deletion: np.ndarray, full: np.ndarray, empty: np.ndarray,
                kind: str) -> dict[str, float]:
    """The table numbers of :func:`path_score_rows` over the items whose rows are finite."""
    res = {}
    for name, (rows, stat) in path_score_rows(insertion, deletion, full, empty, kind).items():
        ok = np.isfinite(rows).all(1)
        res[name] = stat(rows[ok]) if ok.any() else float("nan")
    return res


# -- SOP: the paper's protocol ---------------------------------------------------------------------
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
def sop_curves(sop, inputs: Any, steps: int = 10, *, target: Any = None, output: Any = None) -> SOPCurves:
    """Re-make SOP's groups at each k and predict with them through :meth:`SumOfParts.forward_masks`.

    The generator's G candidate distributions ``a_i (N,)`` are computed once. At fraction k,
    insertion group i keeps its ``max(1, floor(k · n_valid))`` most probable valid cells
    (the model's own top-tau rule with tau = k); deletion group i keeps the valid cells
    outside its top ``floor(k · n_valid)``. Each group gets scale c_i = 2·Σ_kept a_i − 1
    (``sop.generator.group_scale``), and the model's own forward from given groups (backbone
    on each group, selector, ``b + Σ_i w_i c_i (y_i − b)``) gives SOP's output at that k.
    All 2·S·G groups of an input go through the backbone in one batched call. ``output``: SOP's
    own output on ``inputs`` (``sop(inputs)``) when the caller already has it.
    """
    from ..model.generator import group_scale

    was_training = sop.training
    sop.eval()
    try:
        adapter = sop.backbone
        out = sop(inputs, validate=False) if output is None else output
        B, C = out.logits.shape
        if target is None:
            if sop.config.task == "regression":
                raise InputError("a regression model has no predicted class: pass target= (the output to follow)")
            t = out.logits.argmax(-1)
        else:
            t = check_target(target, B, C, out.logits.device)
        probs, valid = sop.candidates(inputs)  # (B, G, N), (B, N)
        G, N = probs.shape[1:]
        ranks = cell_ranks(probs, valid[:, None, :].expand(B, G, N))  # (B, G, N), ties by cell index as the model
        counts = step_counts(valid, steps)  # (B, S)
        S = counts.shape[1]
        ins = (ranks[:, None] < counts.clamp(min=1)[:, :, None, None]) & valid[:, None, None, :]  # (B, S, G, N)
        dele = ~(ranks[:, None] < counts[:, :, None, None]) & valid[:, None, None, :]
        masks = torch.cat([ins, dele], 1).reshape(B * 2 * S, G, N)  # one row per (input, curve point)
        rows = torch.arange(B, device=probs.device).repeat_interleave(2 * S)
        probs_rows = probs[rows]
        scale = group_scale(probs_rows, masks)  # (B·2S, G)
        inputs_rows = adapter.select(inputs, rows)
        # a selector with the whole-input term weighs the re-made groups against the whole input,
        # as it does SOP's own groups: its embedding is computed once per input, not per row
        z_x = adapter.forward_with_embedding(inputs)[1][rows] if sop.selector.uses_input else None
        logits = sop.forward_masks(inputs_rows, masks, scale, input_embedding=z_x).logits.reshape(B, 2 * S, C)
        logits_abs = sop.forward_masks(inputs_rows, masks, scale.abs(),
                                       input_embedding=z_x).logits.reshape(B, 2 * S, C)
        return SOPCurves(fractions=fractions(steps), insertion_logits=logits[:, :S],
                         deletion_logits=logits[:, S:], deletion_logits_abs_scale=logits_abs[:, S:],
                         logits=out.logits, target=t)
    finally:
        sop.train(was_training)


def sop_path_curves(curves: SOPCurves, kind: str, *, abs_scale: bool = False) -> PathCurves:
    """:class:`PathCurves` of SOP's own re-made groups: the full input's value is SOP's own
    output (at its trained τ), the empty input's is SOP with every group emptied (deletion at k = 1)."""
    dele = curves.deletion_logits_abs_scale if abs_scale else curves.deletion_logits
    return _curves_from_outputs(_check_kind(kind), curves.target, curves.insertion_logits[:, None],
                                dele[:, None], curves.logits, dele[:, -1])


# -- fidelity -------------------------------------------------------------------------------------
def fidelity(pred_logits: torch.Tensor, attribution_sums: torch.Tensor, *, reference: torch.Tensor | None = None,
             task: str = "classification") -> torch.Tensor:
    """``(B,)``: how far the explanation's reconstruction ``reference + Σ attributions`` is from the output.

    ``pred_logits (B, C)``: the model's output; ``attribution_sums (B, C)``: for each output c the
    attributions computed for c summed over the cells (or groups); ``reference (B, C)``: what the
    attributions are measured from (the model on the empty input for methods whose attributions
    sum to ``f(x) − f(∅)``; SOP's base value b; ``None``: 0, for methods whose attributions sum
    to the output itself). Classification:
    ``KL(softmax(f(x)) ‖ softmax(reference + Σ attributions))``, 0 when the reconstruction
    equals the logits up to a per-input constant. Regression (outputs are separate quantities,
    not a distribution): the squared gap ``(f_c(x) − reference_c − Σ attributions_c)²`` averaged
    over the C given columns.
    """
    if pred_logits.shape != attribution_sums.shape or pred_logits.ndim != 2:
        raise InputError(f"expected pred_logits and attribution_sums of the same shape (B, C), got "
                         f"{tuple(pred_logits.shape)} and {tuple(attribution_sums.shape)}")
    p, q = pred_logits.to(torch.float64), attribution_sums.to(torch.float64)
    if reference is not None:
        if reference.shape != pred_logits.shape:
            raise InputError(f"reference {tuple(reference.shape)} must have the shape of pred_logits "
                             f"{tuple(pred_logits.shape)}")
        q = q + reference.to(torch.float64)
    if _check_kind(task) == "regression":
        return ((p - q) ** 2).mean(-1)
    logp, logq = p.log_softmax(-1), q.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)


# -- insertion / deletion errors along the path (SPEC §5, on logits) -------------------------------
@torch.no_grad()
def _error_curve(adapter, inputs: Any, cell_scores: torch.Tensor, target: Any, steps: int, mode: str) -> torch.Tensor:
    B = cell_scores.shape[0]
    t = check_target(target, B, adapter.num_outputs, adapter.device)
    valid = adapter.valid_cells(inputs).to(cell_scores.device)
    top = path_masks(cell_scores, valid, steps, mode="insertion")[:, 0]  # (B, S, N): the subset S_k
    ends = torch.stack([valid, torch.zeros_like(valid)], 1)  # full input, empty input
    keep = top if mode == "insertion" else valid[:, None, :] & ~top
    logits = masked_outputs(adapter, inputs, torch.cat([keep, ends], 1))
    f = logits.gather(-1, t.view(B, 1, 1).expand(B, logits.shape[1], 1)).squeeze(-1).double()  # (B, S+2)
    f_sub, f_full, f_empty = f[:, :-2], f[:, -2], f[:, -1]
    alpha = (cell_scores.double()[:, None, :] * top.double()).sum(-1)  # Σ_{i ∈ S_k} α_i
    if mode == "insertion":
        return (f_sub - f_empty[:, None] - alpha).abs()
    return (f_full[:, None] - f_sub - alpha).abs()


def insertion_error(adapter, inputs: Any, cell_scores: torch.Tensor, target: Any, steps: int = 10) -> torch.Tensor:
    """``(B, S)``: InsErr(α, S_k) = |f_t(x_{S_k}) − f_t(0) − Σ_{i∈S_k} α_i| on the insertion path.

    S_k is the set of the top ``floor(k·n_valid)`` cells (ties by cell index); f_t the
    backbone's output (logit) for ``target``; α the cell scores. Zero for every k when the
    attribution is exact for the model (e.g. Gradient×Input on a linear model). SPEC §5 sums this
    over all subsets (see :mod:`sumofparts.theory`); here it is evaluated on the S nested subsets
    the curves visit.
    """
    return _error_curve(adapter, inputs, cell_scores, target, steps, "insertion")


def deletion_error(adapter, inputs: Any, cell_scores: torch.Tensor, target: Any, steps: int = 10) -> torch.Tensor:
    """``(B, S)``: DelErr(α, S_k) = |f_t(x) − f_t(x_{∖S_k}) − Σ_{i∈S_k} α_i|."""
    return _error_curve(adapter, inputs, cell_scores, target, steps, "deletion")
