"""Self-attributing baselines: SOP itself, FRESH, the "-F" conversion and BagNet.

* :class:`SOPMethod`: a trained :class:`~sumofparts.SumOfParts` behind the interface.
* :class:`FRESH`: keep the top-τ cells by the backbone's last-layer attention from CLS
  (averaged over heads) and predict with the frozen backbone on them alone.
* :class:`FConversion`: the "-F" form of any post-hoc method: sum its attribution inside
  each cell, keep the top-τ cells, predict with the frozen backbone on them alone.
* :class:`BagNetModel` / :class:`BagNetMethod`: a classifier whose logit is the mean of
  logits computed from single patches, so each patch's share is an exact attribution.

For the grouped methods ``explain_groups(x, target).scores.sum(1)`` equals
``prediction[target]``: the explanation is the prediction.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..adapters.base import BackboneAdapter, Inputs
from ..adapters.registry import register_backbone
from ..errors import CheckpointError, InputError, InputTypeError
from ..io import load_tensors, save_tensors
from ..metrics.ranking import tie_keys
from ..ops import seeded
from ..validation import Field
from .base import AttributionMethod, GroupedResult, Target, top_tau_cells

__all__ = ["SOPMethod", "FRESH", "FConversion", "BagNetModel", "BagNetMethod"]


def _check_tau(tau: float) -> float:
    if not isinstance(tau, (int, float)) or not 0.0 < float(tau) <= 1.0:
        raise InputError(f"tau must be in (0, 1], got {tau!r}")
    return float(tau)


class _OneGroupMethod(AttributionMethod):
    """A grouped method with a single group: the top-τ cells of some cell scores, predicted
    by the frozen backbone on that group alone. The group's score is that prediction's
    logit for the target."""

    grouped = True
    completeness = "output"  # the group's score is the prediction itself
    multiplies_by_inputs = True

    def __init__(self, adapter: BackboneAdapter, *, tau: float = 0.2, tie_seed: int | None = 0):
        super().__init__(adapter)
        self.tau = _check_tau(tau)
        self.tie_seed = tie_seed

    def cell_importance(self, inputs: Inputs, target: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: the scores the group is chosen by."""
        raise NotImplementedError

    def cell_ranking(self, inputs: Inputs, target: Target) -> torch.Tensor:
        """The importance the group is selected by (the curves rank cells by it)."""
        return self.cell_importance(inputs, self._prepare(inputs, target))

    def explain_groups(self, inputs: Inputs, target: Target) -> GroupedResult:
        t = self._prepare(inputs, target)
        importance = self.cell_importance(inputs, t)
        valid = self.adapter.valid_cells(inputs)
        # ties (e.g. a map that is 0 on many cells) in a seeded random order of the cells, not the raster
        keys = None if self.tie_seed is None else tie_keys(range(valid.shape[0]), valid.shape[1], 1,
                                                           self.tie_seed)[:, 0]
        masks = top_tau_cells(importance, valid, self.tau, keys).unsqueeze(1)  # (B, 1, N)
        with torch.no_grad():
            logits, _ = self.adapter.forward_groups(inputs, masks)
        prediction = logits[:, 0]
        scores = prediction.gather(1, t.view(-1, 1))
        return GroupedResult(masks=masks, scores=scores, prediction=prediction, target=t)


