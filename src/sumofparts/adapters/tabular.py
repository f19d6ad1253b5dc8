"""Adapter for models of a feature vector ``(B, d)``: cells are the features.

This is the fourth family, written against the same protocol as the others and
needing nothing else: SOP on tabular data, and on the polynomials of
:mod:`sumofparts.theory`. A removed feature is set to 0 (the baseline of the theory).
The generator's cell embeddings come from a small trainable encoder of each
feature: an embedding of its index plus its value times a learned vector.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError, InputTypeError, UnsafeCheckpointError
from ..validation import Field, check_fields
from .base import BackboneAdapter, describe
from .registry import pass_backbone_hint

__all__ = ["TabularAdapter", "IdentityHead", "TABULAR_SPEC_FIELDS"]

#: the entries of a tabular adapter's spec
TABULAR_SPEC_FIELDS: dict[str, Field] = {
    "family": Field(str, choices=("tabular",)),
    "num_features": Field(int, min=1, max=1_000_000),
    "classifier": Field(str, optional=True),
    "embed_dim": Field(int, min=1, max=65_536),
    "group_batch_size": Field(int, min=1, max=1_000_000, required=False, default=4096),
}


class IdentityHead(nn.Module):
    """Wraps ``model: (B, d) -> (B, C)`` (or ``(B,)``) with an identity linear head.

    For models without a classifier layer of their own: the group embedding is the
    model's output itself and the classifier weight is the identity, so the selector's
    score for group i and output j is ``s_s · y_ij`` at initialisation.
    """

    def __init__(self, model: nn.Module, num_outputs: int):
        super().__init__()
        self.body = model
        self.head = nn.Linear(num_outputs, num_outputs, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.ndim == 1:
            y = y.unsqueeze(-1)
        out: torch.Tensor = self.head(y)
        return out


class _FeatureEncoder(nn.Module):
    def __init__(self, num_features: int, dim: int):
        super().__init__()
        self.index = nn.Parameter(torch.randn(num_features, dim) / dim**0.5)
        self.value = nn.Parameter(torch.randn(num_features, dim) / dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.index.unsqueeze(0) + x.unsqueeze(-1) * self.value.unsqueeze(0)  # (B, d, D)


class TabularAdapter(BackboneAdapter):
    """A model of ``(B, d)`` feature vectors as an SOP backbone.

    Args:
        model: ``model(x) -> (B, C)``; if it has no ``nn.Linear`` to name as
            ``classifier``, wrap it first with :class:`IdentityHead`.
        num_features: d.
        classifier: dotted name of the final ``nn.Linear`` (None: the last one).
        embed_dim: width of the generator's feature embeddings.
    """

    family = "tabular"
    capabilities = frozenset({"module_forward"})

    def __init__(self, model: nn.Module, *, num_features: int, classifier: str | None = None, embed_dim: int = 16,
                 group_batch_size: int = 4096):
        modules = dict(model.named_modules())
        if classifier is None:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            if not linears:
                raise ConfigError("the model has no nn.Linear classifier: wrap it with IdentityHead(model, C)")
            classifier = linears[-1]
        if classifier not in modules:
            raise ConfigError(f"classifier {classifier!r} is not a module of the model")
        super().__init__(model, modules[classifier], group_batch_size)
        self.num_features = int(num_features)
        self.encoder_dim = int(embed_dim)
        self.classifier_name = classifier

    @property
    def input_shape(self) -> tuple[int]:
        return (self.num_features,)

    def num_cells(self, inputs: Any) -> int:
        return self.num_features

    def batch_size(self, inputs: Any) -> int:
        return int(inputs.shape[0])

    def validate(self, inputs: Any) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise InputTypeError(f"expected a feature batch of shape (B, {self.num_features}), got {describe(inputs)}")
        if inputs.ndim != 2 or inputs.shape[1] != self.num_features:
            raise InputError(f"expected a feature batch of shape (B, {self.num_features}), got {describe(inputs)}")
        if inputs.shape[0] == 0:
            raise InputError(f"expected at least one input, got an empty batch: {describe(inputs)}")
        if not inputs.is_floating_point():
            raise InputTypeError(f"expected floating-point features, got dtype {inputs.dtype}")
        if inputs.dtype != self.dtype:
            raise InputError(f"expected features of the backbone's dtype {self.dtype}, got dtype {inputs.dtype}; "
                             f"convert them first, e.g. x.to({self.dtype})")
        if not torch.isfinite(inputs).all():
            raise InputError("the input contains NaN or infinite values; expected finite numbers")

    def make_encoder(self) -> nn.Module:
        return _FeatureEncoder(self.num_features, self.encoder_dim)

    def mask_inputs(self, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        B, G, d = masks.shape
        return (inputs.unsqueeze(1) * masks.to(inputs.dtype)).reshape(B * G, d)

    # layers: every leaf module but the classifier (a neuron of any of them can be explained)
    def layer_positions(self, name: str) -> int:
        """0: a hidden layer's units have no place among the input features."""
        self.layer(name)
        return 0

    def spec(self) -> dict[str, Any]:
        return {"family": self.family, "num_features": self.num_features, "classifier": self.classifier_name,
                "embed_dim": self.encoder_dim, "group_batch_size": self.group_batch_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model: nn.Module | None = None, *,
                  where: str = "") -> "TabularAdapter":
        """Rebuild from :meth:`spec` around ``model`` (a tabular model is never built from a file)."""
        s = check_fields(spec, TABULAR_SPEC_FIELDS, where=f"{where}backbone.", require=True)
        if model is None:
            raise UnsafeCheckpointError(f"{where}a tabular backbone is never rebuilt from a checkpoint. "
                                        + pass_backbone_hint("the tabular model"))
        return cls(model, num_features=s["num_features"], classifier=s["classifier"], embed_dim=s["embed_dim"],
                   group_batch_size=s["group_batch_size"])
