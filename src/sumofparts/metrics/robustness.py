"""Infidelity and max-sensitivity (Yeh et al., 2019), computed with Captum.

* **Infidelity** ``E_I[(I^T Φ − (f(x) − f(x − I)))^2]``: how well the attribution Φ
  predicts the change of the output under a perturbation I. Two perturbations are offered:
  ``"noise"`` (I ~ N(0, σ²) on every feature: the right test for gradient-like attributions,
  which are exact for a linear model when Φ is its gradient) and ``"subset"`` (I = x on a
  random half of the features, i.e. those features are zeroed, and ``I^T Φ`` is the sum of Φ
  over them: the right test for "× input" attributions such as Gradient×Input, exact for a
  linear model). Captum's ``infidelity`` does the sampling and the expectation.
* **Max-sensitivity** ``max_{‖y − x‖_∞ ≤ r} ‖Φ(y) − Φ(x)‖ / ‖Φ(x)‖`` estimated by Captum's
  ``sensitivity_max`` with uniform samples in the L∞ ball of radius r.

Both take tensor inputs (images); token inputs have no continuous neighbourhood.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from ..errors import InputError, InputTypeError

__all__ = ["infidelity", "max_sensitivity"]


def _check_tensor(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise InputTypeError("infidelity and max-sensitivity need a floating-point input tensor (images); "
                        f"got {type(inputs).__name__}")
    return inputs


def infidelity(forward_func: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
               attributions: torch.Tensor, target: Any, *, perturbation: str = "noise", noise_std: float = 0.1,
               n_perturb_samples: int = 10, seed: int = 0, normalize: bool = False) -> torch.Tensor:
    """``(B,)`` infidelity of ``attributions`` (input-shaped) for ``forward_func(x) -> (B, C)``.

    ``perturbation``: ``"noise"`` or ``"subset"`` (see module docs); ``seed`` makes the
    perturbations reproducible; ``normalize`` rescales Φ by the best scalar first (Captum's).
    """
    from captum.metrics import infidelity as captum_infidelity

    inputs = _check_tensor(inputs)
    if attributions.shape != inputs.shape:
        raise InputError(f"attributions {tuple(attributions.shape)} must have the input's shape {tuple(inputs.shape)}")
    gen = torch.Generator(device=inputs.device).manual_seed(int(seed))

    if perturbation == "noise":
        def perturb(x: torch.Tensor):
            noise = noise_std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            return noise, x - noise
    elif perturbation == "subset":
        def perturb(x: torch.Tensor):
            removed = (torch.rand(x.shape, generator=gen, device=x.device) < 0.5).to(x.dtype)
            return removed, x * (1 - removed)
        # I^T Φ must be Σ_{removed} Φ_i, and f(x) - f(x - x⊙removed): Captum multiplies the
        # perturbation with Φ, so the indicator is the perturbation and Φ stays as given.
    else:
        raise InputError(f"perturbation must be 'noise' or 'subset', got {perturbation!r}")
    with torch.no_grad():
        return captum_infidelity(forward_func, perturb, inputs, attributions, target=target,
                                 n_perturb_samples=int(n_perturb_samples), normalize=normalize).detach()


def max_sensitivity(explanation_func: Callable[..., torch.Tensor], inputs: torch.Tensor, target: Any, *,
                    radius: float = 0.02, n_perturb_samples: int = 10, seed: int = 0) -> torch.Tensor:
    """``(B,)`` max-sensitivity of ``explanation_func(inputs, target=...) -> input-shaped``.

    Uses Captum's ``sensitivity_max`` (uniform perturbations in the L∞ ball of ``radius``,
    Frobenius norm); the global random state is forked and seeded with ``seed``, so the
    caller's random stream is left untouched.
    """
    from captum.metrics import sensitivity_max

    inputs = _check_tensor(inputs)

    def explain(inp, **kwargs):  # Captum passes the inputs as a tuple
        single = inp[0] if isinstance(inp, tuple) else inp
        return (explanation_func(single, **kwargs),)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return sensitivity_max(explain, inputs, perturb_radius=float(radius),
                               n_perturb_samples=int(n_perturb_samples), target=target).detach()
