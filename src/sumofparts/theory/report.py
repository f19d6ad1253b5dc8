"""The theory table: exact errors on the binomial for d = 3, 6, .., d_max, and its files.

For every ``d`` (a multiple of 3) the binomial ``p = prod_{S1∪S2} x + prod_{S2∪S3} x`` is explained
at ``x = 1`` against baseline ``0``; for insertion and for deletion the row holds

* ``lp``: the minimum total error over all feature attributions (primal LP, HiGHS),
* ``dual_lp``: the optimum of the explicit dual LP (equal to ``lp`` by strong duality),
* ``certificate``: ``D(lambda_hat)`` of the hand-made dual-feasible ``lambda_hat``
  (:func:`.lp.binomial_dual_certificate`), a lower bound for every feature attribution,
* ``zero``: the total error of the all-zero attribution,
* one column per post-hoc method (:mod:`.methods`) and per extra attribution (hook below),
* ``grouped``: the grouped attribution ``{S1∪S2, S2∪S3}`` with scores ``(1, 1)``.

Extra attributions (for instance an SOP model trained on the polynomial, wired in later) come
through ``extra_attributions(d, poly) -> {name: attribution}`` where an attribution is a length-d
vector (feature attribution) or a pair ``(groups, scores)`` (grouped attribution).

Files: ``theory.csv``, ``theory.md``, ``theory.json`` and ``theory.png`` / ``theory.svg`` (log-scale
plot), all written atomically.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .errors import (
    deletion_errors,
    deletion_targets,
    grouped_deletion_errors,
    grouped_insertion_errors,
    insertion_errors,
    insertion_targets,
)
from .lp import MAX_LP_D, binomial_dual_certificate, solve_dual, solve_primal
from .methods import DEFAULT_BUDGET, METHOD_NAMES, run_method
from .polynomials import MAX_EXACT_D, Binomial, binomial
from ..errors import InputError

__all__ = [
    "ExtraAttributions",
    "theory_rows",
    "table_columns",
    "format_markdown",
    "format_csv",
    "plot_rows",
    "write_report",
]

Attribution = Any  # np.ndarray of length d, or (groups, scores)
ExtraAttributions = Callable[[int, Binomial], Mapping[str, Attribution]]

#: HiGHS method per LP: dual simplex is fast on the (degenerate) insertion LP, the interior point
#: method with crossover on the deletion LP.
LP_METHOD = {"insertion": "highs", "deletion": "highs-ipm"}


def _d_values(d_min: int, d_max: int) -> list[int]:
    if isinstance(d_max, bool) or not isinstance(d_max, (int, np.integer)):
        raise InputError(f"d_max must be an int, got {d_max!r}")
    if d_max < 3:
        raise InputError(f"d_max must be >= 3 (the binomial needs three non-empty thirds), got {d_max}")
    if d_max > MAX_EXACT_D:
        raise InputError(f"d_max must be <= {MAX_EXACT_D} for the exact enumeration over 2**d subsets, got {d_max}")
    if d_min < 3 or d_min > d_max:
        raise InputError(f"d_min must be in [3, d_max={d_max}], got {d_min}")
    return list(range(3 * math.ceil(d_min / 3), int(d_max) + 1, 3))


def _errors(values: np.ndarray, att: Attribution, d: int) -> tuple[float, float]:
    if isinstance(att, tuple) and len(att) == 2 and not np.isscalar(att[0]) and _is_groups(att[0]):
        groups, scores = att
        return (
            float(grouped_insertion_errors(values, groups, scores).sum()),
            float(grouped_deletion_errors(values, groups, scores).sum()),
        )
    return float(insertion_errors(values, att).sum()), float(deletion_errors(values, att).sum())


def _is_groups(obj) -> bool:
    try:
        return all(not np.isscalar(g) for g in obj)
    except TypeError:
        return False


def theory_rows(
    d_max: int = 12,
    *,
    d_min: int = 3,
    methods: Sequence[str] | None = None,
    lp_d_max: int = 15,
    seed: int = 0,
    budget: Mapping[str, int] | None = None,
    extra_attributions: ExtraAttributions | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One dict per ``d`` in ``3, 6, .., d_max`` (see the module doc for the columns).

    Keys: ``d``, ``ins_lp``, ``ins_dual_lp``, ``ins_certificate``, ``ins_zero``, ``ins_<method>``,
    ``ins_grouped``, the same with ``del_``, plus ``ins_lp_seconds`` / ``del_lp_seconds`` and
    ``ins_duality_gap`` / ``del_duality_gap`` (``|primal - dual| / max(1, |primal|)``). LP columns are
    NaN for ``d > lp_d_max``.
    """
    ds = _d_values(d_min, d_max)
    if lp_d_max > MAX_LP_D:
        raise InputError(f"lp_d_max must be <= {MAX_LP_D}, got {lp_d_max}")
    names = list(METHOD_NAMES if methods is None else methods)
    bad = [n for n in names if n not in METHOD_NAMES]
    if bad:
        raise InputError(f"unknown methods {bad}; expected names among {', '.join(METHOD_NAMES)}")
    iterator: Any = ds
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ds, desc="sop theory", unit="d")
    rows = []
    for d in iterator:
        poly = binomial(d)
        values = poly.subset_values()
        row: dict[str, Any] = {"d": d}
        for kind, pre in (("insertion", "ins"), ("deletion", "del")):
            b = insertion_targets(values) if kind == "insertion" else deletion_targets(values)
            if d <= lp_d_max:
                t0 = time.perf_counter()
                primal = solve_primal(b, method=LP_METHOD[kind])
                dual = solve_dual(b)
                row[f"{pre}_lp"] = primal.value
                row[f"{pre}_dual_lp"] = dual.value
                row[f"{pre}_duality_gap"] = abs(primal.value - dual.value) / max(1.0, abs(primal.value))
                row[f"{pre}_lp_seconds"] = time.perf_counter() - t0
            else:
                for k in ("lp", "dual_lp", "duality_gap", "lp_seconds"):
                    row[f"{pre}_{k}"] = float("nan")
            row[f"{pre}_certificate"] = binomial_dual_certificate(poly, kind)[1]
        zero = np.zeros(d)
        row["ins_zero"], row["del_zero"] = _errors(values, zero, d)
        for name in names:
            alpha = run_method(name, poly, seed=seed, budget=budget)
            row[f"ins_{name}"], row[f"del_{name}"] = _errors(values, alpha, d)
        if extra_attributions is not None:
            for name, att in dict(extra_attributions(d, poly)).items():
                row[f"ins_{name}"], row[f"del_{name}"] = _errors(values, att, d)
        row["ins_grouped"], row["del_grouped"] = _errors(values, (poly.groups, [1.0, 1.0]), d)
        rows.append(row)
    return rows


