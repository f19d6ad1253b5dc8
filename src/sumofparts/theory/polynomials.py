"""Multilinear polynomials over {0,1}^d as torch modules, with exact subset tables.

A :class:`SumOfMonomials` is ``f(x) = const + sum_k c_k * prod_{j in M_k} x_j``. It is an
``nn.Module`` taking a ``(B, d)`` float tensor and returning ``(B,)``, so every attribution
method of the project (Captum's included) runs on it. Next to the torch forward it has an
exact numpy evaluation on *all* ``2**d`` subsets at once (:meth:`SumOfMonomials.subset_values`)
and closed-form Shapley values.

Subset convention used throughout :mod:`sumofparts.theory`: subset ``S`` of ``{0, .., d-1}`` is the
integer whose bit ``i`` is set when feature ``i`` is in ``S``; tables have length ``2**d`` and entry
``s`` belongs to subset ``s``. ``x_S`` keeps the features of ``x`` in ``S`` and puts the baseline
(zeros unless stated) everywhere else.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from ..errors import InputError

__all__ = [
    "MAX_EXACT_D",
    "Monomial",
    "SumOfMonomials",
    "binomial",
    "subset_masks",
    "popcounts",
    "exact_shapley",
]

#: Largest ``d`` for which the exact enumeration over all ``2**d`` subsets is allowed.
MAX_EXACT_D = 20


def _check_d(d: int, *, what: str = "d") -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise InputError(f"{what} must be an int, got {type(d).__name__} ({d!r})")
    d = int(d)
    if d < 1:
        raise InputError(f"{what} must be >= 1, got {d}")
    return d


def check_exact_d(d: int) -> int:
    """Validate that ``d`` is small enough for the exact enumeration over ``2**d`` subsets."""
    d = _check_d(d)
    if d > MAX_EXACT_D:
        raise InputError(
            f"exact enumeration over all 2**d subsets needs d <= {MAX_EXACT_D}, got d={d} "
            f"({2 ** d} subsets)"
        )
    return d


def _check_indices(indices: Iterable[int], d: int, *, what: str) -> tuple[int, ...]:
    try:
        idx = tuple(int(i) for i in indices)
    except TypeError as exc:
        raise InputError(f"{what} must be an iterable of feature indices, got {indices!r}") from exc
    bad = [i for i in idx if i < 0 or i >= d]
    if bad:
        raise InputError(f"{what} has indices outside [0, {d - 1}] (d={d}): {bad}")
    if len(set(idx)) != len(idx):
        raise InputError(f"{what} has repeated indices: {list(idx)}")
    return tuple(sorted(idx))


def popcounts(d: int) -> np.ndarray:
    """``|S|`` for every subset ``S`` (index ``s`` in ``0 .. 2**d - 1``), as int64."""
    d = check_exact_d(d) if d > 0 else 0
    pc = np.zeros(1, dtype=np.int64)
    for _ in range(d):
        pc = np.concatenate([pc, pc + 1])
    return pc


def subset_masks(d: int) -> np.ndarray:
    """Boolean ``(2**d, d)`` matrix: row ``s`` is the indicator of subset ``s`` (bit i = feature i)."""
    d = check_exact_d(d)
    s = np.arange(2 ** d, dtype=np.int64)
    return ((s[:, None] >> np.arange(d, dtype=np.int64)[None, :]) & 1).astype(bool)


def _as_vector(v, d: int, *, what: str, default: float) -> np.ndarray:
    if v is None:
        return np.full(d, float(default))
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape != (d,):
        raise InputError(f"{what} must have {d} entries (d={d}), got shape {np.shape(v)}")
    return arr


class SumOfMonomials(nn.Module):
    """``f(x) = const + sum_k coefs[k] * prod_{j in monomials[k]} x_j`` on ``(B, d)`` inputs.

    Parameters
    ----------
    d: number of input features.
    monomials: sequence of index sets (each a sequence of distinct ints in ``[0, d)``).
    coefs: one coefficient per monomial (default all ones).
    const: constant term.
    """

    def __init__(
        self,
        d: int,
        monomials: Sequence[Iterable[int]],
        coefs: Sequence[float] | None = None,
        const: float = 0.0,
    ) -> None:
        super().__init__()
        d = _check_d(d)
        mons = [_check_indices(m, d, what=f"monomial {k}") for k, m in enumerate(monomials)]
        if coefs is None:
            coefs = [1.0] * len(mons)
        coefs = [float(c) for c in coefs]
        if len(coefs) != len(mons):
            raise InputError(f"expected one coefficient per monomial ({len(mons)}), got {len(coefs)}")
        self.d = d
        self.monomials: tuple[tuple[int, ...], ...] = tuple(mons)
        self.coefs: tuple[float, ...] = tuple(coefs)
        self.const = float(const)
        mask = torch.zeros(len(mons), d, dtype=torch.bool)
        for k, m in enumerate(mons):
            mask[k, list(m)] = True
        self.mask: torch.Tensor
        self.coef: torch.Tensor
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("coef", torch.tensor(coefs, dtype=torch.float64), persistent=False)

    # ------------------------------------------------------------------ torch
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[-1] != self.d:
            raise InputError(f"expected input of shape (B, {self.d}), got {tuple(x.shape)}")
        if not self.monomials:
            return torch.full(x.shape[:1], self.const, dtype=x.dtype, device=x.device)
        ones = torch.ones((), dtype=x.dtype, device=x.device)
        factors = torch.where(self.mask.unsqueeze(0), x.unsqueeze(1), ones)  # (B, K, d)
        terms = factors.prod(dim=-1)  # (B, K)
        return terms @ self.coef.to(x.dtype) + self.const

    # ------------------------------------------------------------------ exact numpy
    def evaluate(self, x) -> np.ndarray:
        """Exact float64 evaluation of ``(B, d)`` (or ``(d,)``) inputs in numpy."""
        arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        arr = np.atleast_2d(arr)
        if arr.shape[-1] != self.d:
            raise InputError(f"expected inputs with {self.d} features, got shape {arr.shape}")
        out = np.full(arr.shape[0], self.const)
        for m, c in zip(self.monomials, self.coefs):
            out += c * np.prod(arr[:, list(m)], axis=1)
        return out

    def subset_values(self, x=None, baseline=None) -> np.ndarray:
        """``f(x_S)`` for all ``2**d`` subsets (bit ``i`` of the index = feature ``i`` kept).

        ``x`` defaults to all ones and ``baseline`` (the value of removed features) to zeros.
        Exact in float64; costs ``O(sum_k |M_k| * 2**d)``.
        """
        d = check_exact_d(self.d)
        xv = _as_vector(x, d, what="x", default=1.0)
        bv = _as_vector(baseline, d, what="baseline", default=0.0)
        s = np.arange(2 ** d, dtype=np.int64)
        out = np.full(2 ** d, self.const)
        for m, c in zip(self.monomials, self.coefs):
            term = np.full(2 ** d, c)
            for j in m:
                term *= np.where((s >> j) & 1, xv[j], bv[j])
            out += term
        return out

    def shapley_values(self, x=None) -> np.ndarray:
        """Closed-form Shapley values at ``x`` (default ones) against the zero baseline.

        With baseline 0 each monomial ``c * prod_{j in M} x_j`` is a scaled unanimity game on
        ``M``: it pays ``c * prod x_M`` only when all of ``M`` is present, and by symmetry and
        efficiency each member of ``M`` gets ``c * prod x_M / |M|``. The constant gets nothing.
        """
        xv = _as_vector(x, self.d, what="x", default=1.0)
        phi = np.zeros(self.d)
        for m, c in zip(self.monomials, self.coefs):
            if m:
                phi[list(m)] += c * float(np.prod(xv[list(m)])) / len(m)
        return phi

    def gradient(self, x=None) -> np.ndarray:
        """Exact gradient at ``x`` (default ones)."""
        xv = _as_vector(x, self.d, what="x", default=1.0)
        g = np.zeros(self.d)
        for m, c in zip(self.monomials, self.coefs):
            for j in m:
                others = [k for k in m if k != j]
                g[j] += c * float(np.prod(xv[others])) if others else c
        return g

    def extra_repr(self) -> str:
        return f"d={self.d}, monomials={len(self.monomials)}, const={self.const}"


class Monomial(SumOfMonomials):
    """``f(x) = coef * prod_{j in indices} x_j``."""

    def __init__(self, d: int, indices: Iterable[int], coef: float = 1.0) -> None:
        super().__init__(d, [tuple(indices)], [coef])

    @property
    def indices(self) -> tuple[int, ...]:
        return self.monomials[0]


class Binomial(SumOfMonomials):
    """``p(x) = prod_{S1 ∪ S2} x + prod_{S2 ∪ S3} x`` with consecutive parts S1, S2, S3."""

    def __init__(self, sizes: tuple[int, int, int]) -> None:
        n1, n2, n3 = (int(v) for v in sizes)
        d = n1 + n2 + n3
        self.parts = (
            tuple(range(n1)),
            tuple(range(n1, n1 + n2)),
            tuple(range(n1 + n2, d)),
        )
        s1, s2, s3 = self.parts
        super().__init__(d, [s1 + s2, s2 + s3], [1.0, 1.0])

    @property
    def groups(self) -> list[tuple[int, ...]]:
        """The two groups ``S1 ∪ S2`` and ``S2 ∪ S3`` (their scores (1, 1) give zero error)."""
        return [tuple(m) for m in self.monomials]


def binomial(d: int, sizes: tuple[int, int, int] | None = None) -> Binomial:
    """The binomial of the insertion-error theorem with equal thirds.

    ``d`` must be divisible by 3 (parts ``S1 = {0..d/3-1}``, ``S2`` the middle third, ``S3`` the
    last third). Other splits are allowed only when given explicitly with ``sizes=(n1, n2, n3)``
    summing to ``d``, each ``>= 1``.
    """
    d = _check_d(d)
    if sizes is None:
        if d % 3 != 0:
            raise InputError(
                f"binomial(d) needs d divisible by 3 (equal thirds S1, S2, S3), got d={d}; "
                f"pass sizes=(n1, n2, n3) for an unequal split"
            )
        sizes = (d // 3, d // 3, d // 3)
    sizes = tuple(int(v) for v in sizes)  # type: ignore[assignment]  # checked to be three just below
    if len(sizes) != 3 or sum(sizes) != d or min(sizes) < 1:
        raise InputError(f"sizes must be three ints >= 1 summing to d={d}, got {sizes}")
    return Binomial(sizes)


def exact_shapley(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values of the game ``v(S) = values[S]`` by full enumeration.

    ``phi_i = sum_{S not containing i} |S|! (d-|S|-1)! / d! * (v(S ∪ {i}) - v(S))``, vectorised
    over all subsets: ``O(d * 2**d)``. Independent of any closed form.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.shape[0]
    d = int(n).bit_length() - 1
    if n < 2 or 2 ** d != n:
        raise InputError(f"values must have length 2**d for some d >= 1, got {n}")
    check_exact_d(d)
    from math import lgamma

    pc = popcounts(d)
    # weights w[k] = k! (d-k-1)! / d!, computed in log space for stability
    w = np.array([np.exp(lgamma(k + 1) + lgamma(d - k) - lgamma(d + 1)) for k in range(d)])
    s = np.arange(n, dtype=np.int64)
    phi = np.empty(d)
    for i in range(d):
        without = s[((s >> i) & 1) == 0]
        phi[i] = float(np.sum(w[pc[without]] * (values[without | (1 << i)] - values[without])))
    return phi
