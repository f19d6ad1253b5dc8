"""Polynomials over {0,1}^d: torch forward, exact subset tables, Shapley values."""
import itertools
import math

import numpy as np
import pytest
import torch

from sumofparts.theory import (
    MAX_EXACT_D,
    Monomial,
    SumOfMonomials,
    binomial,
    exact_shapley,
    subset_masks,
    subset_values,
)

torch.set_num_threads(1)


def _random_poly(d, k, rng, const=0.0):
    mons = [sorted(rng.choice(d, size=rng.integers(1, d + 1), replace=False).tolist()) for _ in range(k)]
    return SumOfMonomials(d, mons, rng.normal(size=k).tolist(), const=const)


def test_binomial_structure_and_values():
    p = binomial(6)
    assert p.parts == ((0, 1), (2, 3), (4, 5))
    assert p.groups == [(0, 1, 2, 3), (2, 3, 4, 5)]
    x = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1]], dtype=torch.float32)
    assert p(x).tolist() == [2.0, 1.0, 1.0, 0.0]
    assert isinstance(p, torch.nn.Module)


def test_forward_matches_numpy_and_autograd_gradient():
    rng = np.random.default_rng(0)
    p = _random_poly(5, 4, rng, const=0.3)
    x = rng.normal(size=(7, 5))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = p(xt)
    np.testing.assert_allclose(y.detach().numpy(), p.evaluate(x), rtol=1e-12)
    (g,) = torch.autograd.grad(y[0], xt)
    np.testing.assert_allclose(g[0].numpy(), p.gradient(x[0]), rtol=1e-10, atol=1e-12)


def test_subset_values_match_forward_on_every_subset():
    rng = np.random.default_rng(1)
    p = _random_poly(6, 5, rng, const=-0.7)
    x = rng.normal(size=6)
    base = rng.normal(size=6)
    masks = subset_masks(6)
    inputs = np.where(masks, x, base)
    expected = p(torch.tensor(inputs, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(p.subset_values(x, base), expected, rtol=1e-12, atol=1e-12)
    # the generic (callable) path of errors.subset_values agrees with the exact numpy path
    generic = subset_values(lambda t: p(t.double()), d=6, x=x, baseline=base)
    np.testing.assert_allclose(generic, expected, rtol=1e-6, atol=1e-6)
    # index convention: bit i of the subset index is feature i
    assert masks[0b101].tolist() == [True, False, True, False, False, False]


@pytest.mark.parametrize("d", [3, 6, 9, 12])
def test_exact_shapley_of_binomial_matches_closed_form(d):
    p = binomial(d)
    m = d // 3
    closed = np.array([1 / (2 * m)] * m + [1 / m] * m + [1 / (2 * m)] * m)
    np.testing.assert_allclose(p.shapley_values(), closed, rtol=0, atol=1e-15)
    np.testing.assert_allclose(exact_shapley(p.subset_values()), closed, rtol=0, atol=1e-12)
    assert math.isclose(closed.sum(), 2.0)


def test_exact_shapley_matches_permutation_definition_and_closed_form():
    rng = np.random.default_rng(2)
    d = 5
    p = _random_poly(d, 4, rng, const=0.4)
    x = rng.normal(size=d)
    v = p.subset_values(x)
    naive = np.zeros(d)
    perms = list(itertools.permutations(range(d)))
    for perm in perms:  # marginal contributions along every ordering
        s = 0
        for i in perm:
            naive[i] += v[s | (1 << i)] - v[s]
            s |= 1 << i
    naive /= len(perms)
    np.testing.assert_allclose(exact_shapley(v), naive, atol=1e-12)
    np.testing.assert_allclose(p.shapley_values(x), naive, atol=1e-12)


def test_monomial():
    m = Monomial(4, [3, 1], coef=2.5)
    assert m.indices == (1, 3)
    assert m(torch.tensor([[0.0, 2.0, 5.0, 3.0]])).item() == pytest.approx(15.0)
    v = m.subset_values()
    assert v[0b1010] == 2.5 and v[0b1000] == 0.0 and v[0b1111] == 2.5


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by 3"):
        binomial(7)
    assert binomial(7, sizes=(2, 3, 2)).parts[1] == (2, 3, 4)
    with pytest.raises(ValueError, match="summing to d"):
        binomial(6, sizes=(1, 1, 1))
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        SumOfMonomials(4, [[0, 4]])
    with pytest.raises(ValueError, match="one coefficient per monomial"):
        SumOfMonomials(4, [[0], [1]], [1.0])
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        binomial(6)(torch.ones(2, 5))
    with pytest.raises(ValueError, match=f"d <= {MAX_EXACT_D}"):
        binomial(MAX_EXACT_D + 1).subset_values()
    with pytest.raises(ValueError, match="6 entries"):
        binomial(6).subset_values(x=np.ones(5))
    with pytest.raises(ValueError, match="length 2\\*\\*d"):
        exact_shapley(np.zeros(6))
