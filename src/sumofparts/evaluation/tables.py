"""From every batch's per-item numbers to the two tables (Markdown, CSV, JSON).

Every number is a statistic of per-item values over the evaluated items (docs/evaluation.md
gives each formula); ``±`` is the bootstrap standard deviation of that statistic over resamples
of the items. Items whose value is NaN or infinite are left out of that number and counted in
the row's ``non-finite`` cell (and named in the notes), so ``n`` is always the number of items
evaluated and the counts say how many of them each number rests on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import metrics as M
from ..formats import csv_text
from ..io import atomic_write_json, atomic_write_text
from .plan import PlanEntry

__all__ = ["EvalTables", "build_tables", "merge_values", "write_tables"]


@dataclass
class EvalTables:
    """The two tables of a task and everything needed to reproduce them.

    Attributes:
        task: task name.
        metric: ``"error"`` or ``"mse"``.
        accuracy: rows (dicts) of the accuracy/purity table.
        faithfulness: rows of the faithfulness table.
        accuracy_columns, faithfulness_columns: the CSV columns, in order.
        notes: why cells are N/A, what was non-finite, how the protocols differ.
        curves: per faithfulness row, the mean insertion/deletion curves and the sparsity curve.
        meta: seed, command, n, settings, versions, timings, budgets.
        paths: the files written (empty if no ``out_dir``).
    """

    task: str
    metric: str
    accuracy: list[dict[str, Any]]
    faithfulness: list[dict[str, Any]]
    accuracy_columns: list[str] = field(default_factory=list)
    faithfulness_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def row(self, table: str, method: str, protocol: str | None = None) -> dict[str, Any]:
        """The row of ``method`` in ``table`` (``"accuracy"`` or ``"faithfulness"``); for SOP's two
        faithfulness rows pass ``protocol`` (a substring of it, e.g. ``"paper"`` or ``"cells"``)."""
        rows = self.accuracy if table == "accuracy" else self.faithfulness
        for r in rows:
            if r["method"] == method and (protocol is None or protocol in str(r.get("protocol", ""))):
                return r
        raise KeyError(f"no row {method!r} in the {table} table; rows: {[r['method'] for r in rows]}")

    def json_dict(self) -> dict[str, Any]:
        return _clean({"task": self.task, "metric": self.metric, "accuracy": self.accuracy,
                       "faithfulness": self.faithfulness, "accuracy_columns": self.accuracy_columns,
                       "faithfulness_columns": self.faithfulness_columns, "notes": self.notes,
                       "curves": self.curves, **self.meta})

    def markdown(self) -> str:
        meta = self.meta
        kind = meta.get("kind", "classification")
        names = meta.get("output_names") or []
        acc_cols: list[tuple[str, str | None, str]] = [("method", None, "method")]
        if self.metric == "mse":
            acc_cols.append(("mse", "mse_std", "MSE ↓ (mean over outputs)"))
            for o in names:
                acc_cols += [(f"mse_{o}", None, f"MSE {o}"), (f"r2_{o}", None, f"R² {o}")]
        else:
            acc_cols.append(("error", "error_std", "error ↓"))
        if any(r.get("purity") is not None for r in self.accuracy):
            acc_cols += [("purity", "purity_std", "purity (coverage) ↑"), ("iou", "iou_std", "IoU ↑"),
                         ("purity_authors_order", None, "purity, authors' ascending order")]
        acc_cols += [("nonfinite", None, "non-finite"), ("n", None, "n")]
        faith_cols: list[tuple[str, str | None, str]] = [
            ("method", None, "method"), ("protocol", None, "protocol"), ("passes", None, "passes / item"),
            ("fidelity", "fidelity_std", "fidelity ↓"), ("insertion", "insertion_std", "insertion ↑"),
            ("deletion", "deletion_std", "deletion ↓")]
        if kind == "regression":
            faith_cols += [("insertion_raw", None, "insertion (raw, output units)"),
                           ("deletion_raw", None, "deletion (raw, output units)"), ("gap", None, "mean |f(x) − f(∅)|")]
        else:
            faith_cols += [("insertion_raw", None, "insertion (raw AUC)"), ("deletion_raw", None, "deletion (raw AUC)"),
                           ("insertion_paper", None, "insertion (paper: ÷ curve at k=1)"),
                           ("deletion_paper", None, "deletion (paper: ÷ curve at k=1)")]
        if any("infidelity" in r for r in self.faithfulness):
            faith_cols += [("infidelity", "infidelity_std", "infidelity ↓"),
                           ("max_sensitivity", "max_sensitivity_std", "max-sensitivity ↓")]
        faith_cols += [("constant_maps", None, "constant maps"), ("nonfinite", None, "non-finite"), ("n", None, "n")]
        target = meta.get("regression_target_name")
        head = [f"# {self.task}: evaluation", "",
                f"Test items 0–{meta.get('n', 0) - 1} (n = {meta.get('n')}); seed {meta.get('seed')}; "
                f"{meta.get('steps')} insertion/deletion steps; ties in {meta.get('tie_samples')} seeded random "
                f"orders; purity region and \"-F\" keep {meta.get('fraction')} of the cells; ± is a bootstrap "
                f"standard deviation ({meta.get('n_boot')} resamples of the items)."
                + (f" Faithfulness follows output {target}." if target else ""), ""]
        if meta.get("budget"):
            head += [f"Forward-pass budget: SOP spends {meta['budget']} passes per item (G = {meta['budget'] - 1} "
                     "groups + its encoder); the sampling methods (LIME, KernelSHAP, RISE) get the same number of "
                     "samples. `passes / item` is counted while each explanation runs (gradient methods add one "
                     "backward pass per forward pass).", ""]
        lines = head + ["## Accuracy and purity", "", _md_table(self.accuracy, acc_cols), "",
                        "## Faithfulness", "", _md_table(self.faithfulness, faith_cols), ""]
        if self.notes:
            lines += ["## Notes", ""] + [f"* {n}" for n in self.notes] + [""]
        v = meta.get("versions", {})
        lines += [f"Command: `{meta.get('command')}`  ",
                  f"Versions: sumofparts {v.get('sumofparts')}, torch {v.get('torch')}, captum {v.get('captum')}, "
                  f"python {v.get('python')}.  ",
                  f"Time: {meta.get('seconds', 0):.1f} s ({meta.get('world_size', 1)} process(es)).", ""]
        return "\n".join(lines)


# -- formatting ------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "N/A"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "N/A"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.3f}"
    return str(v)


def _md_table(rows: list[dict[str, Any]], cols: list[tuple[str, str | None, str]]) -> str:
    head = "| " + " | ".join(t for _, _, t in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = []
    for r in rows:
        cells = []
        for c, s, _ in cols:
            text = _fmt(r.get(c))
            sd = r.get(s) if s else None
            if text != "N/A" and isinstance(sd, float) and not math.isnan(sd):
                text += f" ± {_fmt(sd)}"
            cells.append(text)
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def _clean(v: Any) -> Any:
    """NaN / inf -> None for JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_tables(tables: EvalTables, out_dir: Path) -> None:
    """``evaluation.md``, ``evaluation_accuracy.csv``, ``evaluation_faithfulness.csv``, ``evaluation.json``,
    each written atomically."""
    paths = {"markdown": out_dir / "evaluation.md", "accuracy_csv": out_dir / "evaluation_accuracy.csv",
             "faithfulness_csv": out_dir / "evaluation_faithfulness.csv", "json": out_dir / "evaluation.json"}
    atomic_write_text(paths["accuracy_csv"], csv_text(tables.accuracy, tables.accuracy_columns))
    atomic_write_text(paths["faithfulness_csv"], csv_text(tables.faithfulness, tables.faithfulness_columns))
    atomic_write_json(paths["json"], tables.json_dict())
    atomic_write_text(paths["markdown"], tables.markdown())
    tables.paths = paths


