"""``sop compare TASK --a SPEC [--b SPEC]``: layer-by-layer similarity of two models of a task.

    sop compare cosmology --a backbone --b /path/cosmology_cnn_seed1.safetensors      # two seeds
    sop compare cosmology --a backbone --b generator:sop-runs/cosmology/sop/best      # generator drift
    sop compare fashion --a /tmp/fashion_vit_before.safetensors --b backbone          # a fine-tune
    sop compare fashion --a backbone                                                  # within one model

Writes to ``--out`` (default ``sop-runs/TASK/compare``): ``compare.md``, ``compare.json``, one CSV
matrix per metric (``compare_<metric>.csv``), the heat maps (``compare_heatmaps.png/.svg``), the
same-layer curves (``compare_diagonal.png/.svg``, two models only) and a PCA of one layer
coloured by class or target (``pca.png/.svg``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..analysis.similarity import METRICS
from ..errors import InputError
from .paths import run_dir

__all__ = ["register"]


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..analysis.compare import run_compare
    import torch
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 3:
        raise InputError(f"--n must be at least 3, got {args.n}")
    out = args.out or run_dir(args.task, "compare")
    command = "sop " + " ".join(shlex.quote(x) for x in (getattr(args, "argv", None) or sys.argv[1:]))
    with threadpool_limits(args.threads or None):
        res = run_compare(args.task, args.a, args.b, out, n=args.n, metrics=args.metrics, layers_a=args.layers_a,
                          layers_b=args.layers_b, pca_layer=args.pca_layer, backbone=args.backbone, size=args.size,
                          seed=args.seed, cache_dir=args.cache_dir, batch_size=args.batch_size,
                          progress=not args.no_progress, command=command)
    comp = res["comparison"]
    diag = comp.diagonal()
    if diag and not comp.same_model:
        print(f"{comp.a} vs {comp.b}, {comp.n} inputs; same layer in both:")
        print(f"{'layer':24s} " + " ".join(f"{m:>10s}" for m in comp.metrics))
        for row in diag:
            print(f"{row['layer']:24s} " + " ".join(f"{row[m]:10.3f}" for m in comp.metrics))
    print(f"written: {out / 'compare.md'}, compare.json, compare_<metric>.csv, " + ", ".join(res["figures"]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sop compare`` to the ``sop`` command."""
    p = subparsers.add_parser(
        "compare", help="layer-by-layer similarity (CKA, CCA, SVCCA, PWCCA) and PCA of two models of a task",
        description="Read every layer of two models on the same test inputs of TASK and compare them layer by "
                    "layer (linear and RBF CKA, CCA, SVCCA, PWCCA), with heat maps and a PCA of one layer. A model "
                    "is 'backbone' (the task's trained backbone), a .safetensors weights file of the task's backbone "
                    "(a fine-tune, another seed), an SOP checkpoint directory (its frozen backbone) or "
                    "generator:DIR (the SOP generator's trainable encoder copy, layers named like the backbone's).")
    p.add_argument("task", help="task name (see `sop tasks`)")
    p.add_argument("--a", default="backbone", help="model A (default: %(default)s)")
    p.add_argument("--b", default=None, help="model B (default: A itself: every layer of A against every other)")
    p.add_argument("--layers-a", nargs="+", default=None, metavar="LAYER", help="layers of A (default: all named)")
    p.add_argument("--layers-b", nargs="+", default=None, metavar="LAYER", help="layers of B (default: all named)")
    p.add_argument("--metrics", nargs="+", default=None, choices=list(METRICS),
                   help="similarities to compute (default: all)")
    p.add_argument("--n", type=int, default=500, help="test inputs to read (default: %(default)s)")
    p.add_argument("--pca-layer", default=None, help="layer of the PCA figure (default: the last shared layer)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: sop-runs/TASK/compare)")
    p.add_argument("--backbone", default=None, help="which backbone of the task (e.g. vit | cnn for fashion)")
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache")
    p.add_argument("--threads", type=int, default=None, help="torch and BLAS threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_compare)
