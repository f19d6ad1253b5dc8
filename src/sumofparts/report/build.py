"""The task report: :func:`write_task_report` runs a trained SOP and the post-hoc methods on the first
test items of a task and writes one self-contained HTML file (:mod:`sumofparts.report.html`), with
what ``sop run``, ``sop evaluate``, ``sop segment``, ``sop concepts`` and ``sop compare`` wrote in
the run directory. ``sop report`` and ``sop run`` call it (:mod:`sumofparts.cli.report`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import SOPError

__all__ = ["write_task_report", "default_report_methods", "method_callables", "read_json_if_any"]

#: post-hoc methods shown by default (those of them that the attribution registry has)
DEFAULT_REPORT_METHODS = {
    "image": ["gradxinput", "intgrad", "gradcam", "lime", "kernelshap", "rise", "fresh"],
    "text": ["gradxinput", "intgrad", "lime", "kernelshap", "rise", "fresh"],
}


def default_report_methods(adapter) -> list[str]:
    """The default methods that ``adapter`` supports (a cell grid: the image list, else the text list)."""
    from ..attribution import available_methods

    avail = set(available_methods(include_f=False, adapter=adapter))
    kind = "image" if "cell_grid" in adapter.capabilities else "text"
    return [m for m in DEFAULT_REPORT_METHODS[kind] if m in avail]


def method_callables(names: Sequence[str], adapter, seed: int = 0,
                     notes: list[str] | None = None) -> dict[str, Callable[[Any, Any], Any]]:
    """``{name: callable(inputs, target) -> attributions}`` from the attribution registry.

    A name the registry cannot build is skipped with a note appended to ``notes``.
    """
    from ..attribution import get_method, takes_option

    out: dict[str, Callable[[Any, Any], Any]] = {}
    for name in names:
        try:
            method = get_method(name, adapter, **({"seed": seed} if takes_option(name, "seed") else {}))
        except (SOPError, NotImplementedError) as exc:  # an unknown name or option, a missing capability
            if notes is not None:
                notes.append(f"method {name} skipped: {type(exc).__name__}: {exc}")
            continue
        out[name] = (lambda m: (lambda inputs, target: m.attribute(inputs, target)))(method)
    return out


def read_json_if_any(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when the file is missing or not valid JSON."""
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
    return None


def write_task_report(task_name: str, sop, data, out_dir: str | Path, results: Mapping[str, Any] | None = None,
                      eval_tables: Any = None, methods: Any = None, *, n_examples: int = 8,
                      target: int | None = None, path: str | Path | None = None, seed: int = 0,
                      command: str | None = None, figures_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/report.html`` (or ``path``) for a trained ``sop`` on ``data``; returns its path.

    Args:
        results: the dict of ``results.json`` (default: read ``out_dir/results.json`` if present).
        eval_tables: ``EvalTables``, its JSON dict or a path (default:
            ``out_dir/evaluation/evaluation.json`` if present).
        methods: ``None`` (the default set of post-hoc methods that exist for the backbone),
            a list of registry names, a dict ``name -> callable(inputs, target)``, or ``[]``
            for none.
        figures_dir: also save each example's figures (groups, SOP attribution, methods)
            and the insertion/deletion curves there as PNG and SVG.
    """
    from .html import build_report, collect_payload

    out_dir = Path(out_dir)
    if results is None:
        results = read_json_if_any(out_dir / "results.json")
    if eval_tables is None:
        candidate = out_dir / "evaluation" / "evaluation.json"
        eval_tables = candidate if candidate.is_file() else None
    notes: list[str] = []
    if methods is None:
        methods = method_callables(default_report_methods(sop.backbone), sop.backbone, seed, notes)
    elif not isinstance(methods, Mapping):
        methods = method_callables(list(methods), sop.backbone, seed, notes)
    payload = collect_payload(sop, data, n_examples=n_examples, methods=methods, eval_tables=eval_tables,
                              results=results, target=target, notes=notes, command=command)
    from ..segmentation.report import segmentation_payload
    payload["segmentation"] = segmentation_payload(out_dir)  # what `sop segment` wrote there, if anything
    from ..analysis.html import analysis_payload  # concepts/ and compare/ of the run, if written

    payload["analysis"] = analysis_payload(out_dir)
    if figures_dir is not None:
        from .html import save_example_figures

        save_example_figures(sop, data, figures_dir, n_examples=n_examples, methods=methods,
                             eval_tables=eval_tables, target=target)
    return build_report(payload, Path(path) if path is not None else out_dir / "report.html")
