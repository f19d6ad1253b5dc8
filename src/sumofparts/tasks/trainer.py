"""The one supervised training loop of the tasks' backbones (and of the segmentation U-Net).

:func:`fit_epochs` runs epochs of shuffled mini-batches over in-memory tensors: per batch an
optional augmentation, the loss, ``zero_grad`` / ``backward`` / ``step`` of the optimiser and of
the scheduler (per step); per epoch an optional validation whose score picks the best epoch,
whose weights are loaded back at the end; optional early stopping after ``patience`` epochs
without improvement. The batch order and the augmentation draw from one ``torch.Generator``, so
a run is reproducible for a given seed (and thread count) and leaves torch's global RNG alone.

What stays outside it, and why (docs/development.md): SOP's own training
(:mod:`sumofparts.training.sop`: steps, not epochs; checkpoints, resume, DDP, interrupt safety),
the group-robust fine-tune (:mod:`sumofparts.training.robust`: random groups and a distillation
term per batch, scored before and after), the sentiment head (trained on cached hidden states of
the frozen lower layers, in batches of similar length) and BagNet's short fit (a fixed number of
steps over a ``DataLoader``, no validation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["FitResult", "fit_epochs", "warmup_cosine"]


@dataclass
class FitResult:
    """What :func:`fit_epochs` did.

    Attributes:
        history: one dict per epoch run: ``epoch`` (1-based), ``train_loss`` (mean over the
            epoch's batches), ``train_loss_per_example`` (mean over its examples), the
            validation's numbers, ``seconds`` and ``cpu_seconds`` since the start.
        best_epoch: the epoch whose weights were kept (1-based; the last one without validation).
        best_score: its validation score (``None`` without validation).
        seconds / cpu_seconds: wall-clock and process CPU time of the whole run.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """A learning-rate factor for ``LambdaLR``: ``(s + 1) / warmup`` for the first ``warmup_steps`` steps,
    then ``½(1 + cos(π (s − warmup) / (total − warmup)))``, from 1 down to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return factor


def fit_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer, epochs: int, batch_size: int, generator: torch.Generator,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               validate: Callable[[nn.Module], dict[str, float]] | None = None, score: str | None = None,
               higher_is_better: bool = True, patience: int | None = None, progress: bool = True,
               desc: str = "train", per_step_bar: bool = True) -> FitResult:
    """Train ``model`` on ``(x, y)`` for ``epochs`` epochs; the best validated weights are kept.

    Args:
        model: trained in place; put in train mode for each epoch and left in eval mode.
        x, y: the training inputs ``(n, ...)`` and targets ``(n, ...)``.
        loss: ``loss(model, x_batch, y_batch) -> scalar``.
        optimizer / scheduler: the optimiser and (optionally) a scheduler stepped after every step.
        epochs, batch_size: epoch ``e`` visits ``randperm(n, generator)`` in batches of ``batch_size``
            (the last one may be smaller).
        generator: the batch order and ``augment``'s draws.
        augment: ``augment(x_batch, generator) -> x_batch``, applied to each training batch.
        validate: ``validate(model) -> {name: value}`` after each epoch (model in train mode is
            switched to eval by the caller's function as it needs); ``score`` names the value
            that picks the best epoch (``higher_is_better``). Without ``validate`` the last
            epoch's weights are kept.
        patience: stop after this many epochs without a better score (``None``: never).
        progress / desc / per_step_bar: a tqdm bar over the steps (or over the epochs).
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if validate is not None and score is None:
        raise ConfigError("validate needs score=, the name of the value that picks the best epoch")
    n = len(x)
    steps_per_epoch = -(-n // batch_size)
    result = FitResult()
    best_state: dict[str, torch.Tensor] | None = None
    bad = 0
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=epochs * steps_per_epoch if per_step_bar else epochs, desc=desc, disable=not progress,
               leave=False, dynamic_ncols=True)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            per_batch = per_example = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb = x[idx] if augment is None else augment(x[idx], generator)
                value = loss(model, xb, y[idx])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                v = float(value.detach())
                per_batch += v
                per_example += v * len(idx)
                if per_step_bar:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{per_batch / (step + 1):.3f}")
            entry: dict[str, Any] = {"epoch": epoch, "train_loss": per_batch / steps_per_epoch,
                                     "train_loss_per_example": per_example / n}
            if validate is not None:
                entry.update(validate(model))
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            entry["cpu_seconds"] = round(time.process_time() - c0, 1)
            result.history.append(entry)
            if not per_step_bar:
                bar.update(1)
            if validate is None:
                result.best_epoch = epoch
                continue
            value_now = float(entry[score])  # type: ignore[index]
            better = result.best_score is None or (value_now > result.best_score if higher_is_better
                                                   else value_now < result.best_score)
            if better:
                result.best_score, result.best_epoch, bad = value_now, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            postfix: dict[str, Any] = {str(score): f"{value_now:.4f}", "best": f"{result.best_score:.4f}"}
            bar.set_postfix(epoch=epoch, **postfix)
            if patience is not None and bad >= patience:
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result
