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

from .bagnet import BagNetMethod, BagNetModel
from .base import AttributionMethod, GroupedResult, check_target, top_tau_cells
from .captum import DEFAULT_SAMPLE_BUDGET, CaptumMethod
from .gradient import (LRP, DeepLift, Deconvolution, GradCAM, GradientXInput, GuidedBackprop, GuidedGradCAM,
                       IntegratedGradients, Saliency, SmoothGrad)
from .grouped import FRESH, FConversion, SOPMethod
from .layer import (LAYER_METHODS, NEURON_METHODS, LayerActivation, LayerConductance, LayerGradCAM,
                    LayerGradientXActivation, LayerIntegratedGradients, LayerMethod, NeuronConductance, NeuronGradient,
                    NeuronIntegratedGradients, NeuronMethod)
from .perturbation import LIME, RISE, FeatureAblation, KernelSHAP, Occlusion, ShapleyValueSampling
from .registry import (POST_HOC_METHODS, SELF_ATTRIBUTING_METHODS, available_methods, get_method, method_class,
                       takes_option)

__all__ = [
    "AttributionMethod", "GroupedResult", "get_method", "available_methods", "method_class", "takes_option",
    "POST_HOC_METHODS", "SELF_ATTRIBUTING_METHODS", "check_target", "top_tau_cells", "CaptumMethod",
    "Saliency", "SmoothGrad", "GradientXInput", "IntegratedGradients", "DeepLift", "GuidedBackprop", "Deconvolution",
    "GradCAM", "GuidedGradCAM", "LRP", "FeatureAblation", "Occlusion", "ShapleyValueSampling", "KernelSHAP", "LIME",
    "RISE", "FRESH", "FConversion", "SOPMethod", "BagNetModel", "BagNetMethod", "DEFAULT_SAMPLE_BUDGET",
    "LayerMethod", "NeuronMethod", "LayerIntegratedGradients", "LayerGradCAM", "LayerConductance", "LayerActivation",
    "LayerGradientXActivation", "NeuronIntegratedGradients", "NeuronConductance", "NeuronGradient", "LAYER_METHODS",
    "NEURON_METHODS",
]
