"""CKA, CCA, SVCCA, PWCCA and PCA against independent formulas and their known invariants."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from sumofparts.analysis import similarity as S

@pytest.fixture(autouse=True)
def _one_blas_thread():
    """On a shared 2-core machine OpenBLAS's own threads make small linear algebra 30x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield



def _data(seed=0, n=300, p=20, q=12):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    Y = X[:, :6] @ rng.normal(size=(6, q)) + 0.7 * rng.normal(size=(n, q))
    return X, Y


def _cka_hsic(K, L):
    """The talk's formula written out: tr(KHLH)/(n-1)^2 with an explicit centring matrix."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    h = lambda A, B: np.trace(A @ H @ B @ H) / (n - 1) ** 2  # noqa: E731
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def _rbf(X, frac=0.8):
    d = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(X))
    sigma = frac * np.median(d[np.triu_indices(len(X), 1)])
    return np.exp(-d**2 / (2 * sigma**2))


def test_linear_and_rbf_cka_equal_the_hsic_formula():
    import scipy.spatial  # noqa: F401

    X, Y = _data()
    assert S.linear_cka(X, Y) == pytest.approx(_cka_hsic(X @ X.T, Y @ Y.T), rel=1e-10)
    assert S.rbf_cka(X, Y) == pytest.approx(_cka_hsic(_rbf(X), _rbf(Y)), rel=1e-8)
    assert S.hsic(X @ X.T, Y @ Y.T) == pytest.approx(
        np.trace(X @ X.T @ S.centering_matrix(300) @ Y @ Y.T @ S.centering_matrix(300)) / 299**2, rel=1e-10)
    assert 0.2 < S.linear_cka(X, Y) < 0.9  # related, not identical: the test above is not trivial


@pytest.mark.parametrize("metric", [S.linear_cka, S.rbf_cka])
def test_cka_invariant_to_orthogonal_transforms_and_isotropic_scaling(metric):
    X, Y = _data(seed=1)
    Q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(X.shape[1], X.shape[1])))
    assert metric(X, X @ Q) == pytest.approx(1.0, abs=1e-9)
    assert metric(X, 7.5 * X) == pytest.approx(1.0, abs=1e-9)
    assert metric(X @ Q, 0.1 * Y) == pytest.approx(metric(X, Y), abs=1e-9)
    # but not to an anisotropic scaling
    D = np.diag(np.linspace(0.1, 10, X.shape[1]))
    assert metric(X, X @ D) < 0.99


def test_cka_of_independent_matrices_is_near_zero_and_shrinks_with_n():
    rng = np.random.default_rng(2)
    means = [np.mean([S.linear_cka(rng.normal(size=(n, 10)), rng.normal(size=(n, 10))) for _ in range(6)])
             for n in (50, 200, 800)]
    assert means[0] > means[1] > means[2]
    assert means[2] < 0.03
    rbf = [np.mean([S.rbf_cka(rng.normal(size=(n, 10)), rng.normal(size=(n, 10))) for _ in range(4)])
           for n in (50, 400)]
    assert rbf[0] > 4 * rbf[1] and rbf[1] < 0.1


def test_canonical_correlations_match_scikit_learn_and_the_covariance_formula():
    from sklearn.cross_decomposition import CCA

    X, Y = _data(seed=3)
    rho = S.canonical_correlations(X, Y)
    assert rho.shape == (12,) and np.all(np.diff(rho) <= 1e-12)
    sk = CCA(n_components=3, max_iter=5000, tol=1e-12, scale=False).fit(X, Y)
    a, b = sk.transform(X, Y)
    assert [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(3)] == pytest.approx(rho[:3], abs=1e-6)
    # rho^2 are the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Sxx, Syy, Sxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    ev = np.sort(np.real(scipy.linalg.eigvals(np.linalg.solve(Sxx, Sxy) @ np.linalg.solve(Syy, Sxy.T))))[::-1]
    assert np.sqrt(np.clip(ev[:12], 0, None)) == pytest.approx(rho, abs=1e-8)
    assert S.cca(X, Y) == pytest.approx(rho.mean())


def test_svcca_and_pwcca_of_identical_and_rotated_inputs_are_one():
    X, _ = _data(seed=4)
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(20, 20)))
    for f in (S.svcca, S.pwcca):
        assert f(X, X) == pytest.approx(1.0, abs=1e-9)
        assert f(X, 3.0 * X @ Q) == pytest.approx(1.0, abs=1e-9)


def test_pwcca_weights_the_directions_the_first_representation_uses():
    """X is mostly one strong shared signal plus weak private noise: PWCCA, weighting canonical
    directions by how much of X they carry, sits near the shared direction's correlation (high),
    SVCCA averages it with the noise directions' (low)."""
    rng = np.random.default_rng(6)
    n = 2000
    shared = rng.normal(size=(n, 1))
    X = np.hstack([10 * shared, 0.3 * rng.normal(size=(n, 4))])
    Y = np.hstack([shared + 0.1 * rng.normal(size=(n, 1)), rng.normal(size=(n, 4))])
    sv = S.svcca(X, Y, keep_variance=1.0, max_dims=5)
    pw = S.pwcca(X, Y, keep_variance=1.0, max_dims=5)
    assert pw > 0.75 and sv < 0.4


