"""One batch of the evaluation: every method's per-item numbers (what a shard holds).

:func:`evaluate_batch` returns, for each plan entry, a dict of per-item tensors (float64 on the
CPU, first dimension B), plus the seconds and the forward passes each method spent. Names:

* accuracy: ``error (B,)`` (classification) or ``sq_error (B, T)`` (regression, per target),
  expected over the R tie-break orders for the "-F" rows; ``purity``, ``iou``, ``purity_asc``;
* faithfulness: ``fidelity (B,)``; ``ins``, ``del (B, S)``, ``full``, ``empty (B,)`` as in
  :class:`~sumofparts.metrics.PathCurves`; ``del_abs``, ``empty_abs`` (SOP's re-made groups with
  |c|); ``constant``, ``nonfinite_map (B,)`` 0/1; ``sparsity (B, S)`` (error or squared error of
  the prediction from the top-k cells); ``infidelity``, ``max_sensitivity (B,)`` with robustness.

The batch-shared entry ``"_batch"`` holds ``items (B,)`` (global indices) and ``y`` (the labels
or targets); ``"backbone"`` the backbone's own accuracy.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import metrics as M
from ..ops import cell_counts, top_cells
from .passes import PassCache, count_passes
from .plan import PlanEntry

__all__ = ["EvalSettings", "Batch", "evaluate_batch"]


@dataclass
class EvalSettings:
    """What every batch is evaluated with (also the fingerprint of a sharded run)."""

    kind: str
    steps: int = 10
    fraction: float = 0.2
    tie_samples: int = 1
    seed: int = 0
    regression_target: int = 0
    fidelity_max_classes: int = 20
    robustness: bool = False
    infidelity_samples: int = 8
    sensitivity_samples: int = 4
    sensitivity_radius: float = 0.02


@dataclass
class Batch:
    """A batch of consecutive test items ``start .. start+B-1``."""

    index: int
    start: int
    x: Any
    y: torch.Tensor
    foreground: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.y.shape[0])

    @property
    def items(self) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.size)


@dataclass
class BatchResult:
    """What :func:`evaluate_batch` returns: ``values[key][name]`` per-item tensors, seconds and passes."""

    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # key -> [wall, cpu]
    passes: dict[str, float] = field(default_factory=dict)  # key -> forward passes per item (first batch only)
    dedupe: list[int] = field(default_factory=lambda: [0, 0])  # group rows [requested, computed]


def _cpu(v: torch.Tensor) -> torch.Tensor:
    return v.detach().to("cpu", torch.float64)


class _BatchContext:
    """What the roles of one batch share: inputs, targets, tie orders, the backbone's end points."""

    def __init__(self, sop, plan: dict[str, PlanEntry], batch: Batch, settings: EvalSettings, cache: PassCache,
                 measure_passes: bool = False):
        self.cache = cache
        self.sop, self.plan, self.batch, self.s = sop, plan, batch, settings
        self.measure_passes = measure_passes
        self.passes: dict[str, float] = {}
        self.adapter = sop.backbone
        self.kind = settings.kind
        x = batch.x
        self.valid = self.adapter.valid_cells(x)
        B, N = self.valid.shape
        self.keys = M.tie_keys(batch.items, N, settings.tie_samples, settings.seed)  # (B, R, N)
        ends = torch.stack([self.valid, torch.zeros_like(self.valid)], 1)
        out = M.masked_outputs(self.adapter, x, ends)
        self.full, self.empty = out[:, 0], out[:, 1]  # (B, C): the backbone on x and on ∅
        fr = M.fractions(settings.steps)
        self.tau_step = next((i for i, k in enumerate(fr) if abs(k - settings.fraction) < 1e-9), None)
        self.sop_out: Any = None  # the SOPOutput of the batch, once SOP's row has run
        self.C = self.full.shape[1]

    # -- shared helpers ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def explaining(self, entry: PlanEntry):
        """Count the rows the explanation sends to the backbone (or its own model) on a measured batch."""
        if not self.measure_passes:
            yield
            return
        modules, combine = _explainer_modules(self.sop, entry)
        with self.cache.bypassed(), count_passes(*modules) as counts:
            yield
        self.passes[entry.key] = (sum(counts) if combine == "sum" else max(counts)) / self.batch.size

    def target_of(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return torch.full((logits.shape[0],), int(self.s.regression_target), dtype=torch.long,
                              device=logits.device)
        return logits.argmax(-1)

    def accuracy(self, pred: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pred (B, C)`` or ``(B, R, C)`` (expected over the R orders) -> error / per-target squared error."""
        y = self.batch.y
        if pred.ndim == 2:
            pred = pred[:, None]
        if self.kind == "classification":
            return {"error": _cpu((pred.argmax(-1) != y.view(-1, 1)).double().mean(1))}
        t = y.to(torch.float64).reshape(y.shape[0], 1, -1)
        return {"sq_error": _cpu(((pred.double() - t) ** 2).mean(1))}

    def sparsity(self, ins_outputs: torch.Tensor) -> torch.Tensor:
        """``(B, R, S, C)`` -> ``(B, S)``: error (or squared error averaged over targets) at each k."""
        y = self.batch.y
        if self.kind == "classification":
            return _cpu((ins_outputs.argmax(-1) != y.view(-1, 1, 1)).double().mean(1))
        t = y.to(torch.float64).reshape(y.shape[0], 1, 1, -1)
        return _cpu(((ins_outputs.double() - t) ** 2).mean(-1).mean(1))

    def region_purity(self, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """``masks (B, R, N)``: coverage and IoU of the region, averaged over the R orders."""
        fg = self.batch.foreground
        if fg is None:
            return {}
        B, R, N = masks.shape
        up = self.adapter.masks_to_input(masks, self.batch.x)  # (B, R, H, W)
        fgr = fg[:, None].expand(B, R, *fg.shape[1:])
        pur = M.purity(up.reshape(B * R, *up.shape[2:]), fgr.reshape(B * R, *fg.shape[1:])).reshape(B, R)
        iou = M.iou(up.reshape(B * R, *up.shape[2:]), fgr.reshape(B * R, *fg.shape[1:])).reshape(B, R)
        return {"purity": _cpu(pur.mean(1)), "iou": _cpu(iou.mean(1))}

    def grouped_purity(self, masks: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        fg = self.batch.foreground
        if fg is None:
            return {}
        up = self.adapter.masks_to_input(masks, self.batch.x)
        res = M.grouped_purity(up, scores, fg, self.s.fraction)
        out = {"purity": _cpu(res["purity"]), "iou": _cpu(res["iou"])}
        if masks.shape[1] > 1:
            out["purity_asc"] = _cpu(M.grouped_purity(up, scores, fg, self.s.fraction, descending=False)["purity"])
        return out

    def curves(self, pc: M.PathCurves, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}ins": _cpu(pc.insertion), f"{prefix}del": _cpu(pc.deletion),
                f"{prefix}full": _cpu(pc.full), f"{prefix}empty": _cpu(pc.empty)}

    def map_flags(self, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"constant": _cpu(M.constant_maps(cells, self.valid).double()),
                "nonfinite_map": _cpu(M.nonfinite_maps(cells, self.valid).double())}

    def fidelity(self, pred: torch.Tensor, reference: torch.Tensor | None, sums_for: Any,
                 target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``sums_for(c) -> (B,)`` the attributions for output c summed over cells; classification uses
        every class (KL), regression the explained output only."""
        if reference is None:
            return {}
        if self.kind == "regression":
            t = target.view(-1, 1)
            sums = sums_for(target).view(-1, 1)
            return {"fidelity": _cpu(M.fidelity(pred.gather(1, t), sums, reference=reference.gather(1, t),
                                                task="regression"))}
        if self.s.fidelity_max_classes < self.C:
            return {}
        same = bool((target == target[0]).all())
        cols = []
        for c in range(self.C):
            t_c = torch.full_like(target, c)
            cols.append(sums_for(t_c))
        sums = torch.stack(cols, -1)
        # the attribution computed for each input's own target goes in its column (as used for the curves)
        if not same:
            sums[torch.arange(sums.shape[0]), target] = sums_for(target).to(sums.dtype)
        return {"fidelity": _cpu(M.fidelity(pred, sums, reference=reference, task="classification"))}

    def robustness(self, method, forward, target: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.batch.x
        if not self.s.robustness or not isinstance(x, torch.Tensor):
            return {}
        attr = method.attribute(x, target).detach()
        ids = self.adapter.cell_index_map(x)
        removals = M.subset_removals(ids, self.valid.shape[1], self.s.infidelity_samples,
                                     items=self.batch.items.tolist(), seed=self.s.seed)
        infid = M.infidelity(forward, x, attr, target, removals=removals,
                             multiply_by_inputs=bool(method.multiplies_by_inputs), normalize=True)
        sens = M.max_sensitivity(lambda inp, target: method.attribute(inp, target), x, target,
                                 radius=self.s.sensitivity_radius, n_perturb_samples=self.s.sensitivity_samples,
                                 seed=self.s.seed, items=self.batch.items.tolist())
        return {"infidelity": _cpu(infid), "max_sensitivity": _cpu(sens)}


# -- the roles ----------------------------------------------------------------------------------------
def _sop(ctx: _BatchContext, entry: PlanEntry) -> dict[str, torch.Tensor]:
    sop, x = ctx.sop, ctx.batch.x
    with torch.no_grad(), ctx.explaining(entry):
        out = sop(x, validate=False)
    ctx.sop_out = out
    t = ctx.target_of(out.logits)
    vals = ctx.accuracy(out.logits)
    weights = out.group_weights.gather(2, t.view(-1, 1, 1).expand(-1, out.num_groups, 1))[..., 0]
    vals.update(ctx.grouped_purity(out.masks, weights))
    base = out.base_value.to(out.logits).expand_as(out.logits)
    sums = out.group_attributions.sum(1)  # (B, C)
    vals.update(ctx.fidelity(out.logits, base, lambda c: sums.gather(1, c.view(-1, 1))[:, 0], t))
    curves = M.sop_curves(sop, x, ctx.s.steps, target=t, output=out)
    vals.update(ctx.curves(M.sop_path_curves(curves, ctx.kind)))
    abs_pc = M.sop_path_curves(curves, ctx.kind, abs_scale=True)
    vals.update({"del_abs": _cpu(abs_pc.deletion), "empty_abs": _cpu(abs_pc.empty)})
    vals["sparsity"] = ctx.sparsity(curves.insertion_logits[:, None])
    return vals


def _sop_cells(ctx: _BatchContext, entry: PlanEntry) -> dict[str, torch.Tensor]:
    sop, x, out = ctx.sop, ctx.batch.x, ctx.sop_out
    if "sop" in ctx.passes:
        ctx.passes[entry.key] = ctx.passes["sop"]  # the same explanation
    t = ctx.target_of(out.logits)
    attr = out.group_attributions.gather(2, t.view(-1, 1, 1).expand(-1, out.num_groups, 1))[..., 0]  # (B, G)
    cells = torch.einsum("bg,bgn->bn", attr, out.masks.to(attr.dtype))  # SOP's per-cell map for t

    def model(inputs):
        """SOP on masked inputs; an input with no cell left to group (text with every token masked)
        has no groups, and SOP's prediction from no groups is its base value b."""
        with torch.no_grad():
            left = ctx.adapter.valid_cells(inputs).any(-1)
            logits = torch.empty(left.shape[0], ctx.C, device=ctx.full.device)
            logits[~left] = sop.base_value.to(logits)
            if bool(left.any()):
                logits[left] = sop(ctx.adapter.select(inputs, torch.nonzero(left).flatten()), validate=False).logits
            return logits

    empty = M.masked_outputs(ctx.adapter, x, torch.zeros_like(ctx.valid)[:, None], model=model)[:, 0]
    pc = M.path_curves(ctx.adapter, x, cells, ctx.s.steps, target=t, kind=ctx.kind, keys=ctx.keys, model=model,
                       full=out.logits, empty=empty)
    vals = ctx.curves(pc)
    vals.update(ctx.map_flags(cells))
    base = out.base_value.to(out.logits).expand_as(out.logits)
    sums = out.group_attributions.sum(1)
    vals.update(ctx.fidelity(out.logits, base, lambda c: sums.gather(1, c.view(-1, 1))[:, 0], t))
    vals["sparsity"] = ctx.sparsity(pc.insertion_outputs)
    if ctx.s.robustness:
        from ..attribution import SOPMethod

        vals.update(ctx.robustness(SOPMethod(model=sop), model, t))
    return vals


def _tau_region(ctx: _BatchContext, cells: torch.Tensor, full: torch.Tensor, empty: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
    """``(B, R, N)``: the top ``max(1, floor(τ·n_valid))`` cells by (oriented) score in each tie order."""
    oriented = M.orient_scores(cells, M.target_values(full, t, "regression"), M.target_values(empty, t, "regression"),
                               ctx.kind)
    counts = cell_counts(ctx.valid, ctx.s.fraction, at_least_one=True)
    keys = ctx.keys.to(cells.device)
    return torch.stack([top_cells(oriented, ctx.valid, counts, keys[:, r]) for r in range(keys.shape[1])], 1)


def _posthoc(ctx: _BatchContext, entry: PlanEntry) -> dict[str, torch.Tensor]:
    method, x = entry.method, ctx.batch.x
    t = ctx.target_of(ctx.full)
    with ctx.explaining(entry):
        cells = method.attribute_cells(x, t).detach()
    vals = ctx.map_flags(cells)
    vals.update(ctx.fidelity(ctx.full, method.completeness_reference(ctx.empty),
                             lambda c: cells.sum(-1) if torch.equal(c, t) else
                             method.attribute_cells(x, c).detach().sum(-1), t))
    pc = M.path_curves(ctx.adapter, x, cells, ctx.s.steps, target=t, kind=ctx.kind, keys=ctx.keys,
                       full=ctx.full, empty=ctx.empty)
    vals.update(ctx.curves(pc))
    vals["sparsity"] = ctx.sparsity(pc.insertion_outputs)
    if entry.accuracy_row:  # its "-F" form: the backbone on the top τ of the cells, in every tie order
        region = _tau_region(ctx, cells, ctx.full, ctx.empty, t)  # (B, R, N)
        if ctx.tau_step is not None:
            pred = pc.insertion_outputs[:, :, ctx.tau_step]  # the same masked inputs: (B, R, C)
        else:
            pred = M.masked_outputs(ctx.adapter, x, region)
        vals.update(ctx.accuracy(pred))
        vals.update(ctx.region_purity(region))
    vals.update(ctx.robustness(method, ctx.adapter, t))
    return vals


def _grouped(ctx: _BatchContext, entry: PlanEntry) -> dict[str, torch.Tensor]:
    method, x = entry.method, ctx.batch.x
    t = ctx.target_of(ctx.full)
    with ctx.explaining(entry):
        res = method.explain_groups(x, t)
    vals = ctx.accuracy(res.prediction)
    vals.update(ctx.grouped_purity(res.masks, res.scores))
    if entry.faithfulness_row is None:
        return vals
    vals.update(ctx.fidelity(res.prediction, method.completeness_reference(ctx.empty),
                             lambda c: res.scores.sum(1) if torch.equal(c, t) else
                             method.explain_groups(x, c).scores.sum(1), t))
    cells = method.cell_ranking(x, t).detach()
    vals.update(ctx.map_flags(cells))
    pc = M.path_curves(ctx.adapter, x, cells, ctx.s.steps, target=t, kind=ctx.kind, keys=ctx.keys,
                       full=ctx.full, empty=ctx.empty)
    vals.update(ctx.curves(pc))
    vals["sparsity"] = ctx.sparsity(pc.insertion_outputs)
    vals.update(ctx.robustness(method, ctx.adapter, t))
    return vals


def _own(ctx: _BatchContext, entry: PlanEntry) -> dict[str, torch.Tensor]:
    method, x = entry.method, ctx.batch.x
    own = method.model

    def model(inputs):
        with torch.no_grad():
            return own(inputs)

    ends = M.masked_outputs(ctx.adapter, x, torch.stack([ctx.valid, torch.zeros_like(ctx.valid)], 1), model=model)
    full, empty = ends[:, 0], ends[:, 1]
    t = ctx.target_of(full)
    vals = ctx.accuracy(full)
    with ctx.explaining(entry):
        cells = method.attribute_cells(x, t).detach()
    vals.update(ctx.map_flags(cells))
    vals.update(ctx.region_purity(_tau_region(ctx, cells, full, empty, t)))
    vals.update(ctx.fidelity(full, method.completeness_reference(empty),
                             lambda c: cells.sum(-1) if torch.equal(c, t) else
                             method.attribute_cells(x, c).detach().sum(-1), t))
    pc = M.path_curves(ctx.adapter, x, cells, ctx.s.steps, target=t, kind=ctx.kind, keys=ctx.keys, model=model,
                       full=full, empty=empty)
    vals.update(ctx.curves(pc))
    vals["sparsity"] = ctx.sparsity(pc.insertion_outputs)
    vals.update(ctx.robustness(method, model, t))
    return vals


ROLES = {"sop": _sop, "sop-cells": _sop_cells, "posthoc": _posthoc, "grouped": _grouped, "own": _own}


def _explainer_modules(sop, entry: PlanEntry) -> tuple[list, str]:
    """The modules whose input rows count as the method's forward passes, and how to combine them:
    ``"sum"`` (the backbone, plus SOP's encoder copy) or ``"max"`` (a model of the method's own:
    the most rows any of its modules saw, e.g. BagNet's patch embedding)."""
    if entry.role in ("sop", "sop-cells"):
        return [sop.backbone.model, sop.generator.encoder], "sum"
    if entry.role == "own":
        model = entry.method.model
        return [model, *model.modules()], "max"
    return [sop.backbone.model], "sum"


def evaluate_batch(sop, plan: dict[str, PlanEntry], batch: Batch, settings: EvalSettings, *,
                   measure_passes: bool = False, progress: Any = None) -> BatchResult:
    """Every plan entry on one batch, the backbone passes shared through a :class:`PassCache`.

    ``measure_passes``: also count the forward passes per item each explanation sends to the
    backbone (SOP: and to its encoder copy; BagNet: to its own model) while it is computed. ``progress(key)``: called
    before each entry (e.g. to name it on a progress bar).
    """
    result = BatchResult()
    cache = PassCache(sop.backbone)
    with cache.routed():
        w0, c0 = time.perf_counter(), time.process_time()
        ctx = _BatchContext(sop, plan, batch, settings, cache, measure_passes)
        result.values["_batch"] = {"items": batch.items.to(torch.float64), "y": _cpu(batch.y.reshape(batch.size, -1))}
        result.values["backbone"] = ctx.accuracy(ctx.full)
        result.seconds["_shared"] = [time.perf_counter() - w0, time.process_time() - c0]
        for key, entry in plan.items():
            if progress is not None:
                progress(key)
            w0, c0 = time.perf_counter(), time.process_time()
            result.values[key] = ROLES[entry.role](ctx, entry)
            result.seconds[key] = [time.perf_counter() - w0, time.process_time() - c0]
    result.dedupe = [cache.requested, cache.computed]
    result.passes = dict(ctx.passes)
    for vals in result.values.values():
        for name, v in vals.items():
            if not isinstance(v, torch.Tensor) or v.shape[0] != batch.size:
                raise RuntimeError(f"internal: {name} has shape {tuple(getattr(v, 'shape', ()))}, expected "
                                   f"({batch.size}, ...)")
    return result

