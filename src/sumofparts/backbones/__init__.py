"""Backbone adapters: one class per model family, one protocol (:class:`BackboneAdapter`)."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import BackboneAdapter, UnknownLayerError
from .bert import BertAdapter
from .cnn import CNNAdapter, build_cnn_from_factory
from .tabular import IdentityHead, TabularAdapter
from .vit import ViTAdapter

__all__ = ["BackboneAdapter", "UnknownLayerError", "BertAdapter", "CNNAdapter", "ViTAdapter", "TabularAdapter", "IdentityHead", "adapter_from_spec", "ADAPTERS"]

ADAPTERS: dict[str, type[BackboneAdapter]] = {"vit": ViTAdapter, "cnn": CNNAdapter, "bert": BertAdapter,
                                              "tabular": TabularAdapter}


def _build_hf(spec: dict[str, Any]) -> nn.Module:
    import transformers

    cls_name = spec.get("model_class", "")
    cls = getattr(transformers, cls_name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"unknown transformers model class {cls_name!r} in the checkpoint's adapter spec")
    config_dict = dict(spec["hf_config"])
    model_type = config_dict.get("model_type")
    config = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in config_dict.items()
                                                               if k != "model_type"})
    config._attn_implementation = "eager"
    return cls(config)


def adapter_from_spec(spec: dict[str, Any], model: nn.Module | None = None) -> BackboneAdapter:
    """Rebuild an adapter from :meth:`BackboneAdapter.spec` (weights are loaded separately).

    ``model``: the backbone to wrap; ``None`` builds an untrained one from the spec
    (Hugging Face config, or the CNN's ``module:Class`` factory).
    """
    family = spec.get("family")
    if family not in ADAPTERS:
        raise ValueError(f"unknown adapter family {family!r}; expected one of {', '.join(ADAPTERS)}")
    if family == "cnn":
        if model is None:
            model = build_cnn_from_factory(spec["factory"], spec.get("factory_kwargs", {}))
        return CNNAdapter(model, feature_layer=spec["feature_layer"], classifier=spec["classifier"],
                          grid=tuple(spec["grid"]), input_shape=tuple(spec["input_shape"]),
                          group_batch_size=spec.get("group_batch_size", 256))
    if family == "tabular":
        if model is None:
            raise ValueError("a tabular backbone cannot be rebuilt from its spec: pass backbone=the model")
        return TabularAdapter(model, num_features=spec["num_features"], classifier=spec["classifier"],
                              embed_dim=spec["embed_dim"], group_batch_size=spec.get("group_batch_size", 4096))
    if model is None:
        model = _build_hf(spec)
    if family == "vit":
        return ViTAdapter(model, drop_patches=spec.get("drop_patches", False),
                          generator_layer=spec.get("generator_layer", -2),
                          group_batch_size=spec.get("group_batch_size", 256))
    return BertAdapter(model, special_token_ids=spec["special_token_ids"], mask_token_id=spec["mask_token_id"],
                       generator_layer=spec.get("generator_layer", -2),
                       group_batch_size=spec.get("group_batch_size", 256))
