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
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from .io import atomic_directory, atomic_write_json, load_tensors, read_json, save_tensors
from .model import SumOfParts
from .model.sop import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate_model", "iterate_batches", "lr_factor"]


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
        for name in ("steps", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.val_batches < 0:
            raise ValueError("warmup_steps, checkpoint_every and val_batches must be >= 0")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; expected some of {sorted(known)}")
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
        raise ValueError("the dataset is empty")
    if seed is None:
        for s, i in enumerate(range(0, n, batch_size)):
            yield s, default_collate([dataset[j] for j in range(i, min(n, i + batch_size))])
        return
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if per_epoch == 0:
        raise ValueError(f"the dataset has {n} items, fewer than one batch of {batch_size}")
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
        atomic_write_json(tmp / CONFIG_NAME, sop.config.to_dict())
        save_tensors(tmp / WEIGHTS_NAME, sop.state_dict(), metadata={"format": "sumofparts"})
        if opt is not None:
            tensors, meta = _optimizer_tensors(opt)
            rng = {"rng.torch": torch.get_rng_state()}
            save_tensors(tmp / "optimizer.safetensors", {**tensors, **rng})
            atomic_write_json(tmp / "trainer_state.json", {**state, "optimizer": meta})


def train(sop: SumOfParts, train_data: Dataset, val_data: Dataset, config: TrainConfig | None = None,
          out_dir: str | Path = "sop-run", *, resume: bool = False, progress: bool = True,
          device: str | torch.device = "cpu", on_step: Callable[[int, float], None] | None = None,
          amp: bool | None = None) -> TrainResult:
    """Train ``sop`` (generator + selector; the backbone stays frozen) and keep the best checkpoint.

    Args:
        sop: the model; its backbone's weights are not changed.
        train_data / val_data: datasets of ``(inputs, target)`` items.
        config: hyper-parameters (:class:`TrainConfig`).
        out_dir: where ``best/``, ``last/`` and ``history.json`` go.
        resume: continue from ``out_dir/last`` (raises if there is none).
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
    out_dir = Path(out_dir)
    device = torch.device(device)
    task = sop.config.task
    metric, better = ("mse", lambda a, b: a < b) if task == "regression" else ("accuracy", lambda a, b: a > b)
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    is_main = rank == 0
    progress = progress and is_main
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    sop.to(device)
    params = sop.trainable_parameters()
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    backbone_before = {k: v.detach().clone() for k, v in sop.backbone.model.state_dict().items()} \
        if sum(p.numel() for p in sop.backbone.model.parameters()) < 5_000_000 else None

    start_step, best_score, best_step, history = 0, None, -1, []
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    if resume:
        if not (last_dir / "trainer_state.json").is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {last_dir} (expected trainer_state.json)")
        sop.load_weights(last_dir / WEIGHTS_NAME)
        st = read_json(last_dir / "trainer_state.json")
        saved_cfg = st.get("train_config", {})
        if saved_cfg.get("seed") != cfg.seed or saved_cfg.get("batch_size") != cfg.batch_size:
            raise ValueError("cannot resume with a different seed or batch size than the interrupted run "
                             f"(it had seed={saved_cfg.get('seed')}, batch_size={saved_cfg.get('batch_size')})")
        opt_tensors = load_tensors(last_dir / "optimizer.safetensors")
        rng = opt_tensors.pop("rng.torch")
        _load_optimizer(opt, opt_tensors, st["optimizer"])
        start_step = int(st["step"])
        best_score, best_step, history = st.get("best_score"), st.get("best_step", -1), st.get("history", [])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s + start_step, cfg))
        torch.set_rng_state(rng)
    else:
        torch.manual_seed(cfg.seed)

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
            best_score, best_step = score, step
            if is_main:
                sop.save_pretrained(best_dir)
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
    K = sop.config.num_heads
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train SOP", disable=not progress, dynamic_ncols=True)
    step = start_step
    running = None
    last_val = best_score
    batches = iterate_batches(train_data, cfg.batch_size, seed=cfg.seed, start_step=start_step)
    try:
        while step < cfg.steps:
            _, (x, y) = next(batches)
            if distributed:
                x, y = sop.backbone.select(x, local), y[local]
            x, y = _to(x, device), _to(y, device)
            head = min(K - 1, step * K // cfg.steps) if sop.config.sequential_heads else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = net(x, head=head, validate=step == start_step)
                loss = _task_loss(out.logits.float(), y, task)
            if cfg.distill_weight > 0:
                with torch.no_grad():
                    ref = sop.backbone(x)
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
        if is_main:
            _save_checkpoint(last_dir, sop, opt, state(step))
        bar.close()
        raise
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
