"""The paper's two tables for a task: accuracy/purity and faithfulness (``sop evaluate``).

>>> tables = evaluate_task("synthetic", methods=["sop", "gradcam", "lime", "fresh"], n=100,
...                        out_dir="sop-runs/synthetic/evaluation")
>>> print(tables.markdown())

Every method runs on the first ``n`` test items, batch by batch; within a batch the backbone
passes that several methods or metrics need are computed once (:mod:`.passes`). Rows:

* **accuracy / purity** (SPEC §6, main table): the backbone; for regression the training mean;
  SOP; every grouped method (FRESH, BagNet, requested "-F" conversions) with its own prediction;
  and for each post-hoc method its "-F" form. Columns: error (classification), or MSE averaged
  over the outputs with each output's MSE and R² (regression); purity (coverage), true IoU, the
  authors' ascending-order purity; non-finite counts; n.
* **faithfulness** (SPEC §6, ImageNet table): SOP under the paper's protocol and under the
  top-k-cells protocol, FRESH/BagNet and every post-hoc method; fidelity, insertion, deletion,
  raw AUCs, the paper's normaliser, constant maps, forward passes per item.

Results go to ``out_dir`` as ``evaluation.md``, ``evaluation_accuracy.csv``,
``evaluation_faithfulness.csv`` and ``evaluation.json`` (seed, command, versions, settings,
mean curves, sparsity curves, seconds per method per item), each written atomically; the
per-item numbers of every batch go to ``out_dir/shards/`` (:mod:`.shards`), which makes the run
resumable (``resume=True``) and shardable over processes (``torch.distributed`` initialised,
e.g. by ``torchrun ... sop evaluate --distributed``: batch b runs on rank ``b mod world``).
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np
import torch

from ..errors import ConfigError, InputTypeError, MissingFileError, SOPError
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from ..io import content_hash
from ..model import SumOfParts
from ..tasks import TaskData, default_cache_dir, get_task
from ..tasks.base import train_target_mean
from .plan import DEFAULT_METHODS, PlanEntry, build_plan, default_methods, options_for_json, resolve_methods, sop_budget
from .passes import channels_last
from .runner import Batch, BatchResult, EvalSettings, evaluate_batch
from .shards import ShardStore, weights_hash
from .tables import EvalTables, build_tables, merge_values, write_tables

__all__ = ["EvalTables", "EvalSettings", "evaluate_task", "default_methods", "resolve_methods", "DEFAULT_METHODS",
           "PlanEntry", "training_target_mean"]


def _load(task: str | tuple[SumOfParts, TaskData], checkpoint: str | Path | None, size: str, seed: int,
          cache_dir: Path | None, progress: bool) -> tuple[str, SumOfParts, TaskData]:
    if isinstance(task, tuple):
        sop, data = task
        if not isinstance(sop, SumOfParts) or not isinstance(data, TaskData):
            raise InputTypeError(f"expected task as a name or a (SumOfParts, TaskData) pair, got "
                            f"({type(sop).__name__}, {type(data).__name__})")
        return data.name, sop, data
    if not isinstance(task, str):
        raise InputTypeError(f"expected task as a name or a (SumOfParts, TaskData) pair, got {type(task).__name__}")
    spec = get_task(task)
    from ..cli.paths import best_checkpoint

    ckpt = Path(checkpoint) if checkpoint is not None else best_checkpoint(task)
    if not ckpt.is_dir():
        raise MissingFileError(f"no SOP checkpoint at {ckpt}: train one first with `sop run {task}` "
                                "(or pass --checkpoint DIR)")
    sop = SumOfParts.from_pretrained(ckpt)
    data = spec.load_data(Path(cache_dir or default_cache_dir()), size=size, seed=seed, progress=progress)
    return task, sop, data


def training_target_mean(data: TaskData) -> np.ndarray | None:
    """``(T,)``: the mean of the training targets (regression), the reference predictor of the tables."""
    if data.kind != "regression":
        return None
    return np.asarray(train_target_mean(data), dtype=np.float64)


def _jsonable(v: Any) -> Any:
    """A JSON stand-in for an option value (objects by their type's name)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return type(v).__name__


def _dist() -> tuple[Any, int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _barrier(dist) -> None:
    if dist is not None:
        dist.barrier()


def _own_model_options(names: list[str], options: dict[str, dict[str, Any]], sop: SumOfParts, data: TaskData,
                       store: ShardStore | None, seed: int, progress: bool, dist, rank: int) -> None:
    """Give each method that trains a model of its own (``trains_own_model``, e.g. BagNet) that model:
    trained once (by rank 0) on the training split, kept with the shards for resuming, and passed to
    the method as ``model=`` (its training options left out)."""
    from ..attribution import get_method, method_class

    for name in names:
        cls = method_class(name)
        if cls is None or not cls.trains_own_model or "model" in options.get(name, {}):
            continue
        opts = dict(options.get(name, {}))
        kept = {k: v for k, v in opts.items() if k not in cls.training_options}
        path = store.directory / f"{name}.safetensors" if store is not None else None
        if rank == 0 and (path is None or not path.is_file()):
            try:
                method = get_method(name, sop.backbone, train_data=data.train, progress=progress,
                                    **{"seed": seed, **opts})
            except (SOPError, NotImplementedError):
                _barrier(dist)
                continue  # the plan reports why the method is skipped
            if path is not None:
                method.save_own_model(path)
            options[name] = {**kept, "model": cast(Any, method).model}  # a method that trains its own model
            _barrier(dist)
            continue
        _barrier(dist)
        if path is not None and path.is_file():
            options[name] = {**kept, "model": cls.load_own_model(path)}


def _batch(data: TaskData, index: int, start: int, stop: int, device: torch.device) -> Batch:
    x, y = default_collate([data.test[j] for j in range(start, stop)])
    fg = data.test_foreground[start:stop].to(device) if data.test_foreground is not None else None
    x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
    return Batch(index=index, start=start, x=x, y=y.to(device), foreground=fg)


def evaluate_task(task: str | tuple[SumOfParts, TaskData], methods: Sequence[str] | None = None, n: int = 100,
                  seed: int = 0, out_dir: str | Path | None = None, progress: bool = True, *,
                  checkpoint: str | Path | None = None, size: str = "default", cache_dir: Path | None = None,
                  batch_size: int = 16, steps: int = 10, fraction: float = 0.2, tie_samples: int = 1,
                  n_boot: int = 1000, regression_target: int = 0, fidelity_max_classes: int = 20,
                  robustness: bool = False, method_options: dict[str, dict[str, Any]] | None = None,
                  resume: bool = False, device: str | torch.device | None = None,
                  command: str | None = None) -> EvalTables:
    """Run every method on the first ``n`` test items and compute the paper's two tables.

    Args:
        task: a task name (SOP is loaded from ``checkpoint``, default
            ``sop-runs/TASK/sop/best``; the data from the task with ``size`` and ``seed``), or
            a ``(sop, data)`` pair.
        methods: names for :func:`sumofparts.attribution.get_method` plus ``"sop"``;
            ``None``: :func:`default_methods`; ``["all"]``: every method.
        n: how many test items (the first n).
        seed: seeds the methods' sampling, the tie-break orders, the perturbations and the bootstrap.
        out_dir: where to write the tables and the shards (``None``: write nothing, keep all in memory).
        progress: show a progress bar naming the method and the items in work.
        batch_size: items per batch (and per shard).
        steps: insertion/deletion steps (k = 1/steps … 1).
        fraction: share of the cells the purity region and the "-F" conversions keep (0.2 in the paper).
        tie_samples: R, the seeded random orders tied cells are ranked in (curves, "-F", purity
            are averaged over them; a map without ties costs the same for any R).
        regression_target: the output followed by the curves and explained, for regression.
        fidelity_max_classes: fidelity needs one attribution per class; above this many classes it
            is left N/A for methods that are not grouped.
        robustness: also compute infidelity and max-sensitivity (image tasks), on every item.
        method_options: extra keyword options per method name for ``get_method``.
        resume: continue an interrupted run from the shards in ``out_dir/shards``.
        device: where to run (default: the model's device).
        command: the command line to record (default: ``sys.argv``).
    """
    t0, c0 = time.time(), time.process_time()
    task_name, sop, data = _load(task, checkpoint, size, seed, cache_dir, progress)
    dist, rank, world = _dist()
    if device is not None:
        sop.to(device)
    dev = sop.backbone.device
    sop.eval()
    kind = data.kind
    n = min(int(n), len(data.test))
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if int(tie_samples) < 1:
        raise ConfigError(f"tie_samples must be >= 1, got {tie_samples}")
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if kind == "regression" and not 0 <= int(regression_target) < data.num_outputs:
        raise ConfigError(f"regression_target must be in [0, {data.num_outputs}), got {regression_target}")
    settings = EvalSettings(kind=kind, steps=int(steps), fraction=float(fraction), tie_samples=int(tie_samples),
                            seed=int(seed), regression_target=int(regression_target),
                            fidelity_max_classes=int(fidelity_max_classes), robustness=bool(robustness))
    if world > 1 and out_dir is None:
        raise ConfigError("a distributed evaluation needs out_dir: the processes exchange their results as shards")
    names = resolve_methods(methods, sop.backbone)
    options = {k.lower(): dict(v) for k, v in (method_options or {}).items()}
    store = None
    if out_dir is not None:
        fingerprint = {"task": task_name, "n": n, "batch_size": int(batch_size), "methods": names,
                       "settings": dataclasses.asdict(settings), "sop": weights_hash(sop),
                       "data": data.meta.get("content_hash"), "size": size,
                       "options": content_hash({k: {o: _jsonable(x) for o, x in v.items()} for k, v in options.items()})}
        store = ShardStore(Path(out_dir) / "shards", fingerprint)
        if rank == 0:
            store.prepare(resume)
        _barrier(dist)
    _own_model_options(names, options, sop, data, store, seed, progress, dist, rank)
    notes: list[str] = []
    plan = build_plan(names, sop, kind, options, seed, fraction, notes)

    bounds = [(b, s, min(n, s + int(batch_size))) for b, s in enumerate(range(0, n, int(batch_size)))]
    mine = [bd for bd in bounds if bd[0] % world == rank]
    done = store.done() if store is not None else set()
    todo = [bd for bd in mine if bd[0] not in done]
    in_memory: dict[int, BatchResult] = {}
    bar = tqdm(total=len(todo) * len(plan), desc="evaluate", disable=not progress, dynamic_ncols=True)
    own_models = [e.method.model for e in plan.values() if e.role == "own"]
    with channels_last(sop, *own_models):
        try:
            for b, start, stop in todo:
                batch = _batch(data, b, start, stop, dev)

                def name(key: str, start=start, stop=stop) -> None:
                    bar.set_description(f"evaluate {key}: examples {start + 1}-{stop}/{n}")
                    bar.update(1)

                result = evaluate_batch(sop, plan, batch, settings, measure_passes=(b == 0), progress=name)
                if store is not None:
                    store.write(b, result)
                else:
                    in_memory[b] = result
        finally:
            bar.close()
    _barrier(dist)
    results = [in_memory[b] if store is None else store.read(b) for b, _, _ in bounds]
    tables = _tables(task_name, sop, data, plan, results, settings, notes, n=n, n_boot=n_boot, names=names,
                     options=options, size=size, checkpoint=checkpoint, batch_size=batch_size, world=world,
                     command=command, resumed=len(mine) - len(todo))
    tables.meta["seconds"] = time.time() - t0
    tables.meta["cpu_seconds_this_process"] = time.process_time() - c0
    if out_dir is not None and rank == 0:
        write_tables(tables, Path(out_dir))
    _barrier(dist)
    return tables


def _tables(task_name: str, sop: SumOfParts, data: TaskData, plan: dict[str, PlanEntry], results: list[BatchResult],
            settings: EvalSettings, notes: list[str], *, n: int, n_boot: int, names: list[str],
            options: dict[str, dict[str, Any]], size: str, checkpoint, batch_size: int, world: int,
            command: str | None, resumed: int) -> EvalTables:
    kind = data.kind
    values = merge_values([r.values for r in results])
    passes = results[0].passes if results else {}
    notes = list(notes)
    if data.test_foreground is None:
        notes.append("all rows: purity, IoU: the task has no ground-truth foreground")
    notes.append("backbone" + (" and training mean" if kind == "regression" else "") +
                 ": purity, IoU: no explanation")
    if kind == "regression":
        tgt = data.output_names[settings.regression_target]
        notes.append(f"regression insertion/deletion follow output {tgt}: with s = sign(f(x) − f(∅)), insertion = "
                     "Σ mean_k min(|f(x) − f(∅)|, s·(f(x_k) − f(∅))) / Σ |f(x) − f(∅)| and deletion = "
                     "Σ mean_k max(0, s·(f(x∖k) − f(∅))) / Σ |f(x) − f(∅)| over the items, cells ranked by s·score "
                     "(docs/evaluation.md); the paper reports none for regression")
        notes.append("regression fidelity: (f_t(x) − reference_t − Σ attributions_t)² for the explained output t; "
                     "\"-F\" regions are the top cells by the same oriented score")
    else:
        notes.append("insertion/deletion: mean over items of mean_k p_t(x_k) / p_t(x), p_t the probability of the "
                     "class predicted on the full input; 'paper' columns divide by the curve's own value at k = 1 "
                     "(SPEC §5): for deletion that is the empty input's probability")
    notes.append("SOP has two faithfulness rows: the paper's protocol re-makes its groups at τ = k and follows SOP's "
                 "own output (normalised by SOP's own confidence; its k = 1 point is the backbone); the top-k cells "
                 "row masks the input like every post-hoc row and follows SOP's output on the masked input")
    tables = build_tables(task_name, kind, values, plan, output_names=data.output_names,
                          train_mean=training_target_mean(data), steps=settings.steps, n_boot=n_boot,
                          seed=settings.seed, notes=notes, passes=passes,
                          has_foreground=data.test_foreground is not None,
                          regression_target=settings.regression_target,
                          empty_foreground=0 if data.test_foreground is None else
                          int((data.test_foreground[:n].reshape(n, -1).sum(1) == 0).sum()))
    seconds: dict[str, list[float]] = {}
    for r in results:
        for k, (wall, cpu) in r.seconds.items():
            acc = seconds.setdefault(k, [0.0, 0.0])
            acc[0] += wall
            acc[1] += cpu
    requested = sum(r.dedupe[0] for r in results)
    computed = sum(r.dedupe[1] for r in results)
    import captum

    from .. import __version__

    tables.meta = {
        "task": task_name, "kind": kind, "n": n, "seed": settings.seed, "steps": settings.steps,
        "fraction": settings.fraction, "tie_samples": settings.tie_samples, "n_boot": n_boot,
        "batch_size": int(batch_size), "methods": names, "output_names": list(data.output_names),
        "regression_target": settings.regression_target if kind == "regression" else None,
        "regression_target_name": data.output_names[settings.regression_target] if kind == "regression" else None,
        "budget": sop_budget(sop), "passes_per_item": passes, "method_options": options_for_json(plan),
        "settings": dataclasses.asdict(settings),
        "command": command or " ".join(sys.argv), "checkpoint": str(checkpoint) if checkpoint else None,
        "size": size, "sop_config": {k: v for k, v in sop.config.to_dict().items() if k != "backbone"},
        "versions": {"sumofparts": __version__, "torch": torch.__version__, "captum": captum.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "world_size": world, "batches_resumed": resumed, "threads": torch.get_num_threads(),
        "seconds_per_item": {k: v[0] / n for k, v in seconds.items()},
        "cpu_seconds_per_item": {k: v[1] / n for k, v in seconds.items()},
        "group_passes": {"requested": requested, "computed": computed},
    }
    return tables
