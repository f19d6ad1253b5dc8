"""Group-robust fine-tuning: teach a backbone to predict from the partial inputs SOP shows it.

Every SOP group is the input with all but ⌊τN⌋ of its cells removed (zeroed pixels,
``[MASK]`` tokens, dropped ViT patches). A backbone trained on whole inputs only is biased on
such inputs (the *missingness bias* of Jain et al., ICLR 2022): the CosmoGrid-shaped CNN shown
20 % of a map predicts Omega_m 0.08 on average against a true mean of 0.30. A Sum-of-Parts
output ``b + Σ_i w_i c_i (y_i − b)`` cannot undo a bias that every group shares, so SOP inherits
it. :func:`robust_finetune` continues the backbone's training on random groups of cells of the
sizes SOP (and the "-F" baselines and the insertion/deletion curves) use, through the adapter's
own masking (so it works for every family), with a distillation term that keeps the
whole-input outputs close to the original model's.

One step, for a batch of B items ``(x, y)``:

* **masked views**: each item keeps ``ensemble_size`` (K) random groups of cells, drawn
  uniformly among the subsets of its valid cells of one size per step: ``⌊τ · n_valid⌋``
  (SOP's groups) with probability ``group_fraction``, else ``⌊f · n_valid⌋`` with
  ``f ~ U(keep_range)``; for a family with several masking modes (a ViT: zeroed pixels and
  dropped patches), the step's mode is drawn from ``modes``. Loss: the task loss of the mean
  of the K groups' outputs against the label ``y`` (K = 1: each group alone).
* **whole views**: the first ``⌈full_fraction · B⌉`` items are also shown whole. Loss: the task
  loss against ``y`` plus ``distill_weight`` times the distance of the output to the original
  (frozen copy of the) model's output on the same input: KL(p_orig ‖ p) for classification,
  the squared error for regression.

Why K > 1 for regression: trained on single groups with the squared error, the backbone learns
the conditional mean of the target given a fifth of the input, which is shrunk towards the prior
mean (a part of a map carries less evidence than the whole map). Every group is then shrunk the
same way, and a Sum-of-Parts output (a convex combination of the groups' predictions, times
scales c ≤ 1) can average the groups' noise away but not their common shrinkage: on the
cosmology task, the mean of 50 random groups' predictions reaches R² (0.71, 0.85) for
(Omega_m, sigma_8), no better than 20 groups. With the loss on the mean of K groups, each group
predicts something that is right *on average over groups* (nearly unbiased, not shrunk), which
is what a weighted sum of groups needs. For classification the scale of the logits does not
change the arg-max, and K = 1 is the default.

Regression losses are computed on targets standardised by the training targets' mean and
standard deviation, so that no target dominates. Before and after, the record holds the
whole-input score and the score on random groups of ⌊τN⌋ cells (the same seeded groups both
times) in each mode, on the validation set (and the test set when given).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..adapters.base import BackboneAdapter
from ..errors import ConfigError, InputError, ResumeError
from ..io import atomic_directory, atomic_write_json, directory_lock, load_tensors, read_json, save_tensors, weights_hash
from ..ops import cell_counts, random_cell_masks, top_cells
from .sop import (_InterruptGuard, _load_optimizer_checked, _optimizer_tensors, _to, evaluate_model, iterate_batches,
                  open_checkpoint, pop_rng_state)
from ..validation import Field, check_fields, check_value, reject_unknown_keys

__all__ = ["RobustConfig", "ROBUST_CONFIG_FIELDS", "RobustResult", "robust_finetune", "masked_predictor",
           "score_backbone"]


#: one row per RobustConfig field: its type and range (the API, ``--set`` of ``sop robust-finetune``)
ROBUST_CONFIG_FIELDS: dict[str, Field] = {
    "epochs": Field(int, min=1, max=100_000),
    "batch_size": Field(int, min=1, max=1_000_000),
    "lr": Field(float, gt=0, max=10),
    "weight_decay": Field(float, min=0, max=100),
    "warmup_frac": Field(float, min=0, max=1),
    "tau": Field(float, gt=0, max=1),
    "group_fraction": Field(float, min=0, max=1),
    "keep_range": Field(list, item=float, length=2, gt=0, max=1),
    "similar_fraction": Field(float, min=0, max=1),
    "full_fraction": Field(float, min=0, max=1),
    "distill_weight": Field(float, min=0, max=1e6),
    "ensemble_size": Field(int, min=1, max=4096),
    "eval_groups": Field(int, min=1, max=4096),
    "modes": Field(list, item=str, optional=True, max_length=8),
    "max_grad_norm": Field(float, min=0, max=1e6),
    "eval_items": Field(int, min=0, max=10**9),
    "seed": Field(int, min=0, max=2**63 - 1),
}


@dataclass
class RobustConfig:
    """Recipe of :func:`robust_finetune`.

    Attributes:
        epochs: passes over the training set.
        batch_size: items per step (each gives one masked view; some also a whole view).
        lr / weight_decay: AdamW's; linear warm-up over ``warmup_frac`` of the steps, then cosine to 0.
        tau: SOP's group size as a fraction of the valid cells.
        group_fraction: share of the steps whose groups hold exactly ⌊τ·n_valid⌋ cells.
        keep_range: the other steps keep ⌊f·n_valid⌋ cells, f ~ U(keep_range).
        similar_fraction: share of the steps whose groups are shaped like SOP's at its start
            rather than uniformly random: the cells most similar to a random query cell in the
            generator's view (the LayerNormed cell embeddings of the original backbone's encoder,
            the copy the generator starts from), as the generator's identity start proposes them.
        full_fraction: share of each batch also shown whole.
        distill_weight: weight of the whole-input distillation towards the original model.
        ensemble_size: K, groups per item whose *mean* output enters the masked loss.
        eval_groups: the scores before and after also include the mean of this many random
            groups (SOP's G), the best a uniform weighting of SOP's groups could do.
        modes: masking modes to train on (``None``: every mode of the adapter).
        max_grad_norm: gradient clipping (0: none).
        eval_items: items of each split scored before and after (0: all).
        seed: batch order, group draws and modes.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    tau: float = 0.2
    group_fraction: float = 0.5
    keep_range: tuple[float, float] = (0.1, 1.0)
    similar_fraction: float = 0.0
    full_fraction: float = 0.25
    distill_weight: float = 1.0
    ensemble_size: int = 1
    eval_groups: int = 20
    modes: tuple[str, ...] | None = None
    max_grad_norm: float = 1.0
    eval_items: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), ROBUST_CONFIG_FIELDS[f.name]))
        lo, hi = self.keep_range
        if not lo <= hi:
            raise ConfigError(f"keep_range must be [low, high] with low <= high, got {self.keep_range!r}")
        self.keep_range = (lo, hi)
        if self.modes is not None:
            self.modes = tuple(self.modes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RobustConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"expected a dict of RobustConfig fields, got {type(data).__name__}")
        reject_unknown_keys(data, ROBUST_CONFIG_FIELDS, "RobustConfig")
        return cls(**data)


