"""Testing with Concept Activation Vectors (TCAV, Kim et al. 2018) with its significance test.

For a layer l with activations ``a_l(x)`` (flattened, F features) and an output k of the model:

1. **CAV.** A linear classifier (L2-regularised logistic regression, ``C``, fitted by Newton's
   method: :func:`logistic_regression`, equal to scikit-learn's) separates the layer's
   activations on examples of a concept (label 1) from those on a random set (label 0); it is
   trained on ``1 − test_fraction`` of each set and its accuracy measured on the rest. The CAV
   ``v`` is the unit normal of its decision boundary, pointing towards the concept.
2. **Directional derivative** of output k at input x: ``S(x) = ∇_{a_l} f_k(x) · v``.
3. **TCAV score** over the probe inputs X_k (for a class, its examples; for a regression
   output, the test inputs): ``|{x : S(x) > 0}| / |X_k|`` — the fraction of inputs whose output
   k grows when the layer moves towards the concept. The *magnitude* score
   ``Σ_x max(S(x), 0) / Σ_x |S(x)|`` weighs each input by how much it moves.
4. **Significance.** A CAV can be meaningless (a concept set no better than noise) and a random
   direction can look meaningful, so one score says little. The concept is tested against many
   random concepts: each pool is cut into disjoint sets of ``set_size`` examples (seeded); R CAVs
   of concept set i against random counterpart i give R concept scores, and R CAVs of a *fresh*
   random set (a random concept) against the same counterparts give R null scores. A two-sided
   Welch t-test of the two samples (``scipy.stats.ttest_ind(equal_var=False)``) gives a p-value
   per (concept, layer, output) (when neither sample varies at all, the exact Mann-Whitney
   p-value instead: ``2 / C(2R, R)``). The sets are disjoint so that the R scores of each side are
   independent draws: with one fixed concept set and one fixed random concept (as in the
   original code and Captum's tutorial) every CAV shares that set's sampling noise, the scores
   of a *random* concept cluster around a value away from the null's, and the t-test calls it
   significant far more often than ``alpha`` (measured: 49 % of random concepts against 5.6 % with
   disjoint sets, ``scripts/tcav_calibration.py``, docs/concepts.md). Sharing
   the counterparts between the two samples only makes the test conservative.
5. **Multiple testing.** A run makes many tests (concepts × layers × outputs). The p-values are
   adjusted with the Holm–Bonferroni step-down procedure over all the tests of the run, which
   keeps the probability of *any* false discovery at most ``alpha`` (0.05) without assumptions
   on how the tests depend on each other. A concept is *significant* at a layer for an output
   when its adjusted p-value is below ``alpha``; only those are reported as findings, the rest
   stay in the full table.

Why our own and not ``captum.concept.TCAV`` (0.9): Captum has no significance test (its tutorial
computes it by hand); its ``magnitude`` score is the mean of ``S(x)``, not the normalised
positive mass its docstring states; it caches activations and CAVs as pickles under
``./cav/`` keyed by concept id, so a changed concept set with the same id silently reuses old
CAVs; its default classifier shuffles with Python's global ``random``. The parts both have
(layer gradients, directional derivatives, sign-count scores) agree exactly with Captum's
(``tests/analysis/test_tcav.py`` gives Captum our CAVs and compares).

Fitting the CAV: with n ≪ F examples (a concept set of 100 against 100 random ones, a
feature map of 15k features) the L2-regularised logistic regression's optimum lies in the span
of the training activations, so it is fitted on their coordinates in that span (an SVD, at most
n columns) and mapped back: the same classifier at a fraction of the cost. The activations of
a layer are divided by one scalar (their standard deviation), which does not turn the CAV.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters.base import BackboneAdapter, Inputs
from .layers import layer_activations, layer_gradients, num_inputs, select_layers
from ..errors import InputError

__all__ = [
    "ConceptError",
    "ConceptSet",
    "ConceptSets",
    "CAV",
    "fit_cav",
    "logistic_regression",
    "directional_derivatives",
    "tcav_scores",
    "holm",
    "TCAVTest",
    "TCAVResult",
    "TCAV",
    "MIN_SET_SIZE",
    "MIN_RANDOM_SETS",
]

#: the fewest examples a set may have (a third of them test the CAV)
MIN_SET_SIZE = 10
#: the fewest random counterparts (the t-test needs two scores on each side; use 20 or more)
MIN_RANDOM_SETS = 2


class ConceptError(InputError):
    """Concept sets that cannot be tested: too few examples, too few random sets, bad targets."""


@dataclass
class ConceptSet:
    """A pool of examples of one concept (or of random examples), as model inputs.

    Attributes:
        name: what the concept is called in tables (``"void"``, ``"negation"``).
        inputs: a batch of model inputs ``(n, ...)`` (a tensor, or a dict of tensors for text).
            TCAV cuts the pool into disjoint sets of ``set_size`` examples.
        description: how the examples were made.
        random_family: the random pool it is tested against (a key of ``ConceptSets.randoms``).
        sop_kind: the kind of SOP group this concept corresponds to, when the task's case study
            classifies SOP's groups the same way (e.g. ``"void"``); ``None`` otherwise.
        cells: ``(n, N)`` bool or ``None``: example i is input i restricted to these cells, made
            batch by batch with the adapter (a concept is then a kind of *group*, shown to the
            backbone exactly as SOP shows its groups).
    """

    name: str
    inputs: Inputs
    description: str = ""
    random_family: str = "random"
    sop_kind: str | None = None
    cells: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.cells is not None:
            if self.cells.dtype != torch.bool or self.cells.ndim != 2 or self.cells.shape[0] != num_inputs(self.inputs):
                raise InputError(f"cells of set {self.name!r} must be a (n, N) bool tensor with one row per input "
                                 f"({num_inputs(self.inputs)}), got {tuple(self.cells.shape)} {self.cells.dtype}")
            if not bool(self.cells.any(1).all()):
                raise InputError(f"every example of set {self.name!r} must keep at least one cell")

    @property
    def size(self) -> int:
        return num_inputs(self.inputs)

    def examples(self, adapter: BackboneAdapter, index: torch.Tensor) -> Inputs:
        """The model inputs of examples ``index``: the inputs themselves, or, with ``cells``, the
        inputs restricted to those cells the way SOP shows a group to the backbone
        (``adapter.mask_inputs``: zeroed pixels, masked tokens)."""
        x = adapter.select(self.inputs, index)
        if self.cells is None:
            return x
        return adapter.mask_inputs(x, self.cells[index].unsqueeze(1).to(adapter.device))


@dataclass
class ConceptSets:
    """Everything a TCAV run needs from a task.

    Attributes:
        concepts: the concepts to test (pools of at least ``n_random · set_size`` examples).
        randoms: ``{family: pool}`` of random examples (at least ``2 · n_random · set_size``: R
            counterparts and R random concepts).
        probes: ``{output index: inputs}``: where each output's TCAV score is computed.
        output_names: names of the model's outputs.
        layers: the layers to test by default (``None``: all the adapter names).
        notes: how the sets were made (for the report).
    """

    concepts: list[ConceptSet]
    randoms: dict[str, ConceptSet]
    probes: dict[int, Inputs]
    output_names: list[str]
    layers: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def validate(self, *, n_random: int, set_size: int, num_outputs: int | None = None) -> None:
        """Raise :class:`ConceptError` naming what is missing or too small for ``n_random``
        disjoint sets of ``set_size`` examples per concept (twice that per random pool)."""
        if n_random < MIN_RANDOM_SETS:
            raise ConceptError(f"TCAV's t-test needs at least {MIN_RANDOM_SETS} random concepts and counterparts "
                               f"(n_random >= {MIN_RANDOM_SETS}; 20 or more recommended), got {n_random}")
        if set_size < MIN_SET_SIZE:
            raise ConceptError(f"set_size must be at least {MIN_SET_SIZE} (a third of each set tests its CAV), "
                               f"got {set_size}")
        if not self.concepts:
            raise ConceptError("no concepts to test")
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise ConceptError(f"concept names must be distinct, got {names}")
        for c in self.concepts:
            if c.random_family not in self.randoms:
                raise ConceptError(f"concept {c.name!r} is tested against random pool {c.random_family!r}, which is "
                                   f"not among the random pools ({', '.join(self.randoms) or 'none'})")
            if c.size < n_random * set_size:
                raise ConceptError(
                    f"concept {c.name!r} has {c.size} examples; {n_random} disjoint sets of {set_size} need "
                    f"{n_random * set_size} (lower n_random or set_size, or make more examples)")
        for family, pool in self.randoms.items():
            if pool.size < 2 * n_random * set_size:
                raise ConceptError(
                    f"random pool {family!r} has {pool.size} examples; {n_random} counterparts and {n_random} random "
                    f"concepts of {set_size} need {2 * n_random * set_size}")
        if not self.probes:
            raise ConceptError("no probe inputs: expected {output index: inputs}")
        for k, x in self.probes.items():
            if num_outputs is not None and not 0 <= int(k) < num_outputs:
                raise ConceptError(f"probe output {k} is not an output of the model (it has {num_outputs})")
            if num_inputs(x) < 1:
                raise ConceptError(f"no probe inputs for output {k}")


@dataclass
class CAV:
    """A concept activation vector: ``vector (F,)`` of unit norm, pointing towards the concept;
    ``accuracy``: the classifier's accuracy on the held-out examples of both sets."""

    vector: np.ndarray
    accuracy: float