# -- merging and statistics --------------------------------------------------------------------------
def merge_values(results: Sequence[dict[str, dict[str, torch.Tensor]]]) -> dict[str, dict[str, np.ndarray]]:
    """Concatenate the per-item values of consecutive batches (in batch order)."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for res in results:
        for key, vals in res.items():
            for name, v in vals.items():
                out.setdefault(key, {}).setdefault(name, []).append(v.numpy())
    return {k: {n: np.concatenate(v) for n, v in d.items()} for k, d in out.items()}


class _Stats:
    """Mean ± bootstrap std of per-item values, non-finite items left out and counted."""

    def __init__(self, n_boot: int, seed: int):
        self.n_boot, self.seed = n_boot, seed

    def mean(self, row: dict[str, Any], name: str, values: np.ndarray | None, nonfinite: dict[str, int] | None
             ) -> None:
        """``nonfinite=None``: NaN means "undefined for this item" (counted elsewhere), not a failure."""
        if values is None:
            row[name], row[name + "_std"] = None, None
            return
        v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        ok = np.isfinite(v).all(1)
        if (~ok).any() and nonfinite is not None:
            nonfinite[name] = int((~ok).sum())
        row[name] = float(v[ok].mean()) if ok.any() else float("nan")
        row[name + "_std"] = M.bootstrap_std(v[ok], n_boot=self.n_boot, seed=self.seed,
                                             statistic=lambda r: float(r.mean()))

    def statistic(self, row: dict[str, Any], name: str, rows: np.ndarray, stat, nonfinite: dict[str, int],
                  with_std: bool = True) -> None:
        ok = np.isfinite(rows).all(1)
        if (~ok).any():
            nonfinite[name] = int((~ok).sum())
        row[name] = stat(rows[ok]) if ok.any() else float("nan")
        if with_std:
            row[name + "_std"] = M.bootstrap_std(rows[ok], n_boot=self.n_boot, seed=self.seed, statistic=stat)


def _nonfinite_text(counts: dict[str, int]) -> str:
    return "0" if not counts else ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def build_tables(task: str, kind: str, values: dict[str, dict[str, np.ndarray]], plan: dict[str, PlanEntry], *,
                 output_names: Sequence[str], train_mean: np.ndarray | None, steps: int, n_boot: int, seed: int,
                 notes: list[str], passes: dict[str, float], has_foreground: bool, regression_target: int,
                 empty_foreground: int = 0) -> EvalTables:
    """The accuracy and faithfulness rows, their notes and the mean curves."""
    st = _Stats(n_boot, seed)
    metric = "mse" if kind == "regression" else "error"
    y = values["_batch"]["y"]
    n = int(y.shape[0])
    notes = list(notes)
    if has_foreground and empty_foreground:
        notes.append(f"purity, IoU: undefined for the {empty_foreground} of {n} items whose foreground is empty "
                     "(left out of those two columns)")

    def accuracy_row(label: str, vals: dict[str, np.ndarray], source: str) -> dict[str, Any]:
        row: dict[str, Any] = {"method": label, "n": n, "source": source}
        nf: dict[str, int] = {}
        if kind == "regression":
            sq = vals["sq_error"]  # (n, T)
            st.mean(row, "mse", sq.mean(1), nf)
            ok = np.isfinite(sq).all(1)
            sst = ((y[ok] - y[ok].mean(0)) ** 2).sum(0)  # over the items the errors are finite for
            for j, o in enumerate(output_names):
                row[f"mse_{o}"] = float(sq[ok, j].mean()) if ok.any() else float("nan")
                row[f"r2_{o}"] = float(1.0 - sq[ok, j].sum() / sst[j]) if ok.any() and sst[j] > 0 else float("nan")
        else:
            st.mean(row, "error", vals["error"], nf)
        if has_foreground and "purity" in vals:  # NaN = an empty foreground: undefined, noted once below
            st.mean(row, "purity", vals["purity"], None)
            st.mean(row, "iou", vals["iou"], None)
            row["purity_authors_order"] = float(np.nanmean(vals["purity_asc"])) if "purity_asc" in vals else None
        else:
            row.update(purity=None, purity_std=None, iou=None, iou_std=None, purity_authors_order=None)
        row["nonfinite"] = _nonfinite_text(nf)
        if nf:
            notes.append(f"{label}: non-finite values left out: {_nonfinite_text(nf)} of {n} items")
        return row

    accuracy = [accuracy_row("backbone", values["backbone"], "the frozen backbone on the full input")]
    accuracy[0].update(purity=None, iou=None, purity_authors_order=None)
    if kind == "regression" and train_mean is not None:
        sq = (np.broadcast_to(train_mean, y.shape) - y) ** 2
        accuracy.append(accuracy_row("training mean", {"sq_error": sq},
                                     "the mean of the training targets, predicted for every item"))
    faithfulness = []
    curves: dict[str, dict[str, Any]] = {}
    for key, entry in plan.items():
        vals = values.get(key, {})
        reasons = _inapplicable(entry)
        if entry.accuracy_row:
            accuracy.append(accuracy_row(entry.accuracy_row, vals, entry.source))
            _blank(accuracy[-1], entry.accuracy_row, {k: v for k, v in reasons.items() if k == "prediction"},
                   metric, output_names, notes)
        if not entry.faithfulness_row:
            continue
        row: dict[str, Any] = {"method": entry.faithfulness_row, "protocol": entry.protocol, "n": n,
                               "passes": passes.get(key)}
        nf: dict[str, int] = {}
        if "fidelity" in vals:
            st.mean(row, "fidelity", vals["fidelity"], nf)
        else:
            row.update(fidelity=None, fidelity_std=None)
            if "fidelity" not in reasons:
                notes.append(f"{entry.faithfulness_row} ({entry.protocol}): fidelity: " + _fidelity_reason(entry, kind))
        for name, (rows, stat) in M.path_score_rows(vals["ins"], vals["del"], vals["full"], vals["empty"],
                                                    kind).items():
            st.statistic(row, name, rows, stat, nf, with_std=name in ("insertion", "deletion"))
        if "del_abs" in vals:
            rows, stat = M.path_score_rows(vals["ins"], vals["del_abs"], vals["full"], vals["empty_abs"],
                                           kind)["deletion"]
            st.statistic(row, "deletion_abs_scale", rows, stat, nf, with_std=False)
        for name in ("infidelity", "max_sensitivity"):
            if name in vals:
                st.mean(row, name, vals[name], nf)
        if "max_sensitivity" in vals and np.isnan(vals["max_sensitivity"]).any():
            notes.append(f"{entry.faithfulness_row} ({entry.protocol}): max-sensitivity undefined for "
                         f"{int(np.isnan(vals['max_sensitivity']).sum())} items whose map is all zero (‖Φ(x)‖ = 0)")
        if "constant" in vals:
            row["constant_maps"] = int(vals["constant"].sum())
            if row["constant_maps"]:
                notes.append(f"{entry.faithfulness_row}: {row['constant_maps']} of {n} maps are constant (every cell "
                             "tied): their curves are those of random cell orders")
            if int(vals["nonfinite_map"].sum()):
                nf["map"] = int(vals["nonfinite_map"].sum())
        else:
            row["constant_maps"] = None
        row["nonfinite"] = _nonfinite_text(nf)
        if nf:
            notes.append(f"{entry.faithfulness_row} ({entry.protocol}): non-finite values left out: "
                         f"{_nonfinite_text(nf)} of {n} items")
        _blank(row, entry.faithfulness_row, {k: v for k, v in reasons.items() if k != "prediction"}, metric,
               output_names, notes)
        faithfulness.append(row)
        if reasons.keys() & {"insertion", "deletion"}:
            continue  # its curves say nothing about it either
        curves[key] = {"label": f"{entry.faithfulness_row} ({str(entry.protocol).split(';')[0]})"
                       if entry.role.startswith("sop") else entry.faithfulness_row, **_mean_curves(vals, kind, steps, y)}
    columns_acc = ["method", metric, f"{metric}_std"]
    if kind == "regression":
        for o in output_names:
            columns_acc += [f"mse_{o}", f"r2_{o}"]
    columns_acc += ["purity", "purity_std", "iou", "iou_std", "purity_authors_order", "nonfinite", "n", "source"]
    columns_faith = ["method", "protocol", "passes", "fidelity", "fidelity_std", "insertion", "insertion_std",
                     "deletion", "deletion_std", "insertion_raw", "deletion_raw"]
    columns_faith += ["gap"] if kind == "regression" else ["insertion_paper", "deletion_paper"]
    extra = [c for c in ("deletion_abs_scale", "infidelity", "infidelity_std", "max_sensitivity",
                         "max_sensitivity_std") if any(c in r for r in faithfulness)]
    columns_faith += extra + ["constant_maps", "nonfinite", "n"]
    return EvalTables(task=task, metric=metric, accuracy=accuracy, faithfulness=faithfulness,
                      accuracy_columns=columns_acc, faithfulness_columns=columns_faith, notes=notes, curves=curves)


def _inapplicable(entry: PlanEntry) -> dict[str, str]:
    """``{metric: reason}`` for the metrics that say nothing about this entry's method (e.g. a neuron method
    explains a unit of a layer, not the output): ``AttributionMethod.inapplicable_metrics``."""
    method = entry.method
    return dict(method.inapplicable_metrics()) if hasattr(method, "inapplicable_metrics") else {}


def _blank(row: dict[str, Any], label: str, reasons: dict[str, str], metric: str, output_names: Sequence[str],
           notes: list[str]) -> None:
    """Set the cells of inapplicable metrics to N/A and give the method's reason as the note."""
    columns = {"prediction": [metric, f"{metric}_std"] + [f"{p}_{o}" for o in output_names for p in ("mse", "r2")],
               "fidelity": ["fidelity", "fidelity_std"],
               "insertion": ["insertion", "insertion_std", "insertion_raw", "insertion_paper"],
               "deletion": ["deletion", "deletion_std", "deletion_raw", "deletion_paper", "deletion_abs_scale"],
               "infidelity": ["infidelity", "infidelity_std"]}
    for what, reason in reasons.items():
        cols = [c for c in columns.get(what, []) if c in row]
        if not cols:
            continue
        for c in cols:
            row[c] = None
        notes.append(f"{label}: {cols[0]}: {reason}")


