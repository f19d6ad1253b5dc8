"""Backbone adapters: one class per model family, one protocol (:class:`BackboneAdapter`).

:func:`adapter_from_spec` rebuilds an adapter from a checkpoint's spec: the spec's
``family`` picks the adapter class in :data:`ADAPTERS`, and that class's ``from_spec``
checks the spec and builds only what :mod:`.registry` allows (see docs/security.md).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import BackboneAdapter, UnknownLayerError
from .bert import BertAdapter
from .cnn import CNNAdapter
from .registry import BACKBONES, MAX_BACKBONE_PARAMETERS, build_backbone, register_backbone, registered_name
from .tabular import IdentityHead, TabularAdapter
from .vit import ViTAdapter

__all__ = ["BackboneAdapter", "UnknownLayerError", "BertAdapter", "CNNAdapter", "ViTAdapter", "TabularAdapter",
           "IdentityHead", "adapter_from_spec", "ADAPTERS", "register_backbone", "registered_name", "build_backbone",
           "BACKBONES", "MAX_BACKBONE_PARAMETERS", "canonical_spec"]

#: adapter classes by family name (the ``family`` entry of a spec)
ADAPTERS: dict[str, type[BackboneAdapter]] = {"vit": ViTAdapter, "cnn": CNNAdapter, "bert": BertAdapter,
                                              "tabular": TabularAdapter}


def adapter_from_spec(spec: Any, model: nn.Module | None = None, *, where: str = "") -> BackboneAdapter:
    """Rebuild an adapter from :meth:`BackboneAdapter.spec` (weights are loaded separately).

    ``model``: the backbone to wrap; ``None`` builds an untrained one, but only a registered
    backbone class or an allow-listed Hugging Face class, from checked arguments (anything
    else raises :class:`~sumofparts.errors.UnsafeCheckpointError`). ``where`` prefixes
    error messages (e.g. the config file's path).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}the backbone spec must be a JSON object, got {type(spec).__name__}")
    family = spec.get("family")
    if not isinstance(family, str) or family not in ADAPTERS:
        raise ConfigError(f"{where}unknown adapter family {family!r}; expected one of {', '.join(ADAPTERS)}")
    try:
        return ADAPTERS[family].from_spec(spec, model, where=where)
    except ConfigError as exc:  # the adapter's own checks: say which file they concern
        if where and not str(exc).startswith(where):
            raise type(exc)(f"{where}backbone: {exc}") from None
        raise


def canonical_spec(spec: Any) -> Any:
    """``spec`` as its adapter class compares it (see :meth:`BackboneAdapter.canonical_spec`)."""
    if isinstance(spec, dict) and spec.get("family") in ADAPTERS:
        return ADAPTERS[spec["family"]].canonical_spec(spec)
    return spec
