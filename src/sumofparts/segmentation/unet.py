"""A small U-Net that segments Fashion-MNIST garments, trained here on the silhouettes.

The segmentation target of an image with label ``y`` is, per pixel::

    0        outside the silhouette (background)
    1 + y    inside it (the garment's class)

where the silhouette is the fashion task's ground-truth foreground: the non-zero pixels with
holes filled (:func:`sumofparts.tasks.fashion.foreground_masks`). 11 classes in all. Every
pixel of one image carries the same garment class, so the network has to *classify* the
silhouette (a global decision) as well as delineate it (a local one): that is what makes the
attribution of a segment more than "the pixels of the segment".

The model (:class:`SegmentationUNet`, channels ``(c1, c2, c3)``; 32×32 inputs)::

    enc1   conv3-ReLU-conv3-ReLU    1 -> c1      32×32
    pool1  max 2                                 16×16
    enc2   conv3-ReLU-conv3-ReLU   c1 -> c2      16×16
    pool2  max 2                                  8×8
    bottleneck  conv3-ReLU-conv3-ReLU  c2 -> c3   8×8
    context     global mean, 1×1 conv, ReLU (added to every bottleneck position)
    up2    transposed conv 2×2/2   c3 -> c2      16×16
    dec2   [up2, enc2] conv3-ReLU-conv3-ReLU 2c2 -> c2
    up1    transposed conv 2×2/2   c2 -> c1      32×32
    dec1   [up1, enc1] conv3-ReLU-conv3-ReLU 2c1 -> c1
    head   1×1 conv                c1 -> 11      logits (B, 11, 32, 32)

Every ReLU is its own, non-in-place ``nn.ReLU`` module (Guided Backprop replaces their
backward through module hooks, so a ReLU used twice or in place would break it).

The committed weights (``sumofparts/weights/fashion_unet.safetensors`` with a JSON sidecar
holding the configuration, the recipe, the measured test scores and the command) are made
by ``scripts/train_segmentation_unet.py``. Loading builds only :class:`SegmentationUNet`
from a checked configuration; nothing named in a file is imported or executed.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..io import atomic_write_json, load_tensors, read_json, save_tensors
from ..errors import InputError, MissingFileError
from ..ops import seeded
from ..tasks.trainer import fit_epochs, warmup_cosine

__all__ = ["SegmentationUNet", "UNetConfig", "TrainRecipe", "SegmentationScores", "segmentation_targets",
           "train_unet", "evaluate_segmentation", "save_unet", "load_unet", "committed_unet_path",
           "NUM_CLASSES", "BACKGROUND"]

#: background + the 10 Fashion-MNIST classes
NUM_CLASSES = 11
#: the class index of background pixels
BACKGROUND = 0


@dataclass(frozen=True)
class UNetConfig:
    """The U-Net's shape. ``channels``: widths of the 32×32, 16×16 and 8×8 levels."""

    channels: tuple[int, int, int] = (12, 24, 48)
    in_channels: int = 1
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        ch = tuple(self.channels)
        if len(ch) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 512 for c in ch):
            raise InputError(f"channels must be 3 ints in [1, 512], got {self.channels!r}")
        object.__setattr__(self, "channels", ch)
        for name in ("in_channels", "num_classes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1024:
                raise InputError(f"{name} must be an int in [1, 1024], got {v!r}")

    @classmethod
    def from_dict(cls, d: Any) -> "UNetConfig":
        if not isinstance(d, dict):
            raise InputError(f"expected the U-Net configuration as a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"channels", "in_channels", "num_classes"}
        if unknown:
            raise InputError(f"unknown U-Net configuration keys {sorted(unknown)}; expected channels, in_channels, "
                             "num_classes")
        ch = d.get("channels", cls.channels)
        if not isinstance(ch, (list, tuple)):
            raise InputError(f"channels must be a list of 3 ints, got {ch!r}")
        return cls(channels=tuple(ch), in_channels=d.get("in_channels", 1),
                   num_classes=d.get("num_classes", NUM_CLASSES))

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "in_channels": self.in_channels, "num_classes": self.num_classes}


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class SegmentationUNet(nn.Module):
    """``forward(x: (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``, H and W divisible by 4.

    See the module docs for the layers; their names (``enc1``, ``pool1``, ``enc2``,
    ``pool2``, ``bottleneck``, ``context``, ``up2``, ``dec2``, ``up1``, ``dec1``, ``head``)
    are what layer attribution methods take.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        c1, c2, c3 = self.config.channels
        self.enc1 = _double_conv(self.config.in_channels, c1)
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = _double_conv(c1, c2)
        self.pool2 = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(c2, c3)
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c3, c3, 1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = _double_conv(2 * c2, c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = _double_conv(2 * c1, c1)
        self.head = nn.Conv2d(c1, self.config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % 4 or x.shape[3] % 4:
            raise InputError(f"expected images of shape (B, {self.config.in_channels}, H, W) with H and W divisible "
                             f"by 4, got shape {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        b = self.bottleneck(self.pool2(e2))
        b = b + self.context(b)
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)

    def layer_names(self) -> list[str]:
        """The named modules a layer method may take, in forward order (``enc1.0`` ... ``head``)."""
        return [n for n, _ in self.named_modules() if n]


def segmentation_targets(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(n, 1, H, W)`` normalised images and ``(n,)`` labels -> ``(n, H, W)`` int64 targets.

    0 outside the silhouette, ``1 + label`` inside; the silhouette is
    :func:`sumofparts.tasks.fashion.foreground_masks` of the image (its background is exactly 0
    after the fashion task's normalisation, so ``x > 0`` is ``pixel > 0``).
    """
    from ..tasks.fashion import foreground_masks

    if images.ndim != 4 or images.shape[1] != 1:
        raise InputError(f"expected images of shape (n, 1, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise InputError(f"expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
    fg = torch.from_numpy(foreground_masks(images[:, 0].numpy()))
    return torch.where(fg, labels.view(-1, 1, 1).long() + 1, torch.zeros((), dtype=torch.long))


@dataclass(frozen=True)
class TrainRecipe:
    """AdamW with linear warm-up then cosine decay, per-pixel cross-entropy, best-validation checkpoint."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    seed: int = 0


@dataclass
class SegmentationScores:
    """Scores of a segmentation on a set of images.

    Attributes:
        pixel_accuracy: share of pixels whose class is right.
        mean_iou: mean over the classes present (in the truth or the prediction) of |P∩T|/|P∪T|.
        foreground_iou: IoU of "any garment class" vs the silhouette (class-agnostic).
        object_accuracy: share of images whose majority non-background predicted class is the label.
        per_class_iou: IoU of each class (NaN where the class is absent from both).
        n: number of images.
    """

    pixel_accuracy: float
    mean_iou: float
    foreground_iou: float
    object_accuracy: float
    per_class_iou: list[float] = field(default_factory=list)
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_class_iou"] = [None if math.isnan(v) else v for v in self.per_class_iou]
        return d


@torch.no_grad()
def predict_classes(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``(n, 1, H, W)`` -> ``(n, H, W)`` int64: the argmax class of each pixel."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def evaluate_segmentation(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                          batch_size: int = 500) -> SegmentationScores:
    """Pixel accuracy, mean IoU, foreground IoU and object accuracy of ``model`` on ``(images, targets)``."""
    pred = predict_classes(model, images, batch_size)
    C = int(getattr(getattr(model, "config", None), "num_classes", NUM_CLASSES))
    p, t = pred.reshape(-1), targets.reshape(-1)
    inter = torch.bincount(t[p == t], minlength=C).double()
    area_p = torch.bincount(p, minlength=C).double()
    area_t = torch.bincount(t, minlength=C).double()
    union = area_p + area_t - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))
    fg_p, fg_t = pred != BACKGROUND, targets != BACKGROUND
    fg_iou = float((fg_p & fg_t).sum()) / max(1, int((fg_p | fg_t).sum()))
    # each image's object class: the most frequent non-background predicted class
    counts = F.one_hot(pred.reshape(len(pred), -1), C).sum(1)[:, 1:]  # (n, C-1)
    obj = counts.argmax(1) + 1
    truth = targets.reshape(len(targets), -1).max(1).values  # the image's garment class (0 if none)
    return SegmentationScores(pixel_accuracy=float((p == t).double().mean()),
                              mean_iou=float(np.nanmean(iou.numpy())), foreground_iou=fg_iou,
                              object_accuracy=float((obj == truth).double().mean()),
                              per_class_iou=[float(v) for v in iou], n=int(len(images)))


def train_unet(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
               config: UNetConfig | None = None, recipe: TrainRecipe | None = None,
               progress: bool = True) -> tuple[SegmentationUNet, dict[str, Any]]:
    """Train a :class:`SegmentationUNet` from scratch; return ``(model in eval mode, record)``.

    ``train_x: (n, 1, H, W)`` float, ``train_y: (n, H, W)`` int64 (see
    :func:`segmentation_targets`); the same for validation. The weights with the best
    validation mean IoU (checked after every epoch) are kept. The initialisation and the batch
    order come from generators seeded with ``recipe.seed`` (the global RNG is left as it was).
    """
    config = config or UNetConfig()
    recipe = recipe or TrainRecipe()
    if recipe.epochs < 1 or recipe.batch_size < 1:
        raise InputError(f"epochs and batch_size must be >= 1, got {recipe.epochs} and {recipe.batch_size}")
    with seeded(recipe.seed):
        model = SegmentationUNet(config)
    gen = torch.Generator().manual_seed(recipe.seed)
    total = math.ceil(len(train_x) / recipe.batch_size) * recipe.epochs
    warmup = max(1, int(recipe.warmup_frac * total))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup))

    def validate(m: nn.Module) -> dict[str, float]:
        scores = evaluate_segmentation(m, val_x, val_y)
        return {"val_mean_iou": scores.mean_iou, "val_pixel_accuracy": scores.pixel_accuracy}

    fit = fit_epochs(model, train_x, train_y, loss=lambda m, x, y: F.cross_entropy(m(x), y), optimizer=opt,
                     scheduler=sched, epochs=recipe.epochs, batch_size=recipe.batch_size, generator=gen,
                     validate=validate, score="val_mean_iou", progress=progress, desc="U-Net")
    history = [{k: h[k] for k in ("epoch", "train_loss", "val_mean_iou", "val_pixel_accuracy", "seconds")}
               for h in fit.history]
    record = {"config": config.to_dict(), "recipe": asdict(recipe), "val_mean_iou": fit.best_score,
              "best_epoch": fit.best_epoch, "history": history, "train_seconds": round(fit.seconds, 1),
              "train_cpu_seconds": round(fit.cpu_seconds, 1), "torch_threads": torch.get_num_threads(),
              "num_parameters": sum(p.numel() for p in model.parameters())}
    return model, record


def committed_unet_path() -> Path:
    """``sumofparts/weights/fashion_unet.safetensors`` (its sidecar: the same name with ``.json``)."""
    return Path(__file__).resolve().parent.parent / "weights" / "fashion_unet.safetensors"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_unet(model: SegmentationUNet, record: dict[str, Any], path: str | Path) -> Path:
    """Write the weights (safetensors) and the sidecar ``path.with_suffix('.json')`` atomically."""
    path = Path(path)
    save_tensors(path, model.state_dict())
    info = {**record, "config": model.config.to_dict(), "weights_sha256": _sha256(path)}
    atomic_write_json(path.with_suffix(".json"), info)
    return path


def load_unet(path: str | Path | None = None) -> tuple[SegmentationUNet, dict[str, Any]]:
    """The U-Net stored at ``path`` (default: the committed one) in eval mode, frozen, and its sidecar.

    The sidecar's ``config`` is checked (known keys, ints in range) before anything is built;
    the weights must match the model's tensors exactly (names and shapes), and the file's
    SHA-256 the one the sidecar records.
    """
    path = Path(path) if path is not None else committed_unet_path()
    if path.suffix != ".safetensors":
        raise InputError(f"expected a .safetensors weights file, got {path}")
    if not path.is_file():
        raise MissingFileError(f"no U-Net weights at {path}: run scripts/train_segmentation_unet.py to make them")
    sidecar = path.with_suffix(".json")
    info = read_json(sidecar)
    if not isinstance(info, dict):
        raise InputError(f"{sidecar} must hold a JSON object, got {type(info).__name__}")
    recorded = info.get("weights_sha256")
    if recorded is not None and recorded != _sha256(path):
        raise InputError(f"{path} does not match its sidecar {sidecar} (SHA-256 differs): the files are from "
                         "different runs")
    model = SegmentationUNet(UNetConfig.from_dict(info.get("config", {})))
    state = load_tensors(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(f"{path} does not hold this U-Net's weights: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape) or state[k].dtype != own[k].dtype]
    if bad:
        raise InputError(f"{path}: tensors {bad[:5]} differ in shape or dtype from the configuration's model "
                         f"(e.g. {bad[0]}: {tuple(state[bad[0]].shape)} {state[bad[0]].dtype} vs "
                         f"{tuple(own[bad[0]].shape)} {own[bad[0]].dtype})")
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
