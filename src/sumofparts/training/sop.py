"""Training a Sum-of-Parts model: frozen backbone, AdamW, warmup + cosine, best checkpoint, resume.

``sumofparts.train(sop, train_data, val_data, TrainConfig(...), out_dir)`` trains the
generator and selector (never the backbone) and writes::

    out_dir/
      best/   config.json, model.safetensors                  (best validation score)
      last/   config.json, model.safetensors, optimizer.safetensors, trainer_state.json
      history.json                                            (losses and validation scores)

Every directory and file is written atomically. ``resume=True`` continues from
``last/`` exactly where it stopped: the batch order is a function of (seed, epoch),
and the optimiser, scheduler and random-number states are restored, so an
interrupted run loses at most the steps since its last checkpoint (a Ctrl-C
writes one before stopping).

Persistence safeguards (the functions at the end of this module):

* a Ctrl-C (SIGINT) that lands inside a step's update (``opt.step()``, the scheduler,
  the step counter) is deferred to the end of the update, so the checkpoint written on
  the way out has the optimiser and the step counter from the same instant
  (:class:`_InterruptGuard`); if an interrupt escapes from inside the update anyway,
  the last written checkpoint is kept rather than overwritten with a torn state;
* the output directory is locked (:func:`~sumofparts.io.directory_lock`) and checked
  writable before anything runs;
* a resume whose saved configuration differs from the current one is refused, naming
  the differences, unless ``allow_config_change=True`` (:func:`_config_differences`);
  a checkpoint missing its optimiser or random-number state is refused clearly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from ..errors import ConfigError, InputError, ResumeError, SOPError
from ..io import (atomic_directory, atomic_write_json, directory_lock, load_tensors, read_json, recover_directory,
                 save_tensors)
from ..model import SOPConfig, SumOfParts
from ..model.sop import CONFIG_NAME, WEIGHTS_NAME
from ..ops import seeded
from ..validation import Field, check_fields, check_value, reject_unknown_keys

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate_model", "iterate_batches", "lr_factor",
           "TRAIN_CONFIG_FIELDS", "RESUME_INERT_FIELDS", "check_targets"]

log = logging.getLogger(__name__)

#: one row per TrainConfig field: its type and range (used for the API, JSON and ``--train-set``)
TRAIN_CONFIG_FIELDS: dict[str, Field] = {
    "steps": Field(int, min=1, max=10**9),
    "batch_size": Field(int, min=1, max=1_000_000),
    "lr": Field(float, gt=0, max=10),
    "weight_decay": Field(float, min=0, max=100),
    "warmup_steps": Field(int, min=0, max=10**9),
    "min_lr_ratio": Field(float, min=0, max=1),
    "eval_every": Field(int, min=1, max=10**9),
    "checkpoint_every": Field(int, min=0, max=10**9),
    "val_batches": Field(int, min=0, max=10**9),
    "distill_weight": Field(float, min=0, max=1e6),
    "max_grad_norm": Field(float, min=0, max=1e6),
    "seed": Field(int, min=0, max=2**63 - 1),
}

#: TrainConfig fields that may differ on ``resume`` without ``allow_config_change``: they change
#: neither the trained weights nor which checkpoint is the best (only how often ``last/`` is written).
RESUME_INERT_FIELDS = frozenset({"checkpoint_every"})


@dataclass
class TrainConfig:
    """Training hyper-parameters.

    Attributes:
        steps: optimiser steps in all.
        batch_size: inputs per step.
        lr / weight_decay: AdamW's.
        warmup_steps: linear warm-up, then cosine decay to ``min_lr_ratio · lr``.
        eval_every: validate (and maybe keep the best checkpoint) every N steps, and at the end.
        checkpoint_every: write ``last/`` every N steps (0: only at validations and the end).
        val_batches: validate on at most this many batches (0: the whole validation set).
        distill_weight: weight of a loss pulling SOP's output towards the backbone's own
            (KL for classification, MSE for regression); 0 (the paper) turns it off.
        max_grad_norm: gradient clipping (0: none).
        seed: seeds the parameters' fresh randomness, the batch order and dropout.
    """

    steps: int = 200
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    eval_every: int = 50
    checkpoint_every: int = 0
    val_batches: int = 0
    distill_weight: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), TRAIN_CONFIG_FIELDS[f.name]))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"expected a dict of TrainConfig fields, got {type(data).__name__}")
        reject_unknown_keys(data, {f.name for f in dataclasses.fields(cls)}, "TrainConfig")
        return cls(**data)


@dataclass
class TrainResult:
    best_step: int
    best_score: float
    metric: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_dir: Path | None = None
    seconds: float = 0.0


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def iterate_batches(dataset: Dataset, batch_size: int, *, seed: int | None, start_step: int = 0,
                    drop_last: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(step, batch)`` forever (seeded shuffling per epoch) or once in order (``seed=None``).

    The order of epoch e is ``randperm(n, seed + e)``, so starting at ``start_step``
    reproduces exactly the batches an uninterrupted run would have seen.
    """
    n = len(dataset)
    if n == 0:
        raise ConfigError("the dataset is empty")
    if seed is None:
        for s, i in enumerate(range(0, n, batch_size)):
            yield s, default_collate([dataset[j] for j in range(i, min(n, i + batch_size))])
        return
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if per_epoch == 0:
        raise ConfigError(f"the dataset has {n} items, fewer than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for b in range(offset, per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size].tolist()
            yield step, default_collate([dataset[j] for j in idx])
            step += 1


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _task_loss(logits: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    if task == "regression":
        return nn.functional.mse_loss(logits, target.to(logits.dtype).view_as(logits))
    return nn.functional.cross_entropy(logits, target.long())


@torch.no_grad()
def evaluate_model(predict: Callable[[Any], torch.Tensor], dataset: Dataset, *, task: str, batch_size: int = 32,
                   max_batches: int = 0, device: torch.device | str = "cpu", progress: bool = False,
                   desc: str = "eval") -> dict[str, Any]:
    """Score ``predict(inputs) -> (B, C)`` on a dataset, in order.

    Classification: ``accuracy``, ``error``, mean cross-entropy ``loss``. Regression: ``mse``
    (mean over items and outputs), ``mse_per_output`` and ``r2_per_output``
    (R² = 1 − SSE/SST of each output over the scored items, so a predictor of the items' mean
    scores 0), and ``loss``. Always ``n``, the number of items scored.
    """
    device = torch.device(device)
    n, loss_sum, correct = 0, 0.0, 0
    sse = sy = syy = None
    total = math.ceil(len(dataset) / batch_size)
    if max_batches:
        total = min(total, max_batches)
    for step, (x, y) in tqdm(iterate_batches(dataset, batch_size, seed=None), total=total, desc=desc,
                             disable=not progress, leave=False):
        if max_batches and step >= max_batches:
            break
        x, y = _to(x, device), _to(y, device)
        logits = predict(x)
        if step == 0:
            check_targets(y, logits, task)
        loss_sum += float(_task_loss(logits, y, task)) * len(y)
        if task == "regression":
            t = y.view_as(logits).double()
            err = ((logits.double() - t) ** 2).sum(0)
            sse = err if sse is None else sse + err
            sy = t.sum(0) if sy is None else sy + t.sum(0)
            syy = (t ** 2).sum(0) if syy is None else syy + (t ** 2).sum(0)
        else:
            correct += int((logits.argmax(-1) == y).sum())
        n += len(y)
    if task == "regression":
        sst = (syy - sy ** 2 / n).clamp_min(1e-12)
        return {"mse": float(sse.sum() / (n * len(sse))), "mse_per_output": (sse / n).tolist(),
                "r2_per_output": (1 - sse / sst).tolist(), "loss": loss_sum / n, "n": n}
    return {"accuracy": correct / n, "error": 1 - correct / n, "loss": loss_sum / n, "n": n}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimiser state dict into safetensors-ready tensors + JSON-ready groups."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"state.{pid}.{key}"] = t
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_checkpoint(directory: Path, sop: SumOfParts, opt: torch.optim.Optimizer | None,
                     state: dict[str, Any]) -> None:
    with atomic_directory(directory) as tmp:
        atomic_write_json(tmp / CONFIG_NAME, sop.config.to_file_dict())
        save_tensors(tmp / WEIGHTS_NAME, sop.state_dict(), metadata={"format": "sumofparts"})
        if opt is not None:
            tensors, meta = _optimizer_tensors(opt)
            rng = {"rng.torch": torch.get_rng_state()}
            save_tensors(tmp / "optimizer.safetensors", {**tensors, **rng})
            atomic_write_json(tmp / "trainer_state.json", {**state, "optimizer": meta})


def train(sop: SumOfParts, train_data: Dataset, val_data: Dataset, config: TrainConfig | None = None,
          out_dir: str | Path = "sop-run", *, resume: bool = False, progress: bool = True,
          device: str | torch.device = "cpu", on_step: Callable[[int, float], None] | None = None,
          amp: bool | None = None, allow_config_change: bool = False) -> TrainResult:
    """Train ``sop`` (generator + selector; the backbone stays frozen) and keep the best checkpoint.

    Args:
        sop: the model; its backbone's weights are not changed.
        train_data / val_data: datasets of ``(inputs, target)`` items.
        config: hyper-parameters (:class:`TrainConfig`).
        out_dir: where ``best/``, ``last/`` and ``history.json`` go.
        resume: continue from ``out_dir/last`` (raises if there is none, if it lacks its optimiser or
            random-number state, or if its configuration differs from this one).
        allow_config_change: with ``resume``, continue even though the SOP or training
            configuration differs from the saved one (the differences are logged); fields in
            :data:`RESUME_INERT_FIELDS` may always differ.
        progress: show a progress bar with the loss and the validation score.
        on_step: called with ``(step, loss)`` after each step (for tests and callbacks).
        amp: mixed precision (bfloat16 autocast); ``None``: on for CUDA devices, off on CPU.

    Distributed: when ``torch.distributed`` is initialised (e.g. under ``torchrun``), the
    model is wrapped in ``DistributedDataParallel`` and each of the W processes takes a
    1/W slice of every global batch of ``batch_size`` inputs (the same global batches as
    a single process with the same seed, so the runs agree up to floating-point
    reduction order). Only rank 0 writes checkpoints.

    Returns:
        :class:`TrainResult` with the best step and score; the best model is loaded into ``sop``.
    """
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"expected config as a TrainConfig, got {type(cfg).__name__}")
    out_dir = Path(out_dir)
    device = torch.device(device)
    task = sop.config.task
    metric, better = ("mse", lambda a, b: a < b) if task == "regression" else ("accuracy", lambda a, b: a > b)
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    is_main = rank == 0
    with contextlib.ExitStack() as stack:
        if is_main:  # before anything runs: a second run, or an unwritable directory, fails now
            stack.enter_context(directory_lock(out_dir, "an SOP training"))
        # dropout in the generator's encoder copy draws from torch's RNG: seeded here, the caller's RNG
        # state restored afterwards (a resumed run continues the saved RNG state instead)
        stack.enter_context(seeded(cfg.seed))
        return _train_locked(sop, train_data, val_data, cfg, out_dir, resume=resume, progress=progress and is_main,
                             device=device, on_step=on_step, amp=amp, allow_config_change=allow_config_change,
                             task=task, metric=metric, better=better, distributed=distributed, rank=rank,
                             world=world, is_main=is_main)


def _train_locked(sop: SumOfParts, train_data: Dataset, val_data: Dataset, cfg: TrainConfig, out_dir: Path, *,
                  resume: bool, progress: bool, device: torch.device, on_step: Callable[[int, float], None] | None,
                  amp: bool | None, allow_config_change: bool, task: str, metric: str, better: Callable,
                  distributed: bool, rank: int, world: int, is_main: bool) -> TrainResult:
    """The body of :func:`train`, run while the output directory is locked."""
    dist = torch.distributed
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    sop.to(device)
    params = sop.trainable_parameters()
    if not params:
        raise ConfigError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    backbone_before = {k: v.detach().clone() for k, v in sop.backbone.model.state_dict().items()} \
        if sum(p.numel() for p in sop.backbone.model.parameters()) < 5_000_000 else None

    start_step, best_score, best_step, history = 0, None, -1, []
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    if resume:
        saved = _read_resume_state(last_dir, sop, opt, cfg, allow_config_change)
        start_step, best_score, best_step, history = saved.step, saved.best_score, saved.best_step, saved.history
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s + start_step, cfg))
        torch.set_rng_state(saved.rng)  # inside train's seeded block: the caller's RNG is restored afterwards

    def state(step: int) -> dict[str, Any]:
        return {"step": step, "best_score": best_score, "best_step": best_step, "metric": metric,
                "history": history, "train_config": dataclasses.asdict(cfg)}

    def validate(step: int) -> float:
        nonlocal best_score, best_step
        sop.eval()
        scores = evaluate_model(lambda x: sop(x, validate=False).logits, val_data, task=task,
                                batch_size=cfg.batch_size, max_batches=cfg.val_batches, device=device)
        sop.train()
        score = scores[metric]
        history.append({"step": step, "val_" + metric: score, "val_loss": scores["loss"]})
        if best_score is None or better(score, best_score):
            if is_main:  # written before the state says so: an interrupt here leaves both consistent
                sop.save_pretrained(best_dir)
            best_score, best_step = score, step
        return score

    def checkpoint(step: int) -> None:
        if is_main:
            _save_checkpoint(last_dir, sop, opt, state(step))
        if distributed:
            dist.barrier()

    t0 = time.time()
    sop.train()
    net: nn.Module = sop
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            sop, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    local = slice(rank * (cfg.batch_size // world), (rank + 1) * (cfg.batch_size // world))
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train SOP", disable=not progress, dynamic_ncols=True)
    step = start_step
    running = None
    last_val = best_score
    batches = iterate_batches(train_data, cfg.batch_size, seed=cfg.seed, start_step=start_step)
    guard = _InterruptGuard()
    guard.install()
    try:
        while step < cfg.steps:
            _, (x, y) = next(batches)
            if distributed:
                x, y = sop.backbone.select(x, local), y[local]
            x, y = _to(x, device), _to(y, device)
            head = sop.config.training_head(step, cfg.steps)
            if step == start_step:
                sop.backbone.validate(x)  # before any pass, so bad input gets the adapter's message
            ref = z_x = None
            if cfg.distill_weight > 0 or sop.selector.uses_input:
                # one whole-input pass serves both the distillation target and the selector's input term
                with torch.no_grad():
                    ref, z_x = sop.backbone.forward_with_embedding(x)
                z_x = z_x if sop.selector.uses_input else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = net(x, head=head, validate=False, input_embedding=z_x)
                if step == start_step:
                    check_targets(y, out.logits, task)
                loss = _task_loss(out.logits.float(), y, task)
            if cfg.distill_weight > 0:
                assert ref is not None  # computed above
                if task == "regression":
                    loss = loss + cfg.distill_weight * nn.functional.mse_loss(out.logits, ref)
                else:
                    loss = loss + cfg.distill_weight * nn.functional.kl_div(
                        out.logits.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()} at step {step}; "
                                         "lower the learning rate or the scales")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            with guard.update():  # a SIGINT here is deferred until the three agree again
                opt.step()
                sched.step()
                step += 1
            lval = loss.item()
            running = lval if running is None else 0.9 * running + 0.1 * lval
            if on_step is not None:
                on_step(step, lval)
            if step % 10 == 0 or step == cfg.steps:
                history.append({"step": step, "train_loss": running, "lr": sched.get_last_lr()[0]})
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last_val = validate(step)
                checkpoint(step)
            elif cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint(step)
            post = {"loss": f"{running:.4f}"}
            if last_val is not None:
                post[f"val_{metric}"] = f"{last_val:.4f}"
            bar.set_postfix(post)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        if is_main and not guard.torn:
            _save_checkpoint(last_dir, sop, opt, state(step))
        elif is_main:
            log.warning("interrupted inside an optimiser update: the last checkpoint (%s) is kept as it was",
                        last_dir)
        raise
    finally:
        guard.uninstall()
    bar.close()
    if is_main:
        atomic_write_json(out_dir / "history.json", {"metric": metric, "best_step": best_step,
                                                     "best_score": best_score, "history": history,
                                                     "train_config": dataclasses.asdict(cfg),
                                                     "world_size": world})
    if distributed:
        dist.barrier()
    if backbone_before is not None:
        after = sop.backbone.model.state_dict()
        changed = [k for k, v in backbone_before.items() if not torch.equal(v, after[k])]
        if changed:
            raise RuntimeError(f"the backbone changed during training ({changed[:3]}): it must stay frozen")
    sop.load_weights(best_dir / WEIGHTS_NAME)
    sop.eval()
    return TrainResult(best_step=best_step, best_score=float(best_score), metric=metric, history=history,
                       best_dir=best_dir, seconds=time.time() - t0)


# --------------------------------------------------------------------------- targets


def check_targets(target: Any, logits: torch.Tensor, task: str) -> None:
    """Check a batch of targets against the model's output ``logits (B, C)``.

    Classification: integer class indices ``(B,)`` in ``[0, C)`` (a float such as 2.9 is
    refused, not truncated); regression: finite floats ``(B, C)`` (or ``(B,)`` when C = 1).
    """
    B, C = logits.shape
    if not isinstance(target, torch.Tensor):
        raise InputError(f"expected the targets as a tensor, got {type(target).__name__}")
    if task == "regression":
        if not target.is_floating_point():
            raise InputError(f"regression targets must be floating-point, got dtype {target.dtype}")
        if tuple(target.shape) not in ((B, C),) + (((B,),) if C == 1 else ()):
            raise InputError(f"expected regression targets of shape ({B}, {C}), got {tuple(target.shape)}")
        if not bool(torch.isfinite(target).all()):
            raise InputError("the regression targets contain NaN or infinite values")
        return
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InputError(f"classification targets must be integer class indices, got dtype {target.dtype} "
                         f"(e.g. {target.flatten()[:3].tolist()}); floats are not truncated to classes")
    if tuple(target.shape) != (B,):
        raise InputError(f"expected classification targets of shape ({B},), got {tuple(target.shape)}")
    if B and (int(target.min()) < 0 or int(target.max()) >= C):
        raise InputError(f"classification targets must lie in [0, {C}), got values in "
                         f"[{int(target.min())}, {int(target.max())}]")


# --------------------------------------------------------------------------- interrupts


class _InterruptGuard:
    """Defers SIGINT while a step's update runs, so that a checkpoint is never torn.

    ``opt.step()`` updates the parameters and the optimiser's moments one parameter at a
    time; the scheduler and the step counter follow. A KeyboardInterrupt between any two
    of these would save an optimiser one step ahead of the trainer (or half a step), and a
    resume would apply that step twice. Inside :meth:`update`, the SIGINT handler only
    records the signal; the KeyboardInterrupt is raised when the update is complete. If
    an exception escapes from inside the update anyway (another signal handler, a test),
    ``torn`` is set and :func:`train` keeps the last checkpoint instead of writing one.

    Only the main thread can install a signal handler; elsewhere the guard only tracks
    ``torn``. The previous handler is restored by :meth:`uninstall`.
    """

    def __init__(self) -> None:
        self.inside = False
        self.pending = False
        self.torn = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        except (ValueError, OSError):  # no signals here (e.g. an embedded interpreter)
            self._installed = False

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.inside:
            self.pending = True
            return
        self._forward(signum, frame)

    def _forward(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if previous is signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)  # the default handler raises KeyboardInterrupt
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def update(self) -> Iterator[None]:
        self.inside = True
        try:
            yield
        except BaseException:
            self.torn = True
            raise
        finally:
            self.inside = False
        if self.pending:
            self.pending = False
            self._forward(signal.SIGINT, None)


# --------------------------------------------------------------------------- resuming


@dataclass
class _ResumeState:
    step: int
    best_score: float | None
    best_step: int
    history: list[dict[str, Any]]
    rng: torch.Tensor


_TRAINER_STATE_FIELDS: dict[str, Field] = {
    "step": Field(int, min=0),
    "best_score": Field(float, optional=True),
    "best_step": Field(int, min=-1),
    "history": Field(list),
    "train_config": Field(dict),
    "optimizer": Field(dict),
    "metric": Field(str, required=False),
}


def _config_differences(saved_sop: dict[str, Any], sop: SOPConfig, saved_train: dict[str, Any],
                        cfg: TrainConfig) -> list[str]:
    """``name: saved -> now`` for every setting that differs between a saved run and this one.

    SOP config fields are compared as saved (the backbone spec as its adapter compares it:
    without version metadata, in the current layout); TrainConfig fields in
    :data:`RESUME_INERT_FIELDS` are ignored, and a field the saved run did not record is
    compared with its default.
    """
    from ..adapters import canonical_spec

    diffs = []
    now_sop = sop.to_dict()
    for name, value in now_sop.items():
        old = saved_sop.get(name)
        if name == "backbone":
            if canonical_spec(old) != canonical_spec(value):
                diffs.append("SOP backbone spec (the adapter or the backbone's configuration)")
        elif old != value:
            diffs.append(f"SOP {name}: {old!r} -> {value!r}")
    defaults = TrainConfig()
    for f in dataclasses.fields(cfg):
        if f.name in RESUME_INERT_FIELDS:
            continue
        old = saved_train.get(f.name, getattr(defaults, f.name))
        value = getattr(cfg, f.name)
        if old != value:
            diffs.append(f"train {f.name}: {old!r} -> {value!r}")
    return diffs


def open_checkpoint(last_dir: Path, names: tuple[str, ...]) -> None:
    """Make ``last_dir`` whole after a killed writer and check that it holds every file of ``names``
    (:class:`ResumeError` naming what is missing); shared by the SOP and the robust-fine-tune resumes."""
    recover_directory(last_dir)
    if not last_dir.is_dir():
        raise ResumeError(f"cannot resume: no checkpoint at {last_dir} (expected {', '.join(names)})")
    missing = [n for n in names if not (last_dir / n).is_file()]
    if missing:
        raise ResumeError(f"cannot resume: the checkpoint {last_dir} is incomplete, it lacks {', '.join(missing)} "
                          "(start again without resume, or restore the files)")


def pop_rng_state(tensors: dict[str, torch.Tensor], key: str, like: torch.Tensor, path: Path) -> torch.Tensor:
    """Remove and return the random-number state ``key`` of a checkpoint's tensors, refusing one that is
    missing or not shaped like ``like`` (this torch's state of the same generator)."""
    rng = tensors.pop(key, None)
    if rng is None:
        raise ResumeError(f"cannot resume: {path} has no random-number state ({key!r}); the checkpoint is "
                          "incomplete (start again without resume)")
    if rng.dtype != like.dtype or tuple(rng.shape) != tuple(like.shape):
        raise ResumeError(f"cannot resume: the random-number state {key!r} in {path} has shape {tuple(rng.shape)} "
                          f"and dtype {rng.dtype}, this torch's has {tuple(like.shape)} and {like.dtype}")
    return rng


def _read_resume_state(last_dir: Path, sop: SumOfParts, opt: torch.optim.Optimizer, cfg: TrainConfig,
                       allow_config_change: bool) -> _ResumeState:
    """Load ``last/`` into ``sop`` and ``opt`` after checking that it is complete and fits this run."""
    open_checkpoint(last_dir, ("trainer_state.json", "optimizer.safetensors", WEIGHTS_NAME, CONFIG_NAME))
    where = f"{last_dir / 'trainer_state.json'}: "
    st = check_fields(read_json(last_dir / "trainer_state.json"), _TRAINER_STATE_FIELDS, where=where, require=True,
                      allow_unknown=True)
    saved_sop = read_json(last_dir / CONFIG_NAME)
    if not isinstance(saved_sop, dict):
        raise ResumeError(f"cannot resume: {last_dir / CONFIG_NAME} is not a JSON object")
    diffs = _config_differences(saved_sop, sop.config, st["train_config"], cfg)
    if diffs and not allow_config_change:
        raise ResumeError(
            f"cannot resume {last_dir.parent}: this run's configuration differs from the interrupted run's: "
            + "; ".join(diffs) + ". Resume with the same settings, or allow the change explicitly "
            "(train(..., allow_config_change=True), `--allow-config-change`)")
    if diffs:
        log.warning("resuming %s with a changed configuration: %s", last_dir.parent, "; ".join(diffs))
    sop.load_weights(last_dir / WEIGHTS_NAME)
    tensors = load_tensors(last_dir / "optimizer.safetensors")
    rng = pop_rng_state(tensors, "rng.torch", torch.get_rng_state(), last_dir / "optimizer.safetensors")
    _load_optimizer_checked(opt, tensors, st["optimizer"], last_dir / "optimizer.safetensors")
    return _ResumeState(step=st["step"], best_score=st["best_score"], best_step=st["best_step"],
                        history=st["history"], rng=rng)


def _load_optimizer_checked(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                            path: Path) -> None:
    """Load the AdamW state after checking its names, groups and shapes against ``opt``'s parameters."""
    groups = meta.get("param_groups")
    own_groups = opt.param_groups
    if not isinstance(groups, list) or len(groups) != len(own_groups) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and len(g["params"]) == len(o["params"])
            for g, o in zip(groups, own_groups)):
        raise ResumeError(f"cannot resume: the optimiser state in {path} has no parameter groups matching this "
                          "model's trainable parameters (missing or other sizes)")
    params = [p for g in own_groups for p in g["params"]]
    if not tensors:
        raise ResumeError(f"cannot resume: {path} holds no optimiser state (the moments of AdamW)")
    for name, t in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise ResumeError(f"cannot resume: {path} has an unexpected tensor {name!r} "
                              f"(expected state.<0..{len(params) - 1}>.<key> and rng.torch)")
        p = params[int(parts[1])]
        if parts[2] in ("exp_avg", "exp_avg_sq") and (tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype):
            raise ResumeError(f"cannot resume: {path} tensor {name} has shape {tuple(t.shape)} and dtype {t.dtype}, "
                              f"the parameter has {tuple(p.shape)} and {p.dtype}")
    try:
        _load_optimizer(opt, tensors, {"param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        if isinstance(exc, SOPError):
            raise
        raise ResumeError(f"cannot resume: the optimiser state in {path} does not load ({exc})") from None
