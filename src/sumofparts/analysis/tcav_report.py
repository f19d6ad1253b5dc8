"""TCAV results as tables and figures, and TCAV set beside SOP's own weights (the case study).

:func:`tcav_markdown` and :func:`tcav_figure` present a :class:`~.tcav.TCAVResult`.
:func:`tcav_vs_sop` puts two answers side by side for every concept that names an SOP group kind
(``ConceptSet.sop_kind``, e.g. the cosmology windows classified by the case study's rules):

* **TCAV** (the frozen backbone): is output j sensitive to the concept, at which layers, in which
  direction? The effect at a layer is ``mean TCAV − mean random TCAV`` (> 0: moving the layer
  towards the concept raises output j for more inputs than a random direction does). The
  concept's verdict for output j is the sign of the effect at the *deepest* layer where the test
  is significant (the representation closest to the output), "none" if it is nowhere significant.
* **SOP** (the selector): how much of output j's weight goes to groups of that kind? Its share
  of the weight (with the case study's bootstrap interval) against its share of the *groups*;
  ``enrichment = weight share / group share``; *enriched* when the interval lies above the
  group share, *depleted* when below, *unclear* otherwise; *not stated* when SOP's own R² for the
  output is below the case study's minimum (the weights of a model that gets the output wrong
  say nothing about it — the case study's rule, kept here).

They **agree** for output j when the concept raises the output in TCAV's deepest significant
layer and SOP's weight on it is enriched, or when it lowers the output (or is nowhere
significant) and SOP's weight is depleted. On the **ordering** of two outputs they agree when
the output with the larger signed TCAV effect is the one with the larger SOP weight share.

Why the sign: SOP's selector scores a group for output j by ``<W_q u_j, W_k z_i>``, its query u_j
a trainable copy of the classifier row of output j and W_q, W_k starting at the identity, so it
starts by preferring groups whose embedding z points along the classifier row, i.e. groups that
*raise* output j; and at the classifier's input layer TCAV's directional derivative is exactly
``w_j · v``, the alignment of the concept with the same row. At that layer the two answers share
a cause; the earlier layers, and the training of the selector's projections, make them two
measurements. The two measure different things — a direction in the backbone's activations, the
selector's choice among groups — so agreement is evidence and disagreement a finding, not an
error.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .tcav import ConceptSets, TCAVResult

__all__ = ["tcav_markdown", "tcav_figure", "tcav_vs_sop", "tcav_vs_sop_markdown", "tcav_vs_sop_figure",
           "TCAV_COLUMNS"]

#: the columns of the per-test CSV/Markdown rows (:meth:`TCAVTest.row`)
TCAV_COLUMNS = ["concept", "output", "layer", "tcav", "tcav_std", "magnitude", "random_tcav", "random_std",
                "cav_accuracy", "random_cav_accuracy", "t", "p", "p_holm", "significant", "direction"]


def _p(v: float) -> str:
    return "N/A" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.1e}" if v < 1e-3 else f"{v:.3f}")


def tcav_markdown(result: TCAVResult, sets: ConceptSets, *, title: str, model: str, command: str | None = None,
                  figure: str | None = None) -> str:
    """Settings, the significant findings, every score by concept, output and layer, the concepts."""
    sig = result.significant()
    lines = [f"# {title}", "",
             f"Model: {model}. Layers: {', '.join(result.layers)}. Each concept pool is cut into {result.n_random} "
             f"disjoint sets of {result.set_size}; each CAV (logistic regression, C = {result.C:g}, "
             f"{result.test_fraction:.0%} held out) is trained against one of {result.n_random} random counterparts; the "
             f"null is {result.n_random} random concepts against the same counterparts. Test: {result.test}, "
             f"p-values adjusted by {result.correction.capitalize()} over all {len(result.tests)} tests; significant: "
             f"adjusted p < {result.alpha:g}. Seed {result.seed}; {result.seconds:.0f} s.", "",
             f"## Significant concepts ({len(sig)} of {len(result.tests)} tests)", ""]
    if sig:
        lines += ["| concept | output | layer | TCAV | random | effect | CAV acc. | p | p (Holm) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in sorted(sig, key=lambda t: (t.concept, t.target, result.layers.index(t.layer))):
            lines.append(f"| {t.concept} | {t.target_name} | {t.layer} | {t.mean:.3f} ± {np.std(t.scores):.3f} | "
                         f"{t.random_mean:.3f} ± {np.std(t.random_scores):.3f} | {t.mean - t.random_mean:+.3f} | "
                         f"{t.cav_accuracy:.2f} | {_p(t.p_value)} | {_p(t.p_adjusted)} |")
    else:
        lines.append("No concept is significant at any layer for any output.")
    lines += ["", "## Every test: mean TCAV score by layer (* significant; random concepts in the last rows)", "",
              "| concept | output | " + " | ".join(result.layers) + " |", "|---|---|" + "---|" * len(result.layers)]
    for c in sets.concepts:
        for k in sorted({t.target for t in result.tests}):
            cells = []
            for layer in result.layers:
                t = result.find(c.name, layer, k)
                cells.append(f"{t.mean:.2f}{'*' if t.significant else ''}")
            lines.append(f"| {c.name} | {result.output_names[k] if k < len(result.output_names) else k} | "
                         + " | ".join(cells) + " |")
    families = sorted({c.random_family for c in sets.concepts})
    for f in families:
        for k in sorted({t.target for t in result.tests}):
            example = next(c for c in sets.concepts if c.random_family == f)
            cells = [f"{result.find(example.name, layer, k).random_mean:.2f}" for layer in result.layers]
            lines.append(f"| *{f} (null)* | {result.output_names[k] if k < len(result.output_names) else k} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## Concepts", ""]
    for c in sets.concepts:
        lines.append(f"* **{c.name}** ({c.size} examples, against {c.random_family}): {c.description}")
    for f, pool in sets.randoms.items():
        lines.append(f"* *{f}* ({pool.size} examples): {pool.description}")
    for note in sets.notes:
        lines.append(f"* {note}")
    lines.append("")
    if figure:
        lines += [f"![TCAV scores]({figure})", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)


def tcav_figure(result: TCAVResult, sets: ConceptSets, *, max_outputs: int = 10):
    """One panel per concept: mean TCAV score (± std over the R sets) by layer, one line per output;
    filled markers where significant; grey band: the null's mean ± std (all outputs pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = [c.name for c in sets.concepts]
    targets = sorted({t.target for t in result.tests})[:max_outputs]
    ncols = min(3, len(concepts))
    nrows = math.ceil(len(concepts) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), layout="constrained", squeeze=False)
    x = np.arange(len(result.layers))
    cmap = plt.get_cmap("tab10")
    for ax in axes.flat[len(concepts):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, concepts):
        null = np.array([[np.mean(result.find(name, layer, k).random_scores) for layer in result.layers]
                         for k in targets])
        null_sd = np.array([[np.std(result.find(name, layer, k).random_scores) for layer in result.layers]
                            for k in targets])
        ax.fill_between(x, (null - null_sd).mean(0), (null + null_sd).mean(0), color="0.85", label="random (±1 sd)")
        for i, k in enumerate(targets):
            tests = [result.find(name, layer, k) for layer in result.layers]
            mean = np.array([t.mean for t in tests])
            sd = np.array([np.std(t.scores) for t in tests])
            colour = cmap(i % 10)
            label = result.output_names[k] if k < len(result.output_names) else str(k)
            ax.errorbar(x, mean, yerr=sd, color=colour, lw=1.2, capsize=2, label=label)
            sig = np.array([t.significant for t in tests])
            ax.scatter(x[sig], mean[sig], color=colour, s=30, zorder=3)
            ax.scatter(x[~sig], mean[~sig], facecolor="white", edgecolor=colour, s=24, zorder=3)
        ax.axhline(0.5, color="0.5", lw=0.6, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(x, [layer.replace("encoder.layer.", "L").replace("bert.", "").replace("vit.", "")
                          for layer in result.layers], rotation=45, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("TCAV score")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.suptitle("TCAV scores by layer (filled: significant after Holm)", fontsize=9)
    return fig


def tcav_vs_sop(result: TCAVResult, sets: ConceptSets, case: dict[str, Any]) -> dict[str, Any]:
    """Join TCAV's tests with the case study's weight shares for every concept that has an ``sop_kind``."""
    names = case["output_names"]
    boot = case["bootstrap"]["shares"]
    rows, concepts = [], []
    for c in sets.concepts:
        k = c.sop_kind
        if k is None or k not in case["shares"]:
            continue
        concepts.append(c.name)
        group_share = case["group_counts"][k] / case["n_groups"]
        for j, out in enumerate(names):
            if j not in {t.target for t in result.tests}:
                continue
            tests = [result.find(c.name, layer, j) for layer in result.layers]
            sig = [t for t in tests if t.significant]
            deepest = sig[-1] if sig else None
            share, low, high = case["shares"][k][j], boot[k]["low"][j], boot[k]["high"][j]
            sop = "enriched" if low > group_share else ("depleted" if high < group_share else "unclear")
            r2 = (case.get("r2") or [None] * len(names))[j]
            if r2 is not None and case.get("min_r2") is not None and not r2 >= case["min_r2"]:
                # the case study's own rule: no conclusion from the weights of an output SOP gets wrong
                sop = f"not stated (SOP's R² {r2:.2f} < {case['min_r2']:g})"
            direction = deepest.direction if deepest else "none"
            agrees = None if sop not in ("enriched", "depleted") else ((direction == "+") == (sop == "enriched"))
            rows.append({
                "concept": c.name, "sop_kind": k, "output": out, "output_index": j,
                "tcav_significant_layers": [f"{t.layer} ({t.direction})" for t in sig],
                "tcav_layer": deepest.layer if deepest else None, "tcav_direction": direction,
                "tcav_effect": float(deepest.mean - deepest.random_mean) if deepest else 0.0,
                "tcav_by_layer": {t.layer: {"tcav": t.mean, "random": t.random_mean, "p_holm": t.p_adjusted,
                                            "significant": t.significant} for t in tests},
                "sop_weight_share": share, "sop_share_low": low, "sop_share_high": high,
                "sop_group_share": group_share, "sop_enrichment": share / group_share if group_share else float("nan"),
                "sop_mean_weight_per_group": case["mean_weight_per_group"][k][j], "sop_r2": r2, "sop": sop,
                "agrees": agrees,
            })
    orderings = []
    for c in concepts:
        mine = [r for r in rows if r["concept"] == c]
        if len(mine) < 2:
            continue
        a, b = mine[0], mine[1]
        sop_more = a["output"] if a["sop_weight_share"] > b["sop_weight_share"] else b["output"]
        ta, tb = a["tcav_effect"], b["tcav_effect"]
        tcav_more = None if ta == tb else (a["output"] if ta > tb else b["output"])
        stated = all(r["sop"] in ("enriched", "depleted", "unclear") for r in (a, b))
        orderings.append({"concept": c, "outputs": [a["output"], b["output"]], "sop_weighs_more_for": sop_more,
                          "sop_share_difference": a["sop_weight_share"] - b["sop_weight_share"],
                          "tcav_raises_more": tcav_more, "tcav_effects": [ta, tb], "stated": stated,
                          "agrees": None if tcav_more is None or not stated else tcav_more == sop_more})
    n_rows = [r["agrees"] for r in rows if r["agrees"] is not None]
    n_ord = [o["agrees"] for o in orderings if o["agrees"] is not None]
    return {"rows": rows, "orderings": orderings, "sentences": _sentences(rows, orderings),
            "summary": {"agree": int(sum(n_rows)), "compared": len(n_rows), "orderings_agree": int(sum(n_ord)),
                        "orderings_compared": len(n_ord)},
            "definitions": {
                "tcav_effect": "mean TCAV - mean random TCAV at the deepest layer where the test is significant "
                               "(0 if none); tcav_direction its sign",
                "sop_weight_share": "share of the selector's weight for the output on groups of the kind "
                                    "(case study, 95% bootstrap interval over maps)",
                "sop_group_share": "share of all groups that are of the kind",
                "sop": "enriched / depleted: the weight-share interval lies above / below the group share; not "
                       "stated when SOP's R² for the output is below the case study's minimum (min_r2)",
                "agrees": "TCAV raises the output (+) and SOP enriched, or TCAV lowers it (-) or none and SOP "
                          "depleted (None when SOP is unclear)",
                "ordering": "the output with the larger signed TCAV effect is the one with the larger SOP share"}}


def _sentences(rows: Sequence[dict], orderings: Sequence[dict]) -> list[str]:
    out = []
    for r in rows:
        tcav = (f"TCAV: significant at {', '.join(r['tcav_significant_layers'])}; deepest {r['tcav_layer']} "
                f"{r['tcav_effect']:+.2f}" if r["tcav_significant_layers"] else "TCAV: not significant at any layer")
        sop = (f"SOP: {r['sop_weight_share']:.1%} of the weight [{r['sop_share_low']:.1%}, {r['sop_share_high']:.1%}] "
               f"on {r['sop_group_share']:.1%} of the groups ({r['sop']}, x{r['sop_enrichment']:.2f})")
        verdict = {True: "agree", False: "disagree", None: "SOP unclear"}[r["agrees"]]
        if r["sop"].startswith("not stated"):
            verdict = f"no comparison, SOP's R² for {r['output']} is {r['sop_r2']:.2f}"
        out.append(f"{r['concept']} for {r['output']}: {tcav}; {sop} -> {verdict}.")
    for o in orderings:
        raises = ("TCAV effects equal" if o["tcav_raises_more"] is None else
                  f"TCAV's effect is larger for {o['tcav_raises_more']} ({o['tcav_effects'][0]:+.2f} vs "
                  f"{o['tcav_effects'][1]:+.2f})")
        verdict = "" if o["agrees"] is None else (" -> agree" if o["agrees"] else " -> disagree")
        if not o["stated"]:
            verdict = " -> no comparison (SOP not accurate enough on one output)"
        out.append(f"{o['concept']}: SOP weighs it more for {o['sop_weighs_more_for']} "
                   f"({o['sop_share_difference']:+.1%} share, {o['outputs'][0]} - {o['outputs'][1]}); {raises}{verdict}.")
    return out


def tcav_vs_sop_markdown(join: dict[str, Any], *, command: str | None = None, figure: str | None = None) -> str:
    summary = join.get("summary", {})
    lines = ["# TCAV beside SOP: the same concepts, two answers", "",
             f"Agreement: {summary.get('agree')} of {summary.get('compared')} concept-output pairs; ordering of the "
             f"outputs: {summary.get('orderings_agree')} of {summary.get('orderings_compared')} concepts.", "",
             "| concept | output | TCAV: significant layers (direction) | deepest: effect | SOP weight share [95% CI] | "
             "share of groups | SOP | agree |", "|---|---|---|---|---|---|---|---|"]
    for r in join["rows"]:
        verdict = {True: "yes", False: "no", None: "SOP unclear"}[r["agrees"]]
        if r["sop"].startswith("not stated"):
            verdict = "–"
        deepest = f"{r['tcav_layer']}: {r['tcav_effect']:+.3f}" if r["tcav_layer"] else "none"
        lines.append(f"| {r['concept']} | {r['output']} | {', '.join(r['tcav_significant_layers']) or 'none'} | "
                     f"{deepest} | {r['sop_weight_share']:.1%} [{r['sop_share_low']:.1%}, {r['sop_share_high']:.1%}] | "
                     f"{r['sop_group_share']:.1%} | {r['sop']}, x{r['sop_enrichment']:.2f} | {verdict} |")
    lines += ["", "## Which output does the concept matter more for?", "",
              "| concept | SOP weighs it more for | share difference | TCAV raises more | effects | agree |",
              "|---|---|---|---|---|---|"]
    for o in join["orderings"]:
        lines.append(f"| {o['concept']} | {o['sop_weighs_more_for']} | {o['sop_share_difference']:+.1%} | "
                     f"{o['tcav_raises_more'] or '-'} | {o['tcav_effects'][0]:+.3f} / {o['tcav_effects'][1]:+.3f} "
                     f"| {('-' if o['agrees'] is None else ('yes' if o['agrees'] else 'no')) if o['stated'] else 'not stated'} |")
    lines += ["", "## In words", ""] + [f"* {s}" for s in join["sentences"]] + ["", "## Definitions", ""]
    lines += [f"* **{k}**: {v}" for k, v in join["definitions"].items()] + [""]
    if figure:
        lines += [f"![TCAV vs SOP]({figure})", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)


def tcav_vs_sop_figure(join: dict[str, Any]):
    """Left: TCAV effect per concept and output (0 when not significant); right: SOP's weight share
    per kind and output with its interval, the group share as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = join["rows"]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    outputs = list(dict.fromkeys(r["output"] for r in rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    width = 0.8 / max(1, len(outputs))
    x = np.arange(len(concepts))
    for i, out in enumerate(outputs):
        mine = {r["concept"]: r for r in rows if r["output"] == out}
        eff = [mine[c]["tcav_effect"] if c in mine else 0.0 for c in concepts]
        a1.bar(x + i * width, eff, width, label=out)
        share = np.array([mine[c]["sop_weight_share"] for c in concepts])
        low = np.array([mine[c]["sop_share_low"] for c in concepts])
        high = np.array([mine[c]["sop_share_high"] for c in concepts])
        a2.bar(x + i * width, share, width, yerr=[share - low, high - share], capsize=3, label=out)
    for j, c in enumerate(concepts):
        g = next(r["sop_group_share"] for r in rows if r["concept"] == c)
        a2.plot([x[j] - width / 2, x[j] + width * (len(outputs) - 0.5)], [g, g], color="k", lw=1.5)
    for ax in (a1, a2):
        ax.set_xticks(x + width * (len(outputs) - 1) / 2, concepts, fontsize=8)
        ax.legend(fontsize=7)
    a1.axhline(0, color="0.4", lw=0.8)
    a1.set_ylabel("TCAV effect (TCAV − random), deepest significant layer")
    a1.set_title("TCAV: the backbone's sensitivity", fontsize=9)
    a2.set_ylabel("share of SOP's weight")
    a2.set_title("SOP: weight on groups of the kind (black: share of groups)", fontsize=9)
    return fig
