"""Figures of a Sum-of-Parts explanation: pure functions from arrays to matplotlib figures.

Every function takes plain tensors or arrays (torch tensors are accepted and copied to
NumPy), checks their shapes and returns a :class:`matplotlib.figure.Figure`; nothing is
read from a model or a task. :func:`save_figure` writes a figure as PNG and SVG, each
atomically.

Shapes (one input, not a batch):

* ``image``: ``(C, H, W)`` with C = 1 or 3, or ``(H, W)``. An array laid out
  ``(H, W, C)`` is refused with a message saying how to transpose it.
* ``masks``: ``(G, H, W)`` bool (or 0/1), the groups at input resolution; their
  ``(H, W)`` must be the image's.
* ``weights``: ``(G,)`` the selector's weight of each group *for the explained output*.
* ``group_predictions``: ``(G,)`` each group's own prediction: a class index
  (classification) or the group's value of the explained output (regression).
* ``attribution``: ``(H, W)`` or ``(C, H, W)`` (summed over channels) for images,
  ``(L,)`` for tokens.

Colours used throughout: a diverging map (``RdBu_r``) centred at 0 for signed
attributions (red = for the explained output, blue = against it), always with a
labelled colour bar; in group captions, blue text means the group's own prediction
agrees with the model's final prediction, red means it does not. Pixels outside a group
are drawn washed out in grey (the backbone saw them as 0).
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import matplotlib.cm  # noqa: E402
import matplotlib.patches  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..io import atomic_write_bytes  # noqa: E402
from ..errors import InputError, InputTypeError

__all__ = [
    "AGREE_COLOR",
    "DISAGREE_COLOR",
    "DIVERGING_CMAP",
    "as_display_image",
    "check_masks",
    "check_vector",
    "select_groups",
    "masked_rgb",
    "attribution_rgb",
    "group_caption",
    "group_figure",
    "attribution_figure",
    "methods_figure",
    "curves_figure",
    "text_groups_figure",
    "text_attribution_figure",
    "save_figure",
    "figure_png_bytes",
    "figure_data_uri",
    "array_data_uri",
]

#: caption colour when a group's own prediction agrees with the final prediction
AGREE_COLOR = "#1f5fa8"
#: caption colour when it does not
DISAGREE_COLOR = "#b2182b"
#: colormap of signed attributions (centred at 0)
DIVERGING_CMAP = "RdBu_r"
_OUTSIDE_GREY = 0.88
_GROUP_HIGHLIGHT = "#fdd835"


# -- input checks -------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise InputTypeError(f"{name} is None; expected an array")
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bool":
            return x.numpy().astype(bool)
        if x.is_floating_point():
            return x.numpy() if str(x.dtype) == "torch.float64" else x.float().numpy()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise InputTypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from exc


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + ")"


def as_display_image(image: Any, name: str = "image") -> np.ndarray:
    """Check an image and return it as ``(H, W)`` (one channel) or ``(H, W, 3)`` floats.

    Accepted: ``(C, H, W)`` with C in {1, 3}, or ``(H, W)``. Refused with a ``ValueError``
    that names the expected and the received shape: ``(H, W, C)`` layouts, batches
    ``(B, C, H, W)``, other channel counts, non-finite values.
    """
    a = _to_numpy(image, name)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number):
        raise InputTypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 2:
        out = a
    elif a.ndim == 3:
        if a.shape[0] in (1, 3):
            out = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
        elif a.shape[-1] in (1, 3, 4):
            raise InputError(
                f"{name} has shape {_shape(a)}, which looks like (H, W, C); expected (C, H, W) = "
                f"({a.shape[-1]}, {a.shape[0]}, {a.shape[1]}) or (H, W). Move the channel axis first "
                f"(tensor.permute(2, 0, 1) or np.moveaxis(array, -1, 0)).")
        else:
            raise InputError(f"{name} has shape {_shape(a)}; expected (C, H, W) with C = 1 or 3, or (H, W)")
    elif a.ndim == 4:
        raise InputError(f"{name} has shape {_shape(a)}, a batch; expected one image (C, H, W) or (H, W): "
                         f"pass image[i]")
    else:
        raise InputError(f"{name} has shape {_shape(a)}; expected (C, H, W) with C = 1 or 3, or (H, W)")
    if min(out.shape[:2]) < 1:
        raise InputError(f"{name} has shape {_shape(a)}: an empty image")
    if not np.all(np.isfinite(out)):
        raise InputError(f"{name} holds non-finite values (NaN or inf)")
    return out


def check_masks(masks: Any, size: tuple[int, ...], name: str = "masks") -> np.ndarray:
    """Check group masks against an input size and return them as a bool array.

    ``size``: ``(H, W)`` for images -> masks must be ``(G, H, W)``; ``(L,)`` for tokens ->
    masks must be ``(G, L)``. Values must be 0/1 (or bool).
    """
    m = _to_numpy(masks, name)
    want = "(G, " + ", ".join(str(s) for s in size) + ")"
    if m.ndim != len(size) + 1:
        hint = ""
        if m.ndim == len(size) and tuple(m.shape) == tuple(size):
            hint = " (a single mask: add a group axis with masks[None])"
        raise InputError(f"{name} has shape {_shape(m)}; expected {want}{hint}")
    if tuple(m.shape[1:]) != tuple(size):
        what = "image" if len(size) == 2 else "token sequence"
        raise InputError(f"{name} have size {tuple(m.shape[1:])} but the {what} has size {tuple(size)}: "
                         f"expected {want}, got {_shape(m)}")
    if m.shape[0] < 1:
        raise InputError(f"{name} has no groups (shape {_shape(m)})")
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            raise InputError(f"{name} must be boolean (or 0/1); got values other than 0 and 1")
        m = m.astype(bool)
    return m


def check_vector(values: Any, length: int, name: str, *, integer: bool = False) -> np.ndarray:
    """A 1-D array of ``length`` finite numbers (integers if ``integer``)."""
    v = _to_numpy(values, name)
    if v.ndim != 1 or v.shape[0] != length:
        raise InputError(f"{name} has shape {_shape(v)}; expected ({length},), one value per group")
    if integer:
        if not (np.issubdtype(v.dtype, np.integer) or np.all(np.mod(v, 1) == 0)):
            raise InputError(f"{name} must hold class indices (integers), got {v.tolist()}")
        return v.astype(np.int64)
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name} holds non-finite values")
    return v


def _attr_map(attribution: Any, size: tuple[int, int], name: str) -> np.ndarray:
    """An image attribution ``(H, W)`` or ``(C, H, W)`` -> ``(H, W)`` (channels summed)."""
    a = _to_numpy(attribution, name).astype(np.float64)
    if a.ndim == 3:
        if a.shape[1:] == tuple(size):
            a = a.sum(0)
        elif a.shape[:2] == tuple(size):
            raise InputError(f"{name} has shape {_shape(a)}, which looks like (H, W, C); expected (C, H, W) = "
                             f"(C, {size[0]}, {size[1]}) or (H, W) = {tuple(size)}")
        else:
            raise InputError(f"{name} has shape {_shape(a)}; expected (C, {size[0]}, {size[1]}) or {tuple(size)}")
    elif a.ndim != 2:
        raise InputError(f"{name} has shape {_shape(a)}; expected (H, W) = {tuple(size)} or (C, H, W)")
    if a.shape != tuple(size):
        raise InputError(f"{name} has size {a.shape} but the image has size {tuple(size)}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} holds non-finite values (NaN or inf)")
    return a


# -- small helpers ----------------------------------------------------------------------------
def select_groups(weights: Any, n_best: int = 3, n_zero: int = 3) -> tuple[list[int], list[int]]:
    """Indices of the ``n_best`` highest-weighted groups (weight > 0, best first) and of the
    first ``n_zero`` groups whose weight is exactly 0 (in index order)."""
    w = _to_numpy(weights, "weights").astype(np.float64).ravel()
    positive = [int(i) for i in np.argsort(-w, kind="stable") if w[i] > 0]
    zero = [int(i) for i in np.flatnonzero(w == 0)]
    return positive[:max(0, n_best)], zero[:max(0, n_zero)]


def _rgb(img: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    if img.ndim == 3:
        lo, hi = float(img.min()), float(img.max())
        return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    norm = mcolors.Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
    return plt.get_cmap(cmap)(norm(img))[..., :3]


def masked_rgb(image: Any, mask: Any, *, cmap: str = "gray", vmin: float | None = None,
               vmax: float | None = None) -> np.ndarray:
    """``(H, W, 3)`` floats: the image coloured with ``cmap``, pixels outside ``mask``
    washed out to light grey. ``mask``: ``(H, W)`` bool (``None``: the whole image)."""
    img = as_display_image(image)
    lo = float(img.min()) if vmin is None else vmin
    hi = float(img.max()) if vmax is None else vmax
    rgb = _rgb(img, cmap, lo, hi)
    if mask is None:
        return rgb
    m = check_masks(_to_numpy(mask, "mask")[None], img.shape[:2], "mask")[0]
    out = rgb.copy()
    out[~m] = 0.25 * out[~m] + 0.75 * _OUTSIDE_GREY
    return out


def attribution_rgb(image: Any, attribution: Any, *, peak: float | None = None, cmap: str = "gray",
                    alpha: float = 0.8) -> np.ndarray:
    """``(H, W, 3)``: a signed attribution in the diverging colours (red > 0 > blue, white at 0)
    over a grey copy of the image; ``peak`` (default: the map's largest ``|value|``) maps to
    full colour. The fast, figure-free rendering the HTML explorer uses."""
    img = as_display_image(image)
    a = _attr_map(attribution, img.shape[:2], "attribution")
    base = _rgb(img, cmap, float(img.min()), float(img.max())).mean(-1, keepdims=True)
    p = float(np.abs(a).max()) if peak is None else float(peak)
    p = p if p > 0 else 1.0
    heat = plt.get_cmap(DIVERGING_CMAP)(np.clip(0.5 + 0.5 * a / p, 0, 1))[..., :3]
    return alpha * heat + (1 - alpha) * base


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100 or a < 1e-3:
        return f"{v:.3g}"
    return f"{v:.3f}"


def _name(names: Sequence[str] | None, i: int) -> str:
    if names is not None and 0 <= i < len(names):
        return str(names[i])
    return f"class {i}"


def group_caption(weight: float, prediction: float | int, final_prediction: float | int, *,
                  kind: str = "classification", output_names: Sequence[str] | None = None,
                  target: int | None = None, scale: float | None = None) -> tuple[str, str]:
    """The caption of one group and its colour.

    Classification: ``"weight 0.34 · c 0.91 / predicts: hen"``, blue when the group's own
    class is the final one, red otherwise. Regression: the group's own value of the
    explained output, in black (there is no agreement for a real number).
    """
    head = f"weight {_fmt(weight)}" + (f" · c {_fmt(scale)}" if scale is not None else "")
    if kind == "classification":
        agrees = int(prediction) == int(final_prediction)
        verdict = "agrees" if agrees else f"final: {_name(output_names, int(final_prediction))}"
        return (f"{head}\npredicts: {_name(output_names, int(prediction))} ({verdict})",
                AGREE_COLOR if agrees else DISAGREE_COLOR)
    label = _name(output_names, target) if target is not None else "output"
    return f"{head}\ngroup's {label}: {_fmt(float(prediction))}", "black"


# -- image figures ----------------------------------------------------------------------------
def group_figure(image: Any, masks: Any, weights: Any, group_predictions: Any, final_prediction: float | int, *,
                 kind: str = "classification", output_names: Sequence[str] | None = None,
                 target: int | None = None, scales: Any = None, n_best: int = 3, n_zero: int = 3,
                 cmap: str = "gray", value_label: str = "input value (normalised)",
                 title: str | None = None) -> Figure:
    """The input beside its best groups (top row) and zero-weight groups (bottom row).

    Each group is the input with the pixels outside the group washed out, captioned with
    its weight (and scale c if ``scales`` is given) and its own prediction; in
    classification the prediction is blue when it agrees with ``final_prediction`` and
    red when it does not. ``target``: the explained output (its name heads the figure).
    """
    if kind not in ("classification", "regression"):
        raise InputError(f"kind must be 'classification' or 'regression', got {kind!r}")
    img = as_display_image(image)
    H, W = img.shape[:2]
    m = check_masks(masks, (H, W))
    G = m.shape[0]
    w = check_vector(weights, G, "weights")
    preds = check_vector(group_predictions, G, "group_predictions", integer=kind == "classification")
    c = check_vector(scales, G, "scales") if scales is not None else None
    best, zero = select_groups(w, n_best, n_zero)
    ncols = max(1, n_best, n_zero)
    lo, hi = float(img.min()), float(img.max())
    fig = plt.figure(figsize=(2.1 * (ncols + 1) + 0.6, 5.4), layout="constrained")
    gs = fig.add_gridspec(2, ncols + 1)
    ax0 = fig.add_subplot(gs[:, 0])
    shown = ax0.imshow(img if img.ndim == 2 else _rgb(img, cmap, lo, hi), cmap=cmap, vmin=lo, vmax=hi,
                       interpolation="nearest")
    target_label = _name(output_names, target) if target is not None else None
    if kind == "classification":
        final_text = f"final prediction: {_name(output_names, int(final_prediction))}"
    else:
        final_text = f"final {target_label or 'output'}: {_fmt(float(final_prediction))}"
    ax0.set_title("input\n" + final_text, fontsize=9)
    ax0.set_xticks([])
    ax0.set_yticks([])
    if img.ndim == 2:
        cb = fig.colorbar(shown, ax=ax0, orientation="horizontal", fraction=0.08, pad=0.02)
        cb.set_label(value_label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    for row, (label, idx) in enumerate((("highest weight", best), ("zero weight", zero))):
        for j in range(ncols):
            ax = fig.add_subplot(gs[row, j + 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(idx):
                ax.axis("off")
                if j == 0:
                    ax.text(0.5, 0.5, f"no {label} groups", ha="center", va="center", fontsize=9, color="0.4",
                            transform=ax.transAxes)
                continue
            g = idx[j]
            ax.imshow(masked_rgb(img if img.ndim == 2 else np.moveaxis(img, -1, 0), m[g], cmap=cmap, vmin=lo,
                                 vmax=hi), interpolation="nearest")
            text, colour = group_caption(float(w[g]), preds[g], final_prediction, kind=kind,
                                         output_names=output_names, target=target,
                                         scale=None if c is None else float(c[g]))
            ax.set_title(f"group {g} ({label})\n{text}", fontsize=8, color=colour)
    head = title or ("SOP groups" + (f" for output '{target_label}'" if target_label else ""))
    fig.suptitle(head, fontsize=11)
    if kind == "classification":
        note = (f"Caption colour: blue = the group's own prediction agrees with the final prediction, red = it does "
                f"not. Grey pixels are outside the group (the backbone saw 0 there). Weights are for "
                f"'{target_label or 'the predicted class'}'.")
    else:
        note = ("Grey pixels are outside the group (the backbone saw 0 there). Weights and group values are for "
                f"'{target_label or 'the explained output'}'; the final value is the weighted sum w·c·y.")
    fig.supxlabel(note, fontsize=7, wrap=True)
    return fig


def _symmetric_norm(a: np.ndarray) -> mcolors.Normalize:
    m = float(np.abs(a).max()) if a.size else 0.0
    m = m if m > 0 else 1.0
    return mcolors.TwoSlopeNorm(vcenter=0.0, vmin=-m, vmax=m)


def attribution_figure(image: Any, attribution: Any, *, target_name: str | None = None,
                       units: str = "logit units", cmap: str = "gray", title: str | None = None) -> Figure:
    """The input and the per-pixel SOP attribution ``Σ_i mask_i · w_i c_i y_i`` for one output.

    Diverging colours centred at 0 (red: supports ``target_name``, blue: opposes), over a
    faded copy of the input; the colour bar is labelled in ``units``.
    """
    img = as_display_image(image)
    a = _attr_map(attribution, img.shape[:2], "attribution")
    lo, hi = float(img.min()), float(img.max())
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.4), layout="constrained")
    axes[0].imshow(_rgb(img, cmap, lo, hi), interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    base = _rgb(img, cmap, lo, hi).mean(-1)
    axes[1].imshow(base, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im = axes[1].imshow(a, cmap=DIVERGING_CMAP, norm=_symmetric_norm(a), alpha=0.8, interpolation="nearest")
    who = f"'{target_name}'" if target_name else "the explained output"
    axes[1].set_title(f"SOP attribution to {who}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03)
    cb.set_label(f"Σ over groups covering the pixel of w·c·y ({units})\nred: for {who}, blue: against", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def methods_figure(image: Any, maps: Mapping[str, Any], *, target_name: str | None = None, ncols: int = 3,
                   cmap: str = "gray", title: str | None = None) -> Figure:
    """Heat maps of several attribution methods on the same input, one panel each.

    ``maps``: method name -> ``(H, W)`` or ``(C, H, W)`` scores (channels summed). Each
    map is divided by its own largest absolute value (methods' scores have different
    units), so one diverging colour bar from −1 to 1 serves all panels.
    """
    if not isinstance(maps, Mapping) or not maps:
        raise InputError("maps must be a non-empty mapping of method name -> attribution map")
    img = as_display_image(image)
    size = img.shape[:2]
    checked = {str(k): _attr_map(v, size, f"maps[{k!r}]") for k, v in maps.items()}
    n = len(checked) + 1
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols + 0.8, 2.6 * nrows + 0.4), layout="constrained",
                             squeeze=False)
    lo, hi = float(img.min()), float(img.max())
    base = _rgb(img, cmap, lo, hi)
    flat = list(axes.ravel())
    flat[0].imshow(base, interpolation="nearest")
    flat[0].set_title("input", fontsize=9)
    norm = mcolors.TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0)
    im = None
    for ax, (name, a) in zip(flat[1:], checked.items()):
        peak = float(np.abs(a).max())
        ax.imshow(base.mean(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        im = ax.imshow(a / peak if peak > 0 else a, cmap=DIVERGING_CMAP, norm=norm, alpha=0.8,
                       interpolation="nearest")
        ax.set_title(f"{name}" + ("" if peak > 0 else " (all zero)") + f"\nmax |score| {_fmt(peak)}", fontsize=8)
    for ax in flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[n:]:
        ax.axis("off")
    if im is not None:
        cb = fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02)
        who = f"'{target_name}'" if target_name else "the explained output"
        cb.set_label(f"score ÷ the method's max |score|\nred: for {who}, blue: against", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(title or "Post-hoc attributions on the same input", fontsize=11)
    return fig


def curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                  ylabel: str = "probability of the originally predicted class", title: str | None = None) -> Figure:
    """Insertion and deletion curves, one line per method.

    ``curves``: method name -> ``{"fractions": [...], "insertion": [...], "deletion": [...]}``
    (the format of ``evaluation.json``'s ``curves``); a method without one of the two
    curves is left out of that panel.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise InputError("curves must be a non-empty mapping of method name -> {'fractions', 'insertion', "
                         "'deletion'}")
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), layout="constrained", sharey=True)
    for name, c in curves.items():
        if not isinstance(c, Mapping) or "fractions" not in c:
            raise InputError(f"curves[{name!r}] must be a mapping with 'fractions' and 'insertion'/'deletion'")
        x = np.asarray(c["fractions"], dtype=float)
        for ax, key in zip(axes, ("insertion", "deletion")):
            if c.get(key) is None:
                continue
            y = np.asarray(c[key], dtype=float)
            if y.shape != x.shape:
                raise InputError(f"curves[{name!r}][{key!r}] has {y.size} points but 'fractions' has {x.size}")
            ax.plot(x, y, marker="o", markersize=3, label=str(name))
    axes[0].set_title("insertion (higher is better)", fontsize=10)
    axes[0].set_xlabel("fraction of cells kept, highest attribution first")
    axes[1].set_title("deletion (lower is better)", fontsize=10)
    axes[1].set_xlabel("fraction of cells removed, highest attribution first")
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, title="method", title_fontsize=8, loc="best")
    fig.suptitle(title or "Insertion and deletion curves (mean over the evaluated test items)", fontsize=11)
    return fig


