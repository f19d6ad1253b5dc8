"""The paper's two tables for a task: accuracy/purity and faithfulness (``sop evaluate``).

>>> tables = evaluate_task("synthetic", methods=["sop", "gradcam", "lime", "fresh"], n=100,
...                        out_dir="sop-runs/synthetic/evaluation")
>>> print(tables.markdown())

Every method runs on the first ``n`` test items, in batches. Rows:

* **accuracy / purity** (SPEC §6, main table): the backbone; SOP; every grouped method
  (FRESH, BagNet, "-F" conversions) with its own prediction; and for each post-hoc method its
  "-F" conversion (a post-hoc attribution makes no prediction of its own, so its error is
  that of the "-F" version: the backbone on the top 20% of cells). Columns: error (or MSE),
  purity (coverage |m∩f|/|f|, the authors' number), true IoU, each with a bootstrap
  standard deviation, and for grouped models the authors' ascending-order purity.
* **faithfulness** (SPEC §6, ImageNet table): SOP, FRESH/BagNet and every post-hoc method.
  Columns: fidelity (KL), normalised insertion and deletion AUCs, and the raw AUCs.

Cells that do not apply are "N/A" and the reason is listed under the table. The results
go to ``out_dir`` as ``evaluation.md``, ``evaluation_accuracy.csv``,
``evaluation_faithfulness.csv`` and ``evaluation.json`` (with the seed, the command, the
versions, the mean curves and the sparsity curves), each written atomically.
"""
from __future__ import annotations

import csv
import io
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from . import metrics as M
from .errors import ConfigError, InputError, InputTypeError, MissingFileError
from .io import atomic_write_json, atomic_write_text
from .model import SumOfParts
from .tasks import TaskData, default_cache_dir, get_task
from .training import iterate_batches

__all__ = ["EvalTables", "evaluate_task", "default_methods", "resolve_methods", "ACCURACY_COLUMNS",
           "FAITHFULNESS_COLUMNS"]

#: the methods ``sop evaluate`` runs when none are named: fast ones from each family
DEFAULT_METHODS = {
    "image": ["sop", "gradxinput", "intgrad", "gradcam", "lime", "kernelshap", "rise", "fresh", "bagnet"],
    "text": ["sop", "gradxinput", "intgrad", "lime", "kernelshap", "rise", "fresh"],
}

ACCURACY_COLUMNS = ["method", "{metric}", "{metric}_std", "purity", "purity_std", "iou", "iou_std",
                    "purity_authors_order", "n", "source"]
FAITHFULNESS_COLUMNS = ["method", "fidelity", "fidelity_std", "insertion", "insertion_std", "deletion",
                        "deletion_std", "insertion_raw", "deletion_raw", "n"]


