"""The backbone adapter protocol: the one place that knows a model family.

An adapter wraps a frozen backbone ``h`` and answers four questions for
:class:`~sumofparts.SumOfParts`:

1. **What are the cells?** ``num_cells(inputs)`` (N), ``cell_grid`` (the (h, w)
   layout of image cells, ``None`` for sequences) and ``valid_cells(inputs)``
   ``(B, N)`` bool (cells that may be grouped: never padding or special tokens).
2. **How are cell embeddings made for the generator?** ``make_encoder()`` returns a
   *trainable copy* of the backbone's encoder: ``encoder(inputs) -> (B, N, D_enc)``.
3. **How is the backbone run on groups?** ``forward_groups(inputs, masks)`` with
   ``masks: (B, G, N)`` bool returns group logits ``(B, G, C)`` and group
   embeddings ``(B, G, D)`` (the input of the classifier layer), all B·G masked
   inputs going through the backbone in batches of at most ``group_batch_size``.
4. **Where is the classifier?** ``classifier_weight``: ``(C, D)``.

Adding a model family means writing one subclass of :class:`BackboneAdapter`.
The backbone's parameters are frozen (``requires_grad=False``) and it stays in
eval mode whatever mode the surrounding module is put in.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["BackboneAdapter", "Inputs", "ClassifierInputCapture", "describe"]

#: an image tensor (B, C, H, W) or a dict of text tensors {"input_ids": (B, L), "attention_mask": (B, L)}
Inputs = Any


def describe(value: Any) -> str:
    """A short description of a value for error messages: type, shape, dtype."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, dict):
        return "dict with keys " + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items())
    return f"{type(value).__name__}"


