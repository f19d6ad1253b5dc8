"""The L1 linear program, its dual, the dual certificates, checked against brute force.

The brute force is independent of ``solve_primal``: the total error F(alpha) = sum_S |b_S - 1_S·alpha|
is convex and piecewise linear, its kinks are the hyperplanes 1_S·alpha = b_S, and since the
normals 1_S span R^d the minimum is attained at a vertex of that arrangement. Enumerating every
choice of d hyperplanes, solving the d×d system and evaluating F finds the exact minimum.
"""
import itertools
from math import comb

import numpy as np
import pytest
import torch

from sumofparts.theory import (
    SumOfMonomials,
    best_parity_bound,
    binomial,
    binomial_dual_bound_value,
    binomial_dual_certificate,
    deletion_errors,
    deletion_targets,
    dual_infeasibility,
    dual_objective,
    insertion_errors,
    insertion_targets,
    layer_certificate,
    parity_certificate,
    solve_dual,
    solve_primal,
    walsh_hadamard,
)

torch.set_num_threads(1)


def vertex_min(normals, rhs, weights=None):
    """min_a sum_r w_r |rhs_r - normals_r · a| by enumerating all vertices of the arrangement."""
    normals = np.asarray(normals, float)
    rhs = np.asarray(rhs, float)
    w = np.ones(len(rhs)) if weights is None else np.asarray(weights, float)
    n = normals.shape[1]
    keep = np.any(normals != 0, axis=1)
    idx = np.array(list(itertools.combinations(np.flatnonzero(keep), n)))
    M = normals[idx]  # (C, n, n)
    ok = np.abs(np.linalg.det(M)) > 1e-9
    sol = np.linalg.solve(M[ok], rhs[idx[ok]][..., None])[..., 0]  # (C', n)
    obj = (w * np.abs(rhs[None, :] - sol @ normals.T)).sum(axis=1)
    return float(obj.min())


def full_rows(d):
    s = np.arange(2 ** d)
    return ((s[:, None] >> np.arange(d)[None, :]) & 1).astype(float)


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
def test_lp_equals_vertex_enumeration_d3(kind):
    p = binomial(3)
    v = p.subset_values()
    b = insertion_targets(v) if kind == "insertion" else deletion_targets(v)
    brute = vertex_min(full_rows(3), b)
    res = solve_primal(b)
    assert res.value == pytest.approx(brute, abs=1e-8)
    assert brute == pytest.approx(2.0)