# -- text figures -----------------------------------------------------------------------------
_CHAR_W = 0.6  # monospace advance in units of the font size


def _layout_tokens(tokens: Sequence[str], width_in: float, fontsize: float) -> list[list[tuple[int, float, float]]]:
    """Wrap tokens into lines: per line a list of (token index, x inches, width inches)."""
    cw = _CHAR_W * fontsize / 72.0
    gap = 0.5 * cw
    lines: list[list[tuple[int, float, float]]] = [[]]
    x = 0.0
    for i, tok in enumerate(tokens):
        w = max(1, len(tok)) * cw + cw * 0.6
        if x > 0 and x + w > width_in:
            lines.append([])
            x = 0.0
        lines[-1].append((i, x, w))
        x += w + gap
    return lines


def _draw_tokens(fig: Figure, tokens: Sequence[str], colours: Sequence[Any], text_colours: Sequence[str],
                 top_in: float, left_in: float, width_in: float, fontsize: float) -> float:
    """Draw the tokens as coloured boxes starting at ``top_in`` (inches from the top); returns the new top."""
    H = fig.get_figheight()
    line_h = fontsize / 72.0 * 1.9
    for line in _layout_tokens(tokens, width_in, fontsize):
        y = H - top_in - line_h / 2
        for i, x, w in line:
            fig.patches.append(matplotlib.patches.FancyBboxPatch(
                (left_in + x, y - line_h * 0.36), w, line_h * 0.72, boxstyle="round,pad=0,rounding_size=0.03",
                transform=fig.dpi_scale_trans, facecolor=colours[i], edgecolor="0.75", linewidth=0.4))
            fig.text(left_in + x + w / 2, y, tokens[i], transform=fig.dpi_scale_trans, ha="center", va="center",
                     fontsize=fontsize, family="monospace", color=text_colours[i])
        top_in += line_h
    return top_in


