"""The CosmoGrid CNN (the authors' ``massmaps-conv`` shape) and its training loop.

Architecture (input ``(B, 1, 66, 66)``, output ``(B, 2)`` = (Omega_m, sigma_8))::

    conv1  Conv2d(1→16, k=4)   act1 LeakyReLU  pool1 MaxPool2d(2)    66 → 63 → 31
    conv2  Conv2d(16→32, k=4)  act2 LeakyReLU  pool2 MaxPool2d(2)    31 → 28 → 14   (SOP cells: 14×14)
    conv3  Conv2d(32→48, k=4)  act3 LeakyReLU  pool3 MaxPool2d(2)    14 → 11 → 5
    torch.flatten                                                       48·5·5 = 1200
    fc1 Linear(1200→128) act4, fc2 Linear(128→64) act5, fc3 Linear(64→32) act6
    head Linear(32→2)

Every layer is its own named module (no module is used twice), the flatten is a
``torch.flatten`` call (Captum's LRP has no rule for ``nn.Flatten``), the 14×14
feature map is the output of ``pool2`` and the last linear layer is ``head``, so
the SOP adapter is ``CNNAdapter(model, feature_layer="pool2", classifier="head",
grid=(14, 14))``. The authors' checkpoint uses the same names except ``fc4`` for
``head`` (see :data:`AUTHORS_KEY_MAP`).

Training (:func:`train_cnn`): AdamW on the MSE of *standardised* targets (each
parameter scaled by the training mean and std, so that sigma_8's larger range
does not dominate), random rotations/flips of the maps (the fields are
statistically isotropic), cosine learning rate, early stopping on the validation
MSE with the best checkpoint kept. At the end the standardisation is folded into
``head`` (``W ← diag(std)·W``, ``b ← std·b + mean``), so the model outputs the
parameters on their physical scale, as the authors' model does.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..adapters.registry import register_backbone
from ..validation import Field
from ..errors import InputError
from ..ops import seeded
from .trainer import fit_epochs

__all__ = [
    "CosmoCNN",
    "AUTHORS_KEY_MAP",
    "CNNTrainConfig",
    "train_cnn",
    "evaluate_regression",
    "predict",
    "count_parameters",
    "augment_d4",
]

#: authors' state-dict prefix → ours (layers not listed keep their name).
AUTHORS_KEY_MAP = {"fc4.": "head."}


@register_backbone("cosmology-cnn", {"num_outputs": Field(int, min=1, max=1024),
                                     "in_channels": Field(int, min=1, max=64)})
class CosmoCNN(nn.Module):
    """The CosmoGrid CNN: conv 16/32/48 (kernel 4), LeakyReLU, max-pool, FC 1200-128-64-32-2.

    Args:
        num_outputs: number of regressed parameters (2: Omega_m, sigma_8).
        in_channels: input channels (1: the convergence map).

    Shapes: ``forward(x: (B, 1, 66, 66)) -> (B, num_outputs)``.
    """

    input_size = 66
    input_shape = (1, 66, 66)
    feature_layer = "pool2"
    classifier = "head"
    grid = (14, 14)

    def __init__(self, num_outputs: int = 2, in_channels: int = 1):
        super().__init__()
        #: the constructor arguments (what CNNAdapter.spec records to rebuild the model)
        self.init_kwargs = {"num_outputs": num_outputs, "in_channels": in_channels}
        self.input_shape = (in_channels, self.input_size, self.input_size)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=4)
        self.act1 = nn.LeakyReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=4)
        self.act2 = nn.LeakyReLU()
        self.pool2 = nn.MaxPool2d(kernel_size=2)
        self.conv3 = nn.Conv2d(32, 48, kernel_size=4)
        self.act3 = nn.LeakyReLU()
        self.pool3 = nn.MaxPool2d(kernel_size=2)
        self.fc1 = nn.Linear(48 * 5 * 5, 128)
        self.act4 = nn.LeakyReLU()
        self.fc2 = nn.Linear(128, 64)
        self.act5 = nn.LeakyReLU()
        self.fc3 = nn.Linear(64, 32)
        self.act6 = nn.LeakyReLU()
        self.head = nn.Linear(32, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 14×14 feature map (output of ``pool2``): ``(B, 32, 14, 14)``."""
        x = self.pool1(self.act1(self.conv1(x)))
        return self.pool2(self.act2(self.conv2(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activation (input of ``head``): ``(B, 32)``."""
        x = self.features(x)
        x = self.pool3(self.act3(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = self.act4(self.fc1(x))
        x = self.act5(self.fc2(x))
        return self.act6(self.fc3(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.conv1.in_channels:
            raise InputError(f"CosmoCNN expects (B, {self.conv1.in_channels}, 66, 66) maps, "
                             f"got shape {tuple(x.shape)}")
        return self.head(self.embed(x))

    @classmethod
    def from_authors_state_dict(cls, state: dict[str, torch.Tensor]) -> "CosmoCNN":
        """Build from a state dict in the authors' naming (``conv1..conv3, fc1..fc4``)."""
        mapped = {}
        for key, value in state.items():
            for old, new in AUTHORS_KEY_MAP.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            mapped[key] = value
        if "head.weight" not in mapped:
            raise KeyError(f"not a massmaps-conv state dict: no fc4/head weight among {sorted(state)[:8]}...")
        model = cls(num_outputs=mapped["head.weight"].shape[0],
                    in_channels=mapped["conv1.weight"].shape[1])
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise KeyError(f"massmaps-conv weights do not fit CosmoCNN: missing {missing}, "
                           f"unexpected {unexpected}")
        return model


# --------------------------------------------------------------------------- training


@dataclass
class CNNTrainConfig:
    """Recipe of :func:`train_cnn` (all of it is recorded with the weights)."""

    seed: int = 0
    max_epochs: int = 30
    patience: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True
    eval_batch_size: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs (N,1,H,W), targets (N,T))`` of a dataset (fast path for ours)."""
    if hasattr(dataset, "inputs") and hasattr(dataset, "targets"):
        return dataset.inputs, dataset.targets
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Model outputs for ``inputs (N, 1, H, W)`` in eval mode: ``(N, T)``."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])
    model.train(was_training)
    return out


def evaluate_regression(model: nn.Module, dataset, batch_size: int = 512) -> dict[str, Any]:
    """MSE (mean over outputs, as the authors report it), MSE and R² per output."""
    inputs, targets = _tensors(dataset)
    pred = predict(model, inputs, batch_size).double()
    targets = targets.double()
    mse_per = ((pred - targets) ** 2).mean(0)
    var = targets.var(0, unbiased=False).clamp_min(1e-12)
    return {
        "mse": float(mse_per.mean()),
        "mse_per_output": mse_per.tolist(),
        "r2_per_output": (1 - mse_per / var).tolist(),
        "n": int(len(targets)),
    }


def augment_d4(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random element of the dihedral group D4 per map (rotation by k·90°, optional flip)."""
    code = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = torch.empty_like(x)
    for c in range(8):
        idx = (code == c).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        xc = x[idx]
        if c >= 4:
            xc = xc.flip(-1)
        out[idx] = torch.rot90(xc, c % 4, dims=(-2, -1))
    return out


def _fold_standardisation(model: CosmoCNN, mean: torch.Tensor, std: torch.Tensor) -> None:
    with torch.no_grad():
        model.head.weight.mul_(std[:, None])
        model.head.bias.mul_(std).add_(mean)


def train_cnn(train, val, config: CNNTrainConfig | None = None, *, progress: bool = True,
              model: CosmoCNN | None = None) -> tuple[CosmoCNN, dict[str, Any]]:
    """Train :class:`CosmoCNN` to regress the targets; return the best model (eval mode) and a log.

    Args:
        train, val: datasets of ``(map (1,H,W) float32, target (T,) float32)``.
        config: the recipe (:class:`CNNTrainConfig`).
        progress: show a tqdm bar over epochs.
        model: start from this model instead of a fresh one (seeded by ``config.seed``).

    Returns:
        ``(model, log)``: the model outputs targets on their own scale; ``log`` holds the
        recipe, the best epoch, the per-epoch losses and the validation metrics.
    """
    config = config or CNNTrainConfig()
    gen = torch.Generator().manual_seed(config.seed)
    x_train, y_train = _tensors(train)
    x_val, y_val = _tensors(val)
    mean = y_train.mean(0)
    std = y_train.std(0).clamp_min(1e-8)
    z_train = (y_train - mean) / std
    with seeded(config.seed):  # the initial weights (and any dropout) draw from torch's RNG
        if model is None:
            model = CosmoCNN(num_outputs=y_train.shape[1], in_channels=x_train.shape[1])
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = max(1, math.ceil(len(x_train) / config.batch_size))
        total = steps_per_epoch * config.max_epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) * 0.98 + 0.02)
        loss_fn = nn.MSELoss()

        def validate(m: nn.Module) -> dict[str, float]:
            pred_val = predict(m, x_val, config.eval_batch_size) * std + mean
            return {"val_mse": float(((pred_val - y_val) ** 2).mean())}

        fit = fit_epochs(model, x_train, z_train, loss=lambda m, xb, yb: loss_fn(m(xb), yb), optimizer=opt,
                         scheduler=sched, epochs=config.max_epochs, batch_size=config.batch_size, generator=gen,
                         augment=augment_d4 if config.augment else None, validate=validate, score="val_mse",
                         higher_is_better=False, patience=config.patience, progress=progress, desc="cosmology CNN",
                         per_step_bar=False)
    history = [{"epoch": h["epoch"] - 1, "train_loss_standardised": h["train_loss_per_example"],
                "val_mse": h["val_mse"]} for h in fit.history]
    _fold_standardisation(model, mean, std)
    model.eval()
    log = {
        "recipe": config.to_dict(),
        "epochs_run": len(history),
        "best_epoch": fit.best_epoch - 1,
        "train_seconds": round(fit.seconds, 1),
        "target_mean": mean.tolist(),
        "target_std": std.tolist(),
        "history": history,
        "val": evaluate_regression(model, val),
    }
    return model, log


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))

