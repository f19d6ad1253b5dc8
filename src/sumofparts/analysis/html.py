"""The report's section on concepts (TCAV) and model comparison.

:func:`analysis_payload` reads what ``sop concepts`` and ``sop compare`` wrote under a run
directory (``concepts/concepts.json``, ``concepts/tcav_vs_sop.json``, ``compare/compare.json``
and their PNG figures, embedded as ``data:`` URIs so the report stays one self-contained file);
:func:`render_analysis` turns it into HTML. Payload (``payload["analysis"]``, ``None`` when
neither command has run)::

    {"concepts": {"model": str, "command": str | null, "n_tests": int, "n_significant": int,
                  "alpha": float, "correction": str, "n_random": int, "set_size": int,
                  "significant": [TCAV row], "figure": data-uri | null,
                  "tcav_vs_sop": {"rows": [...], "sentences": [str], "figure": data-uri | null} | null} | null,
     "compare": {"a": str, "b": str, "n": int, "metrics": [str], "diagonal": [{"layer", metric: value}],
                 "figures": {"heat maps" | "same layer" | "PCA": data-uri}, "command": str | null} | null}
"""
from __future__ import annotations

import base64
import html as _html
import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["analysis_payload", "render_analysis"]


def _uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def analysis_payload(run_dir: str | Path) -> dict[str, Any] | None:
    """The concepts and comparison results under ``run_dir`` (see the module docstring)."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"concepts": None, "compare": None}
    c = _json(run_dir / "concepts" / "concepts.json")
    if c:
        join = c.get("tcav_vs_sop")
        out["concepts"] = {
            "model": c.get("model"), "command": c.get("command"), "n_tests": c.get("n_tests"),
            "n_significant": c.get("n_significant"), "alpha": c.get("alpha"), "correction": c.get("correction"),
            "n_random": c.get("n_random"), "set_size": c.get("set_size"), "significant": c.get("significant", []),
            "figure": _uri(run_dir / "concepts" / "concepts.png"),
            "tcav_vs_sop": None if not join else {"rows": join.get("rows", []), "sentences": join.get("sentences", []),
                                                  "figure": _uri(run_dir / "concepts" / "tcav_vs_sop.png")}}
    m = _json(run_dir / "compare" / "compare.json")
    if m:
        figures = {"heat maps": run_dir / "compare" / "compare_heatmaps.png",
                   "same layer": run_dir / "compare" / "compare_diagonal.png", "PCA": run_dir / "compare" / "pca.png"}
        out["compare"] = {"a": m.get("a"), "b": m.get("b"), "n": m.get("n"), "metrics": m.get("metrics", []),
                          "diagonal": m.get("diagonal", []) if m.get("a_spec") != m.get("b_spec") else [],
                          "figures": {k: u for k, p in figures.items() if (u := _uri(p))},
                          "command": m.get("command")}
    return out if out["concepts"] or out["compare"] else None


def _fmt(v: Any, key: str = "") -> Any:
    if isinstance(v, float):
        return v if key.startswith("p") else round(v, 3)  # p-values keep their magnitude (1.2e-05)
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    return v


def _figure(uri: str | None, caption: str) -> str:
    if not uri:
        return ""
    return (f'<figure><img alt="{_html.escape(caption)}" src="{_html.escape(uri)}">'
            f"<figcaption>{_html.escape(caption)}</figcaption></figure>")


def render_analysis(section: Mapping[str, Any] | None) -> str:
    """HTML of the concepts and comparison section ('' when there is nothing to show)."""
    if not section:
        return ""
    from ..report.html import _table

    esc = _html.escape
    parts = ['<h2 id="analysis">Inside the backbone: concepts and model comparison</h2>']
    c = section.get("concepts")
    if c:
        parts.append(f'<p class="muted">TCAV on {esc(str(c.get("model")))}: {c.get("n_significant")} of '
                     f'{c.get("n_tests")} tests significant ({esc(str(c.get("correction")))}-adjusted p &lt; '
                     f'{c.get("alpha")}; {c.get("n_random")} random concepts, sets of {c.get("set_size")}). Only the '
                     'significant concepts are listed; <code>concepts.md</code> has every test.</p>')
        cols = ["concept", "output", "layer", "tcav", "random_tcav", "direction", "cav_accuracy", "p_holm"]
        parts.append(_table("Significant concepts (TCAV)", cols,
                            [{k: _fmt(r.get(k), k) for k in cols} for r in c.get("significant", [])], "tcav"))
        parts.append(_figure(c.get("figure"), "TCAV score by layer, one line per output; filled markers: "
                                              "significant; grey band: random concepts (mean ± sd)."))
        join = c.get("tcav_vs_sop")
        if join:
            cols = ["concept", "output", "tcav_significant_layers", "tcav_layer", "tcav_effect", "sop_weight_share",
                    "sop_group_share", "sop", "agrees"]
            parts.append(_table("TCAV beside SOP (the case study's weights)", cols,
                                [{k: _fmt(r.get(k), k) for k in cols} for r in join.get("rows", [])], "tcav-sop"))
            parts.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in join.get("sentences", [])) + "</ul>")
            parts.append(_figure(join.get("figure"), "Left: TCAV effect (mean TCAV − random) at the deepest "
                                                     "significant layer; "
                                                     "right: SOP's weight share by kind with its 95% interval, "
                                                     "black: the kind's share of the groups."))
        if c.get("command"):
            parts.append(f'<p class="muted">From: <code>{esc(str(c["command"]))}</code></p>')
    m = section.get("compare")
    if m:
        parts.append(f'<p class="muted">Model comparison on {m.get("n")} test inputs: A = {esc(str(m.get("a")))}, '
                     f'B = {esc(str(m.get("b")))}.</p>')
        if m.get("diagonal"):
            cols = ["layer", *m.get("metrics", [])]
            parts.append(_table("Same layer in both models", cols,
                                [{k: _fmt(r.get(k), k) for k in cols} for r in m["diagonal"]], "compare"))
        for name, uri in (m.get("figures") or {}).items():
            parts.append(_figure(uri, f"Comparison: {name}"))
        if m.get("command"):
            parts.append(f'<p class="muted">From: <code>{esc(str(m["command"]))}</code></p>')
    return "\n".join(p for p in parts if p)
