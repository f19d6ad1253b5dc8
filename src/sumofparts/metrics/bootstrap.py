"""Bootstrap standard deviations over resamples of the evaluation set."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ..errors import InputError

__all__ = ["bootstrap_std"]


def bootstrap_std(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0, *,
                  statistic: Callable[[np.ndarray], float] = np.mean) -> float:
    """Standard deviation of ``statistic`` over ``n_boot`` resamples (with replacement) of ``values``.

    ``values``: one number per evaluated example (e.g. 0/1 errors, purities, AUCs), or one
    row per example ``(n, d)`` when the statistic combines several numbers of the same example
    (e.g. a ratio of sums: ``statistic = lambda rows: rows[:, 0].sum() / rows[:, 1].sum()``):
    rows are resampled whole. Examples with a NaN or infinite value are dropped first (the
    caller counts them). For the mean of n i.i.d. values it estimates the standard error σ/√n.
    Returns NaN for fewer than two examples.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim <= 1:
        v = v.reshape(-1, 1)
        stat = (lambda rows: float(np.mean(rows[:, 0]))) if statistic is np.mean else (
            lambda rows: float(statistic(rows[:, 0])))
    elif v.ndim == 2:
        stat = statistic
    else:
        raise InputError(f"expected values as (n,) or (n, d), got shape {v.shape}")
    v = v[np.isfinite(v).all(1)]
    if v.shape[0] < 2:
        return float("nan")
    if int(n_boot) < 2:
        raise InputError(f"n_boot must be >= 2, got {n_boot}")
    rng = np.random.default_rng(int(seed))
    idx = rng.integers(0, v.shape[0], size=(int(n_boot), v.shape[0]))
    if statistic is np.mean and v.shape[1] == 1:
        stats = v[idx, 0].mean(1)
    else:
        stats = np.array([stat(v[i]) for i in idx])
    return float(np.std(stats, ddof=1))