def _symmetric_binomial_brute(m, kind):
    """Binomial with thirds of size m, reduced by symmetry to 3 unknowns (a1, a2, a3).

    F is invariant under permuting features inside S1, S2 or S3 and convex, so averaging an optimal
    alpha over those permutations keeps it optimal: an optimum has alpha constant on each part.
    A subset is then described by (k1, k2, k3) = how many of each part it holds, with multiplicity
    C(m,k1) C(m,k2) C(m,k3).
    """
    normals, rhs, wts = [], [], []
    for k in itertools.product(range(m + 1), repeat=3):
        k1, k2, k3 = k
        if kind == "insertion":
            b = (k1 == m and k2 == m) + (k2 == m and k3 == m)
        else:
            b = (k1 > 0 or k2 > 0) + (k2 > 0 or k3 > 0)
        normals.append(k)
        rhs.append(b)
        wts.append(comb(m, k1) * comb(m, k2) * comb(m, k3))
    return vertex_min(normals, rhs, wts)


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
@pytest.mark.parametrize("d", [3, 6, 9])
def test_lp_equals_symmetric_brute_force(d, kind):
    p = binomial(d)
    v = p.subset_values()
    b = insertion_targets(v) if kind == "insertion" else deletion_targets(v)
    res = solve_primal(b)
    assert res.value == pytest.approx(_symmetric_binomial_brute(d // 3, kind), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_lp_equals_vertex_enumeration_random_polynomial_d5(seed):
    rng = np.random.default_rng(seed)
    d = 5
    mons = [sorted(rng.choice(d, size=rng.integers(2, d + 1), replace=False).tolist()) for _ in range(3)]
    p = SumOfMonomials(d, mons, rng.normal(size=3).tolist())
    v = p.subset_values(rng.normal(size=d))
    for b in (insertion_targets(v), deletion_targets(v)):
        res = solve_primal(b)
        assert res.value == pytest.approx(vertex_min(full_rows(d), b), rel=1e-8, abs=1e-8)


@pytest.mark.parametrize("d", [3, 6, 9, 12])
@pytest.mark.parametrize("kind", ["insertion", "deletion"])
def test_strong_duality_and_bounds(d, kind):
    p = binomial(d)
    v = p.subset_values()
    b = insertion_targets(v) if kind == "insertion" else deletion_targets(v)
    primal = solve_primal(b, method="highs" if kind == "insertion" else "highs-ipm")
    dual = solve_dual(b)
    # strong duality, relative 1e-6
    assert abs(primal.value - dual.value) <= 1e-6 * max(1.0, abs(primal.value))
    # the primal's equality multipliers are an optimal dual point
    assert dual_infeasibility(primal.lam) <= 1e-7
    assert dual_objective(b, primal.lam) == pytest.approx(primal.value, rel=1e-7)
    assert dual_infeasibility(dual.lam) <= 1e-7
    # the attributions from both solves attain the optimum when their errors are computed exactly
    errs = insertion_errors if kind == "insertion" else deletion_errors
    assert errs(v, primal.alpha).sum() == pytest.approx(primal.value, rel=1e-7)
    assert errs(v, dual.alpha).sum() == pytest.approx(primal.value, rel=1e-7)
    # hand-made certificates: feasible, never above the optimum, closed form
    lam, val, _ = binomial_dual_certificate(p, kind)
    assert dual_infeasibility(lam) == 0.0
    assert val <= primal.value + 1e-9
    assert val == binomial_dual_bound_value(p, kind)
    pb, plam, T = best_parity_bound(b)
    assert len(T) >= 2 and dual_infeasibility(plam) == 0.0
    assert pb <= primal.value + 1e-9


def test_binomial_closed_forms():
    for d in (6, 9, 12, 15, 18):
        p = binomial(d)
        assert binomial_dual_bound_value(p, "insertion") == 2 ** (d // 3 + 1)
        assert binomial_dual_bound_value(p, "deletion") == 2 * comb(d, d // 2) - 2 ** (d // 3 + 1)
    # the insertion optimum is attained by alpha = 0: sum_S |b_S| equals the certificate
    for d in (6, 9, 12):
        v = binomial(d).subset_values()
        assert np.abs(insertion_targets(v)).sum() == 2 ** (d // 3 + 1)


def test_bound_and_optimum_grow_geometrically():
    ds = [3, 6, 9, 12]
    opt_ins, opt_del, cert_ins, cert_del = [], [], [], []
    for d in ds:
        p = binomial(d)
        v = p.subset_values()
        opt_ins.append(solve_primal(insertion_targets(v)).value)
        opt_del.append(solve_dual(deletion_targets(v)).value)
        cert_ins.append(binomial_dual_certificate(p, "insertion")[1])
        cert_del.append(binomial_dual_certificate(p, "deletion")[1])
    for seq, factor in ((opt_ins, 1.9), (cert_ins, 1.9), (opt_del, 5.0), (cert_del, 5.0)):
        ratios = np.array(seq[1:]) / np.array(seq[:-1])
        assert np.all(ratios >= factor), (seq, ratios)
    # certificates computed further out keep doubling (insertion) per 3 features
    c = [binomial_dual_certificate(binomial(d), "insertion")[1] for d in (15, 18)]
    assert c == [64.0, 128.0]


def test_certificates_and_transform():
    d = 4
    rng = np.random.default_rng(0)
    b = rng.normal(size=2 ** d)
    w = walsh_hadamard(b)
    s = np.arange(2 ** d)
    for t in range(2 ** d):
        par = np.array([bin(x & t).count("1") % 2 for x in s])
        assert w[t] == pytest.approx(float(b @ (1 - 2 * par)))
    for T in itertools.combinations(range(d), 2):
        assert dual_infeasibility(parity_certificate(d, T)) == 0.0
    for dd in (3, 4, 7):
        assert dual_infeasibility(layer_certificate(dd)) == 0.0
    # weak duality on random targets: every feasible certificate is below the optimum
    opt = solve_primal(b).value
    assert best_parity_bound(b)[0] <= opt + 1e-9
    assert abs(dual_objective(b, layer_certificate(d))) <= opt + 1e-9


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="length 2\\*\\*d"):
        solve_primal(np.zeros(7))
    with pytest.raises(ValueError, match="d <= 18"):
        solve_dual(np.zeros(2 ** 19))
    with pytest.raises(ValueError, match="at least two"):
        parity_certificate(4, [1])
    with pytest.raises(ValueError, match="outside"):
        parity_certificate(4, [1, 4])
    with pytest.raises(ValueError, match="Binomial"):
        binomial_dual_certificate(SumOfMonomials(3, [[0, 1]]))
    with pytest.raises(ValueError, match="method"):
        solve_primal(np.zeros(8), method="simplex")
