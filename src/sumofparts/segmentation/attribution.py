"""Attribution for a segment of a dense model's output (Captum's segmentation recipe).

A segmentation model outputs logits ``(B, K, H, W)``: one score per class and pixel. To ask
"which input pixels make the model call this region class k", the dense output is summed over
the region (a custom forward, :class:`SegmentSum`)::

    F_S(x)[c] = Σ_{p ∈ S} logits(x)[c, p]          (B, K): one value per class, target k

and an ordinary attribution method explains ``F_S(x)[k]``. The segment S is what the model
itself predicts: the pixels whose argmax class is k (:func:`predicted_segments`; by default k is
each image's most frequent non-background class). Methods (:data:`SEGMENT_METHODS`):

* ``intgrad``: Integrated Gradients of ``F_S[k]`` from the all-zero image (the fashion task's
  background), ``(x − 0) ⊙ ∫₀¹ ∂F_S[k](αx)/∂x dα``; it sums to ``F_S[k](x) − F_S[k](0)``.
* ``guided_backprop``: the gradient of ``F_S[k]`` with every ReLU's backward replaced by
  ReLU of the incoming gradient (where the input is positive).
* ``layer_gradcam``: ``ReLU(Σ_u α_u A_u)`` on a named layer of the U-Net (default ``up1``, the
  last up-sampling, as in the talk's U-Net case study), ``α_u`` the mean over positions of
  ``∂F_S[k]/∂A_u``, brought to the input with ``LayerAttribution.interpolate`` (bilinear).

Captum computes every map; the segment goes to the forward as an additional argument, so
Captum expands it with the inputs (IG evaluates ``n_steps`` scaled copies at once).

How much of a map lies on the segment (:func:`segment_shares`): the share of the map's
absolute mass inside S, ``Σ_{p∈S} |a_p| / Σ_p |a_p|``, against the segment's area ``|S| / HW``
— the share a map with no preference for the segment (e.g. i.i.d. random values) has in
expectation. Their ratio, the *concentration*, is 1 for such a map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..attribution.captum import quiet_captum
from .unet import BACKGROUND
from ..errors import InputError

__all__ = ["SegmentSum", "predicted_segments", "segment_attributions", "segment_shares", "random_maps",
           "SegmentShares", "SEGMENT_METHODS", "DEFAULT_LAYER", "DEFAULT_IG_STEPS"]

#: the methods of this module, in the order they are shown
SEGMENT_METHODS = ("intgrad", "guided_backprop", "layer_gradcam")
#: the layer Grad-CAM reads by default (the U-Net's last up-sampling)
DEFAULT_LAYER = "up1"
#: IG's steps by default (see :func:`segment_attributions`)
DEFAULT_IG_STEPS = 256


class SegmentSum(nn.Module):
    """``forward(x: (B, C_in, H, W), segment: (B, H, W) bool) -> (B, K)``: the model's logits summed
    over each image's segment, one value per class."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)  # (B, K, H, W)
        return (logits * segment.unsqueeze(1).to(logits.dtype)).sum((2, 3))


