"""The report's segmentation section: what ``sop segment`` wrote, as HTML.

:func:`segmentation_payload` reads ``<run dir>/segmentation/segmentation.json`` and the PNG
figures beside it (embedded as ``data:`` URIs, so the report stays one self-contained file);
:func:`render_segmentation_section` turns that into the section's HTML (an empty string when
there is nothing to show). The report calls both; nothing else in the report knows about
segmentation.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["segmentation_payload", "render_segmentation_section"]

_FIGURES = {"maps": "segmentation_maps.png", "shares": "segmentation_shares.png"}


def segmentation_payload(run_dir: str | Path) -> dict[str, Any] | None:
    """``{"rows", "meta", "figures": {name: data-uri}}`` from ``run_dir/segmentation``, or ``None``
    when ``sop segment`` has not written there (or its JSON is unreadable)."""
    folder = Path(run_dir) / "segmentation"
    path = folder / "segmentation.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("rows"), list):
        return None
    figures = {}
    for key, name in _FIGURES.items():
        png = folder / name
        if png.is_file():
            figures[key] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    meta = {k: saved.get(k) for k in ("n", "layer", "n_steps", "class_rule", "segment_iou_mean", "class_is_label",
                                      "ig_completeness", "command", "unet")}
    return {"rows": saved["rows"], "meta": meta, "figures": figures}


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "N/A"


_LABELS = {"intgrad": "Integrated Gradients", "guided_backprop": "Guided Backprop", "layer_gradcam": "Layer Grad-CAM",
           "random": "random map (reference)"}


def render_segmentation_section(section: Mapping[str, Any] | None) -> str:
    """The section's HTML for :func:`segmentation_payload`'s dict (``""`` for ``None``)."""
    if not section:
        return ""
    esc = html.escape
    meta = section.get("meta") or {}
    rows = section.get("rows") or []
    head = ("<tr><th>method</th><th>share inside the segment</th><th>outside</th><th>positive part inside</th>"
            "<th>segment area</th><th>concentration (inside / area)</th><th>n</th></tr>")
    body = "".join(
        f"<tr><td>{esc(_LABELS.get(str(r.get('method')), str(r.get('method'))))}</td>"
        f"<td>{_f(r.get('inside'))} ± {_f(r.get('inside_std'))}</td><td>{_f(r.get('outside'))}</td>"
        f"<td>{_f(r.get('positive_inside'))}</td><td>{_f(r.get('area'))}</td>"
        f"<td>{_f(r.get('concentration'), 2)} ± {_f(r.get('concentration_std'), 2)}</td>"
        f"<td>{esc(str(r.get('n')))}</td></tr>" for r in rows)
    unet = meta.get("unet") or {}
    test = unet.get("test") or {}
    parts = ['<section class="table segmentation" id="segmentation">',
             "<h2>Segmentation: attribution of a predicted segment</h2>",
             '<p class="muted">A small U-Net segments each test image into background and its garment class. For '
             f'the first {esc(str(meta.get("n")))} test images, each method explains the sum of the logits of the '
             f'image\'s {esc(str(meta.get("class_rule", "predicted class")))} over the pixels predicted as that class '
             f'(Layer Grad-CAM on <code>{esc(str(meta.get("layer")))}</code>, IG with {esc(str(meta.get("n_steps")))} '
             "steps from the zero image). A map with no preference for the segment puts the segment's area share of "
             "its mass inside it (concentration 1).</p>",
             f'<div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>']
    facts = [f"Segments' mean IoU with the silhouette {_f(meta.get('segment_iou_mean'))}"]
    if test:
        facts.append(f"U-Net on {esc(str(test.get('n')))} test images: pixel accuracy {_f(test.get('pixel_accuracy'))}, "
                     f"mean IoU {_f(test.get('mean_iou'))}, foreground IoU {_f(test.get('foreground_iou'))}")
    ig = meta.get("ig_completeness") or {}
    if ig:
        facts.append(f"IG completeness gap {ig.get('mean_relative_gap', float('nan')):.1e} (relative, mean)")
    parts.append(f'<p class="muted">{"; ".join(facts)}.</p>')
    figures = section.get("figures") or {}
    captions = {"maps": "The image with its predicted segment (yellow outline) and each method's map (red > 0 > "
                        "blue, each scaled to its own largest |value|).",
                "shares": "Concentration per method (± std over images); the dashed line is a preference-free map."}
    for key in ("maps", "shares"):
        uri = figures.get(key)
        if isinstance(uri, str) and uri.startswith("data:image/png;base64,"):
            parts.append(f'<figure><img alt="segmentation {key}" src="{esc(uri)}"><figcaption>'
                         f"{esc(captions[key])}</figcaption></figure>")
    if meta.get("command"):
        parts.append(f'<p class="muted">From: <code>{esc(str(meta["command"]))}</code></p>')
    parts.append("</section>")
    return "".join(parts)
