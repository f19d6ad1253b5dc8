"""Exact insertion and deletion errors over all ``2**d`` subsets, feature and grouped.

Definitions (``f`` a model, ``x`` the explained input, removed features set to the baseline,
zeros by default; ``x_S`` keeps the features in ``S``; ``N = {0, .., d-1}``):

* feature insertion error  ``InsErr(a, S) = |f(x_S) - f(x_∅) - sum_{i in S} a_i|``
* feature deletion error   ``DelErr(a, S) = |f(x) - f(x_{N \\ S}) - sum_{i in S} a_i|``
* grouped attribution ``{(G_k, c_k)}``: a group contributes its score to a set of present
  features only when *all* its features are present. Hence

  - grouped insertion error ``|f(x_S) - f(x_∅) - sum_{k: G_k ⊆ S} c_k|``
  - grouped deletion error  ``|f(x) - f(x_{N \\ S}) - sum_{k: G_k ∩ S ≠ ∅} c_k|``: deleting ``S``
    removes every group that loses at least one feature (the group is no longer whole), i.e.
    the attributed drop is the total score minus the scores of the groups that survive intact
    in ``N \\ S``. This is the reading of the SOP blog ("a group only contributes its score if all
    of its features are present") applied to the input that remains after deletion.

Totals sum over all ``2**d`` subsets, the empty set and the full set included. Everything is
vectorised with integer bit masks (subset ``s`` has bit ``i`` set when feature ``i`` is in it):
``d = 18`` (262,144 subsets) takes well under a second for a polynomial.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .polynomials import SumOfMonomials, check_exact_d

__all__ = [
    "subset_values",
    "attribution_sums",
    "group_sums",
    "insertion_targets",
    "deletion_targets",
    "insertion_errors",
    "deletion_errors",
    "grouped_insertion_errors",
    "grouped_deletion_errors",
    "total_insertion_error",
    "total_deletion_error",
    "total_grouped_insertion_error",
    "total_grouped_deletion_error",
]


def _d_of(values: np.ndarray) -> int:
    n = values.shape[0]
    d = int(n).bit_length() - 1
    if n < 2 or 2 ** d != n:
        raise ValueError(f"a subset table must have length 2**d (d >= 1), got length {n}")
    return check_exact_d(d)


def _as_table(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"a subset table must be 1-D of length 2**d, got shape {arr.shape}")
    _d_of(arr)
    return arr


def subset_values(
    f: SumOfMonomials | Callable[[torch.Tensor], torch.Tensor] | np.ndarray,
    d: int | None = None,
    x=None,
    baseline=None,
    batch_size: int = 65536,
) -> np.ndarray:
    """``f(x_S)`` for every subset ``S`` as a float64 array of length ``2**d``.

    ``f`` may be a :class:`SumOfMonomials` (exact numpy evaluation), any callable mapping a
    ``(B, d)`` tensor to ``(B,)`` or ``(B, 1)`` outputs (evaluated in batches under ``no_grad``),
    or an already computed table (returned validated). ``x`` defaults to ones, ``baseline`` to
    zeros.
    """
    if isinstance(f, (np.ndarray, list, tuple)):
        table = _as_table(f)
        if d is not None and 2 ** int(d) != table.shape[0]:
            raise ValueError(f"table has length {table.shape[0]}, expected 2**d = {2 ** int(d)}")
        return table
    if isinstance(f, SumOfMonomials):
        if d is not None and int(d) != f.d:
            raise ValueError(f"d={d} given but the polynomial has d={f.d}")
        return f.subset_values(x, baseline)
    if d is None:
        raise ValueError("d is required to enumerate subsets of a generic callable model")
    d = check_exact_d(d)
    xv = np.ones(d) if x is None else np.asarray(x, dtype=np.float64).reshape(-1)
    bv = np.zeros(d) if baseline is None else np.asarray(baseline, dtype=np.float64).reshape(-1)
    if xv.shape != (d,) or bv.shape != (d,):
        raise ValueError(f"x and baseline must have {d} entries, got {xv.shape} and {bv.shape}")
    dtype = torch.get_default_dtype()
    if isinstance(f, torch.nn.Module):
        p = next(iter(f.parameters()), None)
        if p is not None and p.is_floating_point():
            dtype = p.dtype
    xt = torch.as_tensor(xv, dtype=dtype)
    bt = torch.as_tensor(bv, dtype=dtype)
    bits = torch.arange(d, dtype=torch.int64)
    n = 2 ** d
    out = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            s = torch.arange(start, min(n, start + batch_size), dtype=torch.int64)
            keep = ((s[:, None] >> bits[None, :]) & 1).bool()
            batch = torch.where(keep, xt, bt)
            y = f(batch)
            y = torch.as_tensor(y).reshape(batch.shape[0], -1)
            if y.shape[1] != 1:
                raise ValueError(f"the model must return one scalar per input, got outputs of shape {tuple(y.shape)}")
            out[start : start + batch.shape[0]] = y[:, 0].double().cpu().numpy()
    return out


def _as_alpha(alpha, d: int) -> np.ndarray:
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().cpu().numpy()
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.shape != (d,):
        raise ValueError(f"attribution must have {d} entries (one per feature, d={d}), got shape {np.shape(alpha)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("attribution contains non-finite values")
    return a


def attribution_sums(alpha) -> np.ndarray:
    """``sum_{i in S} alpha_i`` for every subset ``S`` (length ``2**d``), by doubling: O(2**d)."""
    a = np.asarray(alpha.detach().cpu().numpy() if isinstance(alpha, torch.Tensor) else alpha, dtype=np.float64)
    a = a.reshape(-1)
    check_exact_d(max(1, a.shape[0]))
    out = np.zeros(1)
    for ai in a:  # bit i is the i-th doubling: indices >= 2**i have feature i
        out = np.concatenate([out, out + ai])
    return out


def _check_groups(groups: Sequence[Iterable[int]], scores, d: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    gs: list[tuple[int, ...]] = []
    for k, g in enumerate(groups):
        try:
            idx = tuple(int(i) for i in g)
        except TypeError as exc:
            raise ValueError(f"group {k} must be an iterable of feature indices, got {g!r}") from exc
        bad = [i for i in idx if i < 0 or i >= d]
        if bad:
            raise ValueError(f"group {k} has indices outside [0, {d - 1}] (d={d}): {bad}")
        if not idx:
            raise ValueError(f"group {k} is empty; a group needs at least one feature")
        gs.append(idx)
    sc = np.asarray(scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).reshape(-1)
    if sc.shape[0] != len(gs):
        raise ValueError(f"expected one score per group ({len(gs)} groups), got {sc.shape[0]} scores")
    return gs, sc


def group_sums(groups: Sequence[Iterable[int]], scores, d: int, mode: str = "contained") -> np.ndarray:
    """Per subset ``S``: the sum of the scores of the groups contained in ``S`` (``mode="contained"``)
    or of the groups that intersect ``S`` (``mode="intersect"``)."""
    d = check_exact_d(d)
    if mode not in ("contained", "intersect"):
        raise ValueError(f"mode must be 'contained' or 'intersect', got {mode!r}")
    gs, sc = _check_groups(groups, scores, d)
    s = np.arange(2 ** d, dtype=np.int64)
    out = np.zeros(2 ** d)
    for g, c in zip(gs, sc):
        m = 0
        for i in g:
            m |= 1 << i
        hit = (s & m) == m if mode == "contained" else (s & m) != 0
        out += c * hit
    return out


def insertion_targets(values) -> np.ndarray:
    """``b_S = f(x_S) - f(x_∅)``: what an insertion-faithful attribution must sum to on ``S``."""
    v = _as_table(values)
    return v - v[0]


def deletion_targets(values) -> np.ndarray:
    """``b_S = f(x) - f(x_{N \\ S})``: the drop a deletion-faithful attribution must sum to on ``S``."""
    v = _as_table(values)
    full = v.shape[0] - 1
    s = np.arange(v.shape[0], dtype=np.int64)
    return v[full] - v[full ^ s]


def insertion_errors(values, alpha) -> np.ndarray:
    """Per-subset insertion errors ``|f(x_S) - f(x_∅) - sum_{i in S} alpha_i|`` (length ``2**d``)."""
    v = _as_table(values)
    a = _as_alpha(alpha, _d_of(v))
    return np.abs(insertion_targets(v) - attribution_sums(a))


def deletion_errors(values, alpha) -> np.ndarray:
    """Per-subset deletion errors ``|f(x) - f(x_{N \\ S}) - sum_{i in S} alpha_i|``."""
    v = _as_table(values)
    a = _as_alpha(alpha, _d_of(v))
    return np.abs(deletion_targets(v) - attribution_sums(a))


def grouped_insertion_errors(values, groups, scores) -> np.ndarray:
    """Per-subset grouped insertion errors: groups count when all their features are in ``S``."""
    v = _as_table(values)
    return np.abs(insertion_targets(v) - group_sums(groups, scores, _d_of(v), "contained"))


def grouped_deletion_errors(values, groups, scores) -> np.ndarray:
    """Per-subset grouped deletion errors: deleting ``S`` removes every group that meets ``S``."""
    v = _as_table(values)
    return np.abs(deletion_targets(v) - group_sums(groups, scores, _d_of(v), "intersect"))


def _table(f, x=None, baseline=None, d=None, alpha=None) -> np.ndarray:
    generic = not isinstance(f, (np.ndarray, list, tuple, SumOfMonomials))
    if d is None and generic and alpha is not None:
        d = _alpha_len(alpha)  # a generic model's d is taken from the attribution
    return subset_values(f, d=d, x=x, baseline=baseline)


def total_insertion_error(f, alpha, *, x=None, baseline=None, d: int | None = None) -> float:
    """Total insertion error of a feature attribution; ``f`` is a subset table or a model."""
    return float(insertion_errors(_table(f, x, baseline, d, alpha), alpha).sum())


def total_deletion_error(f, alpha, *, x=None, baseline=None, d: int | None = None) -> float:
    """Total deletion error of a feature attribution; ``f`` is a subset table or a model."""
    return float(deletion_errors(_table(f, x, baseline, d, alpha), alpha).sum())


def total_grouped_insertion_error(f, groups, scores, *, x=None, baseline=None, d: int | None = None) -> float:
    """Total grouped insertion error; ``f`` is a subset table or a model (then ``d`` or a polynomial)."""
    return float(grouped_insertion_errors(_table(f, x, baseline, d), groups, scores).sum())


def total_grouped_deletion_error(f, groups, scores, *, x=None, baseline=None, d: int | None = None) -> float:
    """Total grouped deletion error; ``f`` is a subset table or a model (then ``d`` or a polynomial)."""
    return float(grouped_deletion_errors(_table(f, x, baseline, d), groups, scores).sum())


def _alpha_len(alpha) -> int:
    return int(np.asarray(alpha.detach().cpu().numpy() if isinstance(alpha, torch.Tensor) else alpha).reshape(-1).shape[0])