class FRESH(_OneGroupMethod):
    """FRESH (Jain et al., 2020) with the backbone as both extractor and predictor.

    Cell importance: the last layer's attention from the CLS token to each cell, averaged
    over heads (ViT: to each patch; BERT: to each token; special tokens and padding are
    never kept). The group: the top ``max(1, floor(tau · n_valid))`` cells. The prediction:
    the frozen backbone on that group alone (``adapter.forward_groups``). Needs the adapter's
    ``cls_attention`` capability (transformer backbones computing attention maps,
    ``attn_implementation="eager"``).
    """

    name = "fresh"
    requires = frozenset({"cls_attention"})

    def cell_importance(self, inputs: Inputs, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.adapter.cls_attention(inputs)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        self.adapter.validate(inputs)
        return self.explain_groups(inputs, 0).prediction


class FConversion(_OneGroupMethod):
    """The "-F" conversion of a post-hoc method: a post-hoc attribution made self-attributing.

    ``attribute_cells`` of the wrapped method (its attribution summed inside each cell, or
    each cell's score for methods whose features are cells) ranks the valid cells; the top
    ``max(1, floor(tau · n_valid))`` form one group; the frozen backbone predicts from that
    group alone (other cells zeroed / masked). The group depends on the explained target;
    :meth:`predict` explains the backbone's own predicted class.
    """

    def __init__(self, method: AttributionMethod, *, tau: float = 0.2, tie_seed: int | None = 0):
        if not isinstance(method, AttributionMethod):
            raise InputTypeError(f"FConversion wraps an AttributionMethod, got {type(method).__name__}")
        if method.grouped:
            raise InputError(f"method {method.name!r} is already self-attributing; '-F' applies to post-hoc methods")
        self.requires = method.requires
        super().__init__(method.adapter, tau=tau, tie_seed=tie_seed)
        self.method = method
        self.name = f"{method.name}-f"

    def cell_importance(self, inputs: Inputs, target: torch.Tensor) -> torch.Tensor:
        return self.method.attribute_cells(inputs, target)

    def inapplicable_metrics(self) -> dict[str, str]:
        return self.method.inapplicable_metrics()

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        self.adapter.validate(inputs)
        return self.explain_groups(inputs, self.adapter(inputs).argmax(-1)).prediction


class SOPMethod(AttributionMethod):
    """A :class:`~sumofparts.SumOfParts` model as an attribution method.

    ``attribute``: ``sop.explain(x, target).attributions`` (``Σ_i mask_i · w_i c_i y_i[t]``),
    repeated on every channel for images. ``explain_groups``: the G groups, their
    attributions ``w_i c_i y_i[t]`` and SOP's logits (which those attributions sum to).
    """

    name = "sop"
    grouped = True
    completeness = "base_value"  # Σ group attributions = f(x) − b
    multiplies_by_inputs = True

    def __init__(self, adapter: BackboneAdapter | None = None, *, model: nn.Module):
        from ..model import SumOfParts

        if not isinstance(model, SumOfParts):
            raise InputTypeError(f"the 'sop' method needs model= a SumOfParts, got {type(model).__name__}")
        super().__init__(adapter if adapter is not None else model.backbone)
        self.model = model

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            raise InputTypeError(f"SOPMethod.attribute got unexpected arguments {sorted(kwargs)}")
        attr = self.model.explain(inputs, target).attributions
        if isinstance(inputs, torch.Tensor):
            return attr.unsqueeze(1).expand(-1, inputs.shape[1], *attr.shape[1:]).contiguous()
        return attr

    def completeness_reference(self, empty_outputs: torch.Tensor) -> torch.Tensor:
        """SOP's attributions add up to ``f(x) − b``: the reference is the base value b."""
        return self.model.base_value.to(empty_outputs).expand_as(empty_outputs)

    def explain_groups(self, inputs: Inputs, target: Target) -> GroupedResult:
        t = self._prepare(inputs, target)
        expl = self.model.explain(inputs, t)
        G = expl.num_groups
        scores = expl.group_attributions.gather(2, t.view(-1, 1, 1).expand(-1, G, 1))[..., 0]
        return GroupedResult(masks=expl.masks, scores=scores, prediction=expl.logits, target=t)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            return self.model(inputs).logits
        finally:
            self.model.train(was)


# -------------------------------------------------------------------------------------------------
# BagNet
# -------------------------------------------------------------------------------------------------
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
    completeness = "output"  # the patch shares add up to the BagNet's own logit
    multiplies_by_inputs = True

    def __init__(self, adapter: BackboneAdapter, *, model: BagNetModel | None = None, train_data: Dataset | None = None,
                 steps: int = 500, width: int = 64, depth: int = 2, seed: int = 0, progress: bool = False):
        super().__init__(adapter)
        if model is None:
            if train_data is None:
                raise InputError("the 'bagnet' method needs model= a trained BagNetModel, or train_data= to train one")
            shape = adapter.input_shape
            model = BagNetModel(shape[0], adapter.num_outputs, tuple(shape[1:]), adapter.cell_grid, width=width,
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
