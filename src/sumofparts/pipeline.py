"""The main job: data -> backbone -> SOP training -> evaluation -> result table.

``run_task("cosmology", out_dir)`` is what ``sop run`` calls. Each stage is cached or
checkpointed, so running it again reuses the data and the backbone, and an
interrupted SOP training resumes with ``resume=True``.
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .errors import ResumeError
from .io import atomic_write_json, atomic_write_text
from .model import SOPConfig, SumOfParts
from .ops import seeded
from .tasks import TaskData, default_cache_dir, get_task
from .tasks.base import train_target_mean
from .training import TrainConfig, evaluate_model, iterate_batches, train

__all__ = ["build_sop", "run_task", "sop_statistics", "format_table"]


def build_sop(task_name: str, *, cache_dir: Path | None = None, size: str = "default", seed: int = 0,
              backbone: str | None = None, sop_overrides: dict[str, Any] | None = None,
              progress: bool = True, data_seed: int = 0) -> tuple[SumOfParts, TaskData]:
    """The task's data and an untrained SOP model around its trained backbone.

    ``seed`` initialises SOP; ``data_seed`` chooses the data (simulation, splits). They are apart
    because the committed backbones were trained on the ``data_seed=0`` splits: another data seed
    can put the backbone's training items in the test split (fashion, sentiment) or change the
    simulated maps (cosmology)."""
    task = get_task(task_name)
    cache_dir = Path(cache_dir or default_cache_dir())
    data = task.load_data(cache_dir, size=size, seed=data_seed, progress=progress)
    model = task.load_backbone(data, cache_dir, backbone=backbone, progress=progress)
    adapter = task.make_adapter(model)
    fields = {**task.sop_defaults, **(sop_overrides or {})}
    if fields.get("base_value") == "train_mean":
        fields["base_value"] = train_target_mean(data)
    config = SOPConfig.from_dict(fields)
    with seeded(seed):  # the generator's initial weights
        sop = SumOfParts(adapter, config)
    return sop, data


@torch.no_grad()
def sop_statistics(sop: SumOfParts, dataset, *, batch_size: int = 32, max_batches: int = 0) -> dict[str, float]:
    """Properties of the explanations on a dataset: groups used, scales, exactness of the sum
    (``max_sum_gap``: the largest |logit − b − Σ group attributions|)."""
    sop.eval()
    used, scale, gap, n = 0.0, 0.0, 0.0, 0
    for step, (x, _) in iterate_batches(dataset, batch_size, seed=None):
        if max_batches and step >= max_batches:
            break
        out = sop(x, validate=False)
        pred = out.logits.argmax(-1) if sop.config.task == "classification" else torch.zeros(
            len(out.logits), dtype=torch.long)
        w = out.group_weights.gather(2, pred.view(-1, 1, 1).expand(-1, out.num_groups, 1)).squeeze(-1)
        used += float((w > 0).sum(1).float().sum())
        scale += float(out.scale.mean(1).sum())
        gap = max(gap, float((out.logits - out.base_value - out.group_attributions.sum(1)).abs().max()))
        n += len(out.logits)
    return {"groups_with_weight": used / n, "mean_scale": scale / n, "max_sum_gap": gap}


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) with the given ``columns``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(c, "–")) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _peak_memory_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_task(task_name: str, out_dir: str | Path, *, size: str = "default", seed: int = 0, data_seed: int = 0,
             backbone: str | None = None, cache_dir: Path | None = None, train_overrides: dict[str, Any] | None = None,
             sop_overrides: dict[str, Any] | None = None, resume: bool = False, progress: bool = True,
             command: str | None = None, eval_n: int | None = None, eval_methods: list[str] | None = None,
             report: bool = True, allow_config_change: bool = False) -> dict[str, Any]:
    """Prepare the data, load or train the backbone, train SOP, evaluate both, write the table.

    Writes ``out_dir/sop/`` (checkpoints), ``out_dir/results.json`` and ``out_dir/results.md``,
    the evaluation tables (``out_dir/evaluation/``, unless ``eval_n`` is 0) and the HTML report
    (unless ``report`` is False), and returns the results dict. ``allow_config_change``: with
    ``resume``, continue a run whose saved configuration differs (see :func:`~sumofparts.training.train`).
    ``resume`` also continues an interrupted evaluation from its shards (``out_dir/evaluation/shards``);
    shards of an evaluation with other settings are refused, or replaced with ``allow_config_change``.
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    task = get_task(task_name)
    sop, data = build_sop(task_name, cache_dir=cache_dir, size=size, seed=seed, backbone=backbone,
                          sop_overrides=sop_overrides, progress=progress, data_seed=data_seed)
    t_data = time.time() - t0
    tcfg = TrainConfig.from_dict({**task.train_defaults, "seed": seed, **(train_overrides or {})})
    result = train(sop, data.train, data.val, tcfg, out_dir / "sop", resume=resume, progress=progress,
                   allow_config_change=allow_config_change)
    kind = data.kind
    back = evaluate_model(lambda x: sop.backbone(x), data.test, task=kind, progress=progress,
                          desc="evaluate backbone")
    sop.eval()
    mine = evaluate_model(lambda x: sop(x, validate=False).logits, data.test, task=kind, progress=progress,
                          desc="evaluate SOP")
    stats = sop_statistics(sop, data.test)
    metric = "mse" if kind == "regression" else "error"
    sop_row = {"model": "SOP", metric: mine[metric], "n_test": mine["n"],
               "groups with weight": stats["groups_with_weight"], "mean c": stats["mean_scale"],
               "max gap (logit - b - Σ groups)": stats["max_sum_gap"]}
    rows = [{"model": f"backbone ({type(sop.backbone.model).__name__})", metric: back[metric], "n_test": back["n"]},
            sop_row]
    columns = ["model", metric, "n_test", "groups with weight", "mean c", "max gap (logit - b - Σ groups)"]
    if kind == "regression":
        mean = torch.tensor(train_target_mean(data))
        prior = evaluate_model(lambda x: mean.expand(sop.backbone.batch_size(x), -1), data.test, task=kind)
        rows.insert(0, {"model": "training-mean predictor", metric: prior[metric], "n_test": prior["n"]})
        for row, scores in zip(rows, (prior, back, mine)):
            for name, m, r2 in zip(data.output_names, scores["mse_per_output"], scores["r2_per_output"]):
                row[f"MSE {name}"], row[f"R² {name}"] = m, r2
        columns[2:2] = [f"{k} {n}" for n in data.output_names for k in ("MSE", "R²")]
        results_extra = {"mean_predictor": prior}
    else:
        results_extra = {}
    table = format_table(rows, columns)
    results = {
        "task": task_name, "size": size, "seed": seed, "data_seed": data_seed, "kind": kind, "metric": metric,
        "backbone": back, "sop": mine, "sop_statistics": stats, "rows": rows, **results_extra,
        "sop_config": {k: v for k, v in sop.config.to_dict().items() if k != "backbone"},
        "train_config": dataclasses.asdict(tcfg), "best_step": result.best_step,
        "best_val": result.best_score, "seconds": {"data_and_backbone": t_data, "train": result.seconds,
                                                   "total": time.time() - t0},
        "command": command or " ".join(sys.argv), "python": platform.python_version(),
        "torch": torch.__version__, "data_meta": data.meta,
    }
    command = results["command"]
    eval_n = task.eval_n if eval_n is None else eval_n
    if eval_n:
        from .evaluation import evaluate_task

        eval_kw = dict(methods=eval_methods, n=min(eval_n, len(data.test)), seed=seed,
                       out_dir=out_dir / "evaluation", progress=progress, command=command)
        try:  # an interrupted run also continues its evaluation from the shards it wrote
            tables = evaluate_task((sop, data), resume=resume, **eval_kw)
        except ResumeError:
            if not allow_config_change:
                raise
            tables = evaluate_task((sop, data), resume=False, **eval_kw)  # other settings: start it over
        results["evaluation"] = {"accuracy": tables.accuracy, "faithfulness": tables.faithfulness,
                                 "notes": tables.notes, "files": {k: str(v) for k, v in tables.paths.items()}}
        results.setdefault("after", []).append(tables.markdown())
    if report:
        from .report.build import write_task_report

        results["report"] = str(out_dir / "report.html")
        atomic_write_json(out_dir / "results.json", results)
        path = write_task_report(task_name, sop, data, out_dir, results=results)
        results["report"] = str(path)
        results.setdefault("after", []).append(f"report: {path} (open it in a browser)")
    results["seconds"]["total"] = time.time() - t0
    results["peak_memory_mib"] = _peak_memory_mib()
    atomic_write_json(out_dir / "results.json", results)
    md = (f"# {task_name}: backbone vs SOP\n\n{table}\n\n"
          f"Command: `{results['command']}`  \nSeed: {seed}; size: {size}; "
          f"total time {results['seconds']['total']:.0f} s; peak memory {results['peak_memory_mib']:.0f} MiB.\n")
    atomic_write_text(out_dir / "results.md", md)
    results["table"] = table
    return results
