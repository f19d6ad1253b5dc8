"""The cosmology case study: which structures of a convergence map do SOP's groups weigh?

The blog (and SPEC §6) report, for SOP on CosmoGrid weak-lensing maps, that groups
covering *voids* carry more weight than groups covering *clusters*, that voids weigh more
for Omega_m than for sigma_8, and that (high-significance) clusters weigh more for
sigma_8. This module measures the same quantities on any set of maps.

Definitions (κ is the convergence; a map's pixels are in convergence units, or any fixed
multiple of them such as the task's ``κ / KAPPA_NORM``: every rule below is invariant to a
positive rescaling):

* **void**: the group's mean κ over its pixels is below 0 (κ = 0 is the mean density);
* **cluster**: the group contains at least one pixel with κ > ``cluster_sigma`` · σ
  (default 3), σ the standard deviation of the pixels of *that group's map*;
* **high-significance cluster**: a pixel with κ > ``high_sigma`` · σ (default 5); every
  high-significance cluster is also a cluster.

A group may be both a void and a cluster (a 20 % group is not contiguous: it can hold
mostly under-dense pixels and one peak). We keep that case visible instead of breaking
the tie arbitrarily: the *exclusive* kinds are ``void`` (void, no peak), ``cluster``
(peak, mean ≥ 0), ``void+cluster`` (both) and ``neither``; their weight shares sum to 1.
The blog's comparisons use the *inclusive* labels: ``any void`` (void or void+cluster),
``any cluster`` (cluster or void+cluster) and ``high-significance cluster``.

**Share of weight.** For output j (Omega_m or sigma_8) and kind k:
``share_jk = Σ_maps Σ_groups w_ij [kind = k] / Σ_maps Σ_groups w_ij``. The selector's
weights of a map sum to 1 per output (sparsemax), so this is also the mean per-map share.
Intervals are percentile bootstrap intervals over maps (resampling whole maps), and each
comparison (Omega_m vs sigma_8, void vs cluster) is bootstrapped as a paired difference.

**Histograms.** For each kind and output, the groups of that kind counted in 10 equal
weight bins over [0, 1] (the first bin [0, 0.1) holds the zero-weight groups), as a
fraction of the groups of that kind.
"""
from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..io import atomic_write_json, atomic_write_text  # noqa: E402
from .figures import _to_numpy, save_figure  # noqa: E402
from ..errors import InputError

__all__ = [
    "MIN_R2",
    "EXCLUSIVE_KINDS",
    "INCLUSIVE_KINDS",
    "classify_groups",
    "weight_shares",
    "weight_histograms",
    "bootstrap_shares",
    "case_study",
    "verdict",
    "case_study_figure",
    "case_study_markdown",
    "run_case_study",
]

EXCLUSIVE_KINDS = ("void", "cluster", "void+cluster", "neither")
INCLUSIVE_KINDS = ("any void", "any cluster", "high-significance cluster")
_BINS = np.linspace(0.0, 1.0, 11)


