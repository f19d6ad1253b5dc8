"""Gradient methods through Captum: Saliency, SmoothGrad, Gradient×Input, Integrated Gradients,
DeepLIFT, Guided Backprop, Deconvolution, Grad-CAM, Guided Grad-CAM and LRP.

How each sees the model (tensor or token inputs) is :class:`~sumofparts.attribution.captum.CaptumMethod`'s
rule; each class here names its Captum class and its defaults.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..adapters.base import Inputs
from ..errors import InputTypeError
from .captum import CaptumMethod, _captum, quiet_captum

__all__ = ["Saliency", "SmoothGrad", "GradientXInput", "IntegratedGradients", "DeepLift", "GuidedBackprop",
           "Deconvolution", "GradCAM", "GuidedGradCAM", "LRP", "GRADIENT_METHODS"]


# ---------------------------------------------------------------------------------------------
# gradient methods
# ---------------------------------------------------------------------------------------------
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
        output_hook = getattr(rule, "_handle_output_hook", None)
        if output_hook is not None:
            output_hook.remove()
        if m not in had_rule and hasattr(m, "rule"):
            del m.rule
        for attr in ("activations", "activation"):
            if attr in m.__dict__:
                delattr(m, attr)
    state = getattr(lrp, "_original_state_dict", None)
    if state is not None:
        model.load_state_dict(state)


GRADIENT_METHODS: dict[str, type[CaptumMethod]] = {
    cls.name: cls for cls in (Saliency, SmoothGrad, GradientXInput, IntegratedGradients, DeepLift, GuidedBackprop,
                              Deconvolution, GradCAM, GuidedGradCAM, LRP)
}