class ClassifierInputCapture:
    """Records the input of a classifier layer (the group embedding z) on each forward."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def pop(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("the classifier layer was not called during the backbone's forward")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self._handle.remove()


class BackboneAdapter(nn.Module):
    """Base class of the adapters. Subclasses implement the abstract methods.

    Args:
        model: the backbone, put in eval mode and frozen here.
        classifier: the final linear layer of ``model`` (its input is the group embedding).
        group_batch_size: largest number of masked inputs sent through the backbone at once
            (the memory budget); the B·G masked inputs are chunked by it.
    """

    family: str = "base"

    def __init__(self, model: nn.Module, classifier: nn.Linear, group_batch_size: int = 256):
        super().__init__()
        if not isinstance(classifier, nn.Linear):
            raise TypeError(f"the classifier must be an nn.Linear, got {type(classifier).__name__}")
        if group_batch_size < 1:
            raise ValueError(f"group_batch_size must be >= 1, got {group_batch_size}")
        self.model = model
        self.classifier = classifier
        self.group_batch_size = int(group_batch_size)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self._capture = ClassifierInputCapture(classifier)

    # -- nn.Module ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "BackboneAdapter":
        super().train(mode)
        self.model.eval()  # the backbone is frozen: dropout and batch-norm statistics stay fixed
        return self

    # -- what the cells are ------------------------------------------------------------------
    cell_grid: tuple[int, int] | None = None

    def num_cells(self, inputs: Inputs) -> int:
        raise NotImplementedError

    def valid_cells(self, inputs: Inputs) -> torch.Tensor:
        """``(B, N)`` bool: cells that may be part of a group. All of them by default."""
        return torch.ones(self.batch_size(inputs), self.num_cells(inputs), dtype=torch.bool,
                          device=self.device)

    def batch_size(self, inputs: Inputs) -> int:
        raise NotImplementedError

    def validate(self, inputs: Inputs) -> None:
        """Raise ``ValueError``/``TypeError`` naming what was expected and what came."""
        raise NotImplementedError

    def to_device(self, inputs: Inputs, device: torch.device | str) -> Inputs:
        if isinstance(inputs, dict):
            return {k: v.to(device) for k, v in inputs.items()}
        return inputs.to(device)

    def select(self, inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
        """The sub-batch ``inputs[index]``."""
        if isinstance(inputs, dict):
            return {k: v[index] for k, v in inputs.items()}
        return inputs[index]

    # -- the generator's encoder ---------------------------------------------------------------
    encoder_dim: int = 0

    def make_encoder(self) -> nn.Module:
        raise NotImplementedError

    # -- the backbone ------------------------------------------------------------------------
    @property
    def classifier_weight(self) -> torch.Tensor:
        return self.classifier.weight

    @property
    def num_outputs(self) -> int:
        return self.classifier.out_features

    @property
    def embed_dim(self) -> int:
        return self.classifier.in_features

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    def forward(self, inputs: Inputs) -> torch.Tensor:
        """The plain backbone: logits ``(B, C)``."""
        logits, _ = self.forward_with_embedding(inputs)
        return logits

    def forward_with_embedding(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)`` and the classifier's input ``(B, D)``."""
        logits = self._logits(self._call_model(inputs))
        return logits, self._capture.pop()

    def _call_model(self, inputs: Inputs) -> Any:
        if isinstance(inputs, dict):
            return self.model(**inputs)
        return self.model(inputs)

    @staticmethod
    def _logits(output: Any) -> torch.Tensor:
        return output.logits if hasattr(output, "logits") else output

    def mask_inputs(self, inputs: Inputs, masks: torch.Tensor) -> Inputs:
        """Inputs restricted to groups: ``masks (B, G, N)`` -> a batch of B·G masked inputs."""
        raise NotImplementedError

    def restrict_inputs(self, inputs: Inputs, masks: torch.Tensor) -> Inputs:
        """The B·G inputs restricted to groups ``masks (B, G, N)``, in the inputs' own format, so that
        any model taking these inputs (SOP itself, a BagNet) can score them; the backbone gives them the
        same outputs as to :meth:`mask_inputs`'s. Default: :meth:`mask_inputs` (images, features)."""
        return self.mask_inputs(inputs, masks)

    def forward_groups(self, inputs: Inputs, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the backbone on every group: ``masks (B, G, N)`` bool -> logits ``(B, G, C)``, z ``(B, G, D)``.

        The B·G masked inputs are built and evaluated in chunks of at most
        ``group_batch_size`` (never a Python loop over groups).
        """
        B, G, _ = masks.shape
        per_chunk = max(1, self.group_batch_size // G)  # whole examples per chunk
        logits, embeds = [], []
        for start in range(0, B, per_chunk):
            idx = slice(start, min(B, start + per_chunk))
            sub = self.select(inputs, idx)
            y, z = self._forward_masked(sub, masks[idx])
            logits.append(y)
            embeds.append(z)
        y = torch.cat(logits).reshape(B, G, -1)
        z = torch.cat(embeds).reshape(B, G, -1)
        return y, z

    def _forward_masked(self, inputs: Inputs, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_with_embedding(self.mask_inputs(inputs, masks))

    # -- resolution ----------------------------------------------------------------------------
    def masks_to_input(self, masks: torch.Tensor, inputs: Inputs | None = None) -> torch.Tensor:
        """Cell masks ``(B, G, N)`` at input resolution: ``(B, G, H, W)`` for images, unchanged for tokens."""
        return masks

    def cell_index_map(self, inputs: Inputs) -> torch.Tensor:
        """Which cell each input feature belongs to, shaped like one input's features.

        Images: ``(C, H, W)`` long (the same cell id for every channel of a pixel);
        tokens: ``(L,)`` long (``arange(L)``). Captum's ``feature_mask`` takes it as is
        (after adding a batch dimension).
        """
        if self.cell_grid is None:
            return torch.arange(self.num_cells(inputs), device=self.device)
        N = self.cell_grid[0] * self.cell_grid[1]
        eye = torch.eye(N, dtype=torch.bool, device=self.device).unsqueeze(0)  # (1, N, N)
        up = self.masks_to_input(eye, inputs)[0]  # (N, H, W)
        ids = up.float().argmax(0)  # (H, W)
        channels = inputs.shape[1] if isinstance(inputs, torch.Tensor) else 1
        return ids.unsqueeze(0).expand(channels, *ids.shape).contiguous()

    def pool_to_cells(self, attributions: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        """Sum feature attributions inside each cell: ``(B, *feature_shape)`` -> ``(B, N)``."""
        ids = self.cell_index_map(inputs)
        B = attributions.shape[0]
        if tuple(attributions.shape[1:]) != tuple(ids.shape):
            raise ValueError(f"expected attributions of shape (B, {', '.join(map(str, ids.shape))}), "
                             f"got {tuple(attributions.shape)}")
        N = self.num_cells(inputs)
        flat = attributions.reshape(B, -1).to(torch.float32)
        out = torch.zeros(B, N, dtype=flat.dtype, device=flat.device)
        return out.scatter_add_(1, ids.reshape(1, -1).expand(B, -1).to(flat.device), flat)

    # -- (de)serialisation -----------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """A JSON description from which :func:`sumofparts.backbones.adapter_from_spec` rebuilds it."""
        raise NotImplementedError

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel ``(size, size)``."""
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return k / k.sum()


def upsample_nearest(masks: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(B, G, h*w)`` bool -> ``(B, G, H, W)`` bool, nearest-neighbour."""
    B, G, N = masks.shape
    h, w = grid
    if N != h * w:
        raise ValueError(f"masks have {N} cells but the grid {h}x{w} has {h * w}")
    m = masks.reshape(B * G, 1, h, w).float()
    up = nn.functional.interpolate(m, size=size, mode="nearest")
    return up.reshape(B, G, *size) > 0.5


def check_image_batch(x: Any, channels: int, size: tuple[int, int]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected an image tensor of shape (B, {channels}, {size[0]}, {size[1]}), got {describe(x)}")
    if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != tuple(size):
        raise ValueError(
            f"expected an image batch of shape (B, {channels}, {size[0]}, {size[1]}), got {describe(x)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else "")
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"the input contains {bad} NaN or infinite values; expected finite numbers")

