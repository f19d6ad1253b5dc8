"""Adapter for Hugging Face ``ViTForImageClassification``: cells are patches."""
from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError, InputError, InputTypeError
from ..validation import Field, check_fields, check_value
from .base import BackboneAdapter, EncoderLayers, check_image_batch, describe, upsample_nearest
from .registry import HF_ENCODER_FIELDS, HFModelSchema, without_inert_keys, _ACTIVATIONS, build_hf_model, encoder_parameters

__all__ = ["ViTAdapter", "VIT_SPEC_FIELDS", "VIT_MODELS"]


def _load_vit() -> tuple[type, type]:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification, ViTConfig


def _vit_check(cfg: dict[str, Any]) -> str | None:
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        return (f"hidden_size ({cfg['hidden_size']}) must be a multiple of num_attention_heads "
                f"({cfg['num_attention_heads']})")
    if cfg["image_size"] % cfg["patch_size"]:
        return f"image_size ({cfg['image_size']}) must be a multiple of patch_size ({cfg['patch_size']})"
    return None


def _vit_parameters(cfg: dict[str, Any]) -> int:
    h, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["num_channels"]
    patches = (cfg["image_size"] // p) ** 2
    labels = len(cfg["id2label"])
    count: int = c * p * p * h + h + (patches + 2) * h + encoder_parameters(cfg) + 2 * h + (h + 1) * labels
    return count


#: the Hugging Face image classifiers this adapter builds from a checkpoint, and their config tables
VIT_MODELS: dict[str, HFModelSchema] = {
    "ViTForImageClassification": HFModelSchema(
        class_name="ViTForImageClassification", model_type="vit",
        fields={**HF_ENCODER_FIELDS,
                "image_size": Field(int, min=1, max=4096),
                "patch_size": Field(int, min=1, max=1024),
                "num_channels": Field(int, min=1, max=64),
                "qkv_bias": Field(bool),
                "encoder_stride": Field(int, min=1, max=1024, required=False),
                "pooler_output_size": Field(int, min=1, max=16_384, optional=True, required=False),
                "pooler_act": Field(str, choices=_ACTIVATIONS, required=False)},
        load=_load_vit, check=_vit_check, parameters=_vit_parameters),
}

#: the entries of a ViT adapter's spec
VIT_SPEC_FIELDS: dict[str, Field] = {
    "family": Field(str, choices=("vit",)),
    "model_class": Field(str),
    "hf_config": Field(dict),
    "drop_patches": Field(bool),
    "generator_layer": Field(int, min=-1024, max=-1),
    "group_batch_size": Field(int, min=1, max=1_000_000, required=False, default=256),
}


class _ViTCellEncoder(nn.Module):
    """Trainable copy of the ViT's embeddings and encoder layers: pixels -> patch embeddings.

    Returns the hidden states after ``len(layers)`` layers with the CLS token dropped:
    ``(B, N, D)``. The SOP recipe takes the second-to-last hidden state, so the copy
    keeps all layers but the last one (the last one would be computed for nothing).
    """

    def __init__(self, vit: Any, num_layers: int):
        super().__init__()
        self.embeddings = copy.deepcopy(vit.embeddings)
        self.layers = nn.ModuleList(copy.deepcopy(vit.layers[i]) for i in range(num_layers))
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(pixel_values)
        for layer in self.layers:
            h = layer(h)
        cells: torch.Tensor = h[:, 1:]
        return cells


class ViTAdapter(EncoderLayers, BackboneAdapter):
    """A Hugging Face ViT classifier as an SOP backbone.

    Cells are the ``(image_size / patch_size)²`` patches, in row-major order. A group
    keeps its patches and zeroes the others' pixels (after normalisation), or, with
    ``drop_patches=True``, removes the other patches from the token sequence
    altogether (the CLS token and the kept patches' position embeddings stay).

    The two paths agree wherever a patch's contribution is zero either way; they differ
    because a zeroed patch is still a token that attends and is attended to (its
    embedding is the patch projection's bias plus its position embedding), while a
    dropped patch does not exist. Masking pixels is the default, as in the paper; patch
    dropping costs about ``tau`` of a full pass.

    Layers (layer and neuron attribution): ``vit.embeddings``, ``vit.layers.0`` ...
    ``vit.layers.{n-1}`` and ``vit.layernorm``, each seen as the patch tokens on the cell grid,
    ``(B, D, h, w)``; the CLS token is not a cell and is left out of the view (it keeps its value
    when a method replaces the layer's patch tokens).

    Args:
        model: a ``transformers.ViTForImageClassification``.
        drop_patches: run groups by dropping patches instead of zeroing pixels.
        generator_layer: which hidden state feeds the generator, counted from the end
            (``-2``: the second-to-last, as the authors do).
        group_batch_size: largest number of masked images per backbone call.
    """

    family = "vit"
    capabilities = frozenset({"cell_grid", "image_input", "cls_attention", "layer_map"})
    cell_grid: tuple[int, int]
    token_positions = 2

    def __init__(self, model: nn.Module, *, drop_patches: bool = False, generator_layer: int = -2,
                 group_batch_size: int = 256):
        if not hasattr(model, "vit") or not hasattr(model, "classifier"):
            raise InputTypeError(
                "ViTAdapter expects a transformers ViTForImageClassification (with .vit and .classifier), "
                f"got {type(model).__name__}"
            )
        super().__init__(model, cast(Any, model).classifier, group_batch_size)
        cfg = self.hf.config
        size = cfg.image_size if isinstance(cfg.image_size, (tuple, list)) else (cfg.image_size, cfg.image_size)
        patch = cfg.patch_size if isinstance(cfg.patch_size, (tuple, list)) else (cfg.patch_size, cfg.patch_size)
        self.image_size = (int(size[0]), int(size[1]))
        self.patch_size = (int(patch[0]), int(patch[1]))
        self.channels = int(cfg.num_channels)
        if self.image_size[0] % self.patch_size[0] or self.image_size[1] % self.patch_size[1]:
            raise ConfigError(f"ViTAdapter needs an image size divisible by the patch size (else the last "
                              f"pixels belong to no patch and the masks are misaligned); got image size "
                              f"{self.image_size} and patch size {self.patch_size}")
        self.cell_grid = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.drop_patches = check_value("drop_patches", drop_patches, Field(bool))
        n_layers = len(self.hf.vit.layers)
        if isinstance(generator_layer, bool) or not isinstance(generator_layer, int) or \
                not (-n_layers <= generator_layer < 0):
            raise ConfigError(f"generator_layer must be in [-{n_layers}, -1], got {generator_layer}")
        self.generator_layer = int(generator_layer)
        self.encoder_dim = int(cfg.hidden_size)

    # cells
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)

    def num_cells(self, inputs: Any) -> int:
        return self.cell_grid[0] * self.cell_grid[1]

    def batch_size(self, inputs: Any) -> int:
        return int(inputs.shape[0])

    def validate(self, inputs: Any) -> None:
        check_image_batch(inputs, self.channels, self.image_size, self.dtype)

    # generator
    def make_encoder(self) -> nn.Module:
        n_layers = len(self.hf.vit.layers)
        # hidden_states[k] in HF numbering is the output of layer k (0 = embeddings)
        keep = n_layers + 1 + self.generator_layer
        return _ViTCellEncoder(self.hf.vit, keep)

    # layers of the generator's copy
    def encoder_layers(self, encoder: nn.Module) -> dict[str, nn.Module]:
        """The copy's embedding and the blocks it keeps (all but the last, for ``generator_layer=-2``)."""
        names = list(self.named_layers())
        copy = cast(_ViTCellEncoder, encoder)
        return dict(zip(names, [copy.embeddings, *copy.layers]))

    # backbone
    def mask_inputs(self, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        B, G, _ = masks.shape
        up = upsample_nearest(masks, self.cell_grid, self.image_size)  # (B, G, H, W)
        x = inputs.unsqueeze(1) * up.unsqueeze(2).to(inputs.dtype)  # (B, G, C, H, W)
        return x.reshape(B * G, *inputs.shape[1:])

    masking_modes = ("zero", "drop")

    @property
    def masking_mode(self) -> str:
        return "drop" if self.drop_patches else "zero"

    def equal_group_sizes(self, mode: str) -> bool:
        return mode == "drop"

    def _forward_masked(self, inputs: torch.Tensor, masks: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if mode == "drop":
            return self._forward_dropped(inputs, masks)
        return super()._forward_masked(inputs, masks, mode)

    def _forward_dropped(self, pixel_values: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep only each group's patches (plus CLS). Every group of a batch must have the same size."""
        vit = self.hf.vit
        B, G, N = masks.shape
        counts = masks.sum(-1)
        k = int(counts.max())
        if not bool((counts == k).all()):
            raise InputError("patch dropping needs every group of a batch to hold the same number of cells")
        emb = vit.embeddings(pixel_values)  # (B, 1+N, D), position embeddings added
        cls, patches = emb[:, :1], emb[:, 1:]
        # indices of kept cells in increasing order: (B, G, k)
        order = torch.sort(masks.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :k]
        order = torch.sort(order, dim=-1).values
        D = emb.shape[-1]
        kept = torch.gather(patches.unsqueeze(1).expand(B, G, N, D), 2, order.unsqueeze(-1).expand(B, G, k, D))
        h = torch.cat([cls.unsqueeze(1).expand(B, G, 1, D), kept], dim=2).reshape(B * G, 1 + k, D)
        for layer in vit.layers:
            h = layer(h)
        h = vit.layernorm(h)
        z = h[:, 0]
        return self.classifier(z), z

    def masks_to_input(self, masks: torch.Tensor, inputs: Any = None) -> torch.Tensor:
        return upsample_nearest(masks, self.cell_grid, self.image_size)

    @torch.no_grad()
    def cls_attention(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: the last layer's attention from CLS to each patch, averaged over heads."""
        return self._last_cls_row(self.model(pixel_values=inputs, output_attentions=True))[:, 1:]

    # layers
    def embedding_module(self) -> nn.Module:
        return cast(nn.Module, self.hf.vit.embeddings)

    def encoder_blocks(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.hf.vit.layers)

    def final_token_layers(self) -> list[nn.Module]:
        return [self.hf.vit.layernorm]

    def layer_grid(self, output: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, 1 + N, D)`` -> the patch tokens on the cell grid ``(B, D, h, w)`` (CLS left out)."""
        N = self.cell_grid[0] * self.cell_grid[1]
        if not isinstance(output, torch.Tensor) or output.ndim != 3 or output.shape[1] != 1 + N:
            raise InputError(f"expected a ViT layer output of shape (B, {1 + N}, D), got {describe(output)}")
        B, _, D = output.shape
        return output[:, 1:].transpose(1, 2).reshape(B, D, *self.cell_grid)

    def layer_from_grid(self, grid: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        B, D = grid.shape[:2]
        return torch.cat([output[:, :1], grid.reshape(B, D, -1).transpose(1, 2)], dim=1)

    def spec(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_class": type(self.model).__name__,
            "hf_config": self.hf.config.to_dict(),
            "drop_patches": self.drop_patches,
            "generator_layer": self.generator_layer,
            "group_batch_size": self.group_batch_size,
        }

    @classmethod
    def canonical_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "hf_config": without_inert_keys(spec.get("hf_config"))}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model: nn.Module | None = None, *, where: str = "") -> "ViTAdapter":
        """Rebuild from :meth:`spec`: an allow-listed class (:data:`VIT_MODELS`) from its checked
        config, or ``model``."""
        s = check_fields(spec, VIT_SPEC_FIELDS, where=f"{where}backbone.", require=True)
        if model is None:
            model = build_hf_model(s["model_class"], s["hf_config"], VIT_MODELS, where=where)
        return cls(model, drop_patches=s["drop_patches"], generator_layer=s["generator_layer"],
                   group_batch_size=s["group_batch_size"])
