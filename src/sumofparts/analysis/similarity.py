"""How similar are two representations of the same examples? CKA, CCA, SVCCA, PWCCA, and PCA.

Every function takes ``X: (n, p)`` and ``Y: (n, q)``: row i of both is example i (a layer's
flattened output on the same n inputs; ``(n, ...)`` arrays are flattened). Columns are centred
first; all arithmetic is float64. With ``Xc``, ``Yc`` the centred matrices and
``H = I − 11ᵀ/n`` the centring matrix:

* **HSIC** of two n×n kernels: ``HSIC(K, L) = tr(K H L H) / (n − 1)²``.
* **CKA** (Kornblith et al. 2019): ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``.
  *Linear*: ``K = X Xᵀ``, which gives ``‖Ycᵀ Xc‖_F² / (‖Xcᵀ Xc‖_F · ‖Ycᵀ Yc‖_F)``; invariant to
  orthogonal transforms and to isotropic scaling of either side. *RBF*:
  ``K_ij = exp(−‖x_i − x_j‖² / (2σ²))`` with σ = ``sigma`` × the median distance between
  distinct examples (the bandwidth follows the data's scale, so the invariances remain).
  This is the biased HSIC estimator (the one in the talk): for independent representations
  CKA is not 0 but shrinks as n grows.
* **CCA** (Hotelling 1936): the canonical correlations ``ρ_1 ≥ … ≥ ρ_k`` are the singular
  values of ``Q_xᵀ Q_y``, ``Q`` an orthonormal basis of the centred column space (left
  singular vectors with singular value above ``1e-10 · s_max``), ``k = min(rank X, rank Y)``.
  When ``rank X + rank Y > n − 1`` the two column spaces must intersect and some ρ are 1
  whatever the data: refused. The similarity is the mean ρ.
* **SVCCA** (Raghu et al. 2017): each side is first projected on its top principal
  directions, as many as explain ``keep_variance`` (0.99) of its variance but at most
  ``max_dims`` (default ``n // 10``, which keeps CCA far from the n ≈ dimensions regime where
  correlations approach 1 by chance); then CCA; the mean ρ.
* **PWCCA** (Morcos et al. 2018): the same reduction and CCA, averaged with weights: for the
  canonical variates ``h_i = Q_x a_i`` of the *first* representation (unit vectors in R^n),
  ``α_i = Σ_j |⟨h_i, x_j⟩|`` over the columns x_j of the centred X (its original features), and
  ``PWCCA = Σ α_i ρ_i / Σ α_i``. It is not symmetric: the first argument sets the weights.
* **PCA**: the scores on the top principal directions and their share of the variance.

A representation with no variance (a dead layer) has no defined similarity: NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ..errors import InputError

__all__ = [
    "METRICS",
    "Prepared",
    "prepare",
    "similarity",
    "check_pair",
    "hsic",
    "centering_matrix",
    "linear_cka",
    "rbf_cka",
    "canonical_correlations",
    "cca",
    "svcca",
    "pwcca",
    "pca",
    "reduce_dims",
]

#: metric name -> what it is (the names ``sop compare --metrics`` takes)
METRICS = {
    "cka_linear": "linear CKA",
    "cka_rbf": "RBF CKA (sigma = 0.8 x median distance)",
    "cca": "mean CCA correlation (top n/10 principal directions when wider)",
    "svcca": "SVCCA (99% variance, at most n/10 directions)",
    "pwcca": "PWCCA (same reduction; weights from the first representation)",
}
_RTOL = 1e-10


def _as_matrix(X: Any, name: str) -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().double().numpy()
    a = np.asarray(X, dtype=np.float64)
    if a.ndim < 2:
        raise InputError(f"{name} has shape {a.shape}; expected (n examples, features)")
    a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} holds NaN or infinite values")
    return a


def check_pair(X: Any, Y: Any, *, min_examples: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 ``(n, features)`` matrices; refuses different numbers of examples."""
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"X has {x.shape[0]} examples and Y has {y.shape[0]}: the two representations must "
                         "hold the same examples, in the same order")
    if x.shape[0] < min_examples:
        raise InputError(f"need at least {min_examples} examples to compare representations, got {x.shape[0]}")
    return x, y


