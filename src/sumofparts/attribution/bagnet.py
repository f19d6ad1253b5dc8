"""BagNet (Brendel & Bethge, 2019) as a self-attributing baseline: a classifier whose logit is the mean of
logits computed from single patches, so each patch's share is an exact attribution.

* :class:`BagNetModel`: the model (registered as the backbone class ``bagnet``, so its file is rebuilt
  from checked arguments only).
* :class:`BagNetMethod`: the method; it trains a model of its own on the task's training data
  (``trains_own_model``), which the evaluation trains once and keeps with its shards.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..adapters.base import BackboneAdapter, Inputs
from ..adapters.registry import register_backbone
from ..errors import CheckpointError, InputError, InputTypeError
from ..io import load_tensors, save_tensors
from ..ops import seeded
from ..validation import Field
from .base import AttributionMethod

__all__ = ["BagNetModel", "BagNetMethod"]


@register_backbone("bagnet", {"in_channels": Field(int, min=1, max=64),
                              "num_classes": Field(int, min=1, max=100_000),
                              "image_size": Field(list, item=int, length=2, min=1, max=4096),
                              "grid": Field(list, item=int, length=2, min=1, max=4096),
                              "width": Field(int, min=1, max=4096), "depth": Field(int, min=1, max=64),
                              "seed": Field(int, min=0, max=2**63 - 1, required=False)})
class BagNetModel(nn.Module):
    """A bag-of-local-features classifier: ``logits(x) = mean over patches of f(patch)``.

    The image (zero-padded on the right and bottom to a whole number of patches) is cut into
    a ``grid`` of non-overlapping patches of ``ceil(H / g_h) × ceil(W / g_w)`` pixels; one
    convolution with that kernel and stride embeds each patch, then ``depth`` 1×1
    convolutions (ReLU between) map each embedding to class logits. No layer mixes patches,
    so each patch's logits depend on its own pixels only, and the model's logits are their
    mean: ``patch_logits(x) / P`` summed over the ``P`` patches *is* the output.

    Args:
        in_channels, num_classes: image channels and number of outputs.
        image_size: ``(H, W)``.
        grid: the patch grid ``(g_h, g_w)`` (use the adapter's cell grid).
        width: channels of the patch embedding and the hidden 1×1 layers.
        depth: number of 1×1 layers after the patch embedding (>= 1).
        seed: seed of the initial weights.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], grid: tuple[int, int],
                 width: int = 64, depth: int = 2, seed: int = 0):
        super().__init__()
        if depth < 1:
            raise InputError(f"depth must be >= 1, got {depth}")
        H, W = (int(v) for v in image_size)
        gh, gw = (int(v) for v in grid)
        if not (1 <= gh <= H and 1 <= gw <= W):
            raise InputError(f"grid {grid} must fit in the image {image_size}")
        self.init_kwargs = {"in_channels": int(in_channels), "num_classes": int(num_classes),
                            "image_size": [H, W], "grid": [gh, gw], "width": int(width), "depth": int(depth)}
        self.image_size, self.grid = (H, W), (gh, gw)
        self.patch = (math.ceil(H / gh), math.ceil(W / gw))
        self.pad = (gw * self.patch[1] - W, gh * self.patch[0] - H)  # right, bottom
        if (gh - 1) * self.patch[0] >= H or (gw - 1) * self.patch[1] >= W:
            raise InputError(f"a {gh}x{gw} grid of {self.patch[0]}x{self.patch[1]} patches leaves a patch "
                             f"entirely outside the {H}x{W} image; choose another grid")
        with seeded(seed):
            self.embed = nn.Conv2d(in_channels, width, kernel_size=self.patch, stride=self.patch)
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [nn.ReLU(), nn.Conv2d(width, width if i < depth - 1 else num_classes, 1)]
            self.head = nn.Sequential(*layers)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_out, g_h, g_w)``: each patch's own logits."""
        if x.ndim != 4 or tuple(x.shape[2:]) != self.image_size:
            raise InputError(f"expected images (B, C, {self.image_size[0]}, {self.image_size[1]}), "
                             f"got shape {tuple(x.shape)}")
        x = nn.functional.pad(x, (0, self.pad[0], 0, self.pad[1]))
        return self.head(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_logits(x).mean((2, 3))

    def patch_scores(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, g_h, g_w)``: each patch's share of the target logit (they sum to it)."""
        pl = self.patch_logits(x)
        idx = target.view(-1, 1, 1, 1).expand(-1, 1, *pl.shape[2:])
        return pl.gather(1, idx)[:, 0] / self.num_patches

    def fit(self, dataset: Dataset, steps: int = 500, *, batch_size: int = 64, lr: float = 2e-3,
            weight_decay: float = 1e-4, seed: int = 0, progress: bool = True) -> "BagNetModel":
        """Train (AdamW) on ``(image, target)`` items for ``steps`` batches: cross-entropy for integer
        class labels, mean squared error for float regression targets ``(T,)``."""
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=False)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        it = iter(loader)
        device = next(self.parameters()).device
        for _ in tqdm(range(int(steps)), desc="train BagNet", disable=not progress, leave=False):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            out, y = self(x.to(device)), y.to(device)
            if y.is_floating_point():
                loss = nn.functional.mse_loss(out, y.view_as(out))
            else:
                loss = nn.functional.cross_entropy(out, y.long())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self.eval()

    def save(self, path: str | Path) -> Path:
        """Weights as safetensors, the constructor's arguments in its metadata."""
        return save_tensors(path, self.state_dict(), metadata={"bagnet": json.dumps(self.init_kwargs)})

    @classmethod
    def load(cls, path: str | Path) -> "BagNetModel":
        """Rebuild from :meth:`save`'s file: the arguments in its metadata are checked against the
        registered schema (``bagnet``) before anything is built."""
        from ..adapters.registry import build_backbone
        from ..io import tensor_metadata

        meta = tensor_metadata(path).get("bagnet")
        if meta is None:
            raise CheckpointError(f"{path} is not a BagNet checkpoint (no 'bagnet' metadata)")
        try:
            kwargs = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: the BagNet metadata is not valid JSON ({exc})") from None
        model = build_backbone("bagnet", kwargs, where=f"{path}: ")
        if not isinstance(model, BagNetModel):
            raise CheckpointError(f"{path}: the registered 'bagnet' backbone is not a BagNetModel")
        model.load_state_dict(load_tensors(path))
        return model.eval()