def _fidelity_reason(entry: PlanEntry, kind: str) -> str:
    method = entry.method
    if method is not None and method.completeness_reference(torch.zeros(1, 1)) is None:
        return f"N/A: {method.not_additive}"
    return "N/A: needs one attribution per class and the task has too many classes (fidelity_max_classes)"


def _mean_curves(vals: dict[str, np.ndarray], kind: str, steps: int, y: np.ndarray) -> dict[str, Any]:
    """Mean curves over the items: probabilities (classification); for regression the recovered and
    the surviving share of the way from f(∅) to f(x), ``Σ ins_k / Σ gap`` and ``Σ del_k / Σ gap`` per
    step, whose means over k are the table's insertion and deletion."""
    ins, dele = vals["ins"], vals["del"]
    ok = np.isfinite(ins).all(1) & np.isfinite(dele).all(1) & np.isfinite(vals["full"]) & np.isfinite(vals["empty"])
    out: dict[str, Any] = {"fractions": M.fractions(steps)}
    if kind == "regression":
        gap = np.abs(vals["full"] - vals["empty"])[ok].sum()
        out["insertion"] = (ins[ok].sum(0) / gap).tolist() if gap > 0 else None
        out["deletion"] = (dele[ok].sum(0) / gap).tolist() if gap > 0 else None
        out["sparsity"] = {"fractions": M.fractions(steps), "mse": np.nanmean(vals["sparsity"], 0).tolist()}
    else:
        out["insertion"] = ins[ok].mean(0).tolist()
        out["deletion"] = dele[ok].mean(0).tolist()
        out["sparsity"] = {"fractions": M.fractions(steps), "accuracy": (1.0 - np.nanmean(vals["sparsity"], 0)).tolist()}
    return out
