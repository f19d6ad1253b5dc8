"""The ``sop`` command: ``sop run``, ``sop train``, ``sop tasks``, ``sop explain`` (and subcommands of other modules)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from .arguments import NONNEGATIVE_INT, POSITIVE_INT, check_device, parse_overrides
from ..errors import ConfigError, SOPError

__all__ = ["main", "build_parser", "resolve_configs"]

#: modules that add subcommands with a ``register(subparsers)`` function
_PLUGINS = ["sumofparts.cli.theory", "sumofparts.cli.evaluate", "sumofparts.cli.report", "sumofparts.cli.robust"]
_PLUGINS += ["sumofparts.cli.segment"]
_PLUGINS += ["sumofparts.cli.compare"]
_PLUGINS += ["sumofparts.cli.concepts"]


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def resolve_configs(task_name: str, sop_set: Sequence[str] | None, train_set: Sequence[str] | None, *,
                    steps: int | None = None, seed: int = 0) -> tuple[dict[str, Any], Any]:
    """Check ``--set``/``--train-set``/``--steps`` before any work starts.

    Returns the SOP overrides (checked against :data:`~sumofparts.model.config.SOP_CONFIG_FIELDS`
    and combined with the task's defaults once, so that a bad combination fails now) and
    the :class:`~sumofparts.training.TrainConfig`.
    """
    from ..model.config import SOP_CONFIG_FIELDS, SOPConfig
    from ..tasks import get_task
    from ..training import TRAIN_CONFIG_FIELDS, TrainConfig

    task = get_task(task_name)
    sop_over = parse_overrides(sop_set, SOP_CONFIG_FIELDS, "--set", exclude=("backbone",))
    fields = {**task.sop_defaults, **sop_over}
    if fields.get("base_value") == "train_mean":  # resolved from the training data by build_sop
        fields.pop("base_value")
    SOPConfig.from_dict(fields)
    train_over = parse_overrides(train_set, TRAIN_CONFIG_FIELDS, "--train-set")
    if steps is not None:
        train_over["steps"] = steps
    return sop_over, TrainConfig.from_dict({**task.train_defaults, "seed": seed, **train_over})


def _check_out(out: Path) -> None:
    from ..io import check_writable

    check_writable(out)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0,
                   help="seed of SOP's initialisation and training batches (default: %(default)s)")
    p.add_argument("--data-seed", type=NONNEGATIVE_INT, default=0,
                   help="seed of the data (simulation, splits); the committed backbones were trained on "
                        "data seed 0, and another one can put their training items in the test split "
                        "(default: %(default)s)")
    p.add_argument("--backbone", default=None, help="which backbone of the task (e.g. vit | cnn for fashion)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache (default: $SOP_CACHE or "
                                                                "~/.cache/sumofparts)")
    p.add_argument("--steps", type=POSITIVE_INT, default=None, help="SOP training steps (default: the task's)")
    p.add_argument("--set", dest="sop_set", nargs="*", metavar="KEY=VALUE",
                   help="override SOP config fields, e.g. --set tau=0.2 num_groups=20")
    p.add_argument("--train-set", dest="train_set", nargs="*", metavar="KEY=VALUE",
                   help="override training fields, e.g. --train-set lr=1e-3 batch_size=32")
    p.add_argument("--resume", action="store_true", help="continue an interrupted SOP training in --out")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even though the configuration differs from the saved run's")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from ..tasks import available_tasks, get_task

    for name in available_tasks():
        print(f"{name:12s} {get_task(name).description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import run_task

    _threads(args.threads)
    sop_over, tcfg = resolve_configs(args.task, args.sop_set, args.train_set, steps=args.steps, seed=args.seed)
    train_over = dataclasses.asdict(tcfg)
    out = args.out or Path("sop-runs") / args.task
    _check_out(out)
    results = run_task(args.task, out, size=args.size, seed=args.seed, data_seed=args.data_seed,
                       backbone=args.backbone,
                       cache_dir=args.cache_dir, train_overrides=train_over, sop_overrides=sop_over,
                       resume=args.resume, progress=not args.no_progress,
                       command="sop " + " ".join(shlex.quote(a) for a in args.argv),
                       eval_n=args.eval_n, eval_methods=args.methods, report=not args.no_report,
                       allow_config_change=args.allow_config_change)
    print()
    print(results["table"])
    print(f"\nresults: {out / 'results.md'} (and results.json); SOP checkpoint: {out / 'sop' / 'best'}")
    for hook in results.get("after", []):
        print(hook)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..pipeline import build_sop
    from ..training import train

    _threads(args.threads)
    device = "cpu"
    if args.distributed:
        device = _init_distributed()
    elif args.device:
        device = check_device(args.device)
    sop_over, cfg = resolve_configs(args.task, args.sop_set, args.train_set, steps=args.steps, seed=args.seed)
    out = args.out or Path("sop-runs") / args.task / "sop"
    _check_out(out)
    sop, data = build_sop(args.task, cache_dir=args.cache_dir, size=args.size, seed=args.seed,
                          data_seed=args.data_seed,
                          backbone=args.backbone, sop_overrides=sop_over, progress=not args.no_progress)
    res = train(sop, data.train, data.val, cfg, out, resume=args.resume, progress=not args.no_progress,
                device=device, allow_config_change=args.allow_config_change)
    if args.distributed:
        import torch.distributed as dist

        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank:
            return 0
    print(f"best validation {res.metric} {res.best_score:.4f} at step {res.best_step}; checkpoint: {res.best_dir}")
    return 0


def _init_distributed() -> str:
    """Join the process group that ``torchrun`` describes in the environment; returns the device."""
    import os

    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("--distributed expects to be started by torchrun (RANK and WORLD_SIZE are not set): "
                         "torchrun --nproc_per_node N -m sumofparts.cli train --distributed ...")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    return "cpu"


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..model import SumOfParts
    from ..tasks import default_cache_dir, get_task

    _threads(args.threads)
    sop = SumOfParts.from_pretrained(args.checkpoint)
    task = get_task(args.task)
    data = task.load_data(args.cache_dir or default_cache_dir(), size=args.size, seed=args.seed,
                          progress=not args.no_progress)
    if not 0 <= args.index < len(data.test):
        raise ConfigError(f"--index must be in [0, {len(data.test)}), got {args.index}")
    x, y = data.test[args.index]
    batch = {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, dict) else x.unsqueeze(0)
    target = args.target
    if target is None and sop.config.task == "regression":
        target = 0
    expl = sop.explain(batch, target=target)
    t = int(expl.target[0])
    print(f"test item {args.index}: label {y.tolist()}, SOP output {expl.logits[0].tolist()}, "
          f"explaining output {t} ({data.output_names[t]})")
    print(f"{'group':>5} {'weight':>8} {'c':>7} {'logit':>8} {'share':>8} {'predicts':>12}  cells")
    for g in expl.groups(0, target=t):
        flag = "  (zero weight)" if g.zero_weight else ""
        print(f"{g.index:5d} {g.weight:8.4f} {g.scale:7.3f} {g.logit:8.3f} {g.attribution:8.3f} "
              f"{data.output_names[g.predicted]:>12}  {g.cells}{flag}")
    print(f"sum of shares = {float(expl.group_attributions[0, :, t].sum()):.6f} = output "
          f"{float(expl.logits[0, t]):.6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="sop", description="Sum-of-Parts models: faithful by construction.")
    parser.add_argument("--version", action="version", version=f"sumofparts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the main job: data, backbone, SOP training, evaluation, table")
    p.add_argument("task", nargs="?", default="cosmology", help="task name (default: %(default)s; see `sop tasks`)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: sop-runs/TASK)")
    p.add_argument("--eval-n", type=NONNEGATIVE_INT, default=None,
                   help="test items for the evaluation tables (0: skip the evaluation; default: the task's, "
                        "100 for most, 32 for sentiment)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="attribution methods to evaluate (default: a fast set for the task's backbone)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    _add_common(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train an SOP model on a task (frozen backbone)")
    p.add_argument("--task", default="cosmology", help="task name (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: sop-runs/TASK/sop)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training under torchrun (DDP; gloo on CPU, nccl on GPU)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu)")
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("explain", help="list the groups of a trained SOP model for one test item")
    p.add_argument("checkpoint", type=Path, help="an SOP checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--task", required=True, help="the task the model was trained on")
    p.add_argument("--index", type=NONNEGATIVE_INT, default=0, help="test item (default: %(default)s)")
    p.add_argument("--target", type=NONNEGATIVE_INT, default=None,
                   help="output to explain (default: the predicted class)")
    p.add_argument("--size", default="default")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--threads", type=POSITIVE_INT, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("tasks", help="list the tasks")
    p.set_defaults(func=_cmd_tasks)

    for mod in _PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sop``. A user's mistake (any :class:`~sumofparts.errors.SOPError`: a bad option, a
    bad file, an unwritable directory) prints one line and returns 2; anything else is a bug
    and propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    except SOPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
