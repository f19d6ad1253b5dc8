"""Infidelity and max-sensitivity (Yeh et al., 2019), written out so each step can be checked.

Shapes: B inputs of feature shape ``*F`` (e.g. ``(C, H, W)``), M perturbation samples.

**Infidelity** of an attribution Φ for the followed output f_t:

    INFD(Φ, x) = E_I[ (Iᵀ Φ − (f_t(x) − f_t(x − I)))² ]

* ``"subset"`` perturbations (Yeh et al.'s removal of a random subset): ``I = x ⊙ R`` with R a
  random 0/1 mask, so ``x − I`` sets the removed features to 0 (the empty value). The
  evaluation removes whole cells, each with probability ½ (:func:`subset_removals`).
* ``"noise"``: ``I ~ N(0, σ²)`` on every feature.
* **Attributions that already multiply by the input** (Gradient×Input, Integrated Gradients,
  DeepLIFT, LRP, and the perturbation methods whose score is the effect of switching a cell
  between the empty value and its own: occlusion, Shapley values, KernelSHAP, LIME, SOP's and
  BagNet's additive maps) estimate ``x ⊙ ∂f``, not ``∂f``; for them ``Iᵀ Φ`` is computed on
  ``I / (x − 0) = R`` (``multiply_by_inputs=True``, Captum's convention for such methods), i.e.
  the sum of Φ over the removed features. Gradient-like maps (saliency, SmoothGrad, Grad-CAM,
  RISE) use ``I = x ⊙ R`` as it is.
* ``normalize=True`` first rescales Φ by the β minimising the expectation
  (``β = E[IᵀΦ · Δf] / E[(IᵀΦ)²]``), so a map's arbitrary scale does not count against it.

The expectation is the mean over the M given (or seeded) perturbations. Equal to Captum's
``captum.metrics.infidelity`` and to Quantus's ``Infidelity`` on the same perturbations
(``tests/metrics/test_peer_parity.py``).

**Max-sensitivity** ``max_m ‖Φ(x + δ_m) − Φ(x)‖_F / ‖Φ(x)‖_F`` over M uniform perturbations
``δ_m ∈ [−r, r]^F``. When ``‖Φ(x)‖ = 0`` (an all-zero map) the ratio is undefined and the
result is NaN — not 0, which would make a map that says nothing look perfectly stable (Captum
divides by 1 there). Equal to Captum's ``sensitivity_max`` and Quantus's ``MaxSensitivity`` on
the same perturbations, away from that case.

Both take tensor inputs (images); token inputs have no continuous neighbourhood.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from ..errors import InputError, InputTypeError

__all__ = ["infidelity", "max_sensitivity", "subset_removals", "uniform_perturbations"]


def _check_tensor(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise InputTypeError("infidelity and max-sensitivity need a floating-point input tensor (images); "
                        f"got {type(inputs).__name__}")
    return inputs


def _items(items: Sequence[int] | None, B: int) -> list[int]:
    ids = list(range(B)) if items is None else [int(i) for i in items]
    if len(ids) != B:
        raise InputError(f"expected {B} item indices, got {len(ids)}")
    return ids


def subset_removals(feature_cells: torch.Tensor, num_cells: int, samples: int, *, items: Sequence[int],
                    seed: int = 0, p: float = 0.5) -> torch.Tensor:
    """``(M, B, *F)`` bool: random subsets of whole cells (each removed with probability ``p``).

    ``feature_cells (*F)`` long: the cell of each input feature (``adapter.cell_index_map``).
    Sample m of item b comes from ``numpy.random.default_rng([seed, item, m])``.
    """
    rows = []
    for m in range(int(samples)):
        cells = np.stack([np.random.default_rng([int(seed), i, m, 1]).random(int(num_cells)) < p for i in items])
        rows.append(torch.from_numpy(cells).to(feature_cells.device)[:, feature_cells])  # (B, *F)
    return torch.stack(rows)


def uniform_perturbations(shape: Sequence[int], samples: int, radius: float, *, items: Sequence[int],
                          seed: int = 0) -> torch.Tensor:
    """``(M, B, *F)`` float32 noise uniform in ``[−radius, radius]``; ``shape = (B, *F)``.

    Sample m of item b comes from ``numpy.random.default_rng([seed, item, m])``.
    """
    feat = tuple(int(s) for s in shape[1:])
    noise = [np.stack([np.random.default_rng([int(seed), i, m, 2]).uniform(-radius, radius, size=feat)
                       for i in items]) for m in range(int(samples))]
    return torch.from_numpy(np.stack(noise)).to(torch.float32)


@torch.no_grad()
def infidelity(forward_func: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
               attributions: torch.Tensor, target: Any, *, perturbation: str = "subset",
               removals: torch.Tensor | None = None, noise: torch.Tensor | None = None,
               n_perturb_samples: int = 10, noise_std: float = 0.1, seed: int = 0,
               items: Sequence[int] | None = None, multiply_by_inputs: bool = False, normalize: bool = False,
               batch_rows: int = 256) -> torch.Tensor:
    """``(B,)`` infidelity of ``attributions`` (input-shaped) for ``forward_func(x) -> (B, C)``.

    ``perturbation``: ``"subset"`` (I = x ⊙ R) or ``"noise"`` (I ~ N(0, noise_std²)).
    ``removals (M, B, *F)`` bool / ``noise (M, B, *F)``: the perturbations; when not given,
    ``n_perturb_samples`` are drawn (subset: each feature removed with probability ½), seeded by
    ``(seed, item, m)`` with ``items`` the items' indices (default 0..B-1).
    ``multiply_by_inputs``: Φ already includes the input factor (see the module docs).
    ``normalize``: rescale Φ by the optimal β first. ``batch_rows``: perturbed inputs per
    forward call.
    """
    x = _check_tensor(inputs)
    if attributions.shape != x.shape:
        raise InputError(f"attributions {tuple(attributions.shape)} must have the input's shape {tuple(x.shape)}")
    B = x.shape[0]
    ids = _items(items, B)
    t = torch.as_tensor(target, device=x.device).long().reshape(-1).expand(B) if not isinstance(target, int) \
        else torch.full((B,), target, dtype=torch.long, device=x.device)
    if perturbation == "subset":
        if removals is None:
            removals = torch.stack([torch.from_numpy(np.stack(
                [np.random.default_rng([int(seed), i, m, 0]).random(tuple(x.shape[1:])) < 0.5 for i in ids]))
                for m in range(int(n_perturb_samples))]).to(x.device)
        if removals.shape[1:] != x.shape:
            raise InputError(f"removals must be (M, {', '.join(map(str, x.shape))}), got {tuple(removals.shape)}")
        R = removals.to(x.dtype)
        I = x.unsqueeze(0) * R  # (M, B, *F)
        I_dot = R if multiply_by_inputs else I
    elif perturbation == "noise":
        if multiply_by_inputs:
            raise InputError("noise perturbations are for gradient-like attributions; use perturbation='subset' "
                             "for attributions that multiply by the input")
        if noise is None:
            noise = torch.stack([torch.from_numpy(np.stack(
                [np.random.default_rng([int(seed), i, m, 3]).normal(0.0, noise_std, size=tuple(x.shape[1:]))
                 for i in ids])) for m in range(int(n_perturb_samples))]).to(x.device, x.dtype)
        if noise.shape[1:] != x.shape:
            raise InputError(f"noise must be (M, {', '.join(map(str, x.shape))}), got {tuple(noise.shape)}")
        I = noise.to(x.dtype)
        I_dot = I
    else:
        raise InputError(f"perturbation must be 'subset' or 'noise', got {perturbation!r}")
    M = I.shape[0]
    f_x = forward_func(x).gather(1, t.view(-1, 1))[:, 0].double()  # (B,)
    perturbed = (x.unsqueeze(0) - I).reshape(M * B, *x.shape[1:])
    rows_t = t.repeat(M)
    f_p = torch.cat([forward_func(perturbed[s:s + batch_rows]).gather(1, rows_t[s:s + batch_rows].view(-1, 1))[:, 0]
                     for s in range(0, M * B, batch_rows)]).double().reshape(M, B)
    lhs = (I_dot.double() * attributions.double().unsqueeze(0)).reshape(M, B, -1).sum(-1)  # Iᵀ Φ
    rhs = f_x.unsqueeze(0) - f_p  # f(x) − f(x − I)
    if normalize:
        num, den = (lhs * rhs).mean(0), (lhs * lhs).mean(0)
        beta = torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
        lhs = beta.unsqueeze(0) * lhs
    return ((lhs - rhs) ** 2).mean(0)


def max_sensitivity(explanation_func: Callable[..., torch.Tensor], inputs: torch.Tensor, target: Any, *,
                    radius: float = 0.02, n_perturb_samples: int = 10, seed: int = 0,
                    items: Sequence[int] | None = None, perturbations: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` max-sensitivity of ``explanation_func(inputs, target=...) -> input-shaped``; NaN where ‖Φ(x)‖ = 0.

    ``perturbations (M, B, *F)``: the δ_m; when not given, ``n_perturb_samples`` uniform draws
    in ``[−radius, radius]`` seeded by ``(seed, item, m)`` (:func:`uniform_perturbations`).
    """
    x = _check_tensor(inputs)
    B = x.shape[0]
    if perturbations is None:
        perturbations = uniform_perturbations(x.shape, n_perturb_samples, radius, items=_items(items, B), seed=seed)
    perturbations = perturbations.to(x.device, x.dtype)
    if perturbations.shape[1:] != x.shape:
        raise InputError(f"perturbations must be (M, {', '.join(map(str, x.shape))}), got {tuple(perturbations.shape)}")
    phi = explanation_func(x, target=target).detach().double().reshape(B, -1)
    norm = phi.norm(dim=1)
    worst = torch.full((B,), float("-inf"), dtype=torch.float64, device=phi.device)
    for delta in perturbations:
        moved = explanation_func(x + delta, target=target).detach().double().reshape(B, -1)
        worst = torch.maximum(worst, (moved - phi).norm(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm)))
    return torch.where(norm > 0, worst, torch.full_like(worst, float("nan")))