def centering_matrix(n: int) -> np.ndarray:
    """``H = I − 11ᵀ/n``: ``(n, n)``."""
    return np.eye(n) - np.full((n, n), 1.0 / n)


def hsic(K: Any, L: Any) -> float:
    """``tr(K H L H) / (n − 1)²`` for two ``(n, n)`` kernel matrices (the talk's formula, computed as
    the inner product of the doubly centred kernels)."""
    K, L = np.asarray(K, dtype=np.float64), np.asarray(L, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape != L.shape:
        raise InputError(f"expected two (n, n) kernel matrices of the same size, got {K.shape} and {L.shape}")
    n = K.shape[0]
    return float(np.sum(_double_centre(K) * _double_centre(L)) / (n - 1) ** 2)


def _double_centre(K: np.ndarray) -> np.ndarray:
    return K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()


def _rbf_kernel(Xc: np.ndarray, sigma: float, gram: np.ndarray | None = None) -> np.ndarray:
    K = Xc @ Xc.T if gram is None else gram
    sq = np.diag(K)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * K, 0.0)
    n = d2.shape[0]
    off = d2[~np.eye(n, dtype=bool)]
    med = float(np.median(np.sqrt(off))) if off.size else 0.0
    if med <= 0:
        return np.ones_like(d2)
    return np.exp(-d2 / (2.0 * (sigma * med) ** 2))


