"""Perturbation methods: Feature Ablation, Occlusion, Shapley Value Sampling, KernelSHAP and LIME through
Captum (the cells are the features), and RISE (Petsiuk et al., 2018), saliency from randomly masked inputs:

    S_t(x) = 1 / (n · p) · Σ_{i=1..n} P(t | x ⊙ M_i) · M_i

Images: each mask ``M_i`` is a random binary ``s_h × s_w`` grid (each cell kept with
probability ``p``), upsampled bilinearly to ``((s_h+1)·c_h, (s_w+1)·c_w)`` pixels
(``c = ceil(H / s)``) and cropped at a random shift in ``[0, c)``: a smooth mask with
values in [0, 1]. Masked pixels go to 0 (the zero baseline). Text: each mask is a
binary vector over the tokens; tokens outside it are replaced as in
``adapter.mask_inputs`` ([MASK] embedding; special tokens and padding untouched).

All masks come from a ``torch.Generator`` seeded with ``seed`` (no global RNG); the
same masks are used for every input of a batch. The ``B · n`` masked inputs are sent
through the backbone in chunks of ``batch_size``.
"""
from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from ..adapters.base import BackboneAdapter, Inputs
from ..errors import InputError, InputTypeError
from .base import AttributionMethod
from .captum import DEFAULT_SAMPLE_BUDGET, CaptumMethod, _captum

__all__ = ["FeatureAblation", "Occlusion", "ShapleyValueSampling", "KernelSHAP", "LIME", "RISE", "rise_masks",
           "PERTURBATION_METHODS"]


# ---------------------------------------------------------------------------------------------
# perturbation methods: cells are the features
# ---------------------------------------------------------------------------------------------
class FeatureAblation(CaptumMethod):
    """f_t(x) − f_t(x with cell j set to the baseline), for every cell j. N + 1 forward passes."""

    name = "feature_ablation"
    not_additive = "single-cell drops f(x) − f(x without cell j) add up to f(x) − f(∅) only without interactions"
    multiplies_by_inputs = True
    defaults = {"perturbations_per_eval": 16}
    uses_baselines = True
    uses_feature_mask = True
    cell_features = True

    @property
    def captum_class(self):
        return _captum().FeatureAblation