@dataclass
class RobustResult:
    """What :func:`robust_finetune` returns (the adapter's model is fine-tuned in place)."""

    config: RobustConfig
    before: dict[str, dict[str, Any]]  #: split -> view ("whole", "groups/zero", ...) -> scores
    after: dict[str, dict[str, Any]]
    history: list[dict[str, float]] = field(default_factory=list)
    trained_parameters: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "before": self.before, "after": self.after,
                "history": self.history, "trained_parameters": self.trained_parameters,
                "seconds": round(self.seconds, 1)}


def masked_predictor(adapter: BackboneAdapter, tau: float, mode: str | None, seed: int,
                     groups: int = 1, shape_encoder: nn.Module | None = None) -> Callable[[Any], torch.Tensor]:
    """``predict(inputs) -> (B, C)``: the mean of the backbone's outputs on ``groups`` groups of
    ⌊τ·n_valid⌋ cells per input (one group: that group's output), uniformly random, or shaped
    like the generator's start when ``shape_encoder`` is given (:func:`similar_cell_masks`).

    The groups come from one generator seeded with ``seed``, so calling it on the same
    batches in the same order gives the same groups (before and after a fine-tune).
    """
    gen = torch.Generator().manual_seed(seed)

    def predict(inputs: Any) -> torch.Tensor:
        valid = adapter.valid_cells(inputs)
        counts = cell_counts(valid, tau, at_least_one=True)[:, None].expand(-1, groups)
        masks = (random_cell_masks(valid, counts, gen) if shape_encoder is None
                 else similar_cell_masks(shape_encoder, inputs, valid, counts, gen))
        return adapter.forward_groups(inputs, masks, mode=mode)[0].mean(1)

    return predict


