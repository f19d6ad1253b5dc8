"""Post-hoc attributions through Captum, behind the project's interface.

Each class wraps one Captum method; ``attribute`` returns what Captum returns for the
same arguments (see ``tests/attribution/test_captum_equivalence.py``), reshaped only
where the interface asks (text: one score per token).

What the model is, by the adapter's capabilities (never its family):

* **tensor inputs** (images ``(B, C, H, W)``, feature vectors ``(B, d)``): the forward is
  ``adapter.forward`` (logits ``(B, C)``) on the input tensor; the baseline is 0 (the
  "zero occlusion" SOP uses after normalisation, the theory's empty input).
* **token inputs** (capability ``token_input``): gradient methods attribute with respect to
  the **input embeddings** (the word embeddings, before position / token-type embeddings
  are added): the forward is ``adapter.embedding_forward()``, with the adapter's extra
  arguments (attention mask, token types) bound through Captum's
  ``additional_forward_args``; the baseline is ``adapter.input_embeddings(x).baseline``
  (for BERT: the ``[MASK]`` embedding at every real token, special tokens and padding
  keeping their own, exactly what ``adapter.mask_inputs`` does outside a group).
  Per-token scores are the attributions summed over the embedding dimension.
* **perturbation methods** (Feature Ablation, Shapley Value Sampling, KernelSHAP, LIME)
  use the cells as features: ``feature_mask = adapter.cell_index_map(inputs)`` (a patch,
  a feature-map cell or a token; for text the token's whole embedding vector). Captum
  repeats a feature's score on every element of the feature; ``attribute`` keeps that
  (images ``(B, C, H, W)``; text: one value per token) and ``attribute_cells`` returns
  each cell's score once.

Sampling methods draw from torch's global generator; every call runs under
``seed`` (default 0) with the global RNG state restored afterwards.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ..adapters.base import BackboneAdapter, Inputs
from ..ops import seeded
from .base import AttributionMethod
from ..errors import InputTypeError

__all__ = [
    "CaptumMethod", "Saliency", "SmoothGrad", "GradientXInput",
    "IntegratedGradients", "DeepLift", "GuidedBackprop", "Deconvolution", "GradCAM", "GuidedGradCAM", "LRP",
    "FeatureAblation", "Occlusion", "ShapleyValueSampling", "KernelSHAP", "LIME", "CAPTUM_METHODS",
    "DEFAULT_SAMPLE_BUDGET",
]

#: SOP's number of groups on ImageNet: the budget the paper gives the sampling methods.
DEFAULT_SAMPLE_BUDGET = 20


# ---------------------------------------------------------------------------------------------
# the common wrapper
# ---------------------------------------------------------------------------------------------
class CaptumMethod(AttributionMethod):
    """A Captum attribution method behind :class:`AttributionMethod`.

    Subclasses name the Captum class (``captum_class``), the ``attribute`` keyword
    arguments they pass by default (``defaults``) and whether the method takes
    ``baselines`` and a ``feature_mask``. Options given at construction override the
    defaults; keyword arguments given to :meth:`attribute` override both for one call.
    """

    captum_class: Any = None
    defaults: dict[str, Any] = {}
    uses_baselines: bool = False
    uses_feature_mask: bool = False
    needs_module: bool = False  #: Captum wants an nn.Module (hooks on its layers), not a function
    sampling: bool = False  #: draws random numbers (runs under ``seed``)

    def __init__(self, adapter: BackboneAdapter, *, seed: int | None = 0, **options: Any):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise InputTypeError(f"method {self.name!r} got unexpected options {sorted(unknown)}; "
                            f"expected some of {sorted(self.defaults) + ['seed']}")
        super().__init__(adapter)
        self.options = {**self.defaults, **options}
        self.seed = seed

    # what Captum is given -----------------------------------------------------------------------
    def forward_module(self) -> nn.Module:
        """The model Captum sees: the adapter (tensor inputs) or its embedding forward (token inputs)."""
        return self.adapter.embedding_forward() if self.is_text else self.adapter

    def make_captum(self) -> Any:
        model = self.forward_module()
        return self.captum_class(model if self.needs_module else model.forward)

    def captum_inputs(self, inputs: Inputs) -> tuple[torch.Tensor, dict[str, Any]]:
        """The tensor Captum attributes to and the ``attribute`` keyword arguments it needs."""
        kwargs: dict[str, Any] = {}
        if self.is_text:
            x, baseline, extra = self.adapter.input_embeddings(inputs)
            kwargs["additional_forward_args"] = extra
        else:
            x, baseline = inputs, torch.zeros_like(inputs)
        if self.uses_baselines:
            kwargs["baselines"] = baseline
        if self.uses_feature_mask:
            kwargs["feature_mask"] = self.feature_mask(inputs, x)
        return x, kwargs

    def feature_mask(self, inputs: Inputs, x: torch.Tensor) -> torch.Tensor:
        """Cells as features, shaped ``(1, *x.shape[1:])``."""
        ids = self.adapter.cell_index_map(inputs).to(x.device)
        if self.is_text:  # (L,) -> (1, L, D): a token's whole embedding is one feature
            return ids.view(1, -1, 1).expand(1, x.shape[1], x.shape[2]).contiguous()
        return ids.unsqueeze(0)

    def call_kwargs(self, kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        return {**self.options, **kwargs}

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x, base_kwargs = self.captum_inputs(inputs)
        call = {**base_kwargs, **self.call_kwargs(kwargs, x)}
        method = self.make_captum()
        with seeded(self.seed if self.sampling else None), quiet_captum():
            attr = method.attribute(x, target=target, **call)
        return self.reduce(attr.detach())

    #: text, gradient methods: how the (B, L, D) attribution becomes (B, L): "sum" over D, or
    #: "abs_sum" (the L1 norm) for raw-gradient methods, whose plain sum over D is ~0 because
    #: the LayerNorm after the embeddings removes the gradient's mean over D.
    text_reduce: str = "sum"

    def reduce(self, attr: torch.Tensor) -> torch.Tensor:
        """Captum's output -> the interface's shape (text: one score per token)."""
        if not self.is_text:
            return attr
        if self.cell_features:
            return attr[..., 0]  # a token's score repeated on its D elements: take it once
        if self.text_reduce == "abs_sum":
            return attr.abs().sum(-1)
        return attr.sum(-1)


@contextlib.contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's routine notices (inputs made to require grad, hooks set and removed,
    one LIME/KernelSHAP model per example)."""
    with warnings.catch_warnings():
        for message in (".*did not already require gradients.*", ".*Setting backward hooks.*",
                        ".*Setting forward, backward hooks.*", ".*multiple inputs for Lime.*"):
            warnings.filterwarnings("ignore", message=message)
        yield


