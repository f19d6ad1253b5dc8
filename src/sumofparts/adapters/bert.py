"""Adapter for Hugging Face BERT-family sequence classifiers: cells are tokens."""
from __future__ import annotations

import copy
from typing import Any, Iterable, cast

import torch
from torch import nn

from ..errors import ConfigError, InputError, InputTypeError
from ..validation import Field, check_fields, check_value
from .base import BackboneAdapter, EmbeddedInputs, EncoderLayers, describe
from .registry import HF_ENCODER_FIELDS, HFModelSchema, without_inert_keys, build_hf_model, encoder_parameters

__all__ = ["BertAdapter", "BERT_SPEC_FIELDS", "BERT_MODELS"]


def _load_bert() -> tuple[type, type]:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification, BertConfig


def _bert_check(cfg: dict[str, Any]) -> str | None:
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        return (f"hidden_size ({cfg['hidden_size']}) must be a multiple of num_attention_heads "
                f"({cfg['num_attention_heads']})")
    pad = cfg.get("pad_token_id")
    if pad is not None and pad >= cfg["vocab_size"]:
        return f"pad_token_id ({pad}) must be below vocab_size ({cfg['vocab_size']})"
    return None


def _bert_parameters(cfg: dict[str, Any]) -> int:
    h = cfg["hidden_size"]
    labels = len(cfg["id2label"])
    embeddings = (cfg["vocab_size"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"]) * h + 2 * h
    count: int = embeddings + encoder_parameters(cfg) + h * h + h + (h + 1) * labels
    return count


#: the Hugging Face text classifiers this adapter builds from a checkpoint, and their config tables
BERT_MODELS: dict[str, HFModelSchema] = {
    "BertForSequenceClassification": HFModelSchema(
        class_name="BertForSequenceClassification", model_type="bert",
        fields={**HF_ENCODER_FIELDS,
                "vocab_size": Field(int, min=1, max=2_000_000),
                "max_position_embeddings": Field(int, min=1, max=131_072),
                "type_vocab_size": Field(int, min=1, max=1024),
                "pad_token_id": Field(int, min=0, max=2_000_000, optional=True, required=False),
                "classifier_dropout": Field(float, min=0, max=1, optional=True, required=False),
                "position_embedding_type": Field(str, choices=("absolute",), required=False)},
        load=_load_bert, check=_bert_check, parameters=_bert_parameters),
}

#: the entries of a BERT adapter's spec
BERT_SPEC_FIELDS: dict[str, Field] = {
    "family": Field(str, choices=("bert",)),
    "model_class": Field(str),
    "hf_config": Field(dict),
    "special_token_ids": Field(list, item=int, min=0, max=2_000_000, max_length=100_000),
    "mask_token_id": Field(int, min=0, max=2_000_000),
    "generator_layer": Field(int, min=-1024, max=-1),
    "group_batch_size": Field(int, min=1, max=1_000_000, required=False, default=256),
    "drop_tokens": Field(bool, required=False, default=False),
}

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
        hidden: torch.Tensor = out.hidden_states[self.generator_layer]
        return hidden


class _EmbeddingForward(nn.Module):
    """A BERT adapter's backbone seen as a function of its input (word) embeddings ``(B, L, D)``."""

    def __init__(self, adapter: BackboneAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch: dict[str, torch.Tensor] = {"inputs_embeds": inputs_embeds}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        logits: torch.Tensor = self.adapter(batch)
        return logits


class BertAdapter(EncoderLayers, BackboneAdapter):
    """A BERT-family ``*ForSequenceClassification`` model as an SOP backbone.

    Inputs are dicts ``{"input_ids": (B, L), "attention_mask": (B, L)}`` (``token_type_ids``
    optional). Every position is a cell (N = L); special tokens and padding are never
    part of a group (``valid_cells``). A group keeps its tokens; every other real token
    is replaced by a fixed embedding (the ``[MASK]`` token's word embedding) while the
    special tokens stay and padding stays out of attention (masking mode ``"zero"``), or,
    with ``drop_tokens=True`` (mode ``"drop"``), every other real token is taken out of
    attention like padding: the model reads the group's tokens and the special tokens at
    their own positions, as if the rest of the sentence were not there (no ``[MASK]``
    token, so no missingness bias to learn away; Jain et al., ICLR 2022).

    Layers (layer and neuron attribution): ``bert.embeddings``, ``bert.encoder.layer.0`` ...
    (the model's own names), each seen as ``(B, D, L)``: D units at each of the L token positions
    (the cells); and the pooler, ``(B, D)``, without positions.

    Args:
        model: e.g. ``BertForSequenceClassification`` (anything with ``base_model``,
            ``get_input_embeddings()`` and a linear ``classifier`` or ``classifier.out_proj``).
        tokenizer: gives the special-token ids and the mask token; without it BERT's
            WordPiece ids are assumed ([PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103).
        special_token_ids / mask_token_id: explicit overrides.
        generator_layer: hidden state for the generator, from the end (-2: second-to-last).
        drop_tokens: show groups by taking the other tokens out of attention (mode ``"drop"``)
            instead of replacing them by ``[MASK]`` (mode ``"zero"``); both modes stay available
            to :meth:`forward_groups` by name.
    """

    family = "bert"
    masking_modes = ("zero", "drop")
    capabilities = frozenset({"token_input", "cls_attention", "layer_map"})

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, special_token_ids: Iterable[int] | None = None,
                 mask_token_id: int | None = None, generator_layer: int = -2, group_batch_size: int = 256,
                 drop_tokens: bool = False):
        classifier = getattr(model, "classifier", None)
        if classifier is not None and not isinstance(classifier, nn.Linear):
            classifier = getattr(classifier, "out_proj", None)
        if not isinstance(classifier, nn.Linear) or not hasattr(model, "base_model"):
            raise InputTypeError("BertAdapter expects a transformers *ForSequenceClassification model with a linear "
                            f"classifier, got {type(model).__name__}")
        super().__init__(model, classifier, group_batch_size)
        if tokenizer is not None:
            special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
            mask_id = tokenizer.mask_token_id
        else:
            special, mask_id = set(_BERT_SPECIAL), _BERT_MASK
        if special_token_ids is not None:
            special = set(check_value("special_token_ids", special_token_ids, Field(list, item=int, min=0)))
        if mask_token_id is not None:
            mask_id = check_value("mask_token_id", mask_token_id, Field(int, min=0))
        if mask_id is None:
            raise ConfigError("no mask token: pass mask_token_id= (the id whose embedding replaces masked tokens)")
        self.special_token_ids = sorted(special)
        self.mask_token_id = int(mask_id)
        self.vocab_size = int(self.hf.get_input_embeddings().num_embeddings)
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(f"mask_token_id must be in [0, {self.vocab_size}), got {self.mask_token_id}")
        outside = [i for i in self.special_token_ids if not 0 <= i < self.vocab_size]
        if outside:
            raise ConfigError(f"special_token_ids must lie in [0, {self.vocab_size}), got {outside[:5]}")
        n_layers = int(self.hf.config.num_hidden_layers)
        if isinstance(generator_layer, bool) or not isinstance(generator_layer, int) or \
                not (-n_layers - 1 <= generator_layer < 0):
            raise ConfigError(f"generator_layer must be in [-{n_layers + 1}, -1], got {generator_layer}")
        self.max_positions = int(getattr(self.hf.config, "max_position_embeddings", 0)) or None
        self.type_vocab_size = int(getattr(self.hf.config, "type_vocab_size", 0)) or None
        self.generator_layer = int(generator_layer)
        self.drop_tokens = check_value("drop_tokens", drop_tokens, Field(bool))
        self.encoder_dim = int(self.hf.config.hidden_size)
        self._special: torch.Tensor
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

    @property
    def max_cells(self) -> int | None:
        """The position table's length: no input has more tokens (cells)."""
        return self.max_positions

    def validate(self, inputs: Any) -> None:
        if not isinstance(inputs, dict) or "input_ids" not in inputs:
            raise InputTypeError("expected a dict with 'input_ids' (B, L) and 'attention_mask' (B, L) int64 "
                                 f"tensors, got {describe(inputs)}")
        unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise InputError(f"unexpected input keys {sorted(map(str, unknown))}; expected input_ids, "
                             "attention_mask, token_type_ids")
        ids = inputs["input_ids"]
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"expected input_ids as an int64 tensor of shape (B, L), got {describe(ids)}")
        B, L = ids.shape
        if B == 0 or L == 0:
            raise InputError(f"expected at least one sequence of at least one token, got input_ids of shape "
                             f"{tuple(ids.shape)}")
        if self.max_positions is not None and self.max_positions < L:
            raise InputError(f"sequences of {L} tokens are longer than the model's position table "
                             f"({self.max_positions} positions); truncate them to at most {self.max_positions}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise InputError(f"input_ids must lie in [0, {self.vocab_size}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        for key in ("attention_mask", "token_type_ids"):
            if key not in inputs:
                continue
            t = inputs[key]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(ids.shape):
                raise InputError(f"expected {key} of shape {tuple(ids.shape)} like input_ids, got {describe(t)}")
            if t.is_floating_point() or t.is_complex():
                raise InputError(f"expected {key} as an integer tensor, got dtype {t.dtype}")
        mask = inputs.get("attention_mask")
        if mask is not None and not bool(((mask == 0) | (mask == 1)).all()):
            raise InputError("attention_mask must hold only 0 (padding) and 1 (token)")
        types = inputs.get("token_type_ids")
        if types is not None and self.type_vocab_size is not None and (
                int(types.min()) < 0 or int(types.max()) >= self.type_vocab_size):
            raise InputError(f"token_type_ids must lie in [0, {self.type_vocab_size}), got values in "
                             f"[{int(types.min())}, {int(types.max())}]")
        if not bool(self.valid_cells(inputs).any(-1).all()):
            raise InputError("an input has no groupable token (only special tokens and padding)")

    # generator
    def make_encoder(self) -> nn.Module:
        return _TokenEncoder(self.hf.base_model, self.generator_layer)

    # layers of the generator's copy
    def encoder_layers(self, encoder: nn.Module) -> dict[str, nn.Module]:
        """The copy is the whole transformer body: every layer, under the backbone's names."""
        prefix = self.hf.base_model_prefix + "."
        body = cast(nn.Module, encoder.base)
        return {name: body.get_submodule(name[len(prefix):]) for name in self.named_layers()}

    # backbone
    def _hidden(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """``(B, G, L)``: the real tokens outside each group (special tokens and padding never are)."""
        return self.valid_cells(inputs).unsqueeze(1) & ~masks

    @staticmethod
    def _per_group(inputs: dict[str, torch.Tensor], keys: tuple[str, ...], G: int) -> dict[str, torch.Tensor]:
        """Each of ``keys`` present in ``inputs``, ``(B, L)``, repeated for the G groups: ``(B·G, L)``."""
        return {key: inputs[key].repeat_interleave(G, dim=0) for key in keys if key in inputs}

    def mask_inputs(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
        B, G, L = masks.shape
        emb_layer = self.hf.get_input_embeddings()
        emb = emb_layer(inputs["input_ids"])  # (B, L, D)
        fill = emb_layer.weight[self.mask_token_id]  # (D,)
        x = torch.where(self._hidden(inputs, masks).unsqueeze(-1), fill, emb.unsqueeze(1))  # (B, G, L, D)
        return {"inputs_embeds": x.reshape(B * G, L, -1),
                **self._per_group(inputs, ("attention_mask", "token_type_ids"), G)}

    @property
    def masking_mode(self) -> str:
        return "drop" if self.drop_tokens else "zero"

    def _forward_masked(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor,
                        mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if mode == "drop":
            return self.forward_with_embedding(self.drop_inputs(inputs, masks))
        return super()._forward_masked(inputs, masks, mode)

    def drop_inputs(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """B·G inputs in which every real token outside its group is out of attention (its
        ``attention_mask`` entry 0, like padding); the ids, the special tokens and the positions
        stay: ``masks (B, G, L)`` -> a batch of B·G inputs (mode ``"drop"``)."""
        B, G, L = masks.shape
        ids = inputs["input_ids"]
        shown = self.shown_cells(inputs).unsqueeze(1) & ~self._hidden(inputs, masks)  # (B, G, L)
        return {"attention_mask": shown.to(ids.dtype).reshape(B * G, L),
                **self._per_group(inputs, ("input_ids", "token_type_ids"), G)}

    def restrict_inputs(self, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The B·G inputs restricted to groups ``masks (B, G, L)`` in the default masking mode:
        :meth:`drop_inputs` with ``drop_tokens``, otherwise token ids with every real token outside
        the group replaced by the mask token (whose word embedding is exactly what
        :meth:`mask_inputs` puts there)."""
        if self.drop_tokens:
            return self.drop_inputs(inputs, masks)
        B, G, L = masks.shape
        ids = inputs["input_ids"].unsqueeze(1).expand(B, G, L)
        ids = ids.masked_fill(self._hidden(inputs, masks), self.mask_token_id)
        return {"input_ids": ids.reshape(B * G, L),
                **self._per_group(inputs, ("attention_mask", "token_type_ids"), G)}

    # the backbone as a function of its word embeddings (gradient methods on text)
    def input_embeddings(self, inputs: dict[str, torch.Tensor]) -> EmbeddedInputs:
        """Word embeddings ``(B, L, D)``; the baseline: the ``[MASK]`` embedding at every valid token and the
        token's own embedding at special tokens and padding (what :meth:`mask_inputs` puts outside a group);
        extras: ``(attention_mask, token_type_ids)`` (each may be ``None``)."""
        layer = self.hf.get_input_embeddings()
        with torch.no_grad():
            embeds = layer(inputs["input_ids"]).detach()
            fill = layer.weight[self.mask_token_id].detach()
            valid = self.valid_cells(inputs)
            baseline = torch.where(valid.unsqueeze(-1), fill.expand_as(embeds), embeds)
        return EmbeddedInputs(embeds, baseline, (inputs.get("attention_mask"), inputs.get("token_type_ids")))

    def token_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["input_ids"]

    def shown_cells(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The real tokens, special ones included (padding left out)."""
        ids = inputs["input_ids"]
        return inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)

    def embedding_forward(self) -> nn.Module:
        """``module(inputs_embeds, attention_mask=None, token_type_ids=None) -> logits (B, C)``."""
        return _EmbeddingForward(self)

    @torch.no_grad()
    def cls_attention(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, L)``: the last layer's attention from CLS to each token, averaged over heads."""
        return self._last_cls_row(self.model(**inputs, output_attentions=True))

    # layers
    def embedding_module(self) -> nn.Module:
        return cast(nn.Module, self.hf.base_model.embeddings)

    def encoder_blocks(self) -> nn.ModuleList:
        encoder = self.hf.base_model.encoder
        blocks = getattr(encoder, "layer", None)
        if blocks is None:
            blocks = getattr(encoder, "layers", None)
        if blocks is None:
            raise NotImplementedError(f"cannot find the encoder blocks of a {type(self.model).__name__}")
        return cast(nn.ModuleList, blocks)

    def pooled_layers(self) -> list[nn.Module | None]:
        return [getattr(self.hf.base_model, "pooler", None)]

    def layer_grid(self, output: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, L, D)`` -> ``(B, D, L)``."""
        if not isinstance(output, torch.Tensor) or output.ndim != 3:
            raise InputError(f"expected a layer output of shape (B, L, D), got {describe(output)}")
        return output.transpose(1, 2)

    def layer_from_grid(self, grid: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return grid.transpose(1, 2)

    def spec(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_class": type(self.model).__name__,
            "hf_config": self.hf.config.to_dict(),
            "special_token_ids": self.special_token_ids,
            "mask_token_id": self.mask_token_id,
            "generator_layer": self.generator_layer,
            "group_batch_size": self.group_batch_size,
            "drop_tokens": self.drop_tokens,
        }

    @classmethod
    def canonical_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "hf_config": without_inert_keys(spec.get("hf_config"))}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model: nn.Module | None = None, *, where: str = "") -> "BertAdapter":
        """Rebuild from :meth:`spec`: an allow-listed class (:data:`BERT_MODELS`) from its checked
        config, or ``model``."""
        s = check_fields(spec, BERT_SPEC_FIELDS, where=f"{where}backbone.", require=True)
        if model is None:
            model = build_hf_model(s["model_class"], s["hf_config"], BERT_MODELS, where=where)
        return cls(model, special_token_ids=s["special_token_ids"], mask_token_id=s["mask_token_id"],
                   generator_layer=s["generator_layer"], group_batch_size=s["group_batch_size"],
                   drop_tokens=s["drop_tokens"])