@dataclass
class EvalTables:
    """The two tables of a task and everything needed to reproduce them.

    Attributes:
        task: task name.
        metric: ``"error"`` or ``"mse"``.
        accuracy: rows (dicts) of the accuracy/purity table.
        faithfulness: rows of the faithfulness table.
        notes: why each "N/A" cell is empty (``"method: column: reason"``).
        curves: per method, the mean insertion/deletion curves and the sparsity curve.
        meta: seed, command, n, versions, timings.
        paths: the files written (empty if no ``out_dir``).
    """

    task: str
    metric: str
    accuracy: list[dict[str, Any]]
    faithfulness: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def accuracy_columns(self) -> list[str]:
        return [c.format(metric=self.metric) for c in ACCURACY_COLUMNS]

    @property
    def faithfulness_columns(self) -> list[str]:
        return list(FAITHFULNESS_COLUMNS)

    def row(self, table: str, method: str) -> dict[str, Any]:
        rows = self.accuracy if table == "accuracy" else self.faithfulness
        for r in rows:
            if r["method"] == method:
                return r
        raise KeyError(f"no row {method!r} in the {table} table; rows: {[r['method'] for r in rows]}")

    def markdown(self) -> str:
        m = self.metric
        acc = _md_table(self.accuracy, [("method", None), (m, f"{m}_std"), ("purity", "purity_std"),
                                        ("iou", "iou_std"), ("purity_authors_order", None), ("n", None)],
                        {m: f"{'MSE' if m == 'mse' else 'error'} ↓", "purity": "purity (coverage) ↑",
                         "iou": "IoU ↑", "purity_authors_order": "purity, authors' ascending order"})
        faith = _md_table(self.faithfulness, [("method", None), ("fidelity", "fidelity_std"),
                                              ("insertion", "insertion_std"), ("deletion", "deletion_std"),
                                              ("insertion_raw", None), ("deletion_raw", None), ("n", None)],
                          {"fidelity": "fidelity ↓", "insertion": "insertion ↑", "deletion": "deletion ↓",
                           "insertion_raw": "insertion (raw AUC)", "deletion_raw": "deletion (raw AUC)"})
        meta = self.meta
        lines = [f"# {self.task}: evaluation", "",
                 f"First {meta.get('n')} test items; seed {meta.get('seed')}; {meta.get('steps')} insertion/deletion "
                 f"steps; purity region {meta.get('fraction')} of the input; ± is a bootstrap standard deviation "
                 f"({meta.get('n_boot')} resamples).", "",
                 "## Accuracy and purity", "", acc, "",
                 "## Faithfulness", "", faith, ""]
        if self.notes:
            lines += ["## N/A cells", ""] + [f"* {n}" for n in self.notes] + [""]
        lines += [f"Command: `{meta.get('command')}`  ",
                  f"Versions: sumofparts {meta.get('versions', {}).get('sumofparts')}, torch "
                  f"{meta.get('versions', {}).get('torch')}, captum {meta.get('versions', {}).get('captum')}, "
                  f"python {meta.get('versions', {}).get('python')}.  ",
                  f"Time: {meta.get('seconds', 0):.1f} s.", ""]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "N/A"
    if isinstance(v, float):
        return "N/A" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _md_table(rows: list[dict[str, Any]], cols: list[tuple[str, str | None]], titles: dict[str, str]) -> str:
    head = "| " + " | ".join(titles.get(c, c) for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = []
    for r in rows:
        cells = []
        for c, s in cols:
            v = r.get(c)
            text = _fmt(v)
            if s is not None and text != "N/A" and r.get(s) is not None and not math.isnan(r[s]):
                text += f" ± {r[s]:.3f}"
            cells.append(text)
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None or (isinstance(r.get(c), float) and math.isnan(r[c]))
                             else r.get(c)) for c in columns})
    return buf.getvalue()


def _clean(v: Any) -> Any:
    """NaN -> None for JSON."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


# -- which methods -------------------------------------------------------------------------------
def _family(adapter) -> str:
    return "image" if adapter.cell_grid is not None else "text"


def default_methods(adapter) -> list[str]:
    """The fast default set for the adapter's family, restricted to what is implemented."""
    avail = _available()
    return [m for m in DEFAULT_METHODS[_family(adapter)] if m == "sop" or m in avail]


def _available() -> list[str]:
    try:
        from .attribution import available_methods
    except ImportError:
        return []
    return list(available_methods())


def resolve_methods(methods: Sequence[str] | None, adapter) -> list[str]:
    """``None`` -> :func:`default_methods`; ``["all"]`` -> every method that is not an "-F" conversion
    (each post-hoc method brings its "-F" row to the accuracy table anyway) plus SOP."""
    if methods is None or len(methods) == 0:
        return default_methods(adapter)
    names = [m.lower() for m in methods]
    if "all" in names:
        rest = [m for m in _available() if not m.endswith("-f") and m != "sop"]
        return ["sop"] + rest
    seen: list[str] = []
    for m in names:
        if m not in seen:
            seen.append(m)
    return seen


