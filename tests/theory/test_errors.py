"""Exact total insertion / deletion errors: vectorised code against a naive double loop."""
import time

import numpy as np
import pytest
import torch

from sumofparts.theory import (
    SumOfMonomials,
    attribution_sums,
    binomial,
    deletion_errors,
    grouped_deletion_errors,
    grouped_insertion_errors,
    insertion_errors,
    total_deletion_error,
    total_grouped_deletion_error,
    total_grouped_insertion_error,
    total_insertion_error,
)

torch.set_num_threads(1)


def _naive(f, d, x, base, alpha=None, groups=None, scores=None):
    """Per-subset errors by an explicit loop over subsets and features, straight from the definitions."""
    def at(keep):
        z = [x[i] if i in keep else base[i] for i in range(d)]
        return float(f(torch.tensor([z], dtype=torch.float64))[0])

    full = set(range(d))
    f_x, f_0 = at(full), at(set())
    ins, dele = [], []
    for s in range(2 ** d):
        S = {i for i in range(d) if (s >> i) & 1}
        if groups is None:
            a_ins = a_del = sum(alpha[i] for i in S)
        else:
            a_ins = sum(c for g, c in zip(groups, scores) if set(g) <= S)
            a_del = sum(c for g, c in zip(groups, scores) if set(g) & S)
        ins.append(abs(at(S) - f_0 - a_ins))
        dele.append(abs(f_x - at(full - S) - a_del))
    return np.array(ins), np.array(dele)


@pytest.mark.parametrize("d", [3, 4, 5])
def test_vectorised_errors_match_naive_loop(d):
    rng = np.random.default_rng(d)
    mons = [sorted(rng.choice(d, size=rng.integers(1, d + 1), replace=False).tolist()) for _ in range(3)]
    p = SumOfMonomials(d, mons, rng.normal(size=3).tolist(), const=0.5)
    x, base = rng.normal(size=d), rng.normal(size=d)
    v = p.subset_values(x, base)
    alpha = rng.normal(size=d)
    ins, dele = _naive(p, d, x, base, alpha=alpha)
    np.testing.assert_allclose(insertion_errors(v, alpha), ins, atol=1e-12)
    np.testing.assert_allclose(deletion_errors(v, alpha), dele, atol=1e-12)
    assert total_insertion_error(p, alpha, x=x, baseline=base) == pytest.approx(ins.sum(), abs=1e-10)
    assert total_deletion_error(p, alpha, x=x, baseline=base) == pytest.approx(dele.sum(), abs=1e-10)
    groups = [[0, d - 1], [1], list(range(d))]
    scores = rng.normal(size=3)
    gins, gdel = _naive(p, d, x, base, groups=groups, scores=scores)
    np.testing.assert_allclose(grouped_insertion_errors(v, groups, scores), gins, atol=1e-12)
    np.testing.assert_allclose(grouped_deletion_errors(v, groups, scores), gdel, atol=1e-12)


def test_attribution_sums_bit_convention():
    a = np.array([1.0, 10.0, 100.0])
    sums = attribution_sums(a)
    assert sums.tolist() == [0, 1, 10, 11, 100, 101, 110, 111]


@pytest.mark.parametrize("d", [3, 6, 9, 12, 15])
def test_grouped_binomial_error_is_exactly_zero(d):
    p = binomial(d)
    assert total_grouped_insertion_error(p, p.groups, [1.0, 1.0]) == 0.0
    assert total_grouped_deletion_error(p, p.groups, [1.0, 1.0]) == 0.0
    # any other scores are not faithful
    assert total_grouped_insertion_error(p, p.groups, [1.0, 0.9]) > 0


def test_linear_function_exact_attribution_has_zero_error():
    rng = np.random.default_rng(3)
    d = 8
    w = rng.normal(size=d)
    lin = SumOfMonomials(d, [[i] for i in range(d)], w.tolist(), const=1.5)
    x = rng.normal(size=d)
    alpha = w * x  # gradient × input of a linear model, against baseline 0
    assert total_insertion_error(lin, alpha, x=x) == pytest.approx(0.0, abs=1e-10)
    assert total_deletion_error(lin, alpha, x=x) == pytest.approx(0.0, abs=1e-10)
    assert total_insertion_error(lin, alpha + 0.01, x=x) > 1.0


def test_generic_torch_model_path():
    d = 6
    torch.manual_seed(0)
    lin = torch.nn.Linear(d, 1).double()
    w = lin.weight.detach().numpy()[0]
    assert total_insertion_error(lin, w) == pytest.approx(0.0, abs=1e-10)
    assert total_deletion_error(lin, w) == pytest.approx(0.0, abs=1e-10)


def test_d18_closed_forms_and_speed():
    d = 18
    p = binomial(d)
    m = d // 3
    t0 = time.perf_counter()
    v = p.subset_values()
    shap = p.shapley_values()
    ins = insertion_errors(v, shap).sum()
    dele = deletion_errors(v, shap).sum()
    zero_ins = insertion_errors(v, np.zeros(d)).sum()
    g = grouped_insertion_errors(v, p.groups, [1, 1]).sum() + grouped_deletion_errors(v, p.groups, [1, 1]).sum()
    elapsed = time.perf_counter() - t0
    # Shapley: alpha(S) >= b_S on every subset, so the total is sum_S alpha(S) - sum_S b_S
    assert ins == pytest.approx(2 ** d - 2 ** (m + 1), rel=1e-12)
    assert dele == pytest.approx(2 ** d - 2 ** (m + 1), rel=1e-12)
    assert zero_ins == 2 ** (m + 1)
    assert g == 0.0
    assert elapsed < 30  # generous; typically well under a second


def test_bad_inputs_raise_clear_errors():
    p = binomial(6)
    v = p.subset_values()
    with pytest.raises(ValueError, match=r"6 entries .* got shape \(5,\)"):
        insertion_errors(v, np.ones(5))
    with pytest.raises(ValueError, match=r"outside \[0, 5\]"):
        grouped_insertion_errors(v, [[0, 6]], [1.0])
    with pytest.raises(ValueError, match="one score per group"):
        grouped_deletion_errors(v, [[0, 1], [2]], [1.0])
    with pytest.raises(ValueError, match="length 2\\*\\*d"):
        insertion_errors(np.zeros(10), np.zeros(3))
    with pytest.raises(ValueError, match="d is required"):
        total_grouped_insertion_error(lambda t: t.sum(1), [[0]], [1.0])
    with pytest.raises(ValueError, match="empty"):
        grouped_insertion_errors(v, [[]], [1.0])