def _check_tokens(tokens: Sequence[str]) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not tokens:
        raise InputError("tokens must be a non-empty list of strings (one per token)")
    return [str(t) for t in tokens]


def text_groups_figure(tokens: Sequence[str], masks: Any, weights: Any, group_predictions: Any,
                       final_prediction: float | int, *, kind: str = "classification",
                       output_names: Sequence[str] | None = None, target: int | None = None, scales: Any = None,
                       n_best: int = 3, n_zero: int = 3, width: float = 8.0, fontsize: float = 9.0,
                       title: str | None = None) -> Figure:
    """Token groups: the text once per shown group, its tokens highlighted.

    ``tokens``: L strings; ``masks``: ``(G, L)`` bool. The best groups come first, then the
    zero-weight groups; each is captioned like :func:`group_figure`.
    """
    toks = _check_tokens(tokens)
    m = check_masks(masks, (len(toks),))
    G = m.shape[0]
    w = check_vector(weights, G, "weights")
    preds = check_vector(group_predictions, G, "group_predictions", integer=kind == "classification")
    c = check_vector(scales, G, "scales") if scales is not None else None
    best, zero = select_groups(w, n_best, n_zero)
    shown = [(g, "highest weight") for g in best] + [(g, "zero weight") for g in zero]
    fs = fontsize
    line_h = fs / 72.0 * 1.9
    n_lines = len(_layout_tokens(toks, width - 0.4, fs))
    block = 2 * fs / 72.0 * 1.5 + n_lines * line_h + 0.15
    height = 0.6 + max(1, len(shown)) * block + 0.55
    fig = Figure(figsize=(width, height))
    target_label = _name(output_names, target) if target is not None else None
    fig.text(0.2, height - 0.3, title or "SOP token groups" + (f" for '{target_label}'" if target_label else ""),
             transform=fig.dpi_scale_trans, fontsize=11, va="center")
    top = 0.6
    for g, label in shown:
        text, colour = group_caption(float(w[g]), preds[g], final_prediction, kind=kind, output_names=output_names,
                                     target=target, scale=None if c is None else float(c[g]))
        fig.text(0.2, height - top - fs / 72.0 * 0.9, f"group {g} ({label}): " + text.replace("\n", " · "),
                 transform=fig.dpi_scale_trans, fontsize=fs, color=colour, va="center")
        top += 2 * fs / 72.0 * 1.5 * 0.7
        fills = [_GROUP_HIGHLIGHT if m[g, i] else "white" for i in range(len(toks))]
        inks = ["black" if m[g, i] else "0.6" for i in range(len(toks))]
        top = _draw_tokens(fig, toks, fills, inks, top, 0.2, width - 0.4, fs) + 0.25
    if not shown:
        fig.text(0.2, height - top - 0.2, "no groups to show", transform=fig.dpi_scale_trans, fontsize=fs)
    fig.legend(handles=[Patch(facecolor=_GROUP_HIGHLIGHT, edgecolor="0.75", label="token in the group"),
                        Patch(facecolor="white", edgecolor="0.75",
                              label="token outside the group (replaced by the mask token)"),
                        Patch(facecolor=AGREE_COLOR, label="caption: group agrees with the final prediction"),
                        Patch(facecolor=DISAGREE_COLOR, label="caption: group disagrees")],
               loc="lower center", ncol=2, fontsize=7, frameon=False)
    return fig