def _svd(Xc: np.ndarray, gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Thin SVD of a centred matrix ``Xc = U S Vᵀ`` and its numerical rank.

    When ``Xc`` is wider than tall, ``U`` and ``S`` come from the eigendecomposition of the
    ``(n, n)`` Gram matrix ``Xc Xcᵀ = U S² Uᵀ`` (``gram``, if already computed), several times
    cheaper than the SVD of an n × 60,000 feature map; ``Vt`` is then ``None`` (rows of it are
    ``S⁻¹ Uᵀ Xc``). The rank counts singular values above ``1e-10 · s_max`` (``1e-6`` on the Gram
    route, whose eigenvalues carry the square of the rounding error).
    """
    n, p = Xc.shape
    if p > n:
        K = Xc @ Xc.T if gram is None else gram
        lam, U = np.linalg.eigh(K)
        lam, U = lam[::-1], U[:, ::-1]
        s = np.sqrt(np.clip(lam, 0.0, None))
        rank = int(np.sum(s > 1e-6 * s[0])) if s.size and s[0] > 0 else 0
        return U, s, None, rank
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    rank = int(np.sum(s > _RTOL * s[0])) if s.size and s[0] > 0 else 0
    return U, s, Vt, rank


def _n_dims(s: np.ndarray, rank: int, keep_variance: float | None, max_dims: int | None) -> int:
    if keep_variance is not None and not 0.0 < keep_variance <= 1.0:
        raise InputError(f"keep_variance must be in (0, 1], got {keep_variance}")
    k = rank
    if keep_variance is not None and rank:
        var = s[:rank] ** 2
        k = int(np.searchsorted(np.cumsum(var) / var.sum(), keep_variance - 1e-12) + 1)
    if max_dims is not None:
        k = min(k, int(max_dims))
    return max(1, min(k, rank)) if rank else 0


def reduce_dims(Xc: Any, keep_variance: float | None = 0.99, max_dims: int | None = None) -> np.ndarray:
    """``Xc`` (centred) projected on its top principal directions: ``(n, k)``, the scores ``U_k S_k``.

    k = the fewest directions explaining ``keep_variance`` of the variance (``None``: every
    direction with a non-zero singular value), at most ``max_dims``.
    """
    x = _as_matrix(Xc, "Xc")
    U, s, _, rank = _svd(x - x.mean(0, keepdims=True))
    k = _n_dims(s, rank, keep_variance, max_dims)
    return U[:, :k] * s[:k]


def _basis(Xc: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column space of ``Xc``: ``(n, rank)``."""
    U, _, _, rank = _svd(Xc)
    return U[:, :rank]


@dataclass
class Prepared:
    """What the metrics need from one representation, computed once (for layer-by-layer matrices).

    ``gram``: the centred linear kernel divided by its Frobenius norm ``(n, n)``; ``rbf``: the
    same for the RBF kernel; ``bases``: ``{"cca" | "svcca": Q (n, k)}``, an orthonormal basis of
    the kept principal directions; ``loadings``: ``S_k V_kᵀ (k, p)`` for the SVCCA directions, so
    that ``hᵀ Xc = aᵀ S_k V_kᵀ`` for a canonical variate ``h = Q a`` (PWCCA's weights over the
    original features). ``constant``: the representation has no variance.
    """

    n: int
    features: int
    constant: bool
    gram: np.ndarray | None = None
    rbf: np.ndarray | None = None
    bases: dict[str, np.ndarray] = field(default_factory=dict)
    loadings: np.ndarray | None = None


def _normalised(K: np.ndarray) -> np.ndarray:
    return K / np.linalg.norm(K)


def prepare(X: Any, metrics: Sequence[str] = tuple(METRICS), *, sigma: float = 0.8, keep_variance: float = 0.99,
            max_dims: int | None = None) -> Prepared:
    """Precompute ``X``'s kernels and principal directions for ``metrics`` (see :data:`METRICS`).

    ``max_dims``: the most principal directions the CCA variants keep (default ``n // 10``).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; expected some of {', '.join(METRICS)}")
    if not sigma > 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    x = _as_matrix(X, "X")
    n = x.shape[0]
    if n < 3:
        raise InputError(f"need at least 3 examples to compare representations, got {n}")
    xc = x - x.mean(0, keepdims=True)
    scale = max(1.0, float(np.abs(x).max()))
    p = Prepared(n=n, features=x.shape[1], constant=not bool(np.any(np.abs(xc) > 1e-12 * scale)))
    if p.constant:
        return p
    cap = max(1, n // 10) if max_dims is None else int(max_dims)
    K = xc @ xc.T  # (n, n): linear CKA, the RBF distances and (for wide layers) the principal directions
    if "cka_linear" in metrics:
        p.gram = _normalised(K)
    if "cka_rbf" in metrics:
        p.rbf = _normalised(_double_centre(_rbf_kernel(xc, sigma, K)))
    if any(m in metrics for m in ("cca", "svcca", "pwcca")):
        U, s, Vt, rank = _svd(xc, K)
        if "cca" in metrics:
            p.bases["cca"] = U[:, : _n_dims(s, rank, None, cap)]
        if "svcca" in metrics or "pwcca" in metrics:
            k = _n_dims(s, rank, keep_variance, cap)
            p.bases["svcca"] = U[:, :k]
            p.loadings = s[:k, None] * Vt[:k] if Vt is not None else U[:, :k].T @ xc  # S_k V_kᵀ = U_kᵀ Xc
    return p


def _correlations(qx: np.ndarray, qy: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if qx.shape[1] + qy.shape[1] > n - 1:
        raise InputError(f"CCA of a rank-{qx.shape[1]} and a rank-{qy.shape[1]} representation needs more than "
                         f"{qx.shape[1] + qy.shape[1]} examples (got {n}): with fewer, some canonical correlations "
                         "are 1 whatever the data; reduce the dimensions first (svcca, pwcca) or add examples")
    A, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return np.clip(rho, 0.0, 1.0), A


def similarity(a: Prepared, b: Prepared, metric: str) -> float:
    """The ``metric`` similarity of two prepared representations (NaN if either has no variance)."""
    if a.n != b.n:
        raise InputError(f"the first representation has {a.n} examples and the second {b.n}: they must hold the "
                         "same examples, in the same order")
    if a.constant or b.constant:
        return float("nan")
    if metric == "cka_linear":
        return float(np.sum(a.gram * b.gram))
    if metric == "cka_rbf":
        return float(np.sum(a.rbf * b.rbf))
    key = "cca" if metric == "cca" else "svcca"
    rho, A = _correlations(a.bases[key], b.bases[key], a.n)
    if metric in ("cca", "svcca"):
        return float(rho.mean())
    if metric == "pwcca":
        alpha = np.abs(A[:, : rho.size].T @ a.loadings).sum(1)  # Σ_j |<h_i, x_j>| over X's features
        return float(np.sum(alpha * rho) / np.sum(alpha))
    raise InputError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def linear_cka(X: Any, Y: Any) -> float:
    """Linear CKA of ``X (n, p)`` and ``Y (n, q)`` (see the module docstring)."""
    x, y = check_pair(X, Y)
    return similarity(prepare(x, ["cka_linear"]), prepare(y, ["cka_linear"]), "cka_linear")


def rbf_cka(X: Any, Y: Any, sigma: float = 0.8) -> float:
    """RBF CKA with bandwidth ``sigma`` × the median distance between examples (each side its own)."""
    x, y = check_pair(X, Y)
    return similarity(prepare(x, ["cka_rbf"], sigma=sigma), prepare(y, ["cka_rbf"], sigma=sigma), "cka_rbf")


def canonical_correlations(X: Any, Y: Any) -> np.ndarray:
    """All canonical correlations of ``X`` and ``Y`` (raw features), largest first: ``(min(rank X, rank Y),)``.

    Refuses ``rank X + rank Y > n − 1`` (see the module docstring)."""
    x, y = check_pair(X, Y)
    qx, qy = _basis(x - x.mean(0)), _basis(y - y.mean(0))
    return _correlations(qx, qy, x.shape[0])[0]


def cca(X: Any, Y: Any) -> float:
    """Mean canonical correlation of the raw features."""
    rho = canonical_correlations(X, Y)
    return float(rho.mean()) if rho.size else float("nan")


def svcca(X: Any, Y: Any, keep_variance: float = 0.99, max_dims: int | None = None) -> float:
    """SVCCA: CCA after keeping each side's top principal directions (``keep_variance``, at most
    ``max_dims``, default ``n // 10``); the mean correlation."""
    x, y = check_pair(X, Y)
    kw = {"keep_variance": keep_variance, "max_dims": max_dims}
    return similarity(prepare(x, ["svcca"], **kw), prepare(y, ["svcca"], **kw), "svcca")


def pwcca(X: Any, Y: Any, keep_variance: float = 0.99, max_dims: int | None = None) -> float:
    """PWCCA: SVCCA's correlations weighted by how much of ``X`` each canonical variate accounts for."""
    x, y = check_pair(X, Y)
    kw = {"keep_variance": keep_variance, "max_dims": max_dims}
    return similarity(prepare(x, ["pwcca"], **kw), prepare(y, ["pwcca"], **kw), "pwcca")


def pca(X: Any, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the top ``k`` principal directions ``(n, k)`` and their share of the variance ``(k,)``."""
    x = _as_matrix(X, "X")
    if not 1 <= k <= min(x.shape):
        raise InputError(f"k must be in [1, {min(x.shape)}] for {x.shape[0]} examples of {x.shape[1]} features, got {k}")
    xc = x - x.mean(0, keepdims=True)
    U, s, _ = np.linalg.svd(xc, full_matrices=False)
    total = float(np.sum(s**2))
    share = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return U[:, :k] * s[:k], share
