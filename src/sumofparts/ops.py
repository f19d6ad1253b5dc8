"""Small operations that the model, the attribution methods, the metrics and the training share.

One place for each rule:

* :func:`cell_ranks`: the rank of each cell by descending score among the valid cells (ties by
  cell index, or by a given random order of the cells);
* :func:`cell_counts`: ``floor(fraction · n_valid)`` (optionally at least one), the size of a
  top-fraction set of cells;
* :func:`cell_count`: the same for a plain number of cells;
* :func:`top_cells`: the top ``count`` valid cells by score, as a mask;
* :func:`random_cell_masks`: seeded random groups of given sizes over the valid cells;
* :func:`check_target`: an output index for each input, checked (floats are refused, not truncated);
* :func:`seeded`: run a block with torch's RNG seeded, leaving the caller's RNG state as it was.

Shapes: ``scores (..., N)``, ``valid (..., N)`` bool (broadcastable to ``scores``).
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Iterator, Sequence

import torch

from .errors import InputError, InputTypeError

__all__ = ["cell_ranks", "cell_counts", "cell_count", "top_cells", "random_cell_masks", "check_target", "seeded",
           "describe"]

#: ``floor(f · n)`` computed in floating point can land just below an integer (0.2 · 60 =
#: 11.999…); this much is added before the floor, far below any real gap between two counts
_FLOOR_GUARD = 1e-9


def describe(value: Any) -> str:
    """A short description of a value for error messages: type, shape, dtype."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, dict):
        return "dict with keys " + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items())
    return f"{type(value).__name__}"