def fit_cav(concept: Any, random: Any, *, C: float = 1.0, test_fraction: float = 1 / 3, seed: int = 0) -> CAV:
    """Train the concept-vs-random linear classifier on ``concept (n1, F)`` and ``random (n0, F)``
    activations and return its unit normal (towards the concept) and held-out accuracy.

    The split is drawn per set from ``numpy.random.default_rng(seed)``.
    """
    a1 = np.asarray(concept, dtype=np.float64).reshape(len(concept), -1)
    a0 = np.asarray(random, dtype=np.float64).reshape(len(random), -1)
    if a1.shape[1] != a0.shape[1]:
        raise InputError(f"concept activations have {a1.shape[1]} features and random ones {a0.shape[1]}")
    if min(len(a1), len(a0)) < MIN_SET_SIZE:
        raise ConceptError(f"a CAV needs at least {MIN_SET_SIZE} examples per set, got {len(a1)} and {len(a0)}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test, y_train, y_test = [], [], [], []
    for label, acts in ((1, a1), (0, a0)):
        order = rng.permutation(len(acts))
        n_test = max(1, int(round(test_fraction * len(acts))))
        test.append(acts[order[:n_test]])
        train.append(acts[order[n_test:]])
        y_test.append(np.full(n_test, label))
        y_train.append(np.full(len(acts) - n_test, label))
    x_train, x_test = np.concatenate(train), np.concatenate(test)
    y_train, y_test = np.concatenate(y_train), np.concatenate(y_test)
    scale = float(x_train.std()) or 1.0
    x_train, x_test = x_train / scale, x_test / scale
    # the optimum lies in the row space of the training activations: fit on coordinates there,
    # from the eigenvectors of the (n, n) Gram matrix (cheap when n << F)
    lam, U = np.linalg.eigh(x_train @ x_train.T)
    keep = lam > 1e-10 * max(float(lam.max()), 0.0)
    if not keep.any():  # every training activation is 0: no direction separates anything
        return CAV(vector=np.zeros(a1.shape[1]), accuracy=0.5)
    U, root = U[:, keep], np.sqrt(lam[keep])
    basis = (U / root).T @ x_train  # (r, F), orthonormal rows spanning the training activations
    z = U * root  # (n, r) = x_train @ basis.T
    coef, intercept = logistic_regression(z, y_train, C=C)
    w = coef @ basis  # (F,), in the scaled coordinates: the same direction as unscaled
    norm = float(np.linalg.norm(w))
    acc = float(np.mean(((x_test @ basis.T) @ coef + intercept > 0) == (y_test == 1)))
    return CAV(vector=w / norm if norm > 0 else w, accuracy=acc)


def logistic_regression(x: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 100,
                        tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method: ``(coef (d,), intercept)``.

    Minimises ``C · Σ_i log(1 + exp(−s_i (x_i·w + b))) + ½‖w‖²`` with ``s_i = ±1`` for ``y_i = 1 / 0``
    and the intercept b unpenalised (scikit-learn's ``LogisticRegression(C=C)`` objective; the
    tests compare them). Each step solves a (d+1)-square system: meant for d up to a few hundred
    (the coordinates of :func:`fit_cav`); a backtracking line search keeps every step downhill.
    """
    x = np.asarray(x, dtype=np.float64)
    sgn = np.where(np.asarray(y) == 1, 1.0, -1.0)
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    reg = np.ones(d + 1)
    reg[-1] = 0.0
    theta = np.zeros(d + 1)

    def loss(t: np.ndarray) -> float:
        return float(C * np.sum(np.logaddexp(0.0, -sgn * (xa @ t))) + 0.5 * np.sum(reg * t * t))

    current = loss(theta)
    for _ in range(max_iter):
        m = sgn * (xa @ theta)
        q = 0.5 * (1.0 - np.tanh(0.5 * m))  # sigmoid(-m), computed without overflow
        grad = -C * (xa.T @ (q * sgn)) + reg * theta
        if np.max(np.abs(grad)) < tol * max(1.0, C * n):
            break
        hess = C * (xa.T * (q * (1.0 - q))) @ xa + np.diag(reg) + 1e-12 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        lr = 1.0
        while lr > 1e-10:
            candidate = theta - lr * step
            value = loss(candidate)
            if value <= current:
                break
            lr *= 0.5
        theta, current = candidate, value
    return theta[:d], float(theta[d])


def directional_derivatives(gradients: Any, cavs: Any) -> np.ndarray:
    """``S = G Vᵀ``: gradients ``(n, F)`` times CAVs ``(m, F)`` -> ``(n, m)`` (float64)."""
    g = np.asarray(gradients, dtype=np.float64)
    v = np.atleast_2d(np.asarray(cavs, dtype=np.float64))
    if g.ndim != 2 or g.shape[1] != v.shape[1]:
        raise InputError(f"gradients {g.shape} and CAVs {v.shape} must have the same number of features")
    return g @ v.T


def tcav_scores(derivatives: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sign-count and magnitude TCAV scores of directional derivatives ``(n, m)`` -> two ``(m,)``.

    sign count = mean over inputs of ``[S > 0]``; magnitude = ``Σ max(S, 0) / Σ |S|`` (0.5 when
    every S is 0)."""
    s = np.asarray(derivatives, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    sign = np.mean(s > 0, axis=0)
    total = np.abs(s).sum(0)
    mag = np.where(total > 0, np.clip(s, 0, None).sum(0) / np.where(total > 0, total, 1.0), 0.5)
    return sign, mag


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1): reject H_i at level
    alpha iff ``adjusted_i < alpha``. NaN p-values count as 1."""
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64), nan=1.0)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out


@dataclass
class TCAVTest:
    """One test: is output ``target`` sensitive to ``concept`` at ``layer``?

    ``scores``/``magnitudes``: the concept's TCAV scores against each random counterpart ``(R,)``;
    ``random_scores``: the null (random set 0 against the same counterparts); ``cav_accuracy``:
    mean held-out accuracy of the concept's CAVs (``random_cav_accuracy``: of the null's; near
    0.5 when random sets are alike). ``t``, ``p_value``: Welch's two-sided t-test of scores vs
    random_scores; ``p_adjusted``: Holm over the run; ``significant``: ``p_adjusted < alpha``.
    """

    concept: str
    layer: str
    target: int
    target_name: str
    scores: list[float]
    magnitudes: list[float]
    random_scores: list[float]
    cav_accuracy: float
    random_cav_accuracy: float
    t: float
    p_value: float
    p_adjusted: float = float("nan")
    significant: bool = False

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_scores))

    @property
    def direction(self) -> str:
        """``"+"``: moving towards the concept raises the output for more inputs than a random
        direction does; ``"−"``: for fewer."""
        return "+" if self.mean > self.random_mean else "-"

    def row(self) -> dict[str, Any]:
        return {"concept": self.concept, "layer": self.layer, "output": self.target_name,
                "tcav": self.mean, "tcav_std": float(np.std(self.scores)),
                "magnitude": float(np.mean(self.magnitudes)), "random_tcav": self.random_mean,
                "random_std": float(np.std(self.random_scores)), "cav_accuracy": self.cav_accuracy,
                "random_cav_accuracy": self.random_cav_accuracy, "t": self.t, "p": self.p_value,
                "p_holm": self.p_adjusted, "significant": self.significant, "direction": self.direction}


@dataclass
class TCAVResult:
    """All tests of a run, Holm-adjusted together. ``significant()`` lists the findings."""

    tests: list[TCAVTest]
    alpha: float
    n_random: int
    set_size: int
    pool_sizes: dict[str, int]
    layers: list[str]
    output_names: list[str]
    seed: int
    C: float
    test_fraction: float
    seconds: float = 0.0
    correction: str = "holm"
    test: str = "Welch two-sided t-test (scipy.stats.ttest_ind, equal_var=False)"

    def significant(self) -> list[TCAVTest]:
        return [t for t in self.tests if t.significant]

    def find(self, concept: str, layer: str, target: int) -> TCAVTest:
        for t in self.tests:
            if (t.concept, t.layer, t.target) == (concept, layer, int(target)):
                return t
        raise KeyError(f"no test for concept {concept!r}, layer {layer!r}, output {target}")

    def rows(self, only_significant: bool = False) -> list[dict[str, Any]]:
        return [t.row() for t in (self.significant() if only_significant else self.tests)]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "tests"}
        d["tests"] = [asdict(t) | {"mean": t.mean, "random_mean": t.random_mean, "direction": t.direction}
                      for t in self.tests]
        d["n_tests"] = len(self.tests)
        d["n_significant"] = len(self.significant())
        return d


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        # no spread on either side (every score 0 or 1 happens when the gradient's direction barely
        # changes between inputs): the t statistic is undefined; equal values are no evidence, and
        # for different ones the exact two-sided Mann-Whitney p-value, 2 / C(2R, R) for R vs R, is used
        if a[0] == b[0]:
            return 0.0, 1.0
        p = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue
        return math.copysign(math.inf, a[0] - b[0]), float(p)
    with warnings.catch_warnings():  # scipy warns on nearly identical samples; the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


class TCAV:
    """TCAV with many random concepts and a significance test, on an adapter's named layers.

    Args:
        adapter: the backbone (its :meth:`~BackboneAdapter.named_layers` name the layers).
        layers: names of the layers to test (``None``: the concept sets' suggestion, else all).
        n_random: R, the number of random counterparts and of random concepts (20 by default).
        set_size: examples per set on each side of a CAV.
        C: inverse L2 strength of the CAV classifier. test_fraction: held out per set.
        alpha: level of the Holm-adjusted test. seed: seeds the cut of the pools into sets and
            every CAV's split (local generators only).
        batch_size: inputs per forward pass. progress: tqdm bars.
    """

    def __init__(self, adapter: BackboneAdapter, layers: Sequence[str] | None = None, *, n_random: int = 20,
                 set_size: int = 50, C: float = 1.0, test_fraction: float = 1 / 3, alpha: float = 0.05,
                 seed: int = 0, batch_size: int = 64, progress: bool = True):
        if not 0.0 < alpha < 1.0:
            raise InputError(f"alpha must be in (0, 1), got {alpha}")
        if not C > 0:
            raise InputError(f"C must be > 0, got {C}")
        self.adapter = adapter
        self.layer_names = None if layers is None else list(layers)
        if self.layer_names is not None:
            select_layers(adapter.named_layers(), self.layer_names)  # unknown names fail now
        self.n_random, self.set_size = int(n_random), int(set_size)
        self.C, self.test_fraction, self.alpha = float(C), float(test_fraction), float(alpha)
        self.seed, self.batch_size, self.progress = int(seed), int(batch_size), bool(progress)

    def _pool_sets(self, pool: ConceptSet, n_sets: int, salt: int, layers: dict) -> list[dict[str, np.ndarray]]:
        """Activations of ``n_sets`` disjoint sets of ``set_size`` drawn from ``pool``: per set ``{layer: (n, F)}``."""
        order = np.random.default_rng(_seed(self.seed, salt)).permutation(pool.size)[: n_sets * self.set_size]
        index = torch.from_numpy(np.sort(order))
        acts = layer_activations(self.adapter, layers, pool.inputs, batch_size=self.batch_size,
                                 select=lambda inputs, part: pool.examples(self.adapter, index[part]), n=len(index))
        position = {int(i): j for j, i in enumerate(index.tolist())}
        sets = []
        for k in range(n_sets):
            rows = torch.tensor([position[int(i)] for i in order[k * self.set_size:(k + 1) * self.set_size]])
            sets.append({name: a[rows].numpy() for name, a in acts.items()})
        return sets

    def interpret(self, sets: ConceptSets, targets: Sequence[int] | None = None) -> TCAVResult:
        """Run every test: each concept × layer × output in ``targets`` (default: every probed output)."""
        t0 = time.perf_counter()
        R = self.n_random
        sets.validate(n_random=R, set_size=self.set_size, num_outputs=self.adapter.num_outputs)
        layers = select_layers(self.adapter.named_layers(), self.layer_names or sets.layers)
        targets = sorted(sets.probes) if targets is None else [int(t) for t in targets]
        missing = [t for t in targets if t not in sets.probes]
        if missing:
            raise ConceptError(f"no probe inputs for output(s) {missing}; probed outputs: {sorted(sets.probes)}")
        families = sorted({c.random_family for c in sets.concepts})
        was_training = self.adapter.training
        self.adapter.eval()
        bar = tqdm(total=len(families) + len(sets.concepts) + len(targets), desc="activations and gradients",
                   unit="pool", disable=not self.progress, leave=False)
        try:
            random_sets, concept_sets, grads = {}, [], {}
            for i, f in enumerate(families):
                random_sets[f] = self._pool_sets(sets.randoms[f], 2 * R, 10_000 + i, layers)
                bar.update()
            for i, c in enumerate(sets.concepts):
                concept_sets.append(self._pool_sets(c, R, i, layers))
                bar.update()
            for k in targets:
                grads[k], _ = layer_gradients(self.adapter, layers, sets.probes[k], k, batch_size=self.batch_size)
                bar.update()
        finally:
            bar.close()
            self.adapter.train(was_training)

        def cavs(sides: list[dict[str, np.ndarray]], counterparts: list[dict[str, np.ndarray]], layer: str,
                 salt: int, li: int) -> list[CAV]:
            return [fit_cav(sides[i][layer], counterparts[i][layer], C=self.C, test_fraction=self.test_fraction,
                            seed=_seed(self.seed, li, salt, i)) for i in range(R)]

        tests: list[TCAVTest] = []
        bar = tqdm(total=len(layers) * (len(sets.concepts) + len(families)), desc="CAVs", unit="set",
                   disable=not self.progress, leave=False)
        for li, layer in enumerate(layers):
            null: dict[str, list[CAV]] = {}
            for fi, f in enumerate(families):  # random concept i (sets R..2R-1) vs counterpart i (sets 0..R-1)
                null[f] = cavs(random_sets[f][R:], random_sets[f][:R], layer, 10_000 + fi, li)
                bar.update()
            for ci, concept in enumerate(sets.concepts):
                own = cavs(concept_sets[ci], random_sets[concept.random_family][:R], layer, ci, li)
                vectors = np.stack([c.vector for c in own])
                null_vectors = np.stack([c.vector for c in null[concept.random_family]])
                for k in targets:
                    g = grads[k][layer].numpy()
                    sign, mag = tcav_scores(directional_derivatives(g, vectors))
                    null_sign, _ = tcav_scores(directional_derivatives(g, null_vectors))
                    t, p = _welch(sign, null_sign)
                    tests.append(TCAVTest(
                        concept=concept.name, layer=layer, target=k, target_name=_name(sets.output_names, k),
                        scores=sign.tolist(), magnitudes=mag.tolist(), random_scores=null_sign.tolist(),
                        cav_accuracy=float(np.mean([c.accuracy for c in own])),
                        random_cav_accuracy=float(np.mean([c.accuracy for c in null[concept.random_family]])),
                        t=t, p_value=p))
                bar.update()
        bar.close()
        adjusted = holm([t.p_value for t in tests])
        for t, p in zip(tests, adjusted):
            t.p_adjusted = float(p)
            t.significant = bool(p < self.alpha)
        return TCAVResult(tests=tests, alpha=self.alpha, n_random=R, set_size=self.set_size,
                          pool_sizes={**{c.name: c.size for c in sets.concepts},
                                      **{f"random pool {f}": sets.randoms[f].size for f in families}},
                          layers=list(layers), output_names=list(sets.output_names), seed=self.seed, C=self.C,
                          test_fraction=self.test_fraction, seconds=time.perf_counter() - t0)


def _seed(*parts: int) -> int:
    """One integer seed from several (each CAV gets its own split, reproducibly)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _name(names: Sequence[str], k: int) -> str:
    return str(names[k]) if 0 <= k < len(names) else str(k)