# ---------------------------------------------------------------------------------------------
# gradient methods
# ---------------------------------------------------------------------------------------------
def _captum():
    import captum.attr as ca

    return ca


class Saliency(CaptumMethod):
    """|∂f_t/∂x| (``abs=True``, Captum's default). One backward pass."""

    name = "saliency"
    not_additive = "a gradient magnitude |∂f/∂x| is a sensitivity, not a share of an output"
    defaults = {"abs": True}

    @property
    def captum_class(self):
        return _captum().Saliency


class SmoothGrad(CaptumMethod):
    """SmoothGrad: mean over ``nt_samples`` noisy copies x + ε, ε ~ N(0, σ²), of |∂f_t/∂x|.

    ``NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"``. ``stdevs=None`` (default)
    sets σ = ``noise_level`` · (max(x) − min(x)) over the batch (SmoothGrad's 10-20 %).
    """

    name = "smoothgrad"
    not_additive = "an averaged gradient magnitude is a sensitivity, not a share of an output"
    defaults = {"nt_type": "smoothgrad", "nt_samples": 10, "stdevs": None, "nt_samples_batch_size": None,
                "abs": True, "noise_level": 0.15}
    sampling = True

    def make_captum(self) -> Any:
        ca = _captum()
        return ca.NoiseTunnel(ca.Saliency(self.forward_module().forward))

    def call_kwargs(self, kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        call = {**self.options, **kwargs}
        level = call.pop("noise_level")
        if call.get("stdevs") is None:
            call["stdevs"] = float(level) * float(x.max() - x.min())
        return call


class GradientXInput(CaptumMethod):
    """x ⊙ ∂f_t/∂x (``InputXGradient``). One backward pass."""

    name = "gradxinput"
    completeness = "baseline"  # first order: Σ x·∂f ≈ f(x) − f(0), exact for bias-free piecewise-linear nets
    multiplies_by_inputs = True

    @property
    def captum_class(self):
        return _captum().InputXGradient


class IntegratedGradients(CaptumMethod):
    """(x − x̄) ⊙ ∫₀¹ ∂f_t(x̄ + α(x − x̄))/∂x dα, Gauss–Legendre with ``n_steps`` points."""

    name = "intgrad"
    completeness = "baseline"  # Σ IG = f(x) − f(x̄) up to the quadrature error
    multiplies_by_inputs = True
    defaults = {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": None}
    uses_baselines = True

    @property
    def captum_class(self):
        return _captum().IntegratedGradients


class DeepLift(CaptumMethod):
    """DeepLIFT (rescale rule) against the baseline: multipliers through ReLU/Sigmoid/... modules.

    On transformers (GELU modules and functional softmax have no DeepLIFT rule in Captum)
    the gradients pass unchanged through those non-linearities.
    """

    name = "deeplift"
    defaults = {"multiply_by_inputs": True}
    uses_baselines = True
    needs_module = True

    @property
    def completeness(self) -> str | None:  # type: ignore[override]
        """Summation-to-delta: Σ attributions = f(x) − f(x̄) when multiplied by the inputs."""
        return "baseline" if self.options["multiply_by_inputs"] else None

    @property
    def multiplies_by_inputs(self) -> bool:  # type: ignore[override]
        return bool(self.options["multiply_by_inputs"])

    not_additive = "DeepLIFT multipliers (multiply_by_inputs=False) are per-unit sensitivities, not shares"

    def make_captum(self) -> Any:
        return _captum().DeepLift(self.forward_module(), multiply_by_inputs=self.options["multiply_by_inputs"])

    def call_kwargs(self, kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        call = {**self.options, **kwargs}
        call.pop("multiply_by_inputs", None)
        return call


class GuidedBackprop(CaptumMethod):
    """Gradient with the ReLU modules' backward replaced by ReLU of the incoming gradient.

    Only ``nn.ReLU`` modules are changed: on transformers (GELU) it equals the plain gradient.
    """

    name = "guided_backprop"
    not_additive = "a modified gradient (sensitivity), not a share of an output"
    needs_module = True
    text_reduce = "abs_sum"

    @property
    def captum_class(self):
        return _captum().GuidedBackprop


class Deconvolution(CaptumMethod):
    """Gradient with each ReLU module's backward replaced by ReLU of the incoming gradient only
    (ignoring the forward activation). Same ReLU-module caveat as Guided Backprop."""

    name = "deconvolution"
    not_additive = "a modified gradient (sensitivity), not a share of an output"
    needs_module = True
    text_reduce = "abs_sum"

    @property
    def captum_class(self):
        return _captum().Deconvolution


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------
class GradCAM(CaptumMethod):
    """Grad-CAM: ReLU(Σ_k α_k A^k), α_k = mean over positions of ∂f_t/∂A^k, upsampled to the input.

    ``LayerGradCam`` on the adapter's view (``layer_view``) of a layer: ``layer=`` a name
    from ``adapter.named_layers()``, by default ``adapter.default_layer()`` (CNN: the
    ``feature_layer``; ViT: the patch tokens entering the last encoder block, seen as a
    ``(D, h, w)`` grid; BERT: the tokens entering it as a ``(D, L)`` sequence);
    ``layer_index`` picks the tokens entering another encoder block. Images: upsampled with ``LayerAttribution.interpolate``
    (``interpolate_mode``) to ``(H, W)`` and repeated on every channel. One forward and
    one backward pass.
    """

    name = "gradcam"
    not_additive = ("a ReLU'd class-activation map upsampled to the input: neither its cells nor its pixels "
                    "are meant to add up to the output")
    defaults = {"relu_attributions": True, "interpolate_mode": "bilinear", "layer": None, "layer_index": -1}
    requires = frozenset({"layer_map"})

    def layer_name(self, opts: dict[str, Any] | None = None) -> str:
        """The layer Grad-CAM reads: ``layer`` if named, else the one entering encoder block
        ``layer_index`` when that is not -1 (transformers), else the adapter's default layer."""
        opts = opts or self.options
        if opts["layer"] is not None:
            self.adapter.layer(opts["layer"])  # an unknown name raises, listing the valid ones
            return opts["layer"]
        if opts["layer_index"] != -1:
            return self.adapter.layer_entering(opts["layer_index"])
        return self.adapter.default_layer()

    @contextlib.contextmanager
    def layer_module(self, opts: dict[str, Any] | None = None) -> Iterator[nn.Module]:
        """The module Captum's ``LayerGradCam`` is given: the adapter's view of :meth:`layer_name`
        as ``(B, K, *positions)`` (CNN: the layer itself; transformers: its tokens on the cells)."""
        with self.adapter.layer_view(self.layer_name(opts)) as view:
            yield view

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - set(self.defaults)
        if unknown:
            raise InputTypeError(f"{self.name}.attribute got unexpected arguments {sorted(unknown)}; "
                            f"expected some of {sorted(self.defaults)}")
        return {**self.options, **kwargs}

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        ca = _captum()
        opts = self._options(kwargs)
        x, base_kwargs = self.captum_inputs(inputs)
        with self.layer_module(opts) as layer, quiet_captum():
            cam = ca.LayerGradCam(self.forward_module().forward, layer).attribute(
                x, target=target, relu_attributions=opts["relu_attributions"], **base_kwargs)
        cam = cam.detach()
        if self.adapter.cell_grid is None:
            return cam[:, 0]  # a map over the token sequence: (B, 1, L) -> (B, L)
        up = ca.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=opts["interpolate_mode"])
        return up.expand(-1, x.shape[1], -1, -1).contiguous()


class GuidedGradCAM(GradCAM):
    """Guided Backprop ⊙ Grad-CAM (upsampled): Captum's ``GuidedGradCam`` for images.

    Text: the Guided Backprop attribution on the embeddings (L1 norm per token), times the
    token-level Grad-CAM (Captum's class cannot interpolate a token map onto ``(L, D)``
    embeddings); Grad-CAM here always applies the ReLU, as Captum's class does.
    """

    name = "guided_gradcam"
    not_additive = "guided backprop times Grad-CAM: a product of two sensitivity maps, not additive"
    defaults = {"interpolate_mode": "nearest", "layer": None, "layer_index": -1}

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        ca = _captum()
        opts = self._options(kwargs)
        x, base_kwargs = self.captum_inputs(inputs)
        model = self.forward_module()
        with self.layer_module(opts) as layer, quiet_captum():
            if not self.is_text:
                return ca.GuidedGradCam(model, layer).attribute(
                    x, target=target, interpolate_mode=opts["interpolate_mode"]).detach()
            cam = ca.LayerGradCam(model.forward, layer).attribute(
                x, target=target, relu_attributions=True, **base_kwargs).detach()
            gbp = ca.GuidedBackprop(model).attribute(x, target=target, **base_kwargs).detach()
        return gbp.abs().sum(-1) * cam[:, 0]


# ---------------------------------------------------------------------------------------------
# LRP
# ---------------------------------------------------------------------------------------------
class LRP(CaptumMethod):
    """Layer-wise relevance propagation (Captum's default rules: ε-rule for conv/linear).

    Only backbones whose module maps the input tensor to the logits (capability
    ``module_forward``) and whose every leaf module has a Captum rule (Conv2d, Linear, MaxPool, AvgPool,
    AdaptiveAvgPool2d, BatchNorm2d, ReLU, Dropout, Tanh; flattening done with
    ``torch.flatten``, not ``nn.Flatten``). Element-wise activations Captum has no rule for
    (LeakyReLU, ELU, SiLU, GELU) pass the relevance through unchanged (Captum's
    ``IdentityRule``, attached for the call only) unless ``identity_activations=False``.
    Transformers raise ``NotImplementedError`` (no rule for attention or LayerNorm). After a
    failure inside Captum, the rules and hooks it attached are removed again. One forward
    and one backward pass.
    """

    name = "lrp"
    completeness = "output"  # relevance conservation: Σ R ≈ f(x) (biases absorb some)
    multiplies_by_inputs = True
    requires = frozenset({"module_forward"})
    defaults = {"identity_activations": True}
    _IDENTITY_TYPES = (nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU)

    def _check_rules(self, model: nn.Module) -> None:
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

        missing = sorted({type(m).__name__ for m in model.modules()
                          if len(list(m.children())) == 0 and m is not model and not hasattr(m, "rule")
                          and type(m) not in SUPPORTED_LAYERS_WITH_RULES
                          and type(m) not in SUPPORTED_NON_LINEAR_LAYERS})
        if missing:
            raise NotImplementedError(
                f"LRP needs a Captum rule for every layer; this model has layers without one: {', '.join(missing)} "
                "(replace nn.Flatten by torch.flatten in forward, or set module.rule yourself)")

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        from captum.attr._utils.lrp_rules import IdentityRule

        ca = _captum()
        opts = {**self.options, **kwargs}
        model = self.adapter.model  # the raw module: the adapter lists its classifier twice
        added = []
        if opts.pop("identity_activations"):
            for m in model.modules():
                if isinstance(m, self._IDENTITY_TYPES) and not hasattr(m, "rule"):
                    m.rule = IdentityRule()
                    added.append(m)
        try:
            self._check_rules(model)
            had_rule = {m for m in model.modules() if hasattr(m, "rule")}
            lrp = ca.LRP(model)
            try:
                with quiet_captum():
                    return lrp.attribute(inputs, target=target, **opts).detach()
            except Exception as exc:
                _lrp_cleanup(lrp, model, had_rule)
                raise NotImplementedError(
                    f"Captum's LRP failed on this model ({type(exc).__name__}: {exc})") from exc
        finally:
            for m in added:
                if hasattr(m, "rule"):
                    del m.rule


def _lrp_cleanup(lrp: Any, model: nn.Module, had_rule: set) -> None:
    """Undo what a failed ``LRP.attribute`` left on the model: hooks, rules, activations, weights."""
    for attr in ("forward_handles", "backward_handles"):
        for handle in getattr(lrp, attr, []) or []:
            handle.remove()
    for m in model.modules():
        rule = getattr(m, "rule", None)
        for h in getattr(rule, "_handle_input_hooks", []) or []:
            h.remove()
        if getattr(rule, "_handle_output_hook", None) is not None:
            rule._handle_output_hook.remove()
        if m not in had_rule and hasattr(m, "rule"):
            del m.rule
        for attr in ("activations", "activation"):
            if attr in m.__dict__:
                delattr(m, attr)
    state = getattr(lrp, "_original_state_dict", None)
    if state is not None:
        model.load_state_dict(state)


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


CAPTUM_METHODS: dict[str, type[CaptumMethod]] = {
    cls.name: cls for cls in (Saliency, SmoothGrad, GradientXInput, IntegratedGradients, DeepLift, GuidedBackprop,
                              Deconvolution, GradCAM, GuidedGradCAM, LRP, FeatureAblation, Occlusion,
                              ShapleyValueSampling, KernelSHAP, LIME)
}
