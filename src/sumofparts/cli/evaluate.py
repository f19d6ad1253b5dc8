"""``sop evaluate TASK``: the paper's accuracy/purity and faithfulness tables for a trained SOP model.

``torchrun --nproc_per_node N -m sumofparts.cli evaluate TASK --distributed`` splits the batches
over N processes (gloo on CPU, nccl on GPU); each writes its shards, rank 0 writes the tables.
``--resume`` continues an interrupted evaluation from its shards.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .arguments import NONNEGATIVE_INT, POSITIVE_INT, set_threads
from .paths import best_checkpoint, run_dir
from ..errors import ConfigError

__all__ = ["register"]


def _cmd_evaluate(args: argparse.Namespace) -> int:

    from ..evaluation import evaluate_task

    set_threads(args.threads)
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.tie_samples < 1:
        raise ConfigError(f"--tie-samples must be >= 1, got {args.tie_samples}")
    device = None
    if args.distributed:
        from .train import init_distributed

        device = init_distributed()
    checkpoint = args.checkpoint or best_checkpoint(args.task)
    out = args.out or run_dir(args.task, "evaluation")
    command = _command_line(args)
    rank = 0
    try:
        tables = evaluate_task(args.task, methods=args.methods, n=args.n, seed=args.seed, out_dir=out,
                               progress=not args.no_progress, checkpoint=checkpoint, size=args.size,
                               cache_dir=args.cache_dir, batch_size=args.batch_size, steps=args.steps,
                               tie_samples=args.tie_samples, robustness=args.robustness, resume=args.resume,
                               device=device, command=command)
    finally:
        if args.distributed:
            import torch.distributed as dist

            rank = dist.get_rank()
            dist.destroy_process_group()
    if rank:
        return 0  # the tables are printed once, by rank 0
    print()
    print(tables.markdown())
    print(f"written: {', '.join(str(p) for p in tables.paths.values())}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command as parsed (so it is right however ``sop`` was invoked: shell, ``main([...])``)."""
    parts = ["sop", "evaluate", args.task]
    if args.methods:
        parts += ["--methods", *args.methods]
    parts += ["--n", str(args.n), "--seed", str(args.seed)]
    for flag, value in (("--checkpoint", args.checkpoint), ("--out", args.out), ("--cache-dir", args.cache_dir)):
        if value is not None:
            parts += [flag, str(value)]
    if args.size != "default":
        parts += ["--size", args.size]
    if args.batch_size != 16:
        parts += ["--batch-size", str(args.batch_size)]
    if args.steps != 10:
        parts += ["--steps", str(args.steps)]
    if args.tie_samples != 1:
        parts += ["--tie-samples", str(args.tie_samples)]
    for flag, on in (("--robustness", args.robustness), ("--resume", args.resume),
                     ("--distributed", args.distributed)):
        if on:
            parts.append(flag)
    if args.threads:
        parts += ["--threads", str(args.threads)]
    return " ".join(shlex.quote(p) for p in parts)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sop evaluate`` to the ``sop`` command."""
    p = subparsers.add_parser(
        "evaluate", help="the accuracy/purity and faithfulness tables of a trained SOP model and the baselines",
        description="Run SOP and attribution methods on the first N test items of TASK and write the paper's two "
                    "tables (accuracy/purity; fidelity, insertion, deletion) as Markdown, CSV and JSON.")
    p.add_argument("task", help="task name (see `sop tasks`)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to evaluate (e.g. sop gradcam lime fresh; 'all' for every one; default: a fast "
                        "set per kind of input)")
    p.add_argument("--n", type=POSITIVE_INT, default=100, help="number of test items, the first N (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="SOP checkpoint directory (default: sop-runs/TASK/sop/best, as written by `sop run`)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: sop-runs/TASK/evaluation)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0,
                   help="seed of the data, the methods' sampling, the tie-break orders and the bootstrap "
                        "(default: %(default)s)")
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="items per batch and per shard (default: %(default)s)")
    p.add_argument("--steps", type=POSITIVE_INT, default=10, help="insertion/deletion steps (default: %(default)s)")
    p.add_argument("--tie-samples", type=POSITIVE_INT, default=1,
                   help="random orders tied cells are ranked in, averaged (default: %(default)s)")
    p.add_argument("--robustness", action="store_true",
                   help="also compute infidelity and max-sensitivity (image tasks, every item; slow)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation from its shards in "
                                                         "OUT/shards")
    p.add_argument("--distributed", action="store_true",
                   help="split the batches over the processes of torchrun (gloo on CPU, nccl on GPU)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_evaluate)
