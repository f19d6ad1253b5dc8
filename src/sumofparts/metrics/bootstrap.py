"""Bootstrap standard deviations over resamples of the evaluation set."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ..errors import InputError

__all__ = ["bootstrap_std"]


def bootstrap_std(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0, *,
                  statistic: Callable[[np.ndarray], float] = np.mean) -> float:
    """Standard deviation of ``statistic`` over ``n_boot`` resamples (with replacement) of ``values``.

    ``values``: one number per evaluated example (e.g. 0/1 errors, purities, AUCs); NaNs
    (examples the metric does not apply to) are dropped first. For the mean of n i.i.d.
    values it estimates the standard error σ/√n. Returns NaN for fewer than two values.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size < 2:
        return float("nan")
    if int(n_boot) < 2:
        raise InputError(f"n_boot must be >= 2, got {n_boot}")
    rng = np.random.default_rng(int(seed))
    idx = rng.integers(0, v.size, size=(int(n_boot), v.size))
    if statistic is np.mean:
        stats = v[idx].mean(1)
    else:
        stats = np.array([statistic(v[i]) for i in idx])
    return float(np.std(stats, ddof=1))
