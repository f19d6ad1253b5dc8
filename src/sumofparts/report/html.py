"""One self-contained HTML report of a task: scores, evaluation tables and an explorer.

:func:`collect_payload` runs a trained SOP model (and optionally post-hoc methods) on the
first test items and renders their figures; :func:`build_report` turns that payload into
ONE HTML file: inline CSS and JavaScript, every image a base64 PNG ``data:`` URI, no
external URL at all, so it opens from disk in any browser without a network.

Payload schema (plain JSON types; every ``*image*``/``thumbnail``/figure value is a
``"data:image/png;base64,..."`` string or ``null``)::

    {
      "schema": "sumofparts.report/1",
      "title": str,
      "task": {"name": str, "kind": "classification" | "regression", "modality": "image" | "text",
               "description": str, "output_names": [str], "n_test": int},
      "backbone": {"name": str, "family": str},
      "scores": {"columns": [str], "rows": [{column: value}]} | null,   # backbone vs SOP (results.json)
      "sop_config": {field: value},
      "tables": {                                                         # null when not evaluated
        "accuracy":     {"title": str, "columns": [str], "rows": [{column: value}]} | null,
        "faithfulness": {"title": str, "columns": [str], "rows": [{column: value}]} | null,
        "notes": [str], "command": str | null,
        "curves_figure": data-uri | null,                                 # insertion/deletion curves
        "curves_caption": str                                             # what their y axis is
      } | null,
      "explained": str,             # which output the explorer explains ("predicted class" or a name)
      "examples": [{
        "id": int,                  # index in the test split
        "label": str,               # ground truth, as text
        "prediction": str,          # SOP's final prediction, as text
        "target": str,              # the output explained for this example
        "thumbnail": data-uri | null, "snippet": str | null,   # image thumbnail, or text snippet
        "tokens": [str] | null,     # text: the real tokens (padding dropped)
        "groups": [{                # every group, best first (by weight for the target)
          "index": int, "weight": float, "scale": float, "logit": float, "attribution": float,
          "predicted": str,         # the group's own prediction, as text
          "agrees": bool | null,    # group's class == final class (null for regression)
          "zero_weight": bool, "n_cells": int,
          "image": data-uri | null,       # image tasks: the input with the group kept
          "tokens_in": [bool] | null      # text tasks: which tokens are in the group
        }],
        "groups_figure": data-uri | null,     # optional static figure (best and zero-weight groups)
        "attribution": MAP,                   # SOP's per-pixel / per-token attribution
        "methods": {name: MAP},               # the post-hoc methods' maps, same input and target
        "method_errors": {name: str}
      }],
      "notes": [str],
      "segmentation": {...} | null,   # `sop segment`'s results (sumofparts.segmentation.report)
      "analysis": {...} | null,    # concepts and model comparison: see sumofparts.analysis.html
      "generated": {"time": str, "command": str | null, "version": str}
    }

where ``MAP = {"image": data-uri | null, "scores": [float] | null, "peak": float}``: for
images a heat map (red > 0 > blue, white at 0, over a grey copy of the input) whose full
colour is ``peak`` = the map's largest ``|value|``; for text the raw per-token scores,
which the page colours the same way.

The explorer shows the thumbnails; clicking one fills ``#group-panel`` (best and
zero-weight groups, each with weight, c, its own prediction and whether it agrees with
the final prediction), ``#attribution-panel`` (SOP's attribution) and ``#methods-panel``
(the post-hoc maps) for that example.
"""
from __future__ import annotations

import html as _html
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch.utils.data import default_collate

from ..io import atomic_write_text
from . import figures as F
from ..errors import InputError, InputTypeError

__all__ = ["SCHEMA", "build_report", "collect_payload", "render_html", "load_eval_tables", "save_example_figures"]

SCHEMA = "sumofparts.report/1"