class Occlusion(CaptumMethod):
    """Sliding-window occlusion: each feature gets the mean drop f_t(x) − f_t(x with a window
    set to the baseline) over the windows covering it.

    Images: a window of one cell, ``(C, ceil(H / h), ceil(W / w))``, moved by
    ``(H // h, W // w)`` pixels (about N windows: where cells divide the image this is
    Feature Ablation on the cells; pixels past the last whole window get 0), unless
    ``sliding_window_shapes`` / ``strides`` are given (e.g. half-cell strides for the
    classic overlapping occlusion, about 4N passes). Text: windows of ``window_tokens``
    tokens (default 3) moved by 1 token over the embeddings, baseline ``[MASK]``.
    """

    name = "occlusion"
    not_additive = "sliding-window drops add up to f(x) − f(∅) only without interactions"
    multiplies_by_inputs = True
    defaults = {"perturbations_per_eval": 16, "sliding_window_shapes": None, "strides": None, "window_tokens": 3}
    uses_baselines = True

    @property
    def captum_class(self):
        return _captum().Occlusion

    def call_kwargs(self, kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        call = {**self.options, **kwargs}
        tokens = int(call.pop("window_tokens"))
        if self.is_text:  # (B, L, D) embeddings: windows of tokens, each token's whole vector
            D = x.shape[-1]
            call["sliding_window_shapes"] = call["sliding_window_shapes"] or (tokens, D)
            call["strides"] = call["strides"] or (1, D)
        elif self.adapter.cell_grid is not None:  # (B, C, H, W): windows of one cell
            C, H, W = x.shape[1:]
            gh, gw = self.adapter.cell_grid
            call["sliding_window_shapes"] = call["sliding_window_shapes"] or (C, math.ceil(H / gh), math.ceil(W / gw))
            call["strides"] = call["strides"] or (C, max(1, H // gh), max(1, W // gw))
        else:  # (B, d) features in a sequence: windows of ``window_tokens`` neighbouring features
            call["sliding_window_shapes"] = call["sliding_window_shapes"] or (tokens,)
            call["strides"] = call["strides"] or (1,)
        return call

    def reduce(self, attr: torch.Tensor) -> torch.Tensor:
        return attr[..., 0] if self.is_text else attr  # windows span the whole embedding


class ShapleyValueSampling(CaptumMethod):
    """Shapley values of the cells estimated from ``n_samples`` random permutations
    (each costs N + 1 forward passes)."""

    name = "shapley"
    completeness = "baseline"  # efficiency: Σ φ = f(x) − f(∅) (exact for each sampled permutation)
    multiplies_by_inputs = True
    defaults = {"n_samples": 5, "perturbations_per_eval": 16}
    uses_baselines = True
    uses_feature_mask = True
    cell_features = True
    sampling = True

    @property
    def captum_class(self):
        return _captum().ShapleyValueSampling


class KernelSHAP(CaptumMethod):
    """KernelSHAP: a linear model of f_t on ``n_samples`` random cell subsets, weighted by
    the Shapley kernel. Default budget: 20 samples, SOP's number of groups."""

    name = "kernelshap"
    completeness = "baseline"  # efficiency: Σ φ ≈ f(x) − f(∅); Captum always samples x and ∅ themselves
    multiplies_by_inputs = True
    defaults = {"n_samples": DEFAULT_SAMPLE_BUDGET, "perturbations_per_eval": 16}
    uses_baselines = True
    uses_feature_mask = True
    cell_features = True
    sampling = True

    @property
    def captum_class(self):
        return _captum().KernelShap


class LIME(CaptumMethod):
    """LIME: a linear surrogate of f_t fitted on ``n_samples`` random cell subsets (Bernoulli ½)
    weighted by an exponential cosine kernel (Captum's ``Lime``). Default budget: 20 samples.

    The surrogate is a ridge regression with α = 1 (``lime``'s own default, ``SkLearnRidge``),
    not Captum's Lasso with α = 0.01: the ridge solution scales with the output, while a fixed
    L1 penalty is compared with the output's variations, which on regression targets (changes of
    ~0.01 in Ω_m) are smaller than 0.01, so the Lasso zeroed every coefficient of 93 of 100 maps.
    ``interpretable_model`` / ``similarity_func`` / ``perturb_func`` options go to Captum's
    ``Lime`` constructor (``interpretable_model=SkLearnLasso(alpha=0.01)`` restores Captum's)."""

    name = "lime"
    completeness = "baseline"  # the surrogate's Σ β = g(1) − g(0), its estimate of f(x) − f(∅)
    multiplies_by_inputs = True  # β_j is the effect of switching cell j on: the indicator is the perturbation
    defaults = {"n_samples": DEFAULT_SAMPLE_BUDGET, "perturbations_per_eval": 16, "interpretable_model": None,
                "similarity_func": None, "perturb_func": None}
    uses_baselines = True
    uses_feature_mask = True
    cell_features = True
    sampling = True
    _constructor_keys = ("interpretable_model", "similarity_func", "perturb_func")

    def make_captum(self) -> Any:
        from captum._utils.models.linear_model import SkLearnRidge

        ctor = {k: self.options[k] for k in self._constructor_keys if self.options[k] is not None}
        ctor.setdefault("interpretable_model", SkLearnRidge(alpha=1.0))
        return _captum().Lime(self.forward_module().forward, **ctor)

    def call_kwargs(self, kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        call = {**self.options, **kwargs}
        for k in self._constructor_keys:
            call.pop(k, None)
        return call



def rise_masks(n: int, grid: tuple[int, int], size: tuple[int, int], p: float,
               generator: torch.Generator) -> torch.Tensor:
    """``n`` smooth RISE masks ``(n, H, W)`` in [0, 1]."""
    sh, sw = grid
    H, W = size
    ch, cw = math.ceil(H / sh), math.ceil(W / sw)
    low = (torch.rand(n, 1, sh, sw, generator=generator) < p).float()
    up = nn.functional.interpolate(low, size=((sh + 1) * ch, (sw + 1) * cw), mode="bilinear", align_corners=False)
    dy = torch.randint(0, ch, (n,), generator=generator)
    dx = torch.randint(0, cw, (n,), generator=generator)
    rows = dy[:, None] + torch.arange(H)[None, :]  # (n, H)
    cols = dx[:, None] + torch.arange(W)[None, :]  # (n, W)
    idx = torch.arange(n)[:, None, None]
    return up[:, 0][idx, rows[:, :, None], cols[:, None, :]]  # (n, H, W)


class RISE(AttributionMethod):
    """RISE with ``n_masks`` masks (default 20, SOP's group budget), keep probability ``p``.

    Options:
        n_masks: number of random masks (forward passes per input). Default 20.
        p: probability of keeping a cell of the low-resolution grid. Default 0.5.
        grid: ``(s_h, s_w)`` of the low-resolution masks (images). Default: half the
            adapter's cell grid, rounded up (7 × 7 for a 14 × 14 ViT, as in the paper).
        task: ``"classification"`` (default) or ``"regression"``: what the model's outputs are.
        output: what the masks are weighted by: ``"prob"`` (the softmax probability of the
            target, the paper's choice for classification) or ``"logit"`` (the raw output: the
            value of a regression target, whose outputs are separate quantities and not a
            distribution). Default: ``"prob"`` for classification, ``"logit"`` for regression;
            ``"prob"`` with ``task="regression"`` is refused.
        batch_size: masked inputs per backbone call (default ``adapter.group_batch_size``).
        seed: seed of the masks.
    """

    name = "rise"
    not_additive = ("RISE's scores are mask-weighted averages of the output, (1/(n·p)) Σ f(x ⊙ M_i) M_i: "
                    "a saliency, not shares that add up to the output")

    def __init__(self, adapter: BackboneAdapter, *, n_masks: int = DEFAULT_SAMPLE_BUDGET, p: float = 0.5,
                 grid: tuple[int, int] | None = None, task: str = "classification", output: str | None = None,
                 batch_size: int | None = None, seed: int = 0):
        super().__init__(adapter)
        if int(n_masks) < 1:
            raise InputError(f"n_masks must be >= 1, got {n_masks}")
        if not 0.0 < float(p) <= 1.0:
            raise InputError(f"p must be in (0, 1], got {p}")
        if task not in ("classification", "regression"):
            raise InputError(f"task must be 'classification' or 'regression', got {task!r}")
        output = output or ("prob" if task == "classification" else "logit")
        if output not in ("prob", "logit"):
            raise InputError(f"output must be 'prob' or 'logit', got {output!r}")
        if task == "regression" and output == "prob":
            raise InputError("output='prob' takes a softmax over the outputs, which for regression are separate "
                             "targets (e.g. Omega_m and sigma_8), not classes: use output='logit'")
        self.task = task
        self.n_masks, self.p, self.output, self.seed = int(n_masks), float(p), output, int(seed)
        self.batch_size = int(batch_size or adapter.group_batch_size)
        if adapter.cell_grid is not None:
            gh, gw = adapter.cell_grid
            self.grid: tuple[int, int] | None = (cast(tuple[int, int], tuple(grid)) if grid is not None
                                                 else (max(1, math.ceil(gh / 2)), max(1, math.ceil(gw / 2))))
        else:
            self.grid = None

    def _values(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` logits -> what RISE weighs the masks by (probabilities or logits)."""
        return logits.softmax(-1) if self.output == "prob" else logits

    @torch.no_grad()
    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            raise InputTypeError(f"RISE.attribute got unexpected arguments {sorted(kwargs)}")
        g = torch.Generator().manual_seed(self.seed)
        n, B = self.n_masks, self.adapter.batch_size(inputs)
        if self.adapter.cell_grid is None:  # tokens
            L = self.adapter.num_cells(inputs)
            masks = (torch.rand(n, L, generator=g) < self.p).to(self.adapter.device)  # (n, L)
            logits, _ = self.adapter.forward_groups(inputs, masks.unsqueeze(0).expand(B, n, L))  # (B, n, C)
            values = self._values(logits)
            score = values.gather(2, target.view(B, 1, 1).expand(B, n, 1))[..., 0]  # (B, n)
            sal = torch.einsum("bn,nl->bl", score, masks.float()) / (n * self.p)
            return sal * self.adapter.valid_cells(inputs).to(sal.dtype)
        x = inputs
        C, H, W = x.shape[1:]
        masks = rise_masks(n, cast(tuple[int, int], self.grid), (H, W), self.p, g).to(x.device, x.dtype)  # (n, H, W)
        score = torch.empty(B, n, dtype=x.dtype, device=x.device)
        flat_b = torch.arange(B, device=x.device).repeat_interleave(n)
        flat_i = torch.arange(n, device=x.device).repeat(B)
        for start in range(0, B * n, self.batch_size):
            b, i = flat_b[start:start + self.batch_size], flat_i[start:start + self.batch_size]
            y = self._values(self.adapter(x[b] * masks[i].unsqueeze(1)))
            score[b, i] = y.gather(1, target[b].view(-1, 1))[:, 0]
        sal = torch.einsum("bn,nhw->bhw", score, masks) / (n * self.p)
        return sal.unsqueeze(1).expand(B, C, H, W).contiguous()


PERTURBATION_METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls for cls in (FeatureAblation, Occlusion, ShapleyValueSampling, KernelSHAP, LIME, RISE)
}