def score_backbone(adapter: BackboneAdapter, dataset: Dataset, *, task: str, tau: float,
                   modes: Sequence[str], seed: int = 0, max_items: int = 0, batch_size: int = 128,
                   mean_of: int = 0, shape_encoder: nn.Module | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Whole-input and random-group scores of the backbone.

    Keys: ``"whole"``, ``"groups/<mode>"`` (one random group of ⌊τN⌋ cells per item), when
    ``mean_of`` > 1 ``"mean of <mean_of> groups/<mode>"``, and with ``shape_encoder``
    ``"similar groups/<mode>"`` (one group shaped like the generator's start). Each value is
    :func:`~sumofparts.training.evaluate_model`'s dict (accuracy/error, or MSE with per-target
    MSE and R²).
    """
    max_batches = math.ceil(max_items / batch_size) if max_items else 0
    out = {"whole": evaluate_model(lambda x: adapter(x), dataset, task=task, batch_size=batch_size,
                                   max_batches=max_batches, progress=progress, desc="score whole inputs")}
    for mode in modes:
        for k in (1, mean_of) if mean_of > 1 else (1,):
            name = f"groups/{mode}" if k == 1 else f"mean of {k} groups/{mode}"
            out[name] = evaluate_model(masked_predictor(adapter, tau, mode, seed, k), dataset, task=task,
                                       batch_size=batch_size, max_batches=max_batches, progress=progress,
                                       desc=f"score {name}")
        if shape_encoder is not None:
            out[f"similar groups/{mode}"] = evaluate_model(
                masked_predictor(adapter, tau, mode, seed, 1, shape_encoder), dataset, task=task,
                batch_size=batch_size, max_batches=max_batches, progress=progress, desc=f"score similar groups ({mode})")
    return out


@torch.no_grad()
def similar_cell_masks(encoder: nn.Module, inputs: Any, valid: torch.Tensor, counts: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Groups shaped like the generator's at its identity start: ``(B, K, N)`` bool.

    ``h = LayerNorm(encoder(inputs))`` ``(B, N, D)``; group k of input b is the ``counts[b, k]``
    valid cells j with the largest ``<h_q, h_j>`` for a query cell q drawn uniformly among the
    valid cells (q itself included), i.e. the cells most like q.
    """
    h = encoder(inputs)
    h = nn.functional.layer_norm(h, h.shape[-1:])
    B, N, _ = h.shape
    K = counts.shape[-1]
    query = torch.multinomial(valid.float().cpu(), K, replacement=True, generator=generator).to(h.device)  # (B, K)
    hq = torch.gather(h, 1, query.unsqueeze(-1).expand(B, K, h.shape[-1]))  # (B, K, D)
    sim = hq @ h.transpose(1, 2)  # (B, K, N)
    return top_cells(sim, valid[:, None, :], counts)


def _parameters(model: nn.Module, trainable: Sequence[str] | None) -> list[tuple[str, nn.Parameter]]:
    named = list(model.named_parameters())
    if trainable is None:
        return named
    wanted = set(trainable)
    unknown = sorted(wanted - {n for n, _ in named})
    if unknown:
        raise ConfigError(f"trainable names {unknown[:3]} are not parameters of the backbone "
                         f"(it has e.g. {', '.join(n for n, _ in named[:3])})")
    return [(n, p) for n, p in named if n in wanted]


def robust_finetune(adapter: BackboneAdapter, train: Dataset, val: Dataset, config: RobustConfig | None = None, *,
                    task: str = "classification", test: Dataset | None = None,
                    trainable: Sequence[str] | None = None,
                    augment: Callable[[Any, torch.Generator], Any] | None = None,
                    progress: bool = True, checkpoint_dir: str | Path | None = None, resume: bool = False,
                    checkpoint_every: int = 0) -> RobustResult:
    """Fine-tune ``adapter``'s backbone in place on random groups of cells (see the module docs).

    Args:
        adapter: the backbone's adapter (any family); its model is trained in place and frozen again.
        train / val: datasets of ``(inputs, target)`` items; ``test``: scored before and after too.
        config: the recipe (:class:`RobustConfig`).
        task: ``"classification"`` (cross-entropy, KL distillation) or ``"regression"`` (MSE).
        trainable: names of the backbone parameters to train (``None``: all of them), e.g. only
            the tensors a task commits.
        augment: ``augment(inputs, generator) -> inputs``, applied to each training batch before
            the views are made (e.g. the task's own augmentation: rotations of isotropic maps).
        progress: a progress bar over the steps.
        checkpoint_dir: where to keep the state of an unfinished run (``checkpoint_dir/last``,
            written atomically every ``checkpoint_every`` steps (0: once per epoch) and when the run
            is interrupted by Ctrl-C), so that ``resume=True`` continues it exactly: the same
            weights at the end as an uninterrupted run. The directory is locked while in use.
        resume: continue the run saved in ``checkpoint_dir``. The adapter must hold the *original*
            backbone (the distillation teacher and the group shapes come from it; checked by a hash
            of its weights), and the config and trained parameters must be the saved run's.

    Returns:
        :class:`RobustResult` with the scores before and after and the loss history.
    """
    cfg = config or RobustConfig()
    if task not in ("classification", "regression"):
        raise ConfigError(f"task must be 'classification' or 'regression', got {task!r}")
    if int(checkpoint_every) < 0:
        raise ConfigError(f"checkpoint_every must be >= 0 (0: once per epoch), got {checkpoint_every}")
    if checkpoint_dir is None and resume:
        raise ConfigError("resume=True needs the checkpoint_dir of the interrupted run")
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    lock = directory_lock(checkpoint_dir, "a robust fine-tune") if checkpoint_dir is not None else contextlib.nullcontext()
    with lock:
        return _robust_finetune(adapter, train, val, cfg, task=task, test=test, trainable=trainable, augment=augment,
                                progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
                                checkpoint_every=int(checkpoint_every))


def _robust_finetune(adapter: BackboneAdapter, train: Dataset, val: Dataset, cfg: RobustConfig, *, task: str,
                     test: Dataset | None, trainable: Sequence[str] | None,
                     augment: Callable[[Any, torch.Generator], Any] | None, progress: bool,
                     checkpoint_dir: Path | None, resume: bool, checkpoint_every: int) -> RobustResult:
    """The body of :func:`robust_finetune` (with its checkpoint directory locked, if any)."""
    modes = tuple(cfg.modes) if cfg.modes else tuple(adapter.masking_modes)
    for mode in modes:
        adapter.check_masking_mode(mode)
    splits = {"val": val, **({"test": test} if test is not None else {})}

    t0 = time.perf_counter()
    model = adapter.model
    teacher = copy.deepcopy(model).eval()
    shape_encoder = adapter.make_encoder().eval() if cfg.similar_fraction else None
    if shape_encoder is not None:
        for p in shape_encoder.parameters():
            p.requires_grad_(False)

    def scores() -> dict[str, dict[str, Any]]:
        return {name: score_backbone(adapter, ds, task=task, tau=cfg.tau, modes=modes, seed=cfg.seed + 1,
                                     max_items=cfg.eval_items, mean_of=cfg.eval_groups, shape_encoder=shape_encoder,
                                     progress=progress)
                for name, ds in splits.items()}

    last_dir = checkpoint_dir / "last" if checkpoint_dir is not None else None
    # the original backbone's hash (only a checkpointed run needs it): a resumed run must start from the same one
    source_hash = weights_hash(model) if last_dir is not None else ""
    saved = _read_robust_state(last_dir, cfg, source_hash) if resume and last_dir is not None else None
    before = saved["before"] if saved is not None else scores()
    for p in teacher.parameters():
        p.requires_grad_(False)
    named = _parameters(model, trainable)
    params = [p for _, p in named]
    if not params:
        raise ConfigError("nothing to train: the backbone has no (selected) parameters")
    for p in params:
        p.requires_grad_(True)

    if task == "regression":
        ys = torch.stack([torch.as_tensor(train[i][1], dtype=torch.float32) for i in range(len(train))])
        y_mean, y_std = ys.mean(0), ys.std(0).clamp_min(1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise InputError(f"the training set has {len(train)} items, fewer than one batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_frac * total))

    def lr_multiplier(s: int) -> float:  # linear warm-up, then cosine to 0
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier)
    start, running, history, elapsed = 0, None, [], 0.0
    if saved is not None:
        names = [n for n, _ in named]
        if saved["state"]["trained_parameters"] != names:
            raise ResumeError(f"cannot resume {checkpoint_dir}: the interrupted run trained other parameters "
                              f"({len(saved['state']['trained_parameters'])} named, this run {len(names)})")
        own = dict(named)
        for name, t in saved["weights"].items():
            if name not in own or tuple(t.shape) != tuple(own[name].shape) or t.dtype != own[name].dtype:
                raise ResumeError(f"cannot resume: {last_dir}/weights.safetensors tensor {name!r} does not fit the "
                                  "backbone's parameter of that name (missing, or another shape or dtype)")
        with torch.no_grad():
            for name, t in saved["weights"].items():
                own[name].copy_(t)
        _load_optimizer_checked(opt, saved["optimizer"], saved["state"]["optimizer"], last_dir / "optimizer.safetensors")
        start = saved["state"]["step"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s + start))
        gen.set_state(saved["generator"])
        running, history, elapsed = saved["state"]["running"], saved["state"]["history"], saved["state"]["seconds"]
    every = checkpoint_every or steps_per_epoch

    def save_state(step: int) -> None:
        assert last_dir is not None
        tensors, meta = _optimizer_tensors(opt)
        with atomic_directory(last_dir) as tmp:
            save_tensors(tmp / "weights.safetensors", {n: p.detach() for n, p in named})
            save_tensors(tmp / "optimizer.safetensors", {**tensors, "rng.torch": torch.get_rng_state(),
                                                         "rng.generator": gen.get_state()})
            atomic_write_json(tmp / "robust_state.json", {
                "step": step, "total": total, "running": running, "history": history, "before": before,
                "config": cfg.to_dict(), "source_weights": source_hash, "optimizer": meta,
                "trained_parameters": [n for n, _ in named], "seconds": elapsed + time.perf_counter() - t0})

    def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if task == "regression":
            return nn.functional.mse_loss((out - y_mean) / y_std, (y.to(out.dtype) - y_mean) / y_std)
        return nn.functional.cross_entropy(out, y.long())

    def distill_loss(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if task == "regression":
            return nn.functional.mse_loss(out / y_std, ref / y_std)
        return nn.functional.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")

    bar = tqdm(total=total, initial=start, desc="robust fine-tune", disable=not progress, dynamic_ncols=True)
    guard = _InterruptGuard()
    guard.install()
    step = start
    caller_rng = torch.get_rng_state()  # dropout draws from torch's RNG; the caller gets it back as it was
    try:
        if saved is not None:
            torch.set_rng_state(saved["rng"])  # dropout continues where it stopped
        model.train()
        batches = iterate_batches(train, cfg.batch_size, seed=cfg.seed, start_step=start)
        for step in range(start, total):
            _, (x, y) = next(batches)
            if augment is not None:
                x = augment(x, gen)
            x, y = _to(x, adapter.device), _to(y, adapter.device)
            valid = adapter.valid_cells(x)
            if float(torch.rand((), generator=gen)) < cfg.group_fraction:
                fraction = cfg.tau
            else:
                lo, hi = cfg.keep_range
                fraction = lo + (hi - lo) * float(torch.rand((), generator=gen))
            mode = modes[int(torch.randint(len(modes), (), generator=gen))]
            counts = cell_counts(valid, fraction, at_least_one=True)[:, None].expand(-1, cfg.ensemble_size)
            if cfg.similar_fraction and float(torch.rand((), generator=gen)) < cfg.similar_fraction:
                masks = similar_cell_masks(shape_encoder, x, valid, counts, gen)
            else:
                masks = random_cell_masks(valid, counts, gen)  # (B, K, N)
            masked_out = adapter.forward_groups(x, masks, mode=mode)[0].mean(1)  # mean over the K groups
            loss_masked = task_loss(masked_out, y)
            n_full = math.ceil(cfg.full_fraction * len(y))
            loss = loss_masked
            if n_full:
                xs = adapter.select(x, slice(0, n_full))
                whole = adapter(xs)
                with torch.no_grad():
                    ref = teacher(**xs) if isinstance(xs, dict) else teacher(xs)
                    ref = ref.logits if hasattr(ref, "logits") else ref
                loss = loss + task_loss(whole, y[:n_full]) + cfg.distill_weight * distill_loss(whole, ref)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the robust fine-tune loss became {loss.item()} at step {step}; "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            with guard.update():  # a Ctrl-C here waits until the step (and its record) is complete
                opt.step()
                sched.step()
                lval = float(loss.detach())
                running = lval if running is None else 0.95 * running + 0.05 * lval
                if (step + 1) % 20 == 0 or step + 1 == total:
                    history.append({"step": step + 1, "loss": running, "masked_loss": float(loss_masked.detach()),
                                    "lr": sched.get_last_lr()[0]})
                step += 1
            if last_dir is not None and step % every == 0 and step < total:
                save_state(step)
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", mode=mode, keep=f"{fraction:.2f}")
    except KeyboardInterrupt:
        if last_dir is not None and not guard.torn:
            save_state(step)  # the state after the last complete step
        raise
    finally:
        torch.set_rng_state(caller_rng)
        guard.uninstall()
        bar.close()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    after = scores()
    return RobustResult(config=cfg, before=before, after=after, history=history,
                        trained_parameters=[n for n, _ in named], seconds=elapsed + time.perf_counter() - t0)


#: the fields of ``robust_state.json`` (the JSON part of a robust fine-tune's checkpoint)
_ROBUST_STATE_FIELDS: dict[str, Field] = {
    "step": Field(int, min=0), "total": Field(int, min=1), "running": Field(float, optional=True),
    "history": Field(list), "before": Field(dict), "config": Field(dict), "source_weights": Field(str),
    "optimizer": Field(dict), "trained_parameters": Field(list, item=str), "seconds": Field(float, min=0),
}


def _read_robust_state(last_dir: Path, cfg: RobustConfig, source_hash: str) -> dict[str, Any]:
    """Read and check the state an interrupted :func:`robust_finetune` left in ``last_dir``."""
    open_checkpoint(last_dir, ("robust_state.json", "weights.safetensors", "optimizer.safetensors"))
    path = last_dir / "robust_state.json"
    try:
        state = check_fields(read_json(path), _ROBUST_STATE_FIELDS, where=f"{path}: ", require=True)
    except ConfigError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None
    own = cfg.to_dict()
    saved_cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["config"].items()}
    diffs = [f"{k}: {saved_cfg.get(k)!r} -> {v!r}" for k, v in own.items() if saved_cfg.get(k) != v]
    if diffs:
        raise ResumeError(f"cannot resume {last_dir.parent}: this run's recipe differs from the interrupted run's: "
                          + "; ".join(diffs) + ". Resume with the same settings, or start again without resume")
    if state["source_weights"] != source_hash:
        raise ResumeError(f"cannot resume {last_dir.parent}: the backbone given is not the one the interrupted run "
                          f"started from (weights hash {source_hash}, the run's {state['source_weights']}); pass the "
                          "original backbone, not a fine-tuned one")
    opt_path = last_dir / "optimizer.safetensors"
    tensors = load_tensors(opt_path)
    rng = pop_rng_state(tensors, "rng.torch", torch.get_rng_state(), opt_path)
    gen_state = pop_rng_state(tensors, "rng.generator", torch.Generator().get_state(), opt_path)
    return {"state": state, "before": state["before"], "weights": load_tensors(last_dir / "weights.safetensors"),
            "optimizer": tensors, "rng": rng, "generator": gen_state}
