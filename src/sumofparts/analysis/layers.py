"""Layer activations and layer gradients of a backbone (or of SOP's generator copy), by name.

TCAV (:mod:`.tcav`) and the model comparison (:mod:`.compare`) read a model's layers through
forward hooks on the modules its adapter names: :meth:`BackboneAdapter.named_layers` for the
backbone, :meth:`BackboneAdapter.encoder_layers` for the generator's trainable encoder copy.
Nothing here knows a model family: the adapter batches the inputs (``batch_size``, ``select``)
and runs the model.

A layer's output is flattened per example, ``(B, *shape) -> (B, F)`` (F = the product of the
trailing dimensions, e.g. ``C·h·w`` for a feature map, ``T·D`` for a token sequence); a layer
that returns a tuple contributes its first element (the hidden state).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters.base import BackboneAdapter, Inputs, UnknownLayerError
from ..errors import InputError, InputTypeError

__all__ = ["LayerError", "select_layers", "layer_activations", "layer_gradients", "concat_inputs", "num_inputs"]


class LayerError(UnknownLayerError):
    """A layer that cannot be read: a name the model does not have, or a layer its forward does
    not run (a :class:`~sumofparts.adapters.base.UnknownLayerError`, so a ``ValueError``)."""


def select_layers(available: Mapping[str, nn.Module], names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The layers ``names`` (in that order, duplicates dropped) out of ``available``; all of them for ``None``.

    Raises :class:`LayerError` naming the unknown names and the layers the model has.
    """
    if names is None:
        if not available:
            raise LayerError("the model names no layers")
        return dict(available)
    names = list(dict.fromkeys(names))
    if not names:
        raise LayerError(f"no layers selected; this model's layers are: {', '.join(available)}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise LayerError(f"unknown layer{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"this model's layers are: {', '.join(available) or '(none)'}")
    return {n: available[n] for n in names}


def num_inputs(inputs: Inputs) -> int:
    """The batch size of ``inputs``: a tensor, or a dict of tensors (token ids, or the embeddings
    of masked tokens) that share their first dimension."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict) and inputs and all(isinstance(v, torch.Tensor) for v in inputs.values()):
        sizes = {k: int(v.shape[0]) for k, v in inputs.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"the tensors of a batch have different first dimensions: {sizes}")
        return next(iter(sizes.values()))
    raise InputTypeError(f"expected a tensor or a dict of tensors, got {type(inputs).__name__}")


def concat_inputs(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate batches along dimension 0 (tensors, or dicts of tensors with the same keys)."""
    if not parts:
        raise InputError("nothing to concatenate: expected at least one batch")
    if isinstance(parts[0], dict):
        keys = set(parts[0])
        for p in parts[1:]:
            if set(p) != keys:
                raise InputError(f"batches have different keys: {sorted(keys)} and {sorted(p)}")
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(list(parts))


def _first(output: Any) -> torch.Tensor:
    t = output[0] if isinstance(output, (tuple, list)) else output
    if hasattr(t, "last_hidden_state"):
        t = t.last_hidden_state
    if not isinstance(t, torch.Tensor):
        raise LayerError(f"a layer returned {type(t).__name__}; expected a tensor (or a tuple starting with one)")
    return t


@contextlib.contextmanager
def _recording(layers: Mapping[str, nn.Module], *, grad: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks storing each layer's output (first element of a tuple) under its name.

    With ``grad=True`` an output that does not require a gradient (the first layer reached:
    nothing before it is trainable or requires a gradient) is replaced by a copy that does,
    so that the gradient of the model's output with respect to every recorded layer can be
    taken in one backward pass.
    """
    store: dict[str, torch.Tensor] = {}

    def make(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            t = _first(output)
            replaced = None
            if grad and not t.requires_grad:
                t = t.detach().requires_grad_(True)
                replaced = t
            store[name] = t
            if replaced is None:
                return None
            if isinstance(output, tuple):
                return (replaced, *output[1:])
            if isinstance(output, list):
                return [replaced, *output[1:]]
            if isinstance(output, torch.Tensor):
                return replaced
            raise LayerError(f"cannot take gradients at layer {name!r}: its output is a {type(output).__name__}")
        return hook

    # prepended: a hook of the model's own that stops the forward at a layer (the CNN generator
    # copy stops after its feature layer) must not hide that layer's output
    handles = [module.register_forward_hook(make(name), prepend=True) for name, module in layers.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _check_ran(store: Mapping[str, torch.Tensor], layers: Mapping[str, nn.Module]) -> None:
    missing = [n for n in layers if n not in store]
    if missing:
        raise LayerError(f"layer{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} did not run in "
                         "the model's forward pass (a layer of the model that this forward does not use)")


def layer_activations(adapter: BackboneAdapter, layers: Mapping[str, nn.Module], inputs: Inputs, *,
                      forward: Callable[[Inputs], Any] | None = None, batch_size: int = 64,
                      progress: bool = False, desc: str = "activations",
                      select: Callable[[Inputs, slice], Inputs] | None = None,
                      n: int | None = None) -> dict[str, torch.Tensor]:
    """Flattened outputs of ``layers`` on ``inputs``: ``{name: (n, F) float32}`` on the CPU.

    ``forward(batch)`` runs the model whose modules ``layers`` are (default: the backbone,
    ``adapter``); the batches are ``select(inputs, slice)`` (default ``adapter.select``) for
    ``n`` examples (default: all of ``inputs``). No gradient is kept.
    """
    forward = forward or adapter
    select = select or adapter.select
    n = num_inputs(inputs) if n is None else int(n)
    if n < 1:
        raise InputError("no inputs: expected at least one example")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    starts = range(0, n, batch_size)
    with torch.no_grad(), _recording(layers, grad=False) as store:
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
            store.clear()
            forward(select(inputs, slice(start, min(n, start + batch_size))))
            _check_ran(store, layers)
            for name in layers:
                out[name].append(store[name].detach().reshape(store[name].shape[0], -1).float().cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def layer_gradients(adapter: BackboneAdapter, layers: Mapping[str, nn.Module], inputs: Inputs, target: int, *,
                    batch_size: int = 64, progress: bool = False,
                    desc: str = "gradients") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradient of the backbone's output ``target`` with respect to each layer's output.

    Returns ``({name: (n, F) float32}, outputs (n, C))``: row i of a layer's matrix is
    ``∂ f_target(x_i) / ∂ a_layer(x_i)``, flattened like :func:`layer_activations`. The
    backbone is in eval mode, so examples do not interact and the gradient of the batch's
    summed output gives every example's own gradient.
    """
    n = num_inputs(inputs)
    if n < 1:
        raise InputError("no inputs: expected at least one example")
    if not 0 <= int(target) < adapter.num_outputs:
        raise InputError(f"target must be in [0, {adapter.num_outputs}), got {target}")
    names = list(layers)
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    outputs = []
    starts = range(0, n, batch_size)
    with torch.enable_grad():
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
            with _recording(layers, grad=True) as store:
                y = adapter(adapter.select(inputs, slice(start, min(n, start + batch_size))))
            _check_ran(store, layers)
            got = torch.autograd.grad(y[:, int(target)].sum(), [store[name] for name in names], allow_unused=True)
            for name, g in zip(names, got):
                if g is None:  # the output does not depend on this layer
                    g = torch.zeros_like(store[name])
                grads[name].append(g.detach().reshape(g.shape[0], -1).float().cpu())
            outputs.append(y.detach().float().cpu())
    return {name: torch.cat(parts) for name, parts in grads.items()}, torch.cat(outputs)