def _check(maps: Any, masks: Any, weights: Any | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    m = _to_numpy(maps, "maps").astype(np.float64)
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise InputError(f"maps has shape {tuple(m.shape)}; expected (n, 1, H, W) (one channel) or (n, H, W)")
        m = m[:, 0]
    elif m.ndim != 3:
        raise InputError(f"maps has shape {tuple(m.shape)}; expected (n, 1, H, W) or (n, H, W)")
    if not np.all(np.isfinite(m)):
        raise InputError("maps hold non-finite values")
    g = _to_numpy(masks, "masks")
    n, H, W = m.shape
    if g.ndim != 4 or g.shape[0] != n or tuple(g.shape[2:]) != (H, W):
        raise InputError(f"masks has shape {tuple(g.shape)}; expected (n, G, H, W) = ({n}, G, {H}, {W}) to match "
                         f"maps {tuple(_to_numpy(maps, 'maps').shape)}")
    if g.dtype != bool:
        if not np.all((g == 0) | (g == 1)):
            raise InputError("masks must be boolean (or 0/1)")
        g = g.astype(bool)
    if not g.reshape(n, g.shape[1], -1).any(-1).all():
        raise InputError("every group mask must cover at least one pixel")
    w = None
    if weights is not None:
        w = _to_numpy(weights, "weights").astype(np.float64)
        if w.ndim == 2:
            w = w[..., None]
        if w.ndim != 3 or w.shape[:2] != g.shape[:2]:
            raise InputError(f"weights has shape {tuple(w.shape)}; expected (n, G, outputs) = "
                             f"({n}, {g.shape[1]}, outputs)")
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise InputError("weights must be finite and non-negative (the selector's sparsemax weights)")
    return m, g, w


def classify_groups(maps: Any, masks: Any, *, cluster_sigma: float = 3.0,
                    high_sigma: float = 5.0) -> dict[str, np.ndarray]:
    """Label every group of every map.

    Args:
        maps: ``(n, 1, H, W)`` or ``(n, H, W)`` convergence maps.
        masks: ``(n, G, H, W)`` bool, the SOP groups at input resolution.
        cluster_sigma, high_sigma: peak thresholds in units of each map's pixel std.

    Returns ``(n, G)`` arrays: ``mean`` (mean κ in the group), ``peak`` (max κ / σ in
    the group), ``void``, ``cluster``, ``high`` (bool) and ``kind`` (an index into
    :data:`EXCLUSIVE_KINDS`).
    """
    if not high_sigma > cluster_sigma:
        raise InputError(f"high_sigma ({high_sigma}) must be above cluster_sigma ({cluster_sigma})")
    m, g, _ = _check(maps, masks)
    sigma = m.reshape(len(m), -1).std(1)
    sigma = np.where(sigma > 0, sigma, 1.0)
    x = m[:, None]  # (n, 1, H, W)
    count = g.sum((2, 3))
    mean = np.where(g, x, 0.0).sum((2, 3)) / count
    peak = np.where(g, x, -np.inf).max((2, 3)) / sigma[:, None]
    void = mean < 0
    cluster = peak > cluster_sigma
    high = peak > high_sigma
    kind = np.where(void & cluster, 2, np.where(cluster, 1, np.where(void, 0, 3)))
    return {"mean": mean, "peak": peak, "void": void, "cluster": cluster, "high": high, "kind": kind}


def _selectors(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    kind = labels["kind"]
    out = {name: kind == i for i, name in enumerate(EXCLUSIVE_KINDS)}
    out["any void"] = labels["void"]
    out["any cluster"] = labels["cluster"]
    out["high-significance cluster"] = labels["high"]
    return out


def weight_shares(weights: Any, labels: dict[str, np.ndarray], maps_index: np.ndarray | None = None) -> dict:
    """Share of total weight of each kind, per output: ``{kind: [share per output]}``.

    ``weights``: ``(n, G, O)``; ``maps_index``: which maps to use (repeats allowed, for the
    bootstrap)."""
    w = _to_numpy(weights, "weights").astype(np.float64)
    if w.ndim == 2:
        w = w[..., None]
    sel = _selectors(labels)
    if maps_index is not None:
        w = w[maps_index]
        sel = {k: v[maps_index] for k, v in sel.items()}
    total = w.sum((0, 1))
    total = np.where(total > 0, total, np.nan)
    return {k: ((w * s[..., None]).sum((0, 1)) / total).tolist() for k, s in sel.items()}


def _bin_counts(values: np.ndarray) -> np.ndarray:
    """Counts in the 10 bins [0, .1), [.1, .2), ..., [.9, 1.0] (a weight of 0.7, even rounded to float32, is in bin 7)."""
    idx = np.clip(np.floor(np.asarray(values, dtype=np.float64) * 10 + 1e-6), 0, 9).astype(int)
    return np.bincount(idx.ravel(), minlength=10)


def weight_histograms(weights: Any, labels: dict[str, np.ndarray]) -> dict[str, dict[str, list]]:
    """Per kind: ``{"counts": (O, 10), "fractions": (O, 10), "n_groups": int}`` over 10 weight bins in [0, 1]."""
    w = _to_numpy(weights, "weights").astype(np.float64)
    if w.ndim == 2:
        w = w[..., None]
    out = {}
    for k, s in _selectors(labels).items():
        counts = np.stack([_bin_counts(w[..., j][s]) for j in range(w.shape[-1])])
        n = int(s.sum())
        out[k] = {"counts": counts.tolist(), "fractions": (counts / max(n, 1)).tolist(), "n_groups": n}
    return out


def bootstrap_shares(weights: Any, labels: dict[str, np.ndarray], *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap over maps of every share and of the comparisons the blog makes.

    Returns ``{"shares": {kind: {"low": [per output], "high": [...]}}, "differences":
    {name: {"estimate", "low", "high"}}}``. Differences (first output is Omega_m, second
    sigma_8): ``void Omega_m - sigma_8``, ``cluster sigma_8 - Omega_m``, ``high cluster
    sigma_8 - Omega_m`` and, per output, ``void - cluster``.
    """
    w = _to_numpy(weights, "weights").astype(np.float64)
    if w.ndim == 2:
        w = w[..., None]
    n = w.shape[0]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        samples.append(weight_shares(w, labels, idx))
    alpha = (1 - level) / 2
    kinds = list(samples[0]) if samples else []
    shares = {}
    for k in kinds:
        arr = np.array([s[k] for s in samples], dtype=float)  # (B, O)
        shares[k] = {"low": np.nanquantile(arr, alpha, axis=0).tolist(),
                     "high": np.nanquantile(arr, 1 - alpha, axis=0).tolist()}
    point = weight_shares(w, labels)

    def diff(fn) -> dict[str, float]:
        vals = np.array([fn(s) for s in samples], dtype=float)
        return {"estimate": float(fn(point)), "low": float(np.nanquantile(vals, alpha)),
                "high": float(np.nanquantile(vals, 1 - alpha))}

    diffs: dict[str, Any] = {}
    O = w.shape[-1]
    if O >= 2 and samples:
        diffs["void: Omega_m - sigma_8"] = diff(lambda s: s["any void"][0] - s["any void"][1])
        diffs["cluster: sigma_8 - Omega_m"] = diff(lambda s: s["any cluster"][1] - s["any cluster"][0])
        diffs["high-significance cluster: sigma_8 - Omega_m"] = diff(
            lambda s: s["high-significance cluster"][1] - s["high-significance cluster"][0])
    for j in range(O if samples else 0):
        diffs[f"output {j}: void - cluster"] = diff(lambda s, j=j: s["any void"][j] - s["any cluster"][j])
    return {"level": level, "n_boot": int(n_boot), "seed": seed, "shares": shares, "differences": diffs}


#: a conclusion about an output is drawn only when SOP predicts it at least this well (R² on the maps used)
MIN_R2 = 0.7


def case_study(maps: Any, masks: Any, weights: Any, *, output_names: Sequence[str] = ("Omega_m", "sigma_8"),
               cluster_sigma: float = 3.0, high_sigma: float = 5.0, n_boot: int = 1000, seed: int = 0,
               r2: Sequence[float] | None = None, min_r2: float = MIN_R2) -> dict:
    """Classify the groups, share the weight by kind, histogram it, bootstrap it, conclude.

    ``maps (n, 1, H, W)``, ``masks (n, G, H, W)``, ``weights (n, G, O)`` (O outputs, named
    by ``output_names``; the comparisons assume output 0 is Omega_m and 1 is sigma_8).
    ``r2``: SOP's R² per output on these maps; a claim about an output whose R² is below
    ``min_r2`` is not stated (what a model that cannot predict a parameter weighs says
    nothing about that parameter). Returns a JSON-ready dict (see :func:`case_study_markdown`).
    """
    m, g, w = _check(maps, masks, weights)
    if w.shape[-1] != len(output_names):
        raise InputError(f"weights has {w.shape[-1]} outputs but output_names has {len(output_names)}")
    labels = classify_groups(m, g, cluster_sigma=cluster_sigma, high_sigma=high_sigma)
    n, G = labels["kind"].shape
    counts = {k: int(s.sum()) for k, s in _selectors(labels).items()}
    result = {
        "output_names": list(output_names),
        "n_maps": int(n), "groups_per_map": int(G), "n_groups": int(n * G),
        "pixels_per_group_mean": float(g.sum((2, 3)).mean()),
        "definitions": {
            "void": "mean convergence of the group's pixels < 0",
            "cluster": f"the group holds a pixel with kappa > {cluster_sigma} sigma of its map",
            "high-significance cluster": f"the group holds a pixel with kappa > {high_sigma} sigma of its map",
            "exclusive kinds": "void (void, no peak), cluster (peak, mean >= 0), void+cluster (both), neither",
            "sigma": "standard deviation of all pixels of the map",
        },
        "cluster_sigma": cluster_sigma, "high_sigma": high_sigma,
        "group_counts": counts,
        "shares": weight_shares(w, labels),
        "mean_weight_per_group": {k: ((w * s[..., None]).sum((0, 1)) / max(int(s.sum()), 1)).tolist()
                                  for k, s in _selectors(labels).items()},
        "histograms": weight_histograms(w, labels),
        "bins": _BINS.tolist(),
        "bootstrap": bootstrap_shares(w, labels, n_boot=n_boot, seed=seed),
        "r2": None if r2 is None else [float(v) for v in r2],
        "min_r2": float(min_r2),
    }
    if r2 is not None and len(result["r2"]) != len(output_names):
        raise InputError(f"r2 has {len(result['r2'])} values but there are {len(output_names)} outputs")
    result["verdict"] = verdict(result)
    return result


def _sig(d: dict[str, float]) -> str:
    """'yes' if the interval is above 0, 'no' if below, 'unclear' if it straddles 0."""
    if d["low"] > 0:
        return "yes"
    if d["high"] < 0:
        return "no"
    return "unclear"


def verdict(result: dict) -> dict[str, Any]:
    """Does the data reproduce the blog's three findings? Each answer is ``yes`` (the
    bootstrap interval of the difference is above 0), ``no`` (below 0) or ``unclear``
    (it contains 0), with a plain sentence."""
    names = result["output_names"]
    diffs = result["bootstrap"]["differences"]
    shares = result["shares"]
    r2, min_r2 = result.get("r2"), result.get("min_r2", MIN_R2)
    weak = [j for j in range(len(names)) if r2 is not None and not r2[j] >= min_r2]

    def gated(outputs: Sequence[int], answer: str) -> str:
        bad = [j for j in outputs if j in weak]
        if bad:
            return "not stated: " + ", ".join(f"SOP's R² for {names[j]} is {r2[j]:.2f} < {min_r2:g}" for j in bad)
        return answer

    claims = {}
    if len(names) >= 2 and diffs:
        per = [_sig(diffs[f"output {j}: void - cluster"]) for j in range(2)]
        claims["voids dominate (void share > cluster share, both outputs)"] = gated(
            (0, 1), "yes" if per == ["yes", "yes"] else "no" if "no" in per else "unclear")
        claims["voids weigh more for Omega_m than for sigma_8"] = gated((0, 1), _sig(diffs["void: Omega_m - sigma_8"]))
        claims["clusters weigh more for sigma_8 than for Omega_m"] = gated(
            (0, 1), _sig(diffs["cluster: sigma_8 - Omega_m"]))
        claims["high-significance clusters weigh more for sigma_8"] = gated(
            (0, 1), _sig(diffs["high-significance cluster: sigma_8 - Omega_m"]))
        for j in range(2):
            claims[f"voids weigh more than clusters for {names[j]}"] = gated((j,), per[j])
    stated = {k: v for k, v in claims.items() if not v.startswith("not stated")}
    all_yes = bool(claims) and all(v == "yes" for v in claims.values())
    lines = []
    for j, name in enumerate(names):
        if j in weak:
            lines.append(f"{name}: no conclusion (SOP's R² {r2[j]:.2f} is below {min_r2:g}).")
            continue
        lines.append(f"{name}: voids get {shares['any void'][j]:.1%} of the weight, clusters "
                     f"{shares['any cluster'][j]:.1%} (high-significance {shares['high-significance cluster'][j]:.1%}),"
                     f" neither {shares['neither'][j]:.1%}.")
    if all_yes:
        summary = "The maps reproduce the blog's finding: " + " ".join(lines)
    else:
        failed = [k for k, v in stated.items() if v != "yes"]
        summary = ("The maps do not fully reproduce the blog's finding; "
                   + (("not supported: " + "; ".join(f"{k} ({claims[k]})" for k in failed) + ". ") if failed else "")
                   + (f"Not stated for want of accuracy: {len(claims) - len(stated)} of {len(claims)} claims. "
                      if len(stated) < len(claims) else "")
                   + "What the data shows instead: " + " ".join(lines))
    return {"claims": claims, "reproduced": all_yes, "summary": summary}


def case_study_figure(result: dict, *, title: str | None = None) -> Figure:
    """Three panels: share of weight by kind with bootstrap intervals, and the weight
    histograms of void groups and of cluster groups (Omega_m vs sigma_8, as in the blog)."""
    names = result["output_names"]
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.2), layout="constrained")
    kinds = ["any void", "any cluster", "high-significance cluster", "neither"]
    x = np.arange(len(kinds))
    width = 0.8 / max(1, len(names))
    colours = ["#1b7837", "#762a83", "#e08214", "#4393c3"]
    boot = result["bootstrap"]["shares"]
    for j, name in enumerate(names):
        vals = np.array([result["shares"][k][j] for k in kinds])
        lo = np.array([boot[k]["low"][j] for k in kinds])
        hi = np.array([boot[k]["high"][j] for k in kinds])
        axes[0].bar(x + (j - (len(names) - 1) / 2) * width, vals, width, color=colours[j % 4], label=name,
                    yerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], capsize=3)
    axes[0].set_xticks(x, ["void", "cluster\n(>%gσ)" % result["cluster_sigma"],
                           "high-sig. cluster\n(>%gσ)" % result["high_sigma"], "neither"], fontsize=8)
    axes[0].set_ylabel("share of total selector weight")
    lvl = int(round(100 * result["bootstrap"]["level"]))
    axes[0].set_title(f"Weight by kind of group ({lvl}% bootstrap interval over maps)", fontsize=9)
    axes[0].legend(title="output", fontsize=8, title_fontsize=8)
    centres = (np.array(result["bins"][:-1]) + np.array(result["bins"][1:])) / 2
    for ax, kind in zip(axes[1:], ("any void", "any cluster")):
        h = result["histograms"][kind]
        for j, name in enumerate(names):
            ax.bar(centres + (j - (len(names) - 1) / 2) * 0.08, h["fractions"][j], 0.08, color=colours[j % 4],
                   label=name)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("group weight (10 bins over [0, 1])")
        ax.set_ylabel(f"fraction of the {h['n_groups']} groups of this kind")
        label = "void groups (mean κ < 0)" if kind == "any void" else \
            f"cluster groups (a pixel > {result['cluster_sigma']:g}σ)"
        ax.set_title(f"Weights of {label}", fontsize=9)
        ax.set_xticks(result["bins"])
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(title="output", fontsize=8, title_fontsize=8)
    fig.suptitle(title or f"Cosmology case study: {result['n_maps']} test maps, {result['groups_per_map']} "
                          f"groups each", fontsize=11)
    return fig


def _pct(v: float) -> str:
    return "N/A" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def case_study_markdown(result: dict, *, command: str | None = None, figure: str | None = None) -> str:
    """A Markdown report of :func:`case_study`'s result (tables, verdict, command)."""
    names = result["output_names"]
    boot = result["bootstrap"]
    lvl = int(round(100 * boot["level"]))
    lines = ["# Cosmology case study: what SOP's groups weigh", "",
             f"{result['n_maps']} test maps × {result['groups_per_map']} groups "
             f"({result['pixels_per_group_mean']:.0f} pixels per group on average).", "",
             *(["SOP's accuracy on these maps: " + ", ".join(
                 f"R² {n} {v:.3f}" for n, v in zip(names, result["r2"]))
                + f". A conclusion about a parameter is stated only when its R² is at least {result['min_r2']:g}.",
                ""] if result.get("r2") is not None else []),
             "Definitions: " + "; ".join(f"**{k}**: {v}" for k, v in result["definitions"].items()) + ".", "",
             f"## Share of total selector weight ({lvl}% bootstrap interval over maps, {boot['n_boot']} resamples)",
             "", "| kind | groups | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for k in list(EXCLUSIVE_KINDS) + list(INCLUSIVE_KINDS):
        cells = [f"{_pct(result['shares'][k][j])} [{_pct(boot['shares'][k]['low'][j])}, "
                 f"{_pct(boot['shares'][k]['high'][j])}]" for j in range(len(names))]
        lines.append(f"| {k} | {result['group_counts'][k]} | " + " | ".join(cells) + " |")
    lines += ["", "The four exclusive kinds (void, cluster, void+cluster, neither) sum to 100%.", "",
              "## Comparisons (paired bootstrap of the difference in share)", "",
              "| difference | estimate | interval |", "|---|---|---|"]
    for k, d in boot["differences"].items():
        lines.append(f"| {k} | {100 * d['estimate']:+.1f} pts | [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] |")
    lines += ["", "## Weight histograms (fraction of the groups of each kind per weight bin)", ""]
    bins = result["bins"]
    head = "| kind | output | " + " | ".join(f"{bins[i]:.1f}–{bins[i + 1]:.1f}" for i in range(10)) + " |"
    lines += [head, "|---|---|" + "---|" * 10]
    for k in ("any void", "any cluster", "high-significance cluster"):
        for j, name in enumerate(names):
            fr = result["histograms"][k]["fractions"][j]
            lines.append(f"| {k} | {name} | " + " | ".join(f"{v:.3f}" for v in fr) + " |")
    lines += ["", "## Verdict", ""]
    for k, v in result["verdict"]["claims"].items():
        lines.append(f"* {k}: **{v}**")
    lines += ["", result["verdict"]["summary"], ""]
    if figure:
        lines += [f"![case study]({figure})", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)


def run_case_study(sop, data, out_dir: str | Path, *, n: int | None = None, batch_size: int = 32,
                   cluster_sigma: float = 3.0, high_sigma: float = 5.0, n_boot: int = 1000, seed: int = 0,
                   command: str | None = None) -> dict:
    """Run SOP on the test maps of a regression task and write the case study.

    ``data``: a :class:`~sumofparts.tasks.TaskData` whose test items are ``(map (1, H, W),
    target)``; ``n``: the first n test maps (``None``: all). Writes
    ``out_dir/case_study.json``, ``case_study.md`` and ``case_study.png``/``.svg``;
    returns the result dict (with ``"paths"``).
    """
    import torch

    t0 = time.time()
    out_dir = Path(out_dir)
    total = len(data.test)
    n = total if n is None else min(int(n), total)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    sop.eval()
    maps, masks, weights, preds, targets = [], [], [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            items = [data.test[i] for i in range(start, min(n, start + batch_size))]
            x = torch.stack([it[0] for it in items])
            if x.ndim != 4 or x.shape[1] != 1:
                raise InputError(f"the case study needs one-channel maps (B, 1, H, W); the task gives {tuple(x.shape)}")
            out = sop(x)
            maps.append(x.cpu())
            masks.append(out.input_masks.cpu())
            weights.append(out.group_weights.cpu())
            preds.append(out.logits.cpu())
            targets.append(torch.stack([torch.as_tensor(it[1]) for it in items]).float())
    names = list(getattr(data, "output_names", None) or ["Omega_m", "sigma_8"])
    pred, target = torch.cat(preds).double(), torch.cat(targets).double().view(len(torch.cat(preds)), -1)
    r2 = (1 - ((pred - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0).clamp_min(1e-12)).tolist()
    result = case_study(torch.cat(maps), torch.cat(masks), torch.cat(weights), output_names=names,
                        cluster_sigma=cluster_sigma, high_sigma=high_sigma, n_boot=n_boot, seed=seed, r2=r2)
    result["command"] = command or " ".join(["sop"] + sys.argv[1:])
    result["task"] = getattr(data, "name", None)
    result["units"] = "maps as given to the model (the cosmology task: kappa / KAPPA_NORM); the rules are scale-free"
    result["seconds"] = time.time() - t0
    result["python"] = platform.python_version()
    fig = case_study_figure(result)
    paths = save_figure(fig, out_dir / "case_study", close=True)
    result["paths"] = {"json": str(out_dir / "case_study.json"), "markdown": str(out_dir / "case_study.md"),
                       "png": str(paths["png"]), "svg": str(paths["svg"])}
    atomic_write_json(out_dir / "case_study.json", result)
    atomic_write_text(out_dir / "case_study.md", case_study_markdown(result, command=result["command"],
                                                                     figure="case_study.png"))
    return result
