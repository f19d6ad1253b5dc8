"""``sop report TASK`` (the HTML report of a trained SOP) and ``sop case-study`` (cosmology: void and
cluster groups and their weight)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .arguments import NONNEGATIVE_INT, POSITIVE_INT, set_threads
from .paths import best_checkpoint, run_dir

__all__ = ["register"]


def _load(task_name: str, checkpoint: Path, size: str, seed: int, cache_dir: Path | None, progress: bool):
    from ..model import SumOfParts
    from ..tasks import default_cache_dir, get_task

    sop = SumOfParts.from_pretrained(checkpoint)
    task = get_task(task_name)
    data = task.load_data(cache_dir or default_cache_dir(), size=size, seed=seed, progress=progress)
    return sop, data


def _command(prefix: list[str], args: argparse.Namespace, flags: Sequence[tuple[str, str]]) -> str:
    parts = list(prefix)
    for flag, attr in flags:
        v = getattr(args, attr, None)
        if v is None or v is False:
            continue
        if v is True:
            parts.append(flag)
        elif isinstance(v, list):
            parts += [flag, *map(str, v)]
        else:
            parts += [flag, str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_report(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    from ..report.build import read_json_if_any, write_task_report

    directory = run_dir(args.task)
    checkpoint = args.checkpoint or best_checkpoint(args.task)
    out = args.out or directory / "report.html"
    results_dir = args.results or directory
    sop, data = _load(args.task, checkpoint, args.size, args.seed, args.cache_dir, not args.no_progress)
    results = read_json_if_any(Path(results_dir) / "results.json")
    ev = Path(results_dir) / "evaluation" / "evaluation.json"
    if not ev.is_file() and (Path(results_dir) / "evaluation.json").is_file():
        ev = Path(results_dir) / "evaluation.json"
    methods = None if args.methods is None else [m for m in args.methods if m.lower() != "none"]
    command = _command(["sop", "report", args.task], args,
                       [("--checkpoint", "checkpoint"), ("--out", "out"), ("--n", "n"), ("--methods", "methods"),
                        ("--results", "results"), ("--target", "target"), ("--figures", "figures"), ("--size", "size"),
                        ("--seed", "seed"), ("--cache-dir", "cache_dir")])
    path = write_task_report(args.task, sop, data, directory, results=results,
                             eval_tables=ev if ev.is_file() else None, methods=methods, n_examples=args.n,
                             target=args.target, path=out, seed=args.seed, command=command,
                             figures_dir=args.figures)
    print(f"report: {path}")
    return 0


def _cmd_case_study(args: argparse.Namespace) -> int:
    from ..report.case_study import run_case_study

    set_threads(args.threads)
    checkpoint = args.checkpoint or best_checkpoint(args.task)
    out = args.out or run_dir(args.task, "case_study")
    sop, data = _load(args.task, checkpoint, args.size, args.seed, args.cache_dir, not args.no_progress)
    if data.kind != "regression" or len(data.output_names) != 2:
        raise ConfigError(f"the case study needs the cosmology task (two regression outputs Omega_m, sigma_8); "
                         f"{args.task!r} is {data.kind} with outputs {data.output_names}")
    command = _command(["sop", "case-study"], args,
                       [("--task", "task"), ("--checkpoint", "checkpoint"), ("--out", "out"), ("--n", "n"),
                        ("--n-boot", "n_boot"), ("--cluster-sigma", "cluster_sigma"),
                        ("--high-sigma", "high_sigma"), ("--size", "size"), ("--seed", "seed"),
                        ("--cache-dir", "cache_dir")])
    res = run_case_study(sop, data, out, n=args.n, cluster_sigma=args.cluster_sigma, high_sigma=args.high_sigma,
                         n_boot=args.n_boot, seed=args.seed, command=command)
    print(res["verdict"]["summary"])
    print(f"written: {', '.join(res['paths'].values())}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sop report`` and ``sop case-study`` to the ``sop`` command."""
    p = subparsers.add_parser(
        "report", help="one self-contained HTML report of a trained SOP model (scores, tables, explorer)",
        description="Run a trained SOP model and post-hoc methods on the first N test items of TASK and write one "
                    "self-contained HTML file (images embedded, no network needed to open it).")
    p.add_argument("task", help="task name (see `sop tasks`)")
    p.add_argument("--checkpoint", type=Path, default=None, help="SOP checkpoint (default: sop-runs/TASK/sop/best)")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default: sop-runs/TASK/report.html)")
    p.add_argument("--n", type=POSITIVE_INT, default=8, help="test items in the explorer, the first N (default: %(default)s)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="post-hoc methods to show (registry names, e.g. intgrad gradcam lime; 'none' for none; "
                        "default: a fast set for the backbone)")
    p.add_argument("--results", type=Path, default=None,
                   help="directory with results.json and evaluation/evaluation.json (default: sop-runs/TASK)")
    p.add_argument("--target", type=NONNEGATIVE_INT, default=None,
                   help="output to explain (default: the predicted class; output 0 for regression)")
    p.add_argument("--figures", type=Path, default=None,
                   help="also save every figure (groups, attributions, methods, curves) as PNG + SVG in this folder")
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="data seed and methods' seed (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser(
        "case-study", help="cosmology: the share of SOP weight on voids and clusters, for Omega_m and sigma_8",
        description="Classify each SOP group of the test maps as void (mean convergence < 0), cluster (a pixel > "
                    "3 sigma of its map) or neither; report the share of weight per kind and output with bootstrap "
                    "intervals, histograms in 10 weight bins, a figure, and whether the blog's finding holds.")
    p.add_argument("--task", default="cosmology", help="task name (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None, help="SOP checkpoint (default: sop-runs/TASK/sop/best)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: sop-runs/TASK/case_study)")
    p.add_argument("--n", type=POSITIVE_INT, default=None, help="use the first N test maps (default: all)")
    p.add_argument("--n-boot", type=POSITIVE_INT, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--cluster-sigma", type=float, default=3.0, help="cluster threshold in map sigmas (default: 3)")
    p.add_argument("--high-sigma", type=float, default=5.0,
                   help="high-significance cluster threshold in map sigmas (default: 5)")
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="data seed and bootstrap seed (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_case_study)