# -- loading -------------------------------------------------------------------------------------
def _load(task: str | tuple[SumOfParts, TaskData], checkpoint: str | Path | None, size: str, seed: int,
          cache_dir: Path | None, progress: bool) -> tuple[str, SumOfParts, TaskData]:
    if isinstance(task, tuple):
        sop, data = task
        if not isinstance(sop, SumOfParts) or not isinstance(data, TaskData):
            raise InputTypeError(f"expected task as a name or a (SumOfParts, TaskData) pair, got "
                            f"({type(sop).__name__}, {type(data).__name__})")
        return data.name, sop, data
    if not isinstance(task, str):
        raise InputTypeError(f"expected task as a name or a (SumOfParts, TaskData) pair, got {type(task).__name__}")
    spec = get_task(task)
    ckpt = Path(checkpoint) if checkpoint is not None else Path("sop-runs") / task / "sop" / "best"
    if not ckpt.is_dir():
        raise MissingFileError(f"no SOP checkpoint at {ckpt}: train one first with `sop run {task}` "
                                "(or pass --checkpoint DIR)")
    sop = SumOfParts.from_pretrained(ckpt)
    data = spec.load_data(Path(cache_dir or default_cache_dir()), size=size, seed=seed, progress=progress)
    return task, sop, data


# -- the evaluation ----------------------------------------------------------------------------
class _Accumulator:
    """Per-example values of one row, concatenated over batches."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, name: str, v: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(v.detach().to(torch.float64).cpu())

    def get(self, name: str) -> np.ndarray | None:
        if name not in self.values:
            return None
        return torch.cat(self.values[name]).numpy()


def _mean(v: np.ndarray | None) -> float:
    if v is None:
        return float("nan")
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _stat(row: dict[str, Any], acc: _Accumulator, name: str, key: str, n_boot: int, seed: int) -> None:
    v = acc.get(name)
    row[key] = _mean(v)
    row[key + "_std"] = M.bootstrap_std(v, n_boot=n_boot, seed=seed) if v is not None else float("nan")


def evaluate_task(task: str | tuple[SumOfParts, TaskData], methods: Sequence[str] | None = None, n: int = 100,
                  seed: int = 0, out_dir: str | Path | None = None, progress: bool = True, *,
                  checkpoint: str | Path | None = None, size: str = "default", cache_dir: Path | None = None,
                  batch_size: int = 16, steps: int = 10, fraction: float = 0.2, n_boot: int = 1000,
                  regression_target: int = 0, fidelity_max_classes: int = 20, robustness: bool = False,
                  method_options: dict[str, dict[str, Any]] | None = None,
                  command: str | None = None) -> EvalTables:
    """Run every method on the first ``n`` test items and compute the paper's two tables.

    Args:
        task: a task name (SOP is loaded from ``checkpoint``, default
            ``sop-runs/TASK/sop/best``; the data from the task with ``size`` and ``seed``), or
            a ``(sop, data)`` pair.
        methods: names for :func:`sumofparts.attribution.get_method` plus ``"sop"``;
            ``None``: :func:`default_methods`; ``["all"]``: every method.
        n: how many test items (the first n).
        seed: seeds the methods' sampling and the bootstrap.
        out_dir: where to write the Markdown, CSV and JSON files (``None``: write nothing).
        progress: show a progress bar naming the method and the examples in work.
        steps: insertion/deletion steps (k = 1/steps … 1).
        fraction: share of the input the purity region covers (0.2 in the paper).
        regression_target: the output followed by the curves and explained, for regression.
        fidelity_max_classes: fidelity needs one attribution per class; above this many
            classes it is left N/A for post-hoc methods.
        robustness: also compute infidelity and max-sensitivity of the post-hoc methods
            (image tasks; on the first batch only).
        method_options: extra keyword options per method name for ``get_method``.
        command: the command line to record (default: ``sys.argv``).
    """
    t0 = time.time()
    torch.manual_seed(seed)
    task_name, sop, data = _load(task, checkpoint, size, seed, cache_dir, progress)
    sop.eval()
    adapter = sop.backbone
    kind = data.kind
    metric = "mse" if kind == "regression" else "error"
    n = min(int(n), len(data.test))
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    names = resolve_methods(methods, adapter)
    options = {k.lower(): dict(v) for k, v in (method_options or {}).items()}
    if "bagnet" in names and "model" not in options.get("bagnet", {}):
        # BagNet is a model of its own: trained here on the task's training split unless given
        options["bagnet"] = {"train_data": data.train, "progress": progress, **options.get("bagnet", {})}
    notes: list[str] = []
    plan = _plan(names, adapter, options, seed, notes, fraction)
    foreground = data.test_foreground[:n] if data.test_foreground is not None else None
    if foreground is None:
        notes.append("all rows: purity, IoU: the task has no ground-truth foreground")
    batches = list(iterate_batches(Subset(data.test, range(n)), batch_size, seed=None))
    C = adapter.num_outputs

    accs = {key: _Accumulator() for key in plan}
    curve_sums: dict[str, dict[str, Any]] = {}
    total = len(plan) * len(batches)
    bar = tqdm(total=total, desc="evaluate", disable=not progress, dynamic_ncols=True)
    robust: dict[str, dict[str, float]] = {}
    method_seconds: dict[str, float] = {key: 0.0 for key in plan}
    try:
        for key, spec in plan.items():
            start = 0
            for b, (x, y) in batches:
                stop = start + len(y)
                bar.set_description(f"evaluate {key}: examples {start + 1}-{stop}/{n}")
                fg = foreground[start:stop] if foreground is not None else None
                t_batch = time.perf_counter()
                _evaluate_batch(key, spec, sop, x, y, fg, accs[key], curve_sums, steps=steps, fraction=fraction,
                                kind=kind, regression_target=regression_target,
                                fidelity_classes=C if C <= fidelity_max_classes and "fidelity" not in
                                _inapplicable(spec) else 0)
                method_seconds[key] += time.perf_counter() - t_batch
                if robustness and b == 0 and spec["role"] == "posthoc" and isinstance(x, torch.Tensor):
                    robust[key] = _robustness(spec["method"], adapter, x, seed)
                start = stop
                bar.update(1)
    finally:
        bar.close()

    # -- the backbone row --------------------------------------------------------------------
    back = _Accumulator()
    with torch.no_grad():
        for _, (x, y) in batches:
            logits = adapter(x)
            back.add(metric, M.per_example_error(logits, y) if kind == "classification"
                     else M.per_example_squared_error(logits, y))
    accuracy_rows: list[dict[str, Any]] = []
    row = {"method": "backbone", "n": n, "source": type(adapter.model).__name__, "purity": None, "iou": None,
           "purity_authors_order": None}
    _stat(row, back, metric, metric, n_boot, seed)
    accuracy_rows.append(row)
    notes.append("backbone: purity, IoU: the backbone alone makes no explanation")

    faithfulness_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for key, spec in plan.items():
        a = accs[key]
        if spec["accuracy_row"]:
            r = {"method": spec["accuracy_row"], "n": n, "source": spec["source"]}
            _stat(r, a, metric, metric, n_boot, seed)
            if foreground is not None and a.get("purity") is not None:
                _stat(r, a, "purity", "purity", n_boot, seed)
                _stat(r, a, "iou", "iou", n_boot, seed)
                r["purity_authors_order"] = _mean(a.get("purity_asc")) if a.get("purity_asc") is not None else None
            else:
                r.update(purity=None, iou=None, purity_authors_order=None)
            if r.get("purity_authors_order") is None:
                r["purity_authors_order"] = None
            accuracy_rows.append(r)
        if spec["faithfulness_row"]:
            r = {"method": spec["faithfulness_row"], "n": n}
            if a.get("fidelity") is not None:
                _stat(r, a, "fidelity", "fidelity", n_boot, seed)
            else:
                r.update(fidelity=None, fidelity_std=None)
                notes.append(f"{spec['faithfulness_row']}: fidelity: needs one attribution per class and the task "
                             f"has {C} (> {fidelity_max_classes})")
            _stat(r, a, "insertion", "insertion", n_boot, seed)
            _stat(r, a, "deletion", "deletion", n_boot, seed)
            r["insertion_raw"] = _mean(a.get("insertion_raw"))
            r["deletion_raw"] = _mean(a.get("deletion_raw"))
            if key in robust:
                r.update(robust[key])
            if a.get("deletion_abs_scale") is not None:
                r["deletion_abs_scale"] = _mean(a.get("deletion_abs_scale"))
            faithfulness_rows.append(r)
        cs = curve_sums.get(key)
        if cs:
            curves[key] = {"fractions": M.fractions(steps),
                           "insertion": (cs["insertion"] / cs["count"]).tolist(),
                           "deletion": (cs["deletion"] / cs["count"]).tolist(),
                           "sparsity": M.sparsity_curve(torch.cat(cs["sparsity_logits"]),
                                                        torch.cat(cs["labels"]), M.fractions(steps), task=kind)}
    for key, spec in plan.items():
        notes.extend(spec.get("notes", []))
    _mark_inapplicable(plan, accuracy_rows, faithfulness_rows, notes, metric)

    try:
        import captum
        captum_version = captum.__version__
    except Exception:  # pragma: no cover - captum is a dependency
        captum_version = None
    from . import __version__

    tables = EvalTables(task=task_name, metric=metric, accuracy=accuracy_rows, faithfulness=faithfulness_rows,
                        notes=notes, curves=curves)
    tables.meta = {
        "task": task_name, "kind": kind, "n": n, "seed": seed, "steps": steps, "fraction": fraction,
        "n_boot": n_boot, "batch_size": batch_size, "methods": names,
        "regression_target": regression_target if kind == "regression" else None,
        "command": command or " ".join(sys.argv), "checkpoint": str(checkpoint) if checkpoint else None,
        "size": size, "sop_config": {k: v for k, v in sop.config.to_dict().items() if k != "backbone"},
        "versions": {"sumofparts": __version__, "torch": torch.__version__, "captum": captum_version,
                     "numpy": np.__version__, "python": platform.python_version()},
        "seconds": time.time() - t0,
        "seconds_per_example": {key: t / n for key, t in method_seconds.items()},
    }
    if out_dir is not None:
        _write(tables, Path(out_dir))
    return tables


def _write(tables: EvalTables, out_dir: Path) -> None:
    paths = {"markdown": out_dir / "evaluation.md", "accuracy_csv": out_dir / "evaluation_accuracy.csv",
             "faithfulness_csv": out_dir / "evaluation_faithfulness.csv", "json": out_dir / "evaluation.json"}
    extra = sorted({k for r in tables.faithfulness for k in r} - set(FAITHFULNESS_COLUMNS))
    atomic_write_text(paths["accuracy_csv"], _csv(tables.accuracy, tables.accuracy_columns))
    atomic_write_text(paths["faithfulness_csv"], _csv(tables.faithfulness, tables.faithfulness_columns + extra))
    atomic_write_json(paths["json"], _clean({
        "task": tables.task, "metric": tables.metric, "accuracy": tables.accuracy,
        "faithfulness": tables.faithfulness, "accuracy_columns": tables.accuracy_columns,
        "faithfulness_columns": tables.faithfulness_columns + extra, "notes": tables.notes,
        "curves": tables.curves, **tables.meta}))
    atomic_write_text(paths["markdown"], tables.markdown())
    tables.paths = paths


def _plan(names: list[str], adapter, options: dict[str, dict[str, Any]], seed: int,
          notes: list[str], fraction: float = 0.2) -> dict[str, dict[str, Any]]:
    """What to compute for each requested name (role, rows, the method objects)."""
    plan: dict[str, dict[str, Any]] = {}
    requested = set(names)
    get_method = None
    if any(n != "sop" for n in names):
        try:
            from .attribution import get_method
        except ImportError as exc:
            raise InputError(f"the attribution methods are not available ({exc}); evaluate with methods=['sop']")
    for name in names:
        if name == "sop":
            plan["sop"] = {"role": "sop", "accuracy_row": "SOP", "faithfulness_row": "SOP", "source": "SOP",
                           "method": None}
            continue
        try:
            method = _make(get_method, name, adapter, options.get(name, {}), seed)
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            notes.append(f"{name}: skipped: {exc}")
            continue
        if getattr(method, "grouped", False):
            conversion = name.endswith("-f")
            plan[name] = {"role": "grouped", "method": method, "source": name,
                          "accuracy_row": _label(name),
                          "faithfulness_row": None if conversion else _label(name)}
            continue
        if _own_model(method) is not None:  # self-attributing with a model of its own (BagNet)
            plan[name] = {"role": "own", "method": method, "source": name, "accuracy_row": _label(name),
                          "faithfulness_row": _label(name)}
            continue
        spec = {"role": "posthoc", "method": method, "faithfulness_row": _label(name), "accuracy_row": None,
                "source": name, "notes": []}
        f_name = f"{name}-f"
        if f_name not in requested:
            try:
                spec["conversion"] = _make(get_method, f_name, adapter, options.get(f_name, {}), seed)
                spec["accuracy_row"] = _label(f_name)
                spec["source"] = f_name
            except (ValueError, TypeError, KeyError, NotImplementedError):
                spec["conversion"] = None
                spec["accuracy_row"] = _label(f_name)
                spec["source"] = f"top {100 * fraction:g}% cells of {name} (no {f_name} registered)"
        plan[name] = spec
    return plan


def _make(get_method, name: str, adapter, opts: dict[str, Any], seed: int):
    """``get_method`` with ``seed=`` added when the method takes one (sampling methods)."""
    if "seed" not in opts:
        try:
            return get_method(name, adapter, **{**opts, "seed": seed})
        except TypeError:
            pass
    return get_method(name, adapter, **opts)


_LABELS = {"sop": "SOP", "fresh": "FRESH", "bagnet": "BagNet", "gradcam": "GradCAM", "intgrad": "IG",
           "kernelshap": "SHAP", "lime": "LIME", "rise": "RISE", "gradxinput": "Grad×Input",
           "saliency": "Saliency", "smoothgrad": "SmoothGrad", "deeplift": "DeepLIFT", "lrp": "LRP",
           "guided_backprop": "GuidedBackprop", "guided_gradcam": "GuidedGradCAM", "deconvolution": "Deconvolution",
           "feature_ablation": "FeatureAblation", "occlusion": "Occlusion", "shapley": "Shapley"}


def _label(name: str) -> str:
    if name.endswith("-f"):
        return _LABELS.get(name[:-2], name[:-2]) + "-F"
    return _LABELS.get(name, name)


def _target_of(logits: torch.Tensor, kind: str, regression_target: int) -> torch.Tensor:
    if kind == "regression":
        return torch.full((logits.shape[0],), int(regression_target), dtype=torch.long, device=logits.device)
    return logits.argmax(-1)


def _curves_add(curve_sums: dict, key: str, ins: torch.Tensor, dele: torch.Tensor, ins_logits: torch.Tensor,
                labels: torch.Tensor) -> None:
    cs = curve_sums.setdefault(key, {"insertion": 0.0, "deletion": 0.0, "count": 0, "sparsity_logits": [],
                                     "labels": []})
    cs["insertion"] = cs["insertion"] + ins.double().sum(0).cpu()
    cs["deletion"] = cs["deletion"] + dele.double().sum(0).cpu()
    cs["count"] += ins.shape[0]
    cs["sparsity_logits"].append(ins_logits.detach().cpu())
    cs["labels"].append(labels.detach().cpu())


def _evaluate_batch(key: str, spec: dict[str, Any], sop: SumOfParts, x: Any, y: torch.Tensor,
                    fg: torch.Tensor | None, acc: _Accumulator, curve_sums: dict, *, steps: int, fraction: float,
                    kind: str, regression_target: int, fidelity_classes: int) -> None:
    adapter = sop.backbone
    metric = "mse" if kind == "regression" else "error"

    def own_error(pred: torch.Tensor) -> torch.Tensor:
        return M.per_example_error(pred, y) if kind == "classification" else M.per_example_squared_error(pred, y)

    def add_purity(masks_cells: torch.Tensor, scores: torch.Tensor) -> None:
        if fg is None:
            return
        up = adapter.masks_to_input(masks_cells, x)
        res = M.grouped_purity(up, scores, fg, fraction)
        acc.add("purity", res["purity"])
        acc.add("iou", res["iou"])
        if masks_cells.shape[1] > 1:
            acc.add("purity_asc", M.grouped_purity(up, scores, fg, fraction, descending=False)["purity"])

    def add_curves(ins_logits: torch.Tensor, del_logits: torch.Tensor, target: torch.Tensor,
                   reference: torch.Tensor | None = None) -> None:
        ins = M.curve_from_logits(ins_logits, target, task=kind)
        dele = M.curve_from_logits(del_logits, target, task=kind)
        if reference is None:
            reference = ins[:, -1]  # the full input (k = 1 of the insertion path)
        acc.add("insertion", M.normalised_auc(ins, reference))
        acc.add("deletion", M.normalised_auc(dele, reference))
        acc.add("insertion_raw", M.raw_auc(ins))
        acc.add("deletion_raw", M.raw_auc(dele))
        _curves_add(curve_sums, key, ins, dele, ins_logits, y)

    if spec["role"] == "sop":
        with torch.no_grad():
            out = sop(x, validate=False)
        target = _target_of(out.logits, kind, regression_target)
        acc.add(metric, own_error(out.logits))
        weights = out.group_weights.gather(2, target.view(-1, 1, 1).expand(-1, out.num_groups, 1)).squeeze(-1)
        add_purity(out.masks, weights)
        acc.add("fidelity", M.fidelity(out.logits, out.group_attributions.sum(1), task=kind))
        curves = M.sop_curves(sop, x, steps, target=target)
        # SOP's k = 1 point is the backbone (every group is the whole input), not SOP's own
        # output: normalise by SOP's own confidence in its original prediction
        reference = M.curve_from_logits(out.logits[:, None], target, task=kind)[:, 0]
        add_curves(curves.insertion_logits, curves.deletion_logits, target, reference)
        acc.add("deletion_abs_scale", M.normalised_auc(
            M.curve_from_logits(curves.deletion_logits_abs_scale, target, task=kind), reference))
        return

    method = spec["method"]
    if spec["role"] == "own":
        # its own prediction, its own top cells, its own additive attribution, its own curves
        own = _own_model(method)
        with torch.no_grad():
            pred = own(x)
        target = _target_of(pred, kind, regression_target)
        acc.add(metric, own_error(pred))
        cells = method.attribute_cells(x, target).detach()
        keep = M.top_fraction_cells(cells, fraction, adapter.valid_cells(x))[:, None, :]
        add_purity(keep, torch.ones(keep.shape[:2]))
        if fidelity_classes:
            sums = torch.stack([cells.sum(-1) if same else method.attribute_cells(x, c).detach().sum(-1)
                                for c, same in _classes(target, fidelity_classes)], -1)
            acc.add("fidelity", M.fidelity(pred, _fix_target_column(sums, cells.sum(-1), target), task=kind))
        add_curves(M.masked_predictions(adapter, x, cells, steps, mode="insertion", model=own),
                   M.masked_predictions(adapter, x, cells, steps, mode="deletion", model=own), target)
        return

    with torch.no_grad():
        backbone_logits = adapter(x)
    target = _target_of(backbone_logits, kind, regression_target)

    if spec["role"] == "grouped":
        res = method.explain_groups(x, target)
        acc.add(metric, own_error(res.prediction))
        add_purity(res.masks, res.scores)
        if spec["faithfulness_row"] is None:
            return
        if fidelity_classes:
            sums = torch.stack([res.scores.sum(1) if c_is_target else method.explain_groups(x, c).scores.sum(1)
                                for c, c_is_target in _classes(target, fidelity_classes)], -1)
            sums = _fix_target_column(sums, res.scores.sum(1), target)
            acc.add("fidelity", M.fidelity(res.prediction, sums, task=kind))
        cells = method.attribute_cells(x, target).detach()
    else:
        cells = method.attribute_cells(x, target).detach()
        if fidelity_classes:
            sums = torch.stack([method.attribute_cells(x, c).detach().sum(-1) if not c_is_target else
                                cells.sum(-1) for c, c_is_target in _classes(target, fidelity_classes)], -1)
            sums = _fix_target_column(sums, cells.sum(-1), target)
            acc.add("fidelity", M.fidelity(backbone_logits, sums, task=kind))
        # the accuracy/purity row: the "-F" conversion of this method
        conversion = spec.get("conversion")
        if conversion is not None:
            res = conversion.explain_groups(x, target)
            acc.add(metric, own_error(res.prediction))
            add_purity(res.masks, res.scores)
        else:
            keep = M.top_fraction_cells(cells, fraction, adapter.valid_cells(x))[:, None, :]
            with torch.no_grad():
                pred, _ = adapter.forward_groups(x, keep)
            acc.add(metric, own_error(pred[:, 0]))
            add_purity(keep, torch.ones(keep.shape[:2]))
    ins_logits = M.masked_predictions(adapter, x, cells, steps, mode="insertion")
    del_logits = M.masked_predictions(adapter, x, cells, steps, mode="deletion")
    add_curves(ins_logits, del_logits, target)


def _inapplicable(spec: dict[str, Any]) -> dict[str, str]:
    """``{metric: reason}`` for the metrics that say nothing about this plan entry's method."""
    method = spec.get("method")
    return method.inapplicable_metrics() if hasattr(method, "inapplicable_metrics") else {}


