"""TCAV: a planted concept is found, random concepts are not, and the parts equal Captum's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sumofparts.analysis.layers import LayerError, layer_activations, layer_gradients, select_layers
from sumofparts.analysis.tcav import (TCAV, ConceptError, ConceptSet, ConceptSets, directional_derivatives, fit_cav,
                                      holm, logistic_regression, tcav_scores)
from sumofparts.adapters import TabularAdapter

D = 20

@pytest.fixture(autouse=True)
def _one_blas_thread():
    """On a shared 2-core machine OpenBLAS's own threads make small linear algebra 30x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield



class Features(nn.Module):
    """``[softplus(h_0..4), h_5..9 · h_10..14]``: 10 features."""

    def forward(self, h):
        return torch.cat([nn.functional.softplus(h[:, :5]), h[:, 5:10] * h[:, 10:15]], dim=1)


class Planted(nn.Module):
    """By construction: output 0 = Σ softplus(x_0..4) grows with the planted concept (x_0..4
    high); output 1 = Σ x_i x_(i+5) over i = 5..9 does not see it, and its gradient changes sign
    from input to input (so TCAV scores are fractions, not 0 or 1). ``hidden`` is the identity."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(D, D)
        self.act = Features()
        self.head = nn.Linear(10, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(D))
            self.hidden.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0, :5] = 1
            self.head.weight[1, 5:10] = 1
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.act(self.hidden(x)))


@pytest.fixture
def adapter():
    return TabularAdapter(Planted().eval(), num_features=D, classifier="head")


def _sets(seed=0, n_random_like=3, pool=240):
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return torch.randn(n, D, generator=g)

    planted = rnd(pool)
    planted[:, :5] += 1.0
    concepts = [ConceptSet("planted", planted)] + [ConceptSet(f"random-{j}", rnd(pool)) for j in range(n_random_like)]
    return ConceptSets(concepts=concepts, randoms={"random": ConceptSet("random", rnd(2 * pool))},
                       probes={0: rnd(60), 1: rnd(60)}, output_names=["sees it", "blind"])


def test_planted_concept_is_significant_and_random_concepts_are_not(adapter):
    res = TCAV(adapter, n_random=12, set_size=20, seed=0, progress=False).interpret(_sets())
    assert {t.layer for t in res.tests} == {"hidden", "act"}
    for layer in ("hidden", "act"):
        found = res.find("planted", layer, 0)
        assert found.significant and found.direction == "+" and found.mean > 0.95
        assert found.p_adjusted < 0.05 and found.cav_accuracy > 0.7
        assert not res.find("planted", layer, 1).significant  # the output that cannot see it
    random_like = [t for t in res.tests if t.concept.startswith("random-")]
    assert not any(t.significant for t in random_like)
    # TCAV scores of random concepts (and the null's) centre on 0.5
    pooled = np.concatenate([t.scores for t in random_like] + [t.random_scores for t in res.tests])
    assert abs(pooled.mean() - 0.5) < 0.08
    blind = np.concatenate([t.scores for t in res.tests if t.target == 1])
    assert abs(blind.mean() - 0.5) < 0.05 and 0.2 < np.median(blind) < 0.8
    assert abs(np.mean([t.random_cav_accuracy for t in res.tests]) - 0.5) < 0.1
    assert res.significant() == [t for t in res.tests if t.significant]
    # Holm over all 16 tests: every adjusted p is at least the raw one
    assert all(t.p_adjusted >= t.p_value for t in res.tests)


def test_runs_are_reproducible_and_depend_on_the_seed(adapter):
    sets = _sets(seed=1, n_random_like=1)
    a = TCAV(adapter, ["act"], n_random=4, set_size=20, seed=3, progress=False).interpret(sets)
    b = TCAV(adapter, ["act"], n_random=4, set_size=20, seed=3, progress=False).interpret(sets)
    c = TCAV(adapter, ["act"], n_random=4, set_size=20, seed=4, progress=False).interpret(sets)
    assert [t.scores for t in a.tests] == [t.scores for t in b.tests]
    assert [t.random_scores for t in a.tests] != [t.random_scores for t in c.tests]


def test_logistic_regression_equals_scikit_learns():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 12))
    y = (x[:, 0] - x[:, 3] + rng.normal(size=80) > 0).astype(int)
    for C in (0.1, 1.0, 10.0):
        w, b = logistic_regression(x, y, C=C)
        sk = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x, y)
        assert w == pytest.approx(sk.coef_[0], abs=1e-5) and b == pytest.approx(sk.intercept_[0], abs=1e-5)
    separable = np.r_[np.ones((10, 2)), -np.ones((10, 2))], np.r_[np.ones(10), np.zeros(10)]
    w, b = logistic_regression(*separable, C=1e4)
    assert np.all(np.isfinite(w)) and w[0] > 0


def test_fit_cav_points_to_the_concept():
    rng = np.random.default_rng(0)
    direction = np.zeros(50)
    direction[:3] = 1 / np.sqrt(3)
    concept = rng.normal(size=(100, 50)) + 3 * direction
    random = rng.normal(size=(100, 50))
    cav = fit_cav(concept, random, seed=0)
    assert np.linalg.norm(cav.vector) == pytest.approx(1.0)
    assert cav.vector @ direction > 0.6 and cav.accuracy > 0.8
    flipped = fit_cav(random, concept, seed=0)
    assert flipped.vector @ direction < -0.6
    # wide activations (F >> n) take the row-space route and still find it
    wide = np.hstack([concept, rng.normal(size=(100, 3000))]), np.hstack([random, rng.normal(size=(100, 3000))])
    assert fit_cav(*wide, seed=0).vector[:50] @ direction > 0.3


def test_scores_and_layer_gradients_equal_captums(adapter, tmp_path):
    """Captum's TCAV, given our CAV through its Classifier interface, gives the same sign-count
    score; its layer gradients equal ours. Its 'magnitude' is the mean directional derivative."""
    from captum.attr import LayerGradientXActivation
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Concept
    from captum.concept._utils.classifier import Classifier
    from torch.utils.data import DataLoader

    model = adapter.model
    g = torch.Generator().manual_seed(0)
    concept_x = torch.randn(45, D, generator=g)
    concept_x[:, :5] += 0.3
    random_x = torch.randn(45, D, generator=g)
    probe = torch.randn(30, D, generator=g)
    layers = select_layers(adapter.named_layers(), ["hidden"])
    cav = fit_cav(layer_activations(adapter, layers, concept_x)["hidden"], layer_activations(adapter, layers, random_x)["hidden"],
                  seed=3)
    grads, _ = layer_gradients(adapter, layers, probe, 1, batch_size=7)
    S = directional_derivatives(grads["hidden"], cav.vector)
    ours, _ = tcav_scores(S)
    assert 0.05 < ours[0] < 0.95  # a score that depends on each input, not a trivial 0 or 1

    class OurCAV(Classifier):
        def __init__(self):
            self._classes, self._cav = [], None

        def train_and_eval(self, dataloader, **kwargs):
            xs, ys = zip(*dataloader)
            x, y = torch.cat(xs), torch.cat(ys)
            first = int(y[0])
            self._classes = [first, int(y[y != first][0])]
            self._cav = fit_cav(x[y == first], x[y != first], seed=3).vector
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            v = torch.tensor(self._cav, dtype=torch.float32)
            return torch.stack([v, -v])

        def classes(self):
            return self._classes

    concept = Concept(0, "concept", DataLoader(concept_x, batch_size=16))
    random = Concept(1, "random", DataLoader(random_x, batch_size=16))
    captum = CaptumTCAV(model, ["hidden"], classifier=OurCAV(), save_path=str(tmp_path) + "/")
    scores = captum.interpret(probe, [[concept, random]], target=1)["0-1"]["hidden"]
    assert round(float(scores["sign_count"][0]) * 30) == round(ours[0] * 30)  # the same inputs counted
    assert float(scores["magnitude"][0]) == pytest.approx(S.mean(), rel=1e-5)  # not Σ max(S,0)/Σ|S|
    captum_grads = LayerGradientXActivation(model, model.hidden, multiply_by_inputs=False).attribute(probe, target=1)
    assert torch.allclose(captum_grads, grads["hidden"], atol=1e-7)


def test_holm_against_a_hand_computation():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.02, 0.9]) == pytest.approx([0.04, 0.9])
    assert holm([float("nan"), 0.01]) == pytest.approx([1.0, 0.02])


def test_tcav_scores_definitions():
    S = np.array([[1.0, -1.0], [-3.0, -1.0], [2.0, 0.0]])
    sign, mag = tcav_scores(S)
    assert sign == pytest.approx([2 / 3, 0.0])
    assert mag == pytest.approx([3 / 6, 0.0])


def test_sets_too_small_and_unknown_layers_are_refused(adapter):
    sets = _sets(n_random_like=0, pool=100)
    with pytest.raises(ConceptError, match="concept 'planted' has 100 examples; 20 disjoint sets of 20 need 400"):
        TCAV(adapter, n_random=20, set_size=20, progress=False).interpret(sets)
    short_random = ConceptSets(concepts=sets.concepts, randoms={"random": ConceptSet("random", torch.zeros(100, D))},
                               probes=sets.probes, output_names=sets.output_names)
    with pytest.raises(ConceptError, match="random pool 'random' has 100 examples; 4 counterparts and 4 random"):
        TCAV(adapter, n_random=4, set_size=20, progress=False).interpret(short_random)
    with pytest.raises(ConceptError, match="at least 2 random concepts"):
        TCAV(adapter, n_random=1, set_size=20, progress=False).interpret(sets)
    with pytest.raises(ConceptError, match="set_size must be at least 10"):
        TCAV(adapter, n_random=4, set_size=5, progress=False).interpret(sets)
    with pytest.raises(LayerError, match=r"unknown layer 'conv9'; this model's layers are: hidden, act"):
        TCAV(adapter, ["hidden", "conv9"])
    with pytest.raises(ConceptError, match=r"no probe inputs for output\(s\) \[5\]"):
        TCAV(adapter, n_random=4, set_size=20, progress=False).interpret(sets, targets=[5])