def test_reduction_keeps_the_variance_asked_for():
    X, _ = _data(seed=7, p=30)
    Xr = S.reduce_dims(X, keep_variance=0.9)
    Xc = X - X.mean(0)
    share = (Xr**2).sum() / (Xc**2).sum()
    assert share >= 0.9
    assert S.reduce_dims(X, keep_variance=0.9, max_dims=3).shape == (300, 3)
    one_less = S.reduce_dims(X, keep_variance=1.0, max_dims=Xr.shape[1] - 1)
    assert (one_less**2).sum() / (Xc**2).sum() < 0.9


def test_mismatched_examples_and_degenerate_cca_are_refused():
    X, Y = _data()
    with pytest.raises(ValueError, match="X has 300 examples and Y has 299"):
        S.linear_cka(X, Y[:-1])
    with pytest.raises(ValueError, match="the same examples"):
        S.similarity(S.prepare(X), S.prepare(Y[:-1]), "cka_linear")
    with pytest.raises(ValueError, match="some canonical correlations are 1 whatever the data"):
        S.canonical_correlations(np.random.default_rng(0).normal(size=(30, 20)), np.random.default_rng(1).normal(size=(30, 20)))
    with pytest.raises(ValueError, match="unknown metric"):
        S.prepare(X, ["cka_poly"])


def test_a_dead_layer_has_no_similarity():
    X, _ = _data()
    assert np.isnan(S.linear_cka(X, np.zeros((300, 5))))
    assert np.isnan(S.svcca(np.ones((300, 4)), X))


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    X, _ = _data(seed=8)
    scores, share = S.pca(X, 3)
    sk = PCA(3).fit(X)
    assert share == pytest.approx(sk.explained_variance_ratio_, rel=1e-10)
    assert np.abs(scores) == pytest.approx(np.abs(sk.transform(X)), abs=1e-8)
    with pytest.raises(ValueError, match="k must be in"):
        S.pca(X, 0)


def _pwcca_reference(X, Y, k):
    """PWCCA written out with numpy's SVD: top-k principal directions each, CCA, projection weights."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Ux = np.linalg.svd(Xc, full_matrices=False)[0][:, :k]
    Uy = np.linalg.svd(Yc, full_matrices=False)[0][:, :k]
    A, rho, _ = np.linalg.svd(Ux.T @ Uy)
    h = Ux @ A  # canonical variates of X
    alpha = np.abs(h.T @ Xc).sum(1)
    return float((alpha * rho).sum() / alpha.sum()), float(rho.mean())


def test_wide_layers_take_the_gram_route_with_the_same_results():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(60, 20)) * np.linspace(3, 0.2, 20)
    Y = X[:, :8] @ rng.normal(size=(8, 15)) + rng.normal(size=(60, 15))
    Q = np.linalg.qr(rng.normal(size=(300, 20)))[0]  # orthonormal columns: the same geometry in 300 features
    Xw = X @ Q.T
    for m in ("cka_linear", "cka_rbf", "cca", "svcca"):
        assert S.similarity(S.prepare(Xw), S.prepare(Y), m) == pytest.approx(
            S.similarity(S.prepare(X), S.prepare(Y), m), abs=1e-8), m
    k = 6  # n // 10 = 6 directions, fewer than 99% of the variance needs here
    for data in (X, Xw):
        pw, sv = _pwcca_reference(data, Y, k)
        assert S.pwcca(data, Y) == pytest.approx(pw, abs=1e-8)
        assert S.svcca(data, Y) == pytest.approx(sv, abs=1e-8)