def table_columns(rows: Sequence[Mapping[str, Any]], pre: str) -> list[str]:
    """Column names (without the ``ins_``/``del_`` prefix) in display order."""
    head = ["lp", "dual_lp", "certificate", "zero"]
    tail = ["grouped"]
    skip = set(head + tail + ["duality_gap", "lp_seconds"])
    mid: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith(pre + "_") and k[len(pre) + 1 :] not in skip and k[len(pre) + 1 :] not in mid:
                mid.append(k[len(pre) + 1 :])
    return head + mid + tail


def _fmt(v: Any) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    if v == 0:
        return "0"
    if abs(v - round(v)) < 5e-7 * max(1.0, abs(v)):
        return str(int(round(v)))
    return f"{v:.2f}" if abs(v) >= 100 else f"{v:.4g}"


def format_markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    """Two Markdown tables (total insertion error, total deletion error) with one row per d."""
    out = []
    if meta:
        out.append(f"Command: `{meta.get('command', '')}`\n")
    for pre, title in (("ins", "Total insertion error"), ("del", "Total deletion error")):
        cols = table_columns(rows, pre)
        out.append(f"### {title} (sum over all 2^d subsets; binomial, x = 1, baseline 0)\n")
        out.append("| d | " + " | ".join(cols) + " |")
        out.append("|" + "---|" * (len(cols) + 1))
        for r in rows:
            out.append(f"| {r['d']} | " + " | ".join(_fmt(r.get(f"{pre}_{c}")) for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def format_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k, "")) for k in keys})
    return buf.getvalue()


def plot_rows(rows: Sequence[Mapping[str, Any]]):
    """Log-scale figure: total errors against d, insertion (left) and deletion (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    ds = [r["d"] for r in rows]
    for ax, pre, title in zip(axes, ("ins", "del"), ("total insertion error", "total deletion error")):
        for c in table_columns(rows, pre):
            if c in ("grouped", "dual_lp"):
                continue
            ys = np.array([float(r.get(f"{pre}_{c}", np.nan)) for r in rows])
            ys = np.where(ys > 0, ys, np.nan)  # log scale: zero errors are not drawable
            if np.all(np.isnan(ys)):
                continue
            style = {"lp": dict(lw=2.5, color="k", marker="o"), "certificate": dict(lw=2, color="k", ls="--", marker="s")}
            ax.plot(ds, ys, label={"lp": "LP optimum", "certificate": "dual bound D(λ̂)"}.get(c, c),
                    **style.get(c, dict(marker=".", alpha=0.8)))
        g = [float(r.get(f"{pre}_grouped", np.nan)) for r in rows]
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.set_title(f"{title}; grouped {{S1∪S2, S2∪S3}}: max {max(g):.3g}")
        ax.set_xticks(ds)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="upper left")
    return fig


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``theory.{csv,md,json,png,svg}`` into ``out_dir`` atomically; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {
        "csv": atomic_write_text(out / "theory.csv", format_csv(rows)),
        "md": atomic_write_text(out / "theory.md", format_markdown(rows, meta)),
        "json": atomic_write_json(
            out / "theory.json",
            {"meta": meta,
             "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]},
        ),
    }
    fig = plot_rows(rows)
    import matplotlib.pyplot as plt

    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120)
        paths[ext] = atomic_write_bytes(out / f"theory.{ext}", buf.getvalue())
    plt.close(fig)
    return paths


def default_meta(d_max: int, methods: Sequence[str], seed: int, budget: Mapping[str, int] | None, command: str) -> dict:
    bud = dict(DEFAULT_BUDGET)
    bud.update(budget or {})
    return {"d_max": d_max, "methods": list(methods), "seed": seed, "budget": bud, "command": command,
            "x": "ones", "baseline": "zeros", "lp_method": LP_METHOD}
