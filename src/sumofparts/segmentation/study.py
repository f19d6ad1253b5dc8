"""``sop segment``'s work: maps of a predicted segment, how much of each lies on it, figures, tables.

>>> result = run_segmentation(unet, images, labels, out_dir="sop-runs/fashion/segmentation", n=64)
>>> print(result.markdown())

For each of the first ``n`` images the segment is the U-Net's own prediction (the pixels of the
image's most frequent garment class, :func:`~sumofparts.segmentation.attribution.predicted_segments`);
each method explains the sum of that class's logits over it. The table gives, per method, the
share of the map's absolute mass inside the segment, the positive part's share, the segment's
area (what a map without preference gets), and their ratio; a random map (i.i.d. normal values,
seeded) is a row of its own. Files (each written atomically): ``segmentation.md``,
``segmentation.csv``, ``segmentation.json`` and the figures ``segmentation_maps.{png,svg}``
(examples) and ``segmentation_shares.{png,svg}`` (the concentration per method).
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..formats import csv_text
from ..io import atomic_write_json, atomic_write_text
from .attribution import (DEFAULT_IG_STEPS, DEFAULT_LAYER, SEGMENT_METHODS, SegmentSum, predicted_segments, random_maps,
                          segment_attributions, segment_shares)
from ..errors import InputError

__all__ = ["SegmentationResult", "run_segmentation", "COLUMNS", "METHOD_LABELS"]

COLUMNS = ["method", "inside", "inside_std", "outside", "positive_inside", "positive_inside_std", "area",
           "concentration", "concentration_std", "n"]
METHOD_LABELS = {"intgrad": "Integrated Gradients", "guided_backprop": "Guided Backprop",
                 "layer_gradcam": "Layer Grad-CAM", "random": "random map (reference)"}


@dataclass
class SegmentationResult:
    """What ``sop segment`` measured.

    Attributes:
        rows: one dict per method (and ``random``) with the columns of :data:`COLUMNS`.
        per_image: one dict per image: test index, label, explained class, segment area, IoU of
            the segment with the silhouette, and each method's share inside.
        meta: command, seed, n, methods, layer, IG's completeness check, the U-Net's record, versions.
        paths: the files written.
    """

    rows: list[dict[str, Any]]
    per_image: list[dict[str, Any]]
    meta: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(f"no row {method!r}; rows: {[r['method'] for r in self.rows]}")

    def markdown(self) -> str:
        m = self.meta
        head = ("| method | share inside the segment | outside | positive part inside | segment area "
                "(a preference-free map's share) | concentration (inside / area) | n |")
        lines = [head, "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {METHOD_LABELS.get(r['method'], r['method'])} | {r['inside']:.3f} ± {r['inside_std']:.3f} "
                         f"| {r['outside']:.3f} | {r['positive_inside']:.3f} ± {r['positive_inside_std']:.3f} | "
                         f"{r['area']:.3f} | {r['concentration']:.2f} ± {r['concentration_std']:.2f} | {r['n']} |")
        ig = m.get("ig_completeness")
        out = [f"# Segment attribution: {m.get('task', 'fashion')}", "",
               f"First {m['n']} test images; segment = the U-Net's predicted pixels of each image's "
               f"{m['class_rule']}; methods explain the sum of that class's logits over the segment. Layer Grad-CAM on "
               f"`{m['layer']}`; IG with {m['n_steps']} steps from the zero image. ± is the standard deviation over "
               "images.", "", "\n".join(lines), "",
               f"Segments: mean IoU with the silhouette {m['segment_iou_mean']:.3f}; the explained class is the "
               f"image's label for {m['class_is_label']:.1%} of the images.  "]
        if ig:
            out.append(f"IG completeness: Σ attributions vs F_S(x) − F_S(0), mean relative gap "
                       f"{ig['mean_relative_gap']:.2e} (max {ig['max_relative_gap']:.2e}).  ")
        unet = m.get("unet") or {}
        if unet.get("test"):
            t = unet["test"]
            out.append(f"U-Net: {unet.get('num_parameters')} parameters; on the task's {t['n']} test images pixel "
                       f"accuracy {t['pixel_accuracy']:.3f}, mean IoU {t['mean_iou']:.3f}, foreground IoU "
                       f"{t['foreground_iou']:.3f} (`{unet.get('command')}`).  ")
        out += [f"Command: `{m.get('command')}`  ", f"Time: {m.get('seconds', 0):.1f} s.", ""]
        return "\n".join(out)


def _stats(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _rows(shares: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, s in shares.items():
        inside, inside_std = _stats(s.inside)
        pos, pos_std = _stats(s.positive_inside)
        conc, conc_std = _stats(s.concentration)
        rows.append({"method": name, "inside": inside, "inside_std": inside_std, "outside": 1.0 - inside,
                     "positive_inside": pos, "positive_inside_std": pos_std, "area": float(np.mean(s.area)),
                     "concentration": conc, "concentration_std": conc_std, "n": int(len(s.inside))})
    return rows


def run_segmentation(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     out_dir: str | Path | None = None, *, foreground: torch.Tensor | None = None,
                     class_names: Sequence[str] | None = None, n: int = 64,
                     methods: Sequence[str] = SEGMENT_METHODS, layer: str = DEFAULT_LAYER, n_steps: int = DEFAULT_IG_STEPS,
                     batch_size: int = 16, seed: int = 0, n_figures: int = 4, progress: bool = True,
                     command: str | None = None, unet_info: dict[str, Any] | None = None,
                     task: str = "fashion") -> SegmentationResult:
    """Explain the predicted segment of the first ``n`` images and write the tables and figures.

    Args:
        model: the segmentation U-Net (``x -> (B, K, H, W)`` logits; class 0 = background).
        images: ``(N, 1, H, W)`` inputs; labels ``(N,)`` their garment classes; foreground
            ``(N, H, W)`` bool silhouettes (``None``: taken as the non-background targets of
            :func:`~sumofparts.segmentation.unet.segmentation_targets`).
        class_names: names of the model's classes (background first) for the figure.
        n: how many images (the first n); methods: from ``SEGMENT_METHODS``; layer: Layer
            Grad-CAM's module; n_steps: IG's steps; seed: the random reference map's seed.
        n_figures: examples drawn in ``segmentation_maps``.
        out_dir: where to write the files (``None``: nothing is written).
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n must be an int >= 1, got {n!r}")
    if batch_size < 1 or n_steps < 1 or n_figures < 0:
        raise InputError(f"batch_size and n_steps must be >= 1 and n_figures >= 0, got {batch_size}, {n_steps}, "
                         f"{n_figures}")
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise InputError(f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    n = min(n, images.shape[0])
    images, labels = images[:n], labels[:n].long()
    if foreground is None:
        from .unet import segmentation_targets

        foreground = segmentation_targets(images, labels) > 0
    foreground = foreground[:n].bool()
    model.eval()
    methods = list(methods)
    maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    segs, classes, ig_gap = [], [], []
    batches = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    bar = tqdm(total=len(batches) * len(methods), desc="segment", disable=not progress, dynamic_ncols=True)
    try:
        for start, stop in batches:
            x = images[start:stop]
            seg, cls = predicted_segments(model, x)
            segs.append(seg)
            classes.append(cls)
            for name in methods:
                bar.set_description(f"segment {name}: images {start + 1}-{stop}/{n}")
                maps[name].append(segment_attributions(model, x, seg, cls, methods=[name], layer=layer,
                                                       n_steps=n_steps)[name])
                bar.update(1)
            if "intgrad" in methods:
                with torch.no_grad():
                    f = SegmentSum(model)
                    gap = (f(x, seg) - f(torch.zeros_like(x), seg)).gather(1, cls.view(-1, 1)).squeeze(1)
                total = maps["intgrad"][-1].flatten(1).sum(1)
                ig_gap.append(((total - gap).abs() / gap.abs().clamp_min(1e-12)).double())
    finally:
        bar.close()
    segments = torch.cat(segs)
    cls_all = torch.cat(classes)
    full = {m: torch.cat(v) for m, v in maps.items()}
    full["random"] = random_maps(segments.shape, seed)
    shares = {m: segment_shares(v, segments) for m, v in full.items()}
    rows = _rows(shares)
    inter = (segments & foreground).flatten(1).sum(1).double()
    union = (segments | foreground).flatten(1).sum(1).double()
    seg_iou = (inter / union.clamp_min(1)).numpy()
    class_is_label = (cls_all == labels + 1).double().numpy()
    per_image = []
    for i in range(n):
        per_image.append({"index": i, "label": int(labels[i]), "class": int(cls_all[i]),
                          "segment_area": float(shares["random"].area[i]), "segment_iou": float(seg_iou[i]),
                          "inside": {m: float(s.inside[i]) for m, s in shares.items()}})
    from .. import __version__

    meta: dict[str, Any] = {
        "task": task, "n": n, "seed": seed, "methods": methods, "layer": layer, "n_steps": n_steps,
        "batch_size": batch_size, "class_rule": "most frequent non-background class",
        "segment_iou_mean": float(seg_iou.mean()), "class_is_label": float(class_is_label.mean()),
        "command": command, "unet": unet_info or {}, "seconds": time.time() - t0,
        "versions": {"sumofparts": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    if ig_gap:
        gaps = torch.cat(ig_gap)
        meta["ig_completeness"] = {"mean_relative_gap": float(gaps.mean()), "max_relative_gap": float(gaps.max())}
    result = SegmentationResult(rows=rows, per_image=per_image, meta=meta)
    if out_dir is not None:
        _write(result, Path(out_dir), images, segments, cls_all, full, class_names, n_figures)
    return result


def _write(result: SegmentationResult, out: Path, images: torch.Tensor, segments: torch.Tensor,
           classes: torch.Tensor, maps: dict[str, torch.Tensor], class_names: Sequence[str] | None,
           n_figures: int) -> None:
    from ..report import figures as F

    paths = {"markdown": out / "segmentation.md", "csv": out / "segmentation.csv",
             "json": out / "segmentation.json"}
    atomic_write_text(paths["csv"], csv_text(result.rows, COLUMNS))
    if n_figures:
        k = min(n_figures, images.shape[0])
        fig = maps_figure(images[:k], segments[:k], classes[:k], {m: v[:k] for m, v in maps.items() if m != "random"},
                          class_names)
        paths["maps_png"] = F.save_figure(fig, out / "segmentation_maps", close=True)["png"]
    fig = shares_figure(result.rows)
    paths["shares_png"] = F.save_figure(fig, out / "segmentation_shares", close=True)["png"]
    result.paths = paths
    atomic_write_json(paths["json"], _clean({"rows": result.rows, "columns": COLUMNS, "per_image": result.per_image,
                                             **result.meta, "files": {k: v.name for k, v in paths.items()}}))
    atomic_write_text(paths["markdown"], result.markdown())


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def maps_figure(images: torch.Tensor, segments: torch.Tensor, classes: torch.Tensor, maps: dict[str, torch.Tensor],
                class_names: Sequence[str] | None = None):
    """Rows: images; columns: the image with its segment outlined, then each method's map (red > 0 >
    blue, white at 0, each map scaled to its own largest |value|) with the same outline."""
    import matplotlib.pyplot as plt

    from ..report import figures as F

    rows, cols = images.shape[0], 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.3), squeeze=False)
    for r in range(rows):
        img = F.as_display_image(images[r])
        seg = segments[r].numpy().astype(float)
        c = int(classes[r])
        name = class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"
        panels = [("segment: " + name, F.masked_rgb(images[r], None, cmap="gray", vmin=float(img.min()),
                                                    vmax=float(img.max())))]
        panels += [(METHOD_LABELS.get(m, m), F.attribution_rgb(images[r], v[r])) for m, v in maps.items()]
        for ax, (title, rgb) in zip(axes[r], panels):
            ax.imshow(rgb, interpolation="nearest")
            ax.contour(seg, levels=[0.5], colors=["#fdd835"], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or ax is axes[r][0]:
                ax.set_title(title, fontsize=7)
    fig.suptitle("Attribution of the predicted segment (yellow outline); red > 0 > blue", fontsize=8)
    fig.tight_layout()
    return fig


def shares_figure(rows: list[dict[str, Any]]):
    """Bars: each method's concentration (share inside / segment area) ± std; 1 = no preference."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 2.4))
    names = [METHOD_LABELS.get(r["method"], r["method"]) for r in rows]
    ax.barh(names, [r["concentration"] for r in rows], xerr=[r["concentration_std"] for r in rows],
            color=["#999999" if r["method"] == "random" else "#1f5fa8" for r in rows])
    ax.axvline(1.0, color="#b2182b", lw=0.8, ls="--")
    ax.set_xlabel("share of |attribution| inside the segment / segment area")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
