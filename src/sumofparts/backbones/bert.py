"""Adapter for Hugging Face BERT-family sequence classifiers: cells are tokens."""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from .base import BackboneAdapter, describe

__all__ = ["BertAdapter"]

# BERT's WordPiece vocabularies: [PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103
_BERT_SPECIAL = (0, 101, 102, 103)
_BERT_MASK = 103


class _TokenEncoder(nn.Module):
    """Trainable copy of the transformer body: tokens -> hidden state ``generator_layer`` ``(B, L, D)``."""

    def __init__(self, base: nn.Module, generator_layer: int):
        super().__init__()
        self.base = copy.deepcopy(base)
        for p in self.base.parameters():
            p.requires_grad_(True)
        self.generator_layer = generator_layer

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.base(**inputs, output_hidden_states=True, return_dict=True)
        return out.hidden_states[self.generator_layer]


class BertAdapter(BackboneAdapter):
    """A BERT-family ``*ForSequenceClassification`` model as an SOP backbone.

    Inputs are dicts ``{"input_ids": (B, L), "attention_mask": (B, L)}`` (``token_type_ids``
    optional). Every position is a cell (N = L); special tokens and padding are never
    part of a group (``valid_cells``). A group keeps its tokens; every other real token
    is replaced by a fixed embedding (the ``[MASK]`` token's word embedding) while the
    special tokens stay and padding stays out of attention.

    Args:
        model: e.g. ``BertForSequenceClassification`` (anything with ``base_model``,
            ``get_input_embeddings()`` and a linear ``classifier`` or ``classifier.out_proj``).
        tokenizer: gives the special-token ids and the mask token; without it BERT's
            WordPiece ids are assumed ([PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103).
        special_token_ids / mask_token_id: explicit overrides.
        generator_layer: hidden state for the generator, from the end (-2: second-to-last).
    """

    family = "bert"

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, special_token_ids: Iterable[int] | None = None,
                 mask_token_id: int | None = None, generator_layer: int = -2, group_batch_size: int = 256):
        classifier = getattr(model, "classifier", None)
        if classifier is not None and not isinstance(classifier, nn.Linear):
            classifier = getattr(classifier, "out_proj", None)
        if not isinstance(classifier, nn.Linear) or not hasattr(model, "base_model"):
            raise TypeError("BertAdapter expects a transformers *ForSequenceClassification model with a linear "
                            f"classifier, got {type(model).__name__}")
        super().__init__(model, classifier, group_batch_size)
        if tokenizer is not None:
            special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
            mask_id = tokenizer.mask_token_id
        else:
            special, mask_id = set(_BERT_SPECIAL), _BERT_MASK
        if special_token_ids is not None:
            special = set(int(i) for i in special_token_ids)
        if mask_token_id is not None:
            mask_id = int(mask_token_id)
        if mask_id is None:
            raise ValueError("no mask token: pass mask_token_id= (the id whose embedding replaces masked tokens)")
        self.special_token_ids = sorted(special)
        self.mask_token_id = int(mask_id)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id must be in [0, {self.vocab_size}), got {self.mask_token_id}")
        n_layers = int(model.config.num_hidden_layers)
        if not (-n_layers - 1 <= generator_layer < 0):
            raise ValueError(f"generator_layer must be in [-{n_layers + 1}, -1], got {generator_layer}")
        self.generator_layer = int(generator_layer)
        self.encoder_dim = int(model.config.hidden_size)
        self.register_buffer("_special", torch.tensor(self.special_token_ids, dtype=torch.long), persistent=False)

    # cells
    def num_cells(self, inputs: dict[str, torch.Tensor]) -> int:
        return int(inputs["input_ids"].shape[1])

    def batch_size(self, inputs: dict[str, torch.Tensor]) -> int:
        return int(inputs["input_ids"].shape[0])

    def valid_cells(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = inputs["input_ids"]
        real = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
        special = torch.isin(ids, self._special.to(ids.device))
        return real & ~special

    def validate(self, inputs: Any) -> None:
        if not isinstance(inputs, dict) or "input_ids" not in inputs:
            raise TypeError("expected a dict with 'input_ids' (B, L) and 'attention_mask' (B, L) int64 tensors, "
                            f"got {describe(inputs)}")
        ids = inputs["input_ids"]
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected input_ids as an int64 tensor of shape (B, L), got {describe(ids)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.vocab_size}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        for key in ("attention_mask", "token_type_ids"):
            if key in inputs and tuple(inputs[key].shape) != tuple(ids.shape):
                raise ValueError(f"expected {key} of shape {tuple(ids.shape)} like input_ids, got "
                                 f"{describe(inputs[key])}")
        unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ValueError(f"unexpected input keys {sorted(unknown)}; expected input_ids, attention_mask, "
                             "token_type_ids")
        if not bool(self.valid_cells(inputs).any(-1).all()):
            raise ValueError("an input has no groupable token (only special tokens and padding)")

    # generator
    def make_encoder(self) -> nn.Module:
        return _TokenEncoder(self.model.base_model, self.generator_layer)

    # backbone
    def mask_inputs(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
        B, G, L = masks.shape
        ids = inputs["input_ids"]
        emb_layer = self.model.get_input_embeddings()
        emb = emb_layer(ids)  # (B, L, D)
        fill = emb_layer.weight[self.mask_token_id]  # (D,)
        hide = self.valid_cells(inputs).unsqueeze(1) & ~masks  # (B, G, L): real tokens outside the group
        x = torch.where(hide.unsqueeze(-1), fill, emb.unsqueeze(1))  # (B, G, L, D)
        out = {"inputs_embeds": x.reshape(B * G, L, -1)}
        for key in ("attention_mask", "token_type_ids"):
            if key in inputs:
                out[key] = inputs[key].unsqueeze(1).expand(B, G, L).reshape(B * G, L)
        return out

    def restrict_inputs(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token ids with every real token outside the group replaced by the mask token (whose word
        embedding is exactly what :meth:`mask_inputs` puts there): ``masks (B, G, L)`` -> B·G inputs."""
        B, G, L = masks.shape
        ids = inputs["input_ids"]
        hide = self.valid_cells(inputs).unsqueeze(1) & ~masks  # (B, G, L)
        out = {"input_ids": torch.where(hide, torch.full_like(ids, self.mask_token_id).unsqueeze(1).expand(B, G, L),
                                        ids.unsqueeze(1).expand(B, G, L)).reshape(B * G, L)}
        for key in ("attention_mask", "token_type_ids"):
            if key in inputs:
                out[key] = inputs[key].unsqueeze(1).expand(B, G, L).reshape(B * G, L)
        return out

    def spec(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_class": type(self.model).__name__,
            "hf_config": self.model.config.to_dict(),
            "special_token_ids": self.special_token_ids,
            "mask_token_id": self.mask_token_id,
            "generator_layer": self.generator_layer,
            "group_batch_size": self.group_batch_size,
        }