class BagNetMethod(AttributionMethod):
    """Explain a :class:`BagNetModel` by its own patch logits (exact by construction).

    ``attribute``: each patch's share of the target logit, ``patch_logit[t] / P``, spread
    evenly over the patch's pixels and channels inside the image, so the attribution sums
    to the logit over the whole input and ``attribute_cells`` (sums inside the adapter's
    cells) stays exact. ``predict``: the BagNet's own logits. The adapter only supplies the
    cells; pass a trained ``model=``, or ``train_data=`` (and ``steps=``) to train one here.
    """

    name = "bagnet"
    requires = frozenset({"cell_grid", "image_input"})
    trains_own_model = True
    training_options = frozenset({"train_data", "steps", "width", "depth", "progress"})
    completeness = "output"  # the patch shares add up to the BagNet's own logit
    multiplies_by_inputs = True

    def __init__(self, adapter: BackboneAdapter, *, model: BagNetModel | None = None, train_data: Dataset | None = None,
                 steps: int = 500, width: int = 64, depth: int = 2, seed: int = 0, progress: bool = False):
        super().__init__(adapter)
        if model is None:
            if train_data is None:
                raise InputError("the 'bagnet' method needs model= a trained BagNetModel, or train_data= to train one")
            # the method requires cell_grid and image_input: both are set
            channels, height, width_ = cast(tuple[int, int, int], adapter.input_shape)
            grid = cast(tuple[int, int], adapter.cell_grid)
            model = BagNetModel(channels, adapter.num_outputs, (height, width_), grid, width=width,
                                depth=depth, seed=seed)
            model.fit(train_data, steps, seed=seed, progress=progress)
        if not isinstance(model, BagNetModel):
            raise InputTypeError(f"model must be a BagNetModel, got {type(model).__name__}")
        if model.init_kwargs["num_classes"] != adapter.num_outputs:
            raise InputError(f"the BagNet has {model.init_kwargs['num_classes']} outputs but the backbone has "
                             f"{adapter.num_outputs}")
        self.model = model.eval()

    @torch.no_grad()
    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            raise InputTypeError(f"BagNetMethod.attribute got unexpected arguments {sorted(kwargs)}")
        m = self.model
        scores = m.patch_scores(inputs, target)  # (B, gh, gw)
        C, (H, W), (ph, pw) = inputs.shape[1], m.image_size, m.patch
        # pixels of each patch inside the image (border patches may be cut by the padding)
        rows = torch.clamp(H - torch.arange(m.grid[0]) * ph, max=ph)
        cols = torch.clamp(W - torch.arange(m.grid[1]) * pw, max=pw)
        count = (rows[:, None] * cols[None, :]).to(scores)  # (gh, gw)
        density = scores / (count * C)
        up = density.repeat_interleave(ph, 1).repeat_interleave(pw, 2)[:, :H, :W]
        return up.unsqueeze(1).expand(-1, C, H, W).contiguous()

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        self.adapter.validate(inputs)
        return self.model(inputs)

    def save_own_model(self, path: Any) -> None:
        self.model.save(path)

    @classmethod
    def load_own_model(cls, path: Any) -> BagNetModel:
        return BagNetModel.load(path)