def text_attribution_figure(tokens: Sequence[str], scores: Any, *, target_name: str | None = None,
                            units: str = "logit units", width: float = 8.0, fontsize: float = 9.0,
                            title: str | None = None) -> Figure:
    """Tokens as boxes coloured by a signed score (diverging, centred at 0) with a colour bar."""
    toks = _check_tokens(tokens)
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 1 or s.shape[0] != len(toks):
        raise InputError(f"scores has shape {_shape(s)}; expected ({len(toks)},), one per token")
    if not np.all(np.isfinite(s)):
        raise InputError("scores holds non-finite values")
    norm = _symmetric_norm(s)
    cmap = plt.get_cmap(DIVERGING_CMAP)
    fills = [cmap(norm(v)) for v in s]
    inks = ["white" if abs(norm(v) - 0.5) > 0.35 else "black" for v in s]
    fs = fontsize
    n_lines = len(_layout_tokens(toks, width - 0.4, fs))
    height = 0.7 + n_lines * fs / 72.0 * 1.9 + 1.0
    fig = Figure(figsize=(width, height))
    who = f"'{target_name}'" if target_name else "the explained output"
    fig.text(0.2, height - 0.3, title or f"SOP attribution of each token to {who}", transform=fig.dpi_scale_trans,
             fontsize=11, va="center")
    _draw_tokens(fig, toks, fills, inks, 0.6, 0.2, width - 0.4, fs)
    cax = fig.add_axes((0.25, 0.12 / height * 2, 0.5, 0.12 / height * 1.2))
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label(f"attribution ({units}); red: for {who}, blue: against", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig


# -- output -----------------------------------------------------------------------------------
def figure_png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_data_uri(fig: Figure, dpi: int = 110, close: bool = True) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (closes it unless ``close=False``)."""
    try:
        return "data:image/png;base64," + base64.b64encode(figure_png_bytes(fig, dpi)).decode("ascii")
    finally:
        if close:
            plt.close(fig)


def array_data_uri(rgb: Any, scale: int = 1) -> str:
    """An ``(H, W, 3)`` float array in [0, 1] (or uint8) as a PNG data URI, each pixel
    repeated ``scale`` times along both axes (nearest-neighbour enlargement)."""
    a = _to_numpy(rgb, "rgb")
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise InputError(f"rgb has shape {_shape(a)}; expected (H, W, 3)")
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, 0), scale, 1)
    buf = io.BytesIO()
    plt.imsave(buf, a, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def save_figure(fig: Figure, path_without_suffix: str | Path, *, dpi: int = 150,
                close: bool = False) -> dict[str, Path]:
    """Write ``fig`` as ``<path>.png`` and ``<path>.svg``, each atomically (temporary file +
    ``os.replace``); returns ``{"png": path, "svg": path}``. A trailing ``.png``/``.svg``
    on the path is dropped."""
    p = Path(path_without_suffix)
    if p.suffix.lower() in (".png", ".svg"):
        p = p.with_suffix("")
    out = {}
    try:
        for fmt in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
            out[fmt] = atomic_write_bytes(Path(f"{p}.{fmt}"), buf.getvalue())
    finally:
        if close:
            plt.close(fig)
    return out
