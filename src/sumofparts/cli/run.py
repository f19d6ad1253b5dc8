"""``sop run [TASK]``: the main job (data, backbone, SOP training, evaluation, report)."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

from .arguments import NONNEGATIVE_INT, add_run_options, check_out, resolve_configs, set_threads
from .paths import run_dir

__all__ = ["register"]


def _cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import run_task

    set_threads(args.threads)
    sop_over, tcfg = resolve_configs(args.task, args.sop_set, args.train_set, steps=args.steps, seed=args.seed)
    train_over = dataclasses.asdict(tcfg)
    out = args.out or run_dir(args.task)
    check_out(out)
    results = run_task(args.task, out, size=args.size, seed=args.seed, data_seed=args.data_seed,
                       backbone=args.backbone, cache_dir=args.cache_dir, train_overrides=train_over, sop_overrides=sop_over,
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sop run`` to the ``sop`` command."""
    p = sub.add_parser("run", help="the main job: data, backbone, SOP training, evaluation, table")
    p.add_argument("task", nargs="?", default="cosmology", help="task name (default: %(default)s; see `sop tasks`)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: sop-runs/TASK)")
    p.add_argument("--eval-n", type=NONNEGATIVE_INT, default=None,
                   help="test items for the evaluation tables (0: skip the evaluation; default: the task's, "
                        "100 for most, 32 for sentiment)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="attribution methods to evaluate (default: a fast set for the task's backbone)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    add_run_options(p)
    p.set_defaults(func=_cmd_run)