def cell_ranks(scores: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of each cell, 0 = most important: ``scores (..., N)``, ``valid`` broadcastable -> ``(..., N)`` long.

    Descending score among the valid cells, computed in float64 (float32 scores keep their
    order); +inf first, NaN and -inf after every finite score; invalid cells last. Ties are
    ordered by ascending ``keys (..., N)`` (a random order of the cells, e.g.
    :func:`sumofparts.metrics.ranking.tie_keys`), or by cell index when ``keys`` is ``None``.
    """
    try:
        v = valid.bool().expand_as(scores)
    except RuntimeError:
        raise InputError(f"scores {tuple(scores.shape)} and valid cells {tuple(valid.shape)} do not fit "
                         "together") from None
    big = torch.finfo(torch.float64).max
    s = torch.nan_to_num(scores.detach().to(torch.float64), nan=-big, posinf=big, neginf=-big)
    s = s.masked_fill(~v, float("-inf"))
    if keys is None:
        order = torch.argsort(s, dim=-1, descending=True, stable=True)
    else:
        if keys.shape != scores.shape:
            raise InputError(f"tie keys {tuple(keys.shape)} must have the scores' shape {tuple(scores.shape)}")
        perm = torch.argsort(keys.to(s.device), dim=-1, stable=True)  # the random order of the cells
        within = torch.argsort(s.gather(-1, perm), dim=-1, descending=True, stable=True)
        order = perm.gather(-1, within)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks


def cell_counts(valid: torch.Tensor, fraction: float | Sequence[float] | torch.Tensor, *,
                at_least_one: bool = False) -> torch.Tensor:
    """``floor(fraction · n_valid)`` cells for each row of ``valid (..., N)``, long.

    ``fraction``: a number (-> ``(...)``), a sequence of S numbers (-> ``(..., S)``, one count per
    fraction), or a tensor broadcastable to ``valid.shape[:-1]`` (-> that shape). Every fraction
    must lie in [0, 1]. ``at_least_one``: never fewer than one cell (the rule of SOP's groups and
    of the "-F" conversions).
    """
    n_valid = valid.sum(-1).to(torch.float64)
    if isinstance(fraction, torch.Tensor):
        f = fraction.to(device=valid.device, dtype=torch.float64)
        product = f * n_valid
    elif isinstance(fraction, numbers.Real):
        f = torch.tensor(float(fraction), dtype=torch.float64, device=valid.device)
        product = f * n_valid
    else:
        f = torch.tensor([float(x) for x in fraction], dtype=torch.float64, device=valid.device)  # type: ignore[union-attr]
        product = f * n_valid.unsqueeze(-1)
    if bool(((f < 0) | (f > 1)).any()) or not bool(torch.isfinite(f).all()):
        raise InputError(f"fractions must be in [0, 1], got {f.flatten()[:8].tolist()}")
    counts = torch.floor(product + _FLOOR_GUARD).to(torch.long)
    return counts.clamp(min=1) if at_least_one else counts


def cell_count(num_cells: int, fraction: float, *, at_least_one: bool = False) -> int:
    """:func:`cell_counts` for a plain number of cells: ``floor(fraction · num_cells)``."""
    count = math.floor(float(fraction) * int(num_cells) + _FLOOR_GUARD)
    return max(1, count) if at_least_one else count


def top_cells(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor,
              keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(..., N)`` bool: the ``counts (...)`` valid cells with the highest scores.

    Order and ties as :func:`cell_ranks`; ``valid`` and ``counts`` broadcast to the scores.
    """
    ranks = cell_ranks(scores, valid, keys)
    return (ranks < counts.to(ranks.device).unsqueeze(-1)) & valid.bool()


def random_cell_masks(valid: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random groups: ``valid (B, N)``, ``counts (B, G)`` -> ``(B, G, N)`` bool.

    Group g of input b holds ``counts[b, g]`` valid cells drawn without replacement, every
    subset of that size equally likely.
    """
    B, N = valid.shape
    G = counts.shape[-1]
    scores = torch.rand(B, G, N, generator=generator).to(valid.device)
    return top_cells(scores, valid[:, None, :], counts)


def check_target(target: Any, batch_size: int, num_outputs: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """An output index for each input, checked: ``(B,)`` long.

    Accepts an integer (the same output for every input; numpy integers too), a 0-d integer
    tensor, or a sequence / 1-d integer tensor of ``batch_size`` values, each in
    ``[0, num_outputs)``. A float (``2.9``, ``tensor(2.9)``), a bool or a string is refused
    rather than truncated to class 2: :class:`~sumofparts.errors.InputTypeError`; a wrong
    length or a value out of range: :class:`~sumofparts.errors.InputError`.
    """
    expected = f"an int or a sequence of {batch_size} ints (integer output indices, one per input)"
    if target is None:
        raise InputError("target is required: pass the output to explain (an int, or one int per input)")
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        t = torch.full((batch_size,), int(target), dtype=torch.long, device=device)
    else:
        if isinstance(target, (bool, float, str, bytes)):
            raise InputTypeError(f"expected target as {expected}, got {target!r}")
        try:
            t = torch.as_tensor(target, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise InputTypeError(f"expected target as {expected}, got {type(target).__name__}") from None
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InputTypeError(f"expected target as {expected}, got dtype {t.dtype}: "
                                 f"{t.flatten()[:5].tolist()}; a float is not truncated to a class")
        if t.ndim == 0:
            t = t.expand(batch_size)
        if tuple(t.shape) != (batch_size,):
            raise InputError(f"expected target as {expected}, got shape {tuple(t.shape)}")
        t = t.to(torch.long)
    if bool(((t < 0) | (t >= num_outputs)).any()):
        raise InputError(f"target must be in [0, {num_outputs}), got {t.tolist()}")
    return t


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block with torch's RNG seeded by ``seed``, restoring the caller's RNG state afterwards.

    For the draws that cannot take a ``torch.Generator`` (a module's default initialisation,
    dropout, Captum's sampling): inside the block they are reproducible, and after it the
    global RNG is where it was, so no code outside the block depends on the seed or changes
    it. ``seed=None``: no seeding. Code that can take a generator should use one
    (``torch.Generator().manual_seed(seed)``).
    """
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))  # seeds the CPU and every CUDA generator
        yield