def _mark_inapplicable(plan: dict[str, dict[str, Any]], accuracy_rows: list[dict[str, Any]],
                       faithfulness_rows: list[dict[str, Any]], notes: list[str], metric: str) -> None:
    """Blank the cells of metrics that do not apply to a method (e.g. a neuron method explains a unit,
    not the output) and give the method's reason under the table instead of any other note."""
    columns = {"prediction": [metric, f"{metric}_std"], "fidelity": ["fidelity", "fidelity_std"],
               "insertion": ["insertion", "insertion_std", "insertion_raw"],
               "deletion": ["deletion", "deletion_std", "deletion_raw"], "infidelity": ["infidelity"]}
    for spec in plan.values():
        reasons = _inapplicable(spec)
        for table, label in ((accuracy_rows, spec.get("accuracy_row")), (faithfulness_rows, spec.get("faithfulness_row"))):
            row = next((r for r in table if label and r["method"] == label), None)
            for what, reason in reasons.items():
                cols = [c for c in columns.get(what, []) if row is not None and c in row]
                if not cols:
                    continue
                for c in cols:
                    row[c] = None
                notes[:] = [n for n in notes if not n.startswith(f"{label}: {cols[0]}:")]
                notes.append(f"{label}: {cols[0]}: {reason}")


def _own_model(method):
    """The separate model a self-attributing baseline predicts with (BagNet), or None (the backbone)."""
    if getattr(method, "name", "") == "bagnet" and isinstance(getattr(method, "model", None), torch.nn.Module):
        return method.model
    return None


def _classes(target: torch.Tensor, C: int):
    """Each class c with a flag that is True only when c is every input's target (reuse its attribution)."""
    same = bool((target == target[0]).all())
    for c in range(C):
        yield c, same and int(target[0]) == c


def _fix_target_column(sums: torch.Tensor, target_sums: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Put the attribution computed for each input's own target into its target column."""
    sums = sums.clone()
    sums[torch.arange(sums.shape[0]), target] = target_sums.to(sums.dtype)
    return sums


def _robustness(method, adapter, x: torch.Tensor, seed: int) -> dict[str, float]:
    with torch.no_grad():
        target = adapter(x).argmax(-1)
    attr = method.attribute(x, target).detach()
    infid = M.infidelity(adapter, x, attr, target, perturbation="subset", seed=seed, n_perturb_samples=8)
    sens = M.max_sensitivity(lambda inp, target: method.attribute(inp, target), x, target,
                             n_perturb_samples=4, seed=seed)
    return {"infidelity": float(infid.mean()), "max_sensitivity": float(sens.mean())}