# -- helpers ----------------------------------------------------------------------------------
def _num(v: Any) -> Any:
    """JSON-safe scalar: NaN/inf -> None, numpy/torch scalars -> Python."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _clean(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return _num(obj)


def _cell(v: Any) -> str:
    if v is None:
        return "N/A"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "N/A"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _table(title: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], cls: str) -> str:
    head = "".join(f"<th>{_html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return (f'<section class="table {cls}"><h2>{_html.escape(title)}</h2><div class="scroll"><table>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>")


def load_eval_tables(source: Any) -> dict | None:
    """Normalise evaluation tables: an ``EvalTables`` object, the dict of
    ``evaluation.json``, a path to that file or to its directory, or ``None``."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            p = p / "evaluation.json"
        if not p.is_file():
            return None
        source = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(source, Mapping) and hasattr(source, "accuracy"):
        meta = dict(getattr(source, "meta", {}) or {})
        source = {"task": source.task, "metric": source.metric, "accuracy": source.accuracy,
                  "faithfulness": source.faithfulness, "accuracy_columns": source.accuracy_columns,
                  "faithfulness_columns": source.faithfulness_columns, "notes": source.notes,
                  "curves": source.curves, **meta}
    if not isinstance(source, Mapping):
        raise InputTypeError(f"eval_tables must be an EvalTables, a dict or a path, got {type(source).__name__}")
    return dict(source)


