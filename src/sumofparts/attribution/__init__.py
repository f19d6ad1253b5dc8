"""Every explainer behind one interface: SOP and the baselines.

>>> from sumofparts.attribution import get_method, available_methods
>>> ig = get_method("intgrad", adapter, n_steps=32)
>>> scores = ig.attribute(x, target=3)            # shaped like the input's features
>>> cells = ig.attribute_cells(x, target=3)       # (B, N)
>>> lime_f = get_method("lime-f", adapter, tau=0.2)
>>> res = lime_f.explain_groups(x, target=3)      # GroupedResult: masks, scores, prediction
>>> sop = get_method("sop", adapter, model=trained_sop)

Names (lowercase, stable): the post-hoc methods ``saliency, smoothgrad, gradxinput,
intgrad, deeplift, guided_backprop, deconvolution, gradcam, guided_gradcam, lrp,
feature_ablation, occlusion, shapley, kernelshap, lime, rise``; the self-attributing
``fresh, bagnet, sop``; the layer methods ``layer_intgrad, layer_gradcam,
layer_conductance, layer_activation, layer_gradxactivation`` (option ``layer=`` a name from
``adapter.named_layers()``) and the neuron methods ``neuron_intgrad, neuron_conductance,
neuron_gradient`` (options ``layer=``, ``neuron=(unit, *position)``); and ``"<post-hoc
name>-f"`` for the "-F" conversion of any post-hoc method (options: ``tau`` plus the wrapped
method's own). See docs/methods.md.
"""
from __future__ import annotations

from typing import Any, Callable

from ..adapters.base import BackboneAdapter
from ..errors import ConfigError, InputTypeError
from .base import AttributionMethod, GroupedResult, check_target, top_tau_cells
from .captum_methods import (CAPTUM_METHODS, DEFAULT_SAMPLE_BUDGET, LIME, LRP, CaptumMethod, Deconvolution, DeepLift,
                             FeatureAblation, GradCAM, GradientXInput, GuidedBackprop,
                             GuidedGradCAM, IntegratedGradients, KernelSHAP, Occlusion, Saliency,
                             ShapleyValueSampling, SmoothGrad)
from .layer import (LAYER_METHODS, NEURON_METHODS, LayerActivation, LayerConductance, LayerGradCAM,
                            LayerGradientXActivation, LayerIntegratedGradients, LayerMethod, NeuronConductance,
                            NeuronGradient, NeuronIntegratedGradients, NeuronMethod)
from .rise import RISE
from .self_attributing import FRESH, BagNetMethod, BagNetModel, FConversion, SOPMethod

__all__ = [
    "AttributionMethod", "GroupedResult", "get_method", "available_methods", "POST_HOC_METHODS",
    "SELF_ATTRIBUTING_METHODS", "check_target", "top_tau_cells", "CaptumMethod",
    "Saliency", "SmoothGrad", "GradientXInput", "IntegratedGradients", "DeepLift", "GuidedBackprop", "Deconvolution",
    "GradCAM", "GuidedGradCAM", "LRP", "FeatureAblation", "Occlusion", "ShapleyValueSampling", "KernelSHAP", "LIME",
    "RISE", "FRESH", "FConversion", "SOPMethod", "BagNetModel", "BagNetMethod", "DEFAULT_SAMPLE_BUDGET",
    "LayerMethod", "NeuronMethod", "LayerIntegratedGradients", "LayerGradCAM", "LayerConductance", "LayerActivation",
    "LayerGradientXActivation", "NeuronIntegratedGradients", "NeuronConductance", "NeuronGradient", "LAYER_METHODS",
    "NEURON_METHODS",
]

#: post-hoc methods: name -> class (each also has a "<name>-f" form)
POST_HOC_METHODS: dict[str, type[AttributionMethod]] = {**CAPTUM_METHODS, "rise": RISE, **LAYER_METHODS,
                                                         **NEURON_METHODS}
#: self-attributing methods: name -> class
SELF_ATTRIBUTING_METHODS: dict[str, type[AttributionMethod]] = {"fresh": FRESH, "bagnet": BagNetMethod,
                                                                  "sop": SOPMethod}


def available_methods(*, include_f: bool = True, adapter: BackboneAdapter | None = None) -> list[str]:
    """The registry's names: post-hoc, then self-attributing, then the "-F" forms.

    ``adapter``: only the methods whose required capabilities it has.
    """
    def ok(cls: type[AttributionMethod]) -> bool:
        return adapter is None or not cls.missing_capabilities(adapter)

    names = [n for n, c in POST_HOC_METHODS.items() if ok(c)]
    names += [n for n, c in SELF_ATTRIBUTING_METHODS.items() if ok(c)]
    if include_f:
        names += [f"{n}-f" for n, c in POST_HOC_METHODS.items() if ok(c)]
    return names


def get_method(name: str, adapter: BackboneAdapter | None, **options: Any) -> AttributionMethod:
    """Build the method called ``name`` for ``adapter``.

    ``options`` are the method's own (see docs/methods.md); ``"<name>-f"`` takes ``tau``
    (default 0.2) plus the wrapped method's options. ``"sop"`` takes ``model=`` a
    SumOfParts (``adapter`` may then be None: the model's own backbone is used).
    """
    if not isinstance(name, str):
        raise InputTypeError(f"method name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    factory: Callable[..., AttributionMethod] | None = None
    if key.endswith("-f"):
        base = key[:-2]
        if base in POST_HOC_METHODS:
            tau = options.pop("tau", 0.2)
            tie_seed = options.pop("tie_seed", 0)
            return FConversion(POST_HOC_METHODS[base](adapter, **options), tau=tau, tie_seed=tie_seed)
        if base in SELF_ATTRIBUTING_METHODS:
            raise ConfigError(f"{base!r} is already self-attributing; '-f' applies to the post-hoc methods "
                             f"({', '.join(POST_HOC_METHODS)})")
    else:
        factory = POST_HOC_METHODS.get(key) or SELF_ATTRIBUTING_METHODS.get(key)
    if factory is None:
        raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(available_methods())}")
    if key == "sop":
        return SOPMethod(adapter, **options)
    if adapter is None:
        raise InputTypeError(f"method {key!r} needs a BackboneAdapter, got None")
    return factory(adapter, **options)
