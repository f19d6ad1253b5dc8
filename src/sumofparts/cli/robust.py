"""``sop robust-finetune``: make a task's backbone robust to the partial inputs SOP shows it."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any
from .paths import run_dir

__all__ = ["register", "run_robust_finetune", "format_scores", "checkpoint_dir_for"]


def format_scores(before: dict[str, Any], after: dict[str, Any], output_names: list[str], kind: str) -> str:
    """A Markdown table: one row per (split, view), the score before and after."""
    if kind == "regression":
        head = ["split", "view", "MSE before", "MSE after"] + [f"R² {n} before" for n in output_names] + \
               [f"R² {n} after" for n in output_names]
    else:
        head = ["split", "view", "accuracy before", "accuracy after"]
    rows = []
    for split in before:
        for view in before[split]:
            b, a = before[split][view], after[split][view]
            if kind == "regression":
                rows.append([split, view, f"{b['mse']:.5f}", f"{a['mse']:.5f}"]
                            + [f"{v:.3f}" for v in b["r2_per_output"]] + [f"{v:.3f}" for v in a["r2_per_output"]])
            else:
                rows.append([split, view, f"{b['accuracy']:.4f}", f"{a['accuracy']:.4f}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def checkpoint_dir_for(out: Path) -> Path:
    """Where ``sop robust-finetune --out OUT`` keeps the state of an unfinished run: ``OUT`` without
    its suffix, plus ``.checkpoint`` (removed once OUT is written)."""
    return Path(out).with_suffix(".checkpoint")


def run_robust_finetune(task_name: str, *, source: str | None, out: Path, overrides: dict[str, Any],
                        cache_dir: Path | None = None, size: str = "default", seed: int = 0, progress: bool = True,
                        command: str = "", resume: bool = False, checkpoint_every: int = 0) -> dict[str, Any]:
    """Load the task's data and backbone (``source``: a weights file, or the task's own), fine-tune, save.

    The run's state is kept in :func:`checkpoint_dir_for` ``(out)`` while it runs (each epoch, and on
    Ctrl-C); ``resume`` continues from it, with the same ``source`` and recipe.
    """
    import shutil

    from ..io import atomic_write_text, read_json
    from ..training.robust import RobustConfig, robust_finetune
    from ..errors import ConfigError
    from ..tasks import available_tasks, default_cache_dir, get_task
    from ..tasks.base import Task

    task = get_task(task_name)
    if type(task).save_backbone is Task.save_backbone:  # before hours of training, not after
        able = [n for n in available_tasks() if type(get_task(n)).save_backbone is not Task.save_backbone]
        raise ConfigError(f"task {task_name!r} cannot save a fine-tuned backbone; tasks that can: {', '.join(able)}")
    cache_dir = Path(cache_dir or default_cache_dir())
    data = task.load_data(cache_dir, size=size, seed=seed, progress=progress)
    model = task.load_backbone(data, cache_dir, backbone=source, progress=progress)
    adapter = task.make_adapter(model)
    config = RobustConfig.from_dict({**task.robust_defaults, **overrides})
    out = Path(out)
    ckpt = checkpoint_dir_for(out)
    result = robust_finetune(adapter, data.train, data.val, config, task=data.kind, test=data.test,
                             trainable=task.robust_trainable(model), augment=task.augmentation(), progress=progress,
                             checkpoint_dir=ckpt, resume=resume, checkpoint_every=checkpoint_every)
    src_path = Path(source) if source and source.endswith(".safetensors") else None
    src_info = read_json(src_path.with_suffix(".json")) if src_path and src_path.with_suffix(".json").is_file() else {}
    record = {**{k: v for k, v in src_info.items() if k not in ("robust_finetune", "command", "source")},
              "robust_finetune": result.to_dict(), "command": command,
              "source": {"path": str(src_path) if src_path else None, "command": src_info.get("command")}}
    task.save_backbone(model, data, out, record)
    table = format_scores(result.before, result.after, data.output_names, data.kind)
    atomic_write_text(out.with_suffix(".md"), f"# Group-robust fine-tune of the {task_name} backbone\n\n"
                      f"Command: `{command}`  \nSource: {src_path or 'the task backbone'}; "
                      f"{result.seconds:.0f} s.\n\n{table}\n\nRecipe: `{json.dumps(config.to_dict())}`\n")
    shutil.rmtree(ckpt, ignore_errors=True)  # the weights are written: nothing is left to resume
    return {"table": table, "out": out, "result": result}


def _cmd(args: argparse.Namespace) -> int:
    import torch

    from .arguments import parse_overrides
    from ..training.robust import ROBUST_CONFIG_FIELDS

    if args.threads:
        torch.set_num_threads(args.threads)
    over = parse_overrides(args.set, ROBUST_CONFIG_FIELDS, "--set")
    if args.epochs is not None:
        over["epochs"] = args.epochs
    out = args.out or run_dir(args.task, "robust-backbone.safetensors")
    res = run_robust_finetune(args.task, source=args.backbone, out=out, overrides=over, cache_dir=args.cache_dir,
                              size=args.size, seed=args.seed, progress=not args.no_progress,
                              command="sop " + " ".join(shlex.quote(a) for a in args.argv if a != "--resume"),
                              resume=args.resume, checkpoint_every=args.checkpoint_every)
    print(res["table"])
    print(f"\nwrote {res['out']} (+ .json sidecar, .md summary); use it with --backbone {res['out']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .arguments import NONNEGATIVE_INT, POSITIVE_INT

    p = sub.add_parser("robust-finetune",
                       help="fine-tune a task's backbone on random groups of cells (robust to SOP's masking)")
    p.add_argument("task", help="task name (see `sop tasks`)")
    p.add_argument("--backbone", default=None,
                   help="the backbone to start from: a weights file (.safetensors with its .json sidecar) "
                        "or the task's own name for one (default: the task's default backbone)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file to write (default: sop-runs/TASK/robust-backbone.safetensors)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=None, help="epochs (default: the task's)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override RobustConfig fields, e.g. lr=1e-4")
    p.add_argument("--size", default="default")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="data split seed (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run with the same --backbone, --out and recipe (its state is kept "
                        "in OUT's name with the suffix .checkpoint until OUT is written)")
    p.add_argument("--checkpoint-every", type=NONNEGATIVE_INT, default=0,
                   help="save the run's state every N steps (default 0: once per epoch, and on Ctrl-C)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd)


if __name__ == "__main__":  # pragma: no cover
    from .main import main

    sys.exit(main(["robust-finetune", *sys.argv[1:]]))