def _columns(rows: Sequence[Mapping[str, Any]], given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _tables_payload(ev: Mapping[str, Any] | None) -> dict | None:
    if not ev:
        return None
    out: dict[str, Any] = {"notes": list(ev.get("notes") or []), "command": ev.get("command")}
    metric = ev.get("metric", "error")
    regression = ev.get("kind") == "regression"
    acc_title = ("Accuracy (MSE ↓ averaged over the outputs; each output's MSE and R² = 1 − SSE/SST on the "
                 "evaluated items, beside the training-mean predictor)" if metric == "mse"
                 else "Accuracy and purity (error ↓, purity ↑)")
    for key, title in (("accuracy", acc_title),
                       ("faithfulness", "Faithfulness (fidelity ↓, insertion ↑, deletion ↓; raw values and the "
                                        "paper's normaliser beside them)")):
        rows = ev.get(key)
        if not rows:
            out[key] = None
            continue
        # columns that are empty on every row (e.g. purity on a task without a foreground) are left out
        cols = [c for c in _columns(rows, ev.get(f"{key}_columns"))
                if c == "method" or any(r.get(c) is not None for r in rows)]
        out[key] = {"title": title, "columns": cols, "rows": _clean(rows)}
    curves = {str(v.get("label") or k): v for k, v in (ev.get("curves") or {}).items()
              if isinstance(v, Mapping) and "fractions" in v and (v.get("insertion") or v.get("deletion"))}
    out["curves_figure"] = None
    out["curves_caption"] = (
        "Insertion: the top-k fraction of cells (by the method's attribution) kept, the rest emptied; deletion: the "
        "top-k removed. y: " + ("the share of the way from the empty input's prediction to the full input's that the "
                                "kept cells recover (insertion) or that survives the removal (deletion), Σ over items "
                                "/ Σ |f(x) − f(∅)|; saturating at the end points" if regression else
                                "the probability of the class predicted on the full input") +
        ", over the evaluated items. SOP's paper protocol re-makes its groups at τ = k instead.")
    if curves:
        ylabel = ("share of the way from f(∅) to f(x)" if regression
                  else "probability of the originally predicted class")
        out["curves_figure"] = F.figure_data_uri(F.curves_figure(curves, ylabel=ylabel))
    return out


def _scores_payload(results: Mapping[str, Any] | None) -> dict | None:
    if not results or not results.get("rows"):
        return None
    rows = _clean(results["rows"])
    return {"columns": _columns(rows, None), "rows": rows}


# -- collecting -------------------------------------------------------------------------------
def _token_strings(data, ids: Sequence[int]) -> list[str]:
    """The tokenizer's strings for ``ids`` when the task names a local tokenizer, else ``#id``."""
    tok: Any = getattr(data, "_report_tokenizer", None)  # a tokenizer, False (none) or None (not looked up)
    if tok is None:
        path = (getattr(data, "meta", None) or {}).get("tokenizer")
        if path and Path(str(path)).exists():
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except Exception:  # noqa: BLE001 - fall back to ids
                tok = False
        else:
            tok = False
        try:
            data._report_tokenizer = tok
        except Exception:  # noqa: BLE001
            pass
    if tok:
        return [str(t) for t in tok.convert_ids_to_tokens([int(i) for i in ids])]
    return [f"#{int(i)}" for i in ids]


def _fmt_value(v: float) -> str:
    return f"{v:.4g}"


def collect_payload(sop, data, *, n_examples: int = 8,
                    methods: Mapping[str, Callable[[Any, Any], Any]] | None = None,
                    eval_tables: Any = None, results: Mapping[str, Any] | None = None,
                    target: int | None = None, notes: Sequence[str] | None = None,
                    command: str | None = None, group_figures: bool = False) -> dict:
    """Run ``sop`` on the first ``n_examples`` test items of ``data`` and build the payload.

    Args:
        sop: a :class:`~sumofparts.SumOfParts` (trained or not).
        data: a :class:`~sumofparts.tasks.TaskData` (image or text items).
        methods: name -> ``callable(inputs, target) -> attributions`` with ``inputs`` the
            batch of examples and ``target`` a ``(B,)`` long tensor; attributions shaped like
            the input (``(B, C, H, W)`` or ``(B, L)``). A method that raises is listed under
            ``method_errors`` and the report is still written.
        group_figures: also embed the static matplotlib figure of each example's groups
            (about a second per example; the explorer's cards show the same).
        eval_tables: the evaluation's tables (``EvalTables``, its JSON dict or a path).
        results: ``results.json`` of ``sop run`` (the backbone-vs-SOP scores).
        target: the output to explain; ``None``: the predicted class (classification) or
            output 0 (regression).
    """
    import torch

    from .. import __version__

    if n_examples < 1:
        raise InputError(f"n_examples must be >= 1, got {n_examples}")
    n = min(int(n_examples), len(data.test))
    if n < 1:
        raise InputError("the task's test split is empty")
    items = [data.test[i] for i in range(n)]
    adapter = sop.backbone
    text = adapter.token_inputs
    inputs = default_collate([it[0] for it in items])
    labels = [it[1] for it in items]
    kind = data.kind
    names = list(data.output_names)
    if kind == "regression" and target is None:
        target = 0
    sop.eval()
    expl = sop.explain(inputs, target=target)
    t = expl.target
    attr = expl.attributions.detach().cpu()
    all_notes = list(notes or [])

    method_maps: dict[str, Any] = {}
    method_errors: dict[str, str] = {}
    for name, fn in (methods or {}).items():
        try:
            a = fn(inputs, t.clone())
            a = a.detach().cpu().float() if hasattr(a, "detach") else torch.as_tensor(np.asarray(a)).float()
            want = (n, adapter.num_cells(inputs)) if text else tuple(inputs.shape)
            if tuple(a.shape) != tuple(want) and not (not text and tuple(a.shape) == (n, *inputs.shape[2:])):
                raise InputError(f"returned shape {tuple(a.shape)}, expected {tuple(want)}")
            method_maps[str(name)] = a
        except Exception as exc:  # noqa: BLE001 - a failing baseline must not stop the report
            method_errors[str(name)] = f"{type(exc).__name__}: {exc}"
            all_notes.append(f"method {name} failed: {type(exc).__name__}: {exc}")

    examples = []
    for b in range(n):
        tb = int(t[b])
        tname = names[tb] if tb < len(names) else f"output {tb}"
        if kind == "classification":
            final = int(expl.logits[b].argmax())
            prediction = names[final] if final < len(names) else str(final)
            lab = int(labels[b])
            label = names[lab] if 0 <= lab < len(names) else str(lab)
        else:
            final = float(expl.logits[b, tb])  # type: ignore[assignment]  # an output value, not a class
            prediction = ", ".join(f"{names[j]} = {_fmt_value(float(v))}" for j, v in enumerate(expl.logits[b]))
            label = ", ".join(f"{names[j]} = {_fmt_value(float(v))}" for j, v in enumerate(
                torch.as_tensor(labels[b]).flatten()))
        infos = expl.groups(b, target=tb)
        w = expl.group_weights[b, :, tb].cpu()
        c = expl.scale[b].cpu()
        if kind == "classification":
            gpred = expl.group_logits[b].argmax(-1).cpu()
        else:
            gpred = expl.group_logits[b, :, tb].cpu()
        ex: dict[str, Any] = {"id": b, "label": label, "prediction": prediction, "target": tname,
                              "thumbnail": None, "snippet": None, "tokens": None, "groups": [],
                              "groups_figure": None, "attribution": None, "methods": {},
                              "method_errors": dict(method_errors)}
        if text:
            valid = adapter.shown_cells(inputs)[b].cpu()
            ids = adapter.token_ids(inputs)[b].cpu()[valid].tolist()
            toks = _token_strings(data, ids)
            ex["tokens"] = toks
            texts = getattr(data.test, "texts", None)
            snippet = texts[b] if isinstance(texts, Sequence) and b < len(texts) else " ".join(toks)
            ex["snippet"] = snippet[:60] + ("…" if len(snippet) > 60 else "")
            masks_b = expl.input_masks[b][:, valid].cpu()
        else:
            image = inputs[b].cpu()
            disp = F.as_display_image(image)
            lo, hi = float(disp.min()), float(disp.max())
            scale_px = max(1, 96 // max(disp.shape[:2]))
            ex["thumbnail"] = F.array_data_uri(F.masked_rgb(image, None, cmap=_cmap(data), vmin=lo, vmax=hi),
                                               scale=scale_px)
            masks_b = expl.input_masks[b].cpu()
        for g in infos:
            if kind == "classification":
                pname = names[g.predicted] if g.predicted < len(names) else str(g.predicted)
                agrees: bool | None = g.predicted == final
            else:
                pname = f"{tname} = {_fmt_value(float(gpred[g.index]))}"
                agrees = None
            entry = {"index": g.index, "weight": _num(g.weight), "scale": _num(g.scale), "logit": _num(g.logit),
                     "attribution": _num(g.attribution), "predicted": pname, "agrees": agrees,
                     "zero_weight": g.zero_weight, "n_cells": len(g.cells), "image": None, "tokens_in": None}
            if text:
                entry["tokens_in"] = [bool(v) for v in masks_b[g.index].tolist()]
            else:
                entry["image"] = F.array_data_uri(F.masked_rgb(image, masks_b[g.index], cmap=_cmap(data), vmin=lo,
                                                               vmax=hi), scale=scale_px)
            ex["groups"].append(entry)
        common = dict(kind=kind, output_names=names, target=tb, scales=c)
        if text:
            ex["attribution"] = _token_map(attr[b][valid])
            for name, a in method_maps.items():
                ex["methods"][name] = _token_map(a[b][valid])
            if group_figures:
                ex["groups_figure"] = F.figure_data_uri(F.text_groups_figure(toks, masks_b, w, gpred, final,
                                                                             **common))
        else:
            ex["attribution"] = _image_map(image, attr[b], _cmap(data), scale_px)
            for name, a in method_maps.items():
                ex["methods"][name] = _image_map(image, a[b], _cmap(data), scale_px)
            if group_figures:
                ex["groups_figure"] = F.figure_data_uri(F.group_figure(
                    image, masks_b, w, gpred, final, cmap=_cmap(data), value_label=_value_label(data), **common))
        examples.append(ex)

    ev = load_eval_tables(eval_tables)
    backbone = sop.backbone
    explained = ("the predicted class" if target is None else
                 (names[target] if isinstance(target, int) and 0 <= target < len(names) else str(target)))
    return _clean({
        "schema": SCHEMA,
        "title": f"Sum-of-Parts report: {data.name}",
        "task": {"name": data.name, "kind": kind, "modality": "text" if text else "image",
                 "description": _description(data.name), "output_names": names, "n_test": len(data.test)},
        "backbone": {"name": type(getattr(backbone, "model", backbone)).__name__,
                     "family": getattr(backbone, "family", "")},
        "scores": _scores_payload(results),
        "sop_config": {k: v for k, v in sop.config.to_dict().items() if k != "backbone"},
        "tables": _tables_payload(ev),
        "explained": explained,
        "examples": examples,
        "notes": all_notes,
        "generated": {"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "command": command or (results or {}).get("command"), "version": __version__},
    })


def save_example_figures(sop, data, out_dir: str | Path, *, n_examples: int = 8,
                         methods: Mapping[str, Callable[[Any, Any], Any]] | None = None, eval_tables: Any = None,
                         target: int | None = None) -> list[Path]:
    """Save the matplotlib figures of the first ``n_examples`` test items as PNG + SVG:
    ``example<i>_groups``, ``example<i>_sop_attribution``, ``example<i>_methods`` (or
    ``example<i>_<method>`` for text) and ``curves`` when the tables have curves."""
    import torch

    out_dir = Path(out_dir)
    n = min(int(n_examples), len(data.test))
    items = [data.test[i] for i in range(n)]
    adapter = sop.backbone
    text = adapter.token_inputs
    inputs = default_collate([it[0] for it in items])
    kind, names = data.kind, list(data.output_names)
    if kind == "regression" and target is None:
        target = 0
    sop.eval()
    expl = sop.explain(inputs, target=target)
    maps = {}
    for name, fn in (methods or {}).items():
        try:
            a = fn(inputs, expl.target.clone())
            maps[name] = a.detach().cpu().float() if hasattr(a, "detach") else torch.as_tensor(np.asarray(a))
        except Exception:  # noqa: BLE001 - listed in the report's notes by collect_payload
            continue
    written: list[Path] = []

    def save(fig, stem: str) -> None:
        written.extend(F.save_figure(fig, out_dir / stem, close=True).values())

    for b in range(n):
        tb = int(expl.target[b])
        tname = names[tb] if tb < len(names) else f"output {tb}"
        final = int(expl.logits[b].argmax()) if kind == "classification" else float(expl.logits[b, tb])
        gpred = (expl.group_logits[b].argmax(-1) if kind == "classification" else expl.group_logits[b, :, tb])
        common = dict(kind=kind, output_names=names, target=tb, scales=expl.scale[b])
        w = expl.group_weights[b, :, tb]
        if text:
            valid = adapter.shown_cells(inputs)[b].cpu()
            toks = _token_strings(data, adapter.token_ids(inputs)[b].cpu()[valid].tolist())
            save(F.text_groups_figure(toks, expl.input_masks[b][:, valid], w, gpred, final, **common),
                 f"example{b}_groups")
            save(F.text_attribution_figure(toks, expl.attributions[b][valid], target_name=tname),
                 f"example{b}_sop_attribution")
            for name, a in maps.items():
                save(F.text_attribution_figure(toks, a[b][valid], target_name=tname, units="the method's units",
                                               title=f"{name}: attribution of each token to '{tname}'"),
                     f"example{b}_{name}")
        else:
            image = inputs[b]
            save(F.group_figure(image, expl.input_masks[b], w, gpred, final, cmap=_cmap(data),
                                value_label=_value_label(data), **common), f"example{b}_groups")
            save(F.attribution_figure(image, expl.attributions[b], target_name=tname, cmap=_cmap(data)),
                 f"example{b}_sop_attribution")
            if maps:
                save(F.methods_figure(image, {k: v[b] for k, v in maps.items()}, target_name=tname,
                                      cmap=_cmap(data)), f"example{b}_methods")
    ev = load_eval_tables(eval_tables)
    curves = {k: v for k, v in ((ev or {}).get("curves") or {}).items()
              if isinstance(v, Mapping) and "fractions" in v and (v.get("insertion") or v.get("deletion"))}
    if curves:
        save(F.curves_figure(curves), "curves")
    return written


def _image_map(image, attribution, cmap: str, scale_px: int) -> dict:
    a = np.asarray(attribution.detach().cpu().float() if hasattr(attribution, "detach") else attribution,
                   dtype=np.float64)
    if a.ndim == 3:
        a = a.sum(0)
    peak = float(np.abs(a).max())
    return {"image": F.array_data_uri(F.attribution_rgb(image, a, cmap=cmap), scale=scale_px), "scores": None,
            "peak": peak}


def _token_map(scores) -> dict:
    v = np.asarray(scores.detach().cpu().float() if hasattr(scores, "detach") else scores, dtype=np.float64)
    return {"image": None, "scores": [float(x) for x in v], "peak": float(np.abs(v).max()) if v.size else 0.0}


def _cmap(data) -> str:
    return data.display.get("cmap", "gray")


def _value_label(data) -> str:
    return data.display.get("value_label", "input value (normalised)")


def _description(name: str) -> str:
    try:
        from ..tasks import get_task

        return get_task(name).description
    except Exception:  # noqa: BLE001
        return ""


# -- rendering --------------------------------------------------------------------------------
#: the page's style sheet and script, shipped as files of the package and inlined into every page
#: (so that the report is one self-contained file)
ASSETS = Path(__file__).resolve().parent / "assets"


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _kv(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{_html.escape(str(k))} = {_html.escape(_cell(v))}" for k, v in d.items())


def render_html(payload: Mapping[str, Any]) -> str:
    """The report's HTML text for ``payload`` (see the module docstring for the schema)."""
    if not isinstance(payload, Mapping):
        raise InputTypeError(f"payload must be a dict, got {type(payload).__name__}")
    missing = [k for k in ("task", "examples") if k not in payload]
    if missing:
        raise InputError(f"payload is missing {', '.join(missing)} (see sumofparts.report.html's schema)")
    task = payload["task"]
    esc = _html.escape
    parts = [f"<h1>{esc(payload.get('title') or 'Sum-of-Parts report')}</h1>"]
    bb = payload.get("backbone") or {}
    parts.append(f'<p class="muted">Task <b>{esc(str(task.get("name")))}</b> ({esc(str(task.get("kind")))}, '
                 f'{esc(str(task.get("modality")))}; {esc(str(task.get("n_test", "?")))} test items): '
                 f'{esc(str(task.get("description") or ""))}. Outputs: '
                 f'{esc(", ".join(map(str, task.get("output_names") or [])))}. Backbone: '
                 f'<b>{esc(str(bb.get("name", "?")))}</b> ({esc(str(bb.get("family", "")))}), frozen.</p>')
    if payload.get("sop_config"):
        parts.append(f'<p class="muted">SOP configuration: {_kv(payload["sop_config"])}.</p>')
    scores = payload.get("scores")
    if scores:
        parts.append(_table("Scores: backbone vs SOP (test split)", scores["columns"], scores["rows"], "scores"))
    else:
        parts.append('<p class="muted">No scores: the report was built without a results.json of <code>sop run'
                     '</code>.</p>')
    tables = payload.get("tables")
    if tables:
        for key in ("accuracy", "faithfulness"):
            t = tables.get(key)
            if t:
                parts.append(_table(t["title"], t["columns"], t["rows"], key))
        if tables.get("notes"):
            parts.append('<details><summary>Why some cells are N/A</summary><ul>' +
                         "".join(f"<li>{esc(str(n))}</li>" for n in tables["notes"]) + "</ul></details>")
        if tables.get("curves_figure"):
            caption = tables.get("curves_caption") or ("Insertion: the top-k fraction of cells by attribution kept; "
                                                       "deletion: the top-k removed.")
            parts.append('<figure><img alt="insertion and deletion curves" src="' + esc(tables["curves_figure"]) +
                         f'"><figcaption>{esc(caption)}</figcaption></figure>')
        if tables.get("command"):
            parts.append(f'<p class="muted">Tables from: <code>{esc(str(tables["command"]))}</code></p>')
    else:
        parts.append('<p class="muted">No evaluation tables: run <code>sop evaluate '
                     f'{esc(str(task.get("name")))}</code> and rebuild the report.</p>')
    from ..analysis.html import render_analysis  # TCAV and model comparison, when the run has them

    parts.append(render_analysis(payload.get("analysis")))
    parts.append("<h2>Explorer</h2>")
    parts.append(f'<p class="muted">The first {len(payload["examples"])} test items. Click a thumbnail to see its '
                 f'groups (explaining {esc(str(payload.get("explained", "the prediction")))}). Each group is what the '
                 'frozen backbone saw (outside the group: set to 0, shown washed out in grey). <span style="color:'
                 f'{F.AGREE_COLOR}">Blue</span>: the group predicts the same class as the final prediction; '
                 f'<span style="color:{F.DISAGREE_COLOR}">red</span>: it does not. Weight w is the selector\'s '
                 '(sparsemax, sums to 1 over groups); c is the group\'s scale; the prediction is Σ w·c·y.</p>')
    parts.append('<nav id="thumbs" aria-label="examples"></nav>')
    parts.append('<section id="group-panel" aria-live="polite"><noscript>The explorer needs JavaScript.</noscript>'
                 '</section>')
    parts.append('<h3>SOP attribution</h3><section id="attribution-panel"></section>')
    parts.append('<h3>Post-hoc methods on the same input</h3><section id="methods-panel"></section>')
    from ..segmentation.report import render_segmentation_section
    parts.append(render_segmentation_section(payload.get("segmentation")))
    if payload.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(str(n))}</li>" for n in payload["notes"]) + "</ul>")
    gen = payload.get("generated") or {}
    parts.append(f'<p class="muted">Generated {esc(str(gen.get("time", "")))} by sumofparts '
                 f'{esc(str(gen.get("version", "")))}' +
                 (f'; command: <code>{esc(str(gen["command"]))}</code>' if gen.get("command") else "") + ".</p>")
    blob = json.dumps(_clean({k: v for k, v in payload.items() if k != "analysis"}),  # drawn above, not by JS
                      ensure_ascii=True, allow_nan=False).replace("<", "\\u003c")
    css = (f":root {{ --agree: {F.AGREE_COLOR}; --disagree: {F.DISAGREE_COLOR}; }}\n" + _asset("report.css"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(payload.get('title') or 'Sum-of-Parts report')}</title><style>{css}</style></head><body>"
            + "\n".join(parts)
            + f'\n<script type="application/json" id="sop-data">{blob}</script>\n<script>{_asset("report.js")}</script>\n'
            "</body></html>\n")


def build_report(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write the self-contained HTML report of ``payload`` to ``path`` (atomically); returns the path."""
    text = render_html(payload)
    return atomic_write_text(Path(path), text)
