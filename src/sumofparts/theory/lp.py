"""The best feature attribution as a linear program, its dual, and dual lower bounds.

For targets ``b`` (``b_S = f(x_S) - f(x_∅)`` for insertion, ``b_S = f(x) - f(x_{N\\S})`` for
deletion, see :mod:`.errors`) and the ``2**d × d`` subset-indicator matrix ``A`` (row ``S`` is
``1_S``), the smallest total error of a feature attribution is

    P* = min_alpha  sum_S |b_S - A_S alpha|.

**Primal LP** (equality form with slack pairs): variables ``alpha`` (free), ``u, v >= 0``::

    min  1'u + 1'v   s.t.  A alpha + u - v = b

At an optimum ``u_S + v_S = |b_S - A_S alpha|``. **Dual LP**: the Lagrangian of the primal gives::

    max_lambda  b' lambda   s.t.  A' lambda = 0  (sum_{S ∋ i} lambda_S = 0 for every i),  -1 <= lambda <= 1

Weak duality: for every feasible ``lambda`` and every ``alpha``,
``b'lambda = (b - A alpha)'lambda <= sum_S |b_S - A_S alpha|``, so ``D(lambda) = b'lambda`` is a lower
bound on the total error of *every* feature attribution; strong duality makes the best bound
equal to ``P*``. HiGHS reports the equality multipliers of the primal
(``res.eqlin.marginals``), which are an optimal ``lambda``.

**Hand-made dual certificates.** For ``T`` with ``|T| >= 2`` the parity ``lambda_S = (-1)^{|S ∩ T|}``
is dual feasible: for each ``i`` there is a ``j in T``, ``j != i``, and toggling ``j`` pairs the
sets containing ``i`` into pairs of opposite sign. Its value ``b'lambda`` is the Walsh–Hadamard
coefficient of ``b`` at ``T``. For a sum of monomials ``sum_k c_k prod_{M_k} x`` (zero baseline,
``x = 1``) this coefficient is ``(-1)^{|T|} sum_{k: T ⊆ M_k} c_k 2^{d - |M_k|}`` (insertion) and
``-sum_{k: T ⊆ M_k} c_k 2^{d-|M_k|}`` (deletion). For the binomial with thirds of size ``m`` and
``T`` two features of ``S2`` (contained in both monomials) the value is ``2 * 2^m = 2^{d/3 + 1}``:
every feature attribution has total insertion (and deletion) error at least ``2^{d/3+1}``, and since
``sum_S |b_S| = 2^{d/3+1}`` too, the all-zero attribution is an optimal one for insertion.
For deletion the *layer* certificate ``lambda_S = sgn(d + 1 - 2|S|)`` is much stronger:
``2 C(d, floor(d/2)) - 2^{d/3+1}``, about ``2^{d+1.5} / sqrt(pi d)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from .polynomials import Binomial, check_exact_d, popcounts
from ..errors import InputError

__all__ = [
    "MAX_LP_D",
    "LPResult",
    "subset_matrix",
    "solve_primal",
    "solve_dual",
    "dual_objective",
    "dual_infeasibility",
    "walsh_hadamard",
    "parity_certificate",
    "best_parity_bound",
    "layer_certificate",
    "binomial_dual_certificate",
    "binomial_dual_bound_value",
]

#: Largest ``d`` accepted by the LP solvers (2**d rows; d = 16 takes seconds).
MAX_LP_D = 18


@dataclass
class LPResult:
    """Outcome of one LP solve."""

    kind: str  # "primal" or "dual"
    d: int
    value: float  # optimal total error (primal) or optimal dual objective b'lambda (dual)
    alpha: np.ndarray | None  # an optimal attribution (primal solve)
    lam: np.ndarray  # an optimal dual vector lambda (length 2**d)
    status: int
    message: str
    seconds: float
    extra: dict = field(default_factory=dict)


def _targets(b) -> tuple[np.ndarray, int]:
    arr = np.asarray(b, dtype=np.float64)
    if arr.ndim != 1:
        raise InputError(f"targets b must be 1-D of length 2**d, got shape {arr.shape}")
    n = arr.shape[0]
    d = int(n).bit_length() - 1
    if n < 2 or 2 ** d != n:
        raise InputError(f"targets b must have length 2**d (d >= 1), got length {n}")
    if d > MAX_LP_D:
        raise InputError(f"the LP has 2**d rows; d <= {MAX_LP_D} is supported, got d={d}")
    if not np.all(np.isfinite(arr)):
        raise InputError("targets b contain non-finite values")
    return arr, d


def subset_matrix(d: int) -> sp.csr_matrix:
    """Sparse ``2**d × d`` 0/1 matrix whose row ``s`` is the indicator of subset ``s``."""
    d = check_exact_d(d)
    n = 2 ** d
    s = np.arange(n, dtype=np.int64)
    bits = ((s[:, None] >> np.arange(d, dtype=np.int64)[None, :]) & 1).astype(bool)
    rows, cols = np.nonzero(bits)
    return sp.csr_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=(n, d))


def _check_method(method: str) -> str:
    if method not in ("highs", "highs-ipm", "highs-ds"):
        raise InputError(f"method must be one of 'highs', 'highs-ipm', 'highs-ds' (HiGHS), got {method!r}")
    return method


def _check_ok(res, what: str) -> None:
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the {what}: status {res.status}: {res.message}")


def solve_primal(b, *, method: str = "highs-ipm", time_limit: float | None = None) -> LPResult:
    """``min_alpha sum_S |b_S - A_S alpha|`` with HiGHS; returns alpha, the value and lambda.

    ``method`` is passed to :func:`scipy.optimize.linprog`; the default, HiGHS' interior point
    with crossover (so the solution is a vertex with exact multipliers), is much faster than dual
    simplex on the deletion LP (d = 15: about 3 s against about 60 s on one core).
    """
    b, d = _targets(b)
    n = 2 ** d
    A = subset_matrix(d)
    eye = sp.identity(n, format="csr")
    A_eq = sp.hstack([A, eye, -eye], format="csc")
    c = np.concatenate([np.zeros(d), np.ones(2 * n)])
    bounds = [(None, None)] * d + [(0, None)] * (2 * n)
    options: dict[str, bool | float] = {"presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    t0 = time.perf_counter()
    res = linprog(c, A_eq=A_eq, b_eq=b, bounds=bounds, method=_check_method(method), options=options)
    secs = time.perf_counter() - t0
    _check_ok(res, f"primal LP (d={d})")
    alpha = res.x[:d].copy()
    lam = np.asarray(res.eqlin.marginals, dtype=np.float64).copy()
    return LPResult("primal", d, float(res.fun), alpha, lam, int(res.status), str(res.message), secs)


def solve_dual(b, *, method: str = "highs", time_limit: float | None = None) -> LPResult:
    """The explicit dual ``max_lambda b'lambda s.t. A'lambda = 0, |lambda| <= 1`` with HiGHS.

    The equality multipliers of this LP (``d`` of them) recover an optimal attribution:
    ``alpha = -res.eqlin.marginals`` (HiGHS minimises ``-b'lambda``), stored in ``alpha``.
    """
    b, d = _targets(b)
    At = subset_matrix(d).T.tocsr()
    options: dict[str, bool | float] = {"presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    t0 = time.perf_counter()
    res = linprog(-b, A_eq=At, b_eq=np.zeros(d), bounds=(-1.0, 1.0), method=_check_method(method), options=options)
    secs = time.perf_counter() - t0
    _check_ok(res, f"dual LP (d={d})")
    lam = res.x.copy()
    alpha = -np.asarray(res.eqlin.marginals, dtype=np.float64)
    return LPResult("dual", d, float(b @ lam), alpha, lam, int(res.status), str(res.message), secs)


def dual_objective(b, lam) -> float:
    """``D(lambda) = sum_S lambda_S b_S`` (a lower bound on every total error when feasible)."""
    b, _ = _targets(b)
    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    if lam.shape != b.shape:
        raise InputError(f"lambda must have length {b.shape[0]} (one per subset), got {lam.shape[0]}")
    return float(b @ lam)


def dual_infeasibility(lam, d: int | None = None) -> float:
    """Largest violation of the dual constraints: ``max(|sum_{S ∋ i} lambda_S|, |lambda_S| - 1, 0)``."""
    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    n = lam.shape[0]
    dd = int(n).bit_length() - 1
    if n < 2 or 2 ** dd != n or (d is not None and dd != int(d)):
        raise InputError(f"lambda must have length 2**d{'' if d is None else f' = {2 ** int(d)}'}, got {n}")
    s = np.arange(n, dtype=np.int64)
    col = max(abs(float(lam[((s >> i) & 1) == 1].sum())) for i in range(dd))
    box = float(np.max(np.abs(lam)) - 1.0)
    return max(col, box, 0.0)


def walsh_hadamard(b) -> np.ndarray:
    """``w(T) = sum_S b_S (-1)^{|S ∩ T|}`` for every ``T`` (fast transform, ``O(d 2**d)``)."""
    w: np.ndarray = np.array(b, dtype=np.float64).reshape(-1)
    n = w.shape[0]
    d = int(n).bit_length() - 1
    if n < 2 or 2 ** d != n:
        raise InputError(f"input must have length 2**d, got {n}")
    h = 1
    while h < n:
        w = w.reshape(-1, 2, h)
        a, c = w[:, 0, :].copy(), w[:, 1, :].copy()
        w[:, 0, :] = a + c
        w[:, 1, :] = a - c
        w = w.reshape(n)
        h *= 2
    return w


def parity_certificate(d: int, T: Sequence[int], sign: float = 1.0) -> np.ndarray:
    """The dual-feasible ``lambda_S = sign * (-1)^{|S ∩ T|}`` (requires ``|T| >= 2``, ``|sign| <= 1``)."""
    d = check_exact_d(d)
    T = [int(t) for t in T]
    if len(set(T)) < 2:
        raise InputError(f"T needs at least two distinct features for feasibility, got {T}")
    bad = [t for t in T if t < 0 or t >= d]
    if bad:
        raise InputError(f"T has indices outside [0, {d - 1}]: {bad}")
    if abs(sign) > 1:
        raise InputError(f"|sign| must be <= 1 to keep |lambda| <= 1, got {sign}")
    mask = 0
    for t in set(T):
        mask |= 1 << t
    s = np.arange(2 ** d, dtype=np.int64)
    par = popcounts(d)[s & mask] % 2
    return float(sign) * (1.0 - 2.0 * par)


def best_parity_bound(b) -> tuple[float, np.ndarray, tuple[int, ...]]:
    """Best bound among the parity certificates ``±(-1)^{|S ∩ T|}``, ``|T| >= 2``.

    Returns ``(value, lambda, T)``; value = max over ``|T| >= 2`` of ``|w(T)|`` (Walsh–Hadamard).
    Works for any targets; for ``d = 1`` no such ``T`` exists and the bound is 0 (lambda = 0).
    """
    b, d = _targets(b)
    if d < 2:
        return 0.0, np.zeros_like(b), ()
    w = walsh_hadamard(b)
    pc = popcounts(d)
    cand = np.where(pc >= 2, np.abs(w), -np.inf)
    t = int(np.argmax(cand))
    T = tuple(i for i in range(d) if (t >> i) & 1)
    sign = 1.0 if w[t] >= 0 else -1.0
    lam = parity_certificate(d, T, sign)
    return float(b @ lam), lam, T


def layer_certificate(d: int, sign: float = 1.0) -> np.ndarray:
    """The dual-feasible ``lambda_S = sign * sgn(d + 1 - 2|S|)`` (+1 on the small sets, -1 on the large).

    Feasible because ``sum_{S ∋ i} lambda_S = sign * sum_j C(d-1, j) sgn(d - 1 - 2j) = 0`` (the terms
    ``j`` and ``d-1-j`` cancel). Good for deletion, where the targets are nearly constant on the
    non-empty sets and no linear attribution can follow them.
    """
    d = check_exact_d(d)
    if abs(sign) > 1:
        raise InputError(f"|sign| must be <= 1 to keep |lambda| <= 1, got {sign}")
    return float(sign) * np.sign(d + 1 - 2 * popcounts(d)).astype(np.float64)


def binomial_dual_bound_value(poly: Binomial, kind: str = "insertion") -> float:
    """Closed form of ``D(lambda_hat)`` for :func:`binomial_dual_certificate`.

    Insertion (parity certificate): ``|S2| >= 2``: ``2^{|S1|} + 2^{|S3|}`` (``= 2^{d/3+1}`` for equal
    thirds); ``|S2| = 1``: ``2^{max(|S1|, |S3|)}``.
    Deletion (layer certificate, ``phi(k) = sgn(d + 1 - 2k)``): ``b_S = 2`` on non-empty sets except
    ``b_S = 1`` on the non-empty subsets of ``S1`` and of ``S3``, so
    ``D = 2 sum_{k>=1} C(d,k) phi(k) - sum_{j in {1,3}} sum_{k>=1} C(|S_j|,k) phi(k)``; for equal thirds
    ``= 2 C(d, floor(d/2)) - 2^{d/3+1}``.
    """
    if kind not in ("insertion", "deletion"):
        raise InputError(f"kind must be 'insertion' or 'deletion', got {kind!r}")
    n1, n2, n3 = (len(p) for p in poly.parts)
    if kind == "insertion":
        if n2 >= 2:
            return float(2 ** n1 + 2 ** n3)
        return float(2 ** max(n1, n3))
    from math import comb

    d = poly.d
    phi = lambda k: (d + 1 - 2 * k > 0) - (d + 1 - 2 * k < 0)  # noqa: E731
    total = 2 * sum(comb(d, k) * phi(k) for k in range(1, d + 1))
    total -= sum(comb(n, k) * phi(k) for n in (n1, n3) for k in range(1, n + 1))
    return float(total)


def binomial_dual_certificate(poly: Binomial, kind: str = "insertion") -> tuple[np.ndarray, float, str]:
    """Analytic dual-feasible ``lambda_hat`` for the binomial and its value ``D(lambda_hat)``.

    * insertion: the parity ``lambda_S = (-1)^{|S ∩ T|}`` with ``T`` the first two features of ``S2``
      (a pair inside both monomials) when ``|S2| >= 2``, else a pair inside the monomial with the
      larger ``2^{d-|M|}``. Value ``2^{d/3+1}`` for equal thirds, d >= 6 — equal to the LP optimum,
      which the all-zero attribution attains (``sum_S |b_S| = 2^{d/3+1}``).
    * deletion: the layer certificate ``lambda_S = sgn(d + 1 - 2|S|)`` (:func:`layer_certificate`),
      value ``2 C(d, floor(d/2)) - 2^{d/3+1}`` for equal thirds.

    Returns ``(lambda_hat, value, description)``; the value is ``b'lambda_hat`` computed from the
    exact targets (it equals :func:`binomial_dual_bound_value`).
    """
    if not isinstance(poly, Binomial):
        raise InputError(f"expected a Binomial (see sumofparts.theory.binomial), got {type(poly).__name__}")
    if kind not in ("insertion", "deletion"):
        raise InputError(f"kind must be 'insertion' or 'deletion', got {kind!r}")
    from .errors import deletion_targets, insertion_targets

    vals = poly.subset_values()
    if kind == "insertion":
        s1, s2, s3 = poly.parts
        if len(s2) >= 2:
            T = (s2[0], s2[1])
        elif len(s1) >= len(s3):  # pair inside S2 ∪ S3, the monomial with 2^{|S1|} supersets
            T = (s2[0], s3[0])
        else:
            T = (s1[0], s2[0])
        lam = parity_certificate(poly.d, T, 1.0)  # |T| = 2: sign (+1)^{|T|}
        b = insertion_targets(vals)
        desc = f"parity on T={list(T)}"
    else:
        lam = layer_certificate(poly.d, 1.0)
        b = deletion_targets(vals)
        desc = "layer sgn(d+1-2|S|)"
    return lam, float(b @ lam), desc
