"""Backbone adapters: one class per model family, one protocol (:class:`BackboneAdapter`).

Each adapter class registers itself in :data:`ADAPTERS` under its ``family`` when it is
defined; :func:`adapter_from_spec` rebuilds an adapter from a checkpoint's spec: the spec's
``family`` picks the class there, and that class's ``from_spec`` checks the spec and builds
only what :mod:`.registry` allows (see docs/security.md).
"""
from __future__ import annotations

from .base import ADAPTERS, CAPABILITIES, BackboneAdapter, UnknownLayerError, adapter_from_spec, canonical_spec
from .bert import BertAdapter
from .cnn import CNNAdapter
from .registry import BACKBONES, MAX_BACKBONE_PARAMETERS, build_backbone, register_backbone, registered_name
from .tabular import IdentityHead, TabularAdapter
from .vit import ViTAdapter

__all__ = ["BackboneAdapter", "CAPABILITIES", "UnknownLayerError", "BertAdapter", "CNNAdapter", "ViTAdapter", "TabularAdapter",
           "IdentityHead", "adapter_from_spec", "ADAPTERS", "register_backbone", "registered_name", "build_backbone",
           "BACKBONES", "MAX_BACKBONE_PARAMETERS", "canonical_spec"]

