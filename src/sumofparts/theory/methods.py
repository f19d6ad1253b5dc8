"""Post-hoc feature attributions of a polynomial (or any ``(B, d) -> (B,)`` model), from the library's
attribution registry.

The model is wrapped in a :class:`~sumofparts.adapters.TabularAdapter` (cells = the d features, a
removed feature set to 0) and each method is the registry's own (:func:`sumofparts.attribution.get_method`,
Captum underneath), so the theory table and the evaluation run the same code. Every method explains
the input ``x = 1`` (all ones) against the baseline ``0`` (all zeros), the setting of the
insertion-error theorem, in float64, and returns a float64 numpy vector of length ``d``. Sampling
methods get a fixed budget and a seed (:func:`sumofparts.ops.seeded`), so results are reproducible:

=====================  =====================  ==============================================================
theory name            registry method        options
=====================  =====================  ==============================================================
lime                   ``lime``               Captum's own surrogate (Lasso, alpha 0.01), cosine exponential
                                              kernel, Bernoulli(0.5) masks; ``n_samples = budget["lime"]``
kernel_shap            ``kernelshap``         ``n_samples = budget["kernel_shap"]``
shapley_sampling       ``shapley``            ``budget["shapley_sampling"]`` permutations (each costs d + 1
                                              model calls)
integrated_gradients   ``intgrad``            Gauss–Legendre with ``budget["integrated_gradients"]`` steps
                                              (exact for polynomials of degree below twice that)
gradient_x_input       ``gradxinput``
saliency               ``saliency``           ``abs=True``
feature_ablation       ``feature_ablation``   each feature set to the baseline alone
deeplift               ``deeplift``           the polynomial has no nonlinearity modules, so the rescale rule
                                              never fires and it reduces to gradient × (x − baseline)
shapley_exact          (not a method)         exact Shapley values by enumerating all 2**d subsets
=====================  =====================  ==============================================================
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = ["DEFAULT_BUDGET", "METHOD_NAMES", "REGISTRY_NAMES", "run_method", "run_methods"]

#: Budgets of the sampling / quadrature methods (model evaluations or steps, see module doc).
DEFAULT_BUDGET: dict[str, int] = {
    "lime": 1000,
    "kernel_shap": 1000,
    "shapley_sampling": 50,
    "integrated_gradients": 64,
}

#: the theory's method names and the attribution registry's method each one is
REGISTRY_NAMES: dict[str, str] = {
    "lime": "lime",
    "kernel_shap": "kernelshap",
    "shapley_sampling": "shapley",
    "integrated_gradients": "intgrad",
    "gradient_x_input": "gradxinput",
    "saliency": "saliency",
    "feature_ablation": "feature_ablation",
    "deeplift": "deeplift",
}

METHOD_NAMES: tuple[str, ...] = (*REGISTRY_NAMES, "shapley_exact")


def _options(name: str, d: int, budget: Mapping[str, int]) -> dict[str, Any]:
    """The registry method's options for the theory's setting (see the module's table)."""
    if name == "lime":
        from captum._utils.models.linear_model import SkLearnLasso

        return {"n_samples": budget["lime"], "perturbations_per_eval": 64,
                "interpretable_model": SkLearnLasso(alpha=0.01)}
    if name == "kernel_shap":
        return {"n_samples": budget["kernel_shap"], "perturbations_per_eval": 64}
    if name == "shapley_sampling":
        return {"n_samples": budget["shapley_sampling"], "perturbations_per_eval": max(1, d)}
    if name == "integrated_gradients":
        return {"n_steps": budget["integrated_gradients"], "method": "gausslegendre"}
    if name == "feature_ablation":
        return {"perturbations_per_eval": max(1, d)}
    return {}


class _Scalar(torch.nn.Module):
    """The model as a float64 module with one scalar output per input, ``(B,)``."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise InputError(f"the model must return one scalar per input, got shape {tuple(y.shape)}")
        return y.to(torch.float64)


def _model_d(model, d: int | None) -> int:
    md = getattr(model, "d", None)
    if d is None:
        if md is None:
            raise InputError("d is required for a model without a `d` attribute")
        d = md
    if md is not None and int(md) != int(d):
        raise InputError(f"d={d} given but the model has d={md}")
    d = int(d)
    if d < 1:
        raise InputError(f"d must be >= 1, got {d}")
    return d


def _adapter(model: Callable[[torch.Tensor], torch.Tensor], d: int):
    """A float64 :class:`~sumofparts.adapters.TabularAdapter` around a copy of ``model`` (the caller's
    module is never changed: not its dtype, its mode or its parameters' ``requires_grad``)."""
    from ..adapters import IdentityHead, TabularAdapter

    if isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model).double()
    return TabularAdapter(IdentityHead(_Scalar(model), 1).double(), num_features=d, classifier="head")


def run_method(
    name: str,
    model: Callable[[torch.Tensor], torch.Tensor],
    *,
    d: int | None = None,
    seed: int = 0,
    budget: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Attribution of ``model`` at ``x = 1`` against baseline ``0`` by method ``name``."""
    if name not in METHOD_NAMES:
        raise InputError(f"unknown method {name!r}; expected one of {', '.join(METHOD_NAMES)}")
    d = _model_d(model, d)
    bud = dict(DEFAULT_BUDGET)
    if budget:
        unknown = set(budget) - set(DEFAULT_BUDGET)
        if unknown:
            raise InputError(f"budget keys must be among {sorted(DEFAULT_BUDGET)}, got {sorted(unknown)}")
        bud.update({k: int(v) for k, v in budget.items()})
    if name == "shapley_exact":
        from .errors import subset_values
        from .polynomials import exact_shapley

        return exact_shapley(subset_values(model, d=d))

    from ..attribution import get_method

    adapter = _adapter(model, d)
    method = get_method(REGISTRY_NAMES[name], adapter, seed=int(seed), **_options(name, d, bud))
    attr = method.attribute(torch.ones(1, d, dtype=torch.float64), 0)
    out = attr.detach().to(torch.float64).reshape(-1).cpu().numpy()
    if out.shape != (d,):
        raise RuntimeError(f"{name} returned shape {out.shape}, expected ({d},)")
    return out


def run_methods(
    model: Callable[[torch.Tensor], torch.Tensor],
    names: Sequence[str] | None = None,
    *,
    d: int | None = None,
    seed: int = 0,
    budget: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`run_method` for each name (default all :data:`METHOD_NAMES`), in order."""
    names = list(METHOD_NAMES if names is None else names)
    bad = [n for n in names if n not in METHOD_NAMES]
    if bad:
        raise InputError(f"unknown methods {bad}; expected names among {', '.join(METHOD_NAMES)}")
    return {n: run_method(n, model, d=d, seed=seed, budget=budget) for n in names}