@torch.no_grad()
def predicted_segments(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The segments the model predicts: ``(B, H, W)`` bool (pixels whose argmax is the class) and ``(B,)`` classes.

    ``classes=None``: each image's most frequent non-background predicted class. A class given
    for an image where the model predicts no pixel of it raises ``ValueError``.
    """
    logits = model(x)  # (B, K, H, W)
    pred, K = logits.argmax(1), int(logits.shape[1])
    if classes is None:
        counts = torch.nn.functional.one_hot(pred.flatten(1), K).sum(1)  # (B, K)
        counts[:, BACKGROUND] = -1
        classes = counts.argmax(1)
    elif isinstance(classes, int):
        if not 0 <= classes < K:
            raise InputError(f"class must be in [0, {K}), got {classes}")
        classes = torch.full((x.shape[0],), classes, dtype=torch.long)
    classes = torch.as_tensor(classes, dtype=torch.long)
    segments = pred == classes.view(-1, 1, 1)
    empty = (~segments.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"the model predicts no pixel of the requested class for images {empty[:10]}: "
                         "their segment is empty")
    return segments, classes


def segment_attributions(model: nn.Module, x: torch.Tensor, segments: torch.Tensor, classes: torch.Tensor, *,
                         methods: Sequence[str] = SEGMENT_METHODS, layer: str = DEFAULT_LAYER,
                         n_steps: int = DEFAULT_IG_STEPS, internal_batch_size: int | None = 512
                         ) -> dict[str, torch.Tensor]:
    """``{method: (B, H, W)}``: each method's attribution of ``F_S[k]`` (summed over input channels).

    Args:
        model: the segmentation model, ``x -> (B, K, H, W)``; its ReLUs must be ``nn.ReLU``
            modules for Guided Backprop.
        x: ``(B, C, H, W)`` inputs; segments ``(B, H, W)`` bool; classes ``(B,)`` long.
        methods: names from :data:`SEGMENT_METHODS`.
        layer: the module name (``model.named_modules()``) Layer Grad-CAM reads.
        n_steps: IG's quadrature points (Gauss-Legendre). The segment sum of a ReLU U-Net's
            logits bends sharply along the path: on the first 16 test images the completeness gap
            ``|Σ a − (F_S(x) − F_S(0))| / |F_S(x) − F_S(0)|`` was 0.30 on average at 50 steps (Captum's
            default), 0.075 at 128, 0.041 at 256 and 0.016 at 400 (docs/segmentation.md).
        internal_batch_size: at most this many scaled images per forward pass (memory).
    """
    import captum.attr as ca

    unknown = [m for m in methods if m not in SEGMENT_METHODS]
    if unknown:
        raise InputError(f"unknown segmentation method(s) {unknown}; expected some of {', '.join(SEGMENT_METHODS)}")
    modules = dict(model.named_modules())
    if "layer_gradcam" in methods and (not layer or layer not in modules):
        raise InputError(f"unknown layer {layer!r} of the {type(model).__name__}; expected one of: "
                         f"{', '.join(n for n in modules if n)}")
    if segments.shape != (x.shape[0], *x.shape[2:]) or segments.dtype != torch.bool:
        raise InputError(f"expected segments as a bool tensor of shape {(x.shape[0], *x.shape[2:])}, got "
                         f"{tuple(segments.shape)} {segments.dtype}")
    forward = SegmentSum(model).eval()
    target = torch.as_tensor(classes, dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    with quiet_captum():
        for name in methods:
            if name == "intgrad":
                a = ca.IntegratedGradients(forward).attribute(
                    x, baselines=torch.zeros_like(x), target=target, additional_forward_args=(segments,),
                    n_steps=n_steps, internal_batch_size=internal_batch_size)
            elif name == "guided_backprop":
                a = ca.GuidedBackprop(forward).attribute(x, target=target, additional_forward_args=(segments,))
            else:
                cam = ca.LayerGradCam(forward, modules[layer]).attribute(
                    x, target=target, additional_forward_args=(segments,), relu_attributions=True)
                a = ca.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
            out[name] = a.detach().sum(1)
    return out


def random_maps(shape: Sequence[int], seed: int) -> torch.Tensor:
    """``shape`` i.i.d. standard normal values from a generator seeded with ``seed``: a map that
    prefers no pixel, the reference of :func:`segment_shares`."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))


@dataclass
class SegmentShares:
    """Per image: where a map's absolute mass lies relative to the segment.

    Attributes:
        inside: ``(B,)`` ``Σ_{p∈S} |a_p| / Σ_p |a_p|`` (0 where the map is all zero).
        positive_inside: ``(B,)`` the same for the positive part ``max(a, 0)``.
        area: ``(B,)`` ``|S| / (H·W)``, a preference-free map's expected ``inside``.
        concentration: ``(B,)`` ``inside / area``.
    """

    inside: np.ndarray
    positive_inside: np.ndarray
    area: np.ndarray
    concentration: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.concentration = self.inside / self.area


def segment_shares(maps: torch.Tensor, segments: torch.Tensor) -> SegmentShares:
    """``maps: (B, H, W)``, ``segments: (B, H, W)`` bool -> :class:`SegmentShares`."""
    if maps.shape != segments.shape:
        raise InputError(f"maps {tuple(maps.shape)} and segments {tuple(segments.shape)} differ in shape")
    a = maps.detach().to(torch.float64).flatten(1)
    s = segments.flatten(1).to(torch.float64)
    if bool((s.sum(1) == 0).any()):
        raise InputError("an image has an empty segment: the share inside it is undefined")

    def share(v: torch.Tensor) -> np.ndarray:
        total = v.sum(1)
        return torch.where(total > 0, (v * s).sum(1) / total.clamp_min(1e-300), torch.zeros_like(total)).numpy()

    return SegmentShares(inside=share(a.abs()), positive_inside=share(a.clamp_min(0)),
                         area=(s.sum(1) / s.shape[1]).numpy())

