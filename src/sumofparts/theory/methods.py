"""Post-hoc feature attributions of a polynomial (or any ``(B, d) -> (B,)`` model) via Captum.

Every method explains the input ``x = 1`` (all ones) against the baseline ``0`` (all zeros), the
setting of the insertion-error theorem, and returns a float64 numpy vector of length ``d``.
Computation is in float64. Sampling methods get a fixed budget and a fixed seed
(``torch.manual_seed(seed)`` right before the call), so results are reproducible:

==================  ==========================================================================
name                what runs
==================  ==========================================================================
lime                ``captum.attr.Lime`` (Captum defaults: Lasso(alpha=0.01) surrogate, cosine
                    exponential kernel, Bernoulli(0.5) masks), ``n_samples = budget["lime"]``
kernel_shap         ``captum.attr.KernelShap``, ``n_samples = budget["kernel_shap"]``
shapley_sampling    ``captum.attr.ShapleyValueSampling``, ``budget["shapley_sampling"]``
                    permutations (each costs d + 1 model calls)
integrated_gradients ``captum.attr.IntegratedGradients``, Gauss–Legendre with
                    ``budget["integrated_gradients"]`` steps (exact for polynomials of degree
                    below twice that)
gradient_x_input    ``captum.attr.InputXGradient``
saliency            ``captum.attr.Saliency`` (Captum default ``abs=True``)
feature_ablation    ``captum.attr.FeatureAblation`` (each feature set to the baseline alone)
deeplift            ``captum.attr.DeepLift`` (the polynomial has no nonlinearity modules, so the
                    rescale rule never fires and it reduces to gradient × (x − baseline))
shapley_exact       exact Shapley values by enumerating all 2**d subsets (not Captum)
==================  ==========================================================================
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from ..errors import InputError

__all__ = [
    "DEFAULT_BUDGET",
    "METHOD_NAMES",
    "run_method",
    "run_methods",
]

#: Budgets of the sampling / quadrature methods (model evaluations or steps, see module doc).
DEFAULT_BUDGET: dict[str, int] = {
    "lime": 1000,
    "kernel_shap": 1000,
    "shapley_sampling": 50,
    "integrated_gradients": 64,
}

METHOD_NAMES: tuple[str, ...] = (
    "lime",
    "kernel_shap",
    "shapley_sampling",
    "integrated_gradients",
    "gradient_x_input",
    "saliency",
    "feature_ablation",
    "deeplift",
    "shapley_exact",
)


class _Float64(torch.nn.Module):
    """Wraps a model so that it sees float64 inputs and returns a ``(B,)`` float64 output."""

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


def run_method(
    name: str,
    model: Callable[[torch.Tensor], torch.Tensor],
    *,
    d: int | None = None,
    seed: int = 0,
    budget: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Attribution of ``model`` at ``x = 1`` against baseline ``0`` by method ``name``."""
    import captum.attr as ca

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

    if isinstance(model, torch.nn.Module):
        if any(p.is_floating_point() for p in model.parameters()):
            import copy

            model = copy.deepcopy(model).double()  # never touch the caller's module
    f = _Float64(model)
    x = torch.ones(1, d, dtype=torch.float64)
    base = torch.zeros(1, d, dtype=torch.float64)
    torch.manual_seed(int(seed))
    if name == "lime":
        attr = ca.Lime(f).attribute(x, baselines=base, n_samples=bud["lime"], perturbations_per_eval=64)
    elif name == "kernel_shap":
        attr = ca.KernelShap(f).attribute(x, baselines=base, n_samples=bud["kernel_shap"], perturbations_per_eval=64)
    elif name == "shapley_sampling":
        attr = ca.ShapleyValueSampling(f).attribute(
            x, baselines=base, n_samples=bud["shapley_sampling"], perturbations_per_eval=max(1, d)
        )
    elif name == "integrated_gradients":
        attr = ca.IntegratedGradients(f).attribute(
            x, baselines=base, n_steps=bud["integrated_gradients"], method="gausslegendre"
        )
    elif name == "gradient_x_input":
        attr = ca.InputXGradient(f).attribute(x.clone().requires_grad_(True))
    elif name == "saliency":
        attr = ca.Saliency(f).attribute(x.clone().requires_grad_(True))
    elif name == "feature_ablation":
        attr = ca.FeatureAblation(f).attribute(x, baselines=base, perturbations_per_eval=max(1, d))
    elif name == "deeplift":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attr = ca.DeepLift(f).attribute(x, baselines=base)
    else:  # pragma: no cover - guarded above
        raise AssertionError(name)
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
