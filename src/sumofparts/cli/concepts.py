"""``sop concepts TASK``: TCAV with the significance test on the task's own concepts.

    sop concepts cosmology                                        # the task's backbone
    sop concepts cosmology --checkpoint sop-runs/cosmology/sop/best   # + TCAV beside SOP's weights
    sop concepts fashion --weights /path/fashion_vit.safetensors --set-size 30
    sop concepts sentiment --layers bert.encoder.layer.5 bert.pooler

The concepts come from the task (:mod:`sumofparts.tasks.concepts`). With ``--checkpoint`` the
backbone is the SOP model's frozen backbone and, for concepts that name a kind of SOP group
(cosmology: void, cluster, high-significance cluster), the case study runs on the same model and
``tcav_vs_sop.md`` sets the two answers side by side. Writes to ``--out`` (default
``sop-runs/TASK/concepts``): ``concepts.md``, ``concepts.csv`` (every test), ``concepts.json``,
``concepts.png/.svg``, and with the join ``tcav_vs_sop.md/.json/.png/.svg`` and ``case_study/``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from .paths import run_dir

__all__ = ["register"]


def _cmd_concepts(args: argparse.Namespace) -> int:
    from ..analysis.concepts import run_concepts
    import torch
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or run_dir(args.task, "concepts")
    command = "sop " + " ".join(shlex.quote(x) for x in (getattr(args, "argv", None) or sys.argv[1:]))
    with threadpool_limits(args.threads or None):
        res = run_concepts(args.task, out, checkpoint=args.checkpoint, weights=args.weights, backbone=args.backbone,
                           layers=args.layers, n_random=args.n_random, set_size=args.set_size, n_probe=args.n_probe,
                           targets=args.targets, alpha=args.alpha, seed=args.seed, size=args.size,
                           cache_dir=args.cache_dir, batch_size=args.batch_size, case_study_n=args.case_study_n,
                           progress=not args.no_progress, command=command)
    result = res["result"]
    sig = result.significant()
    print(f"{len(sig)} of {len(result.tests)} tests significant (Holm-adjusted p < {result.alpha:g}, "
          f"{result.n_random} random concepts, sets of {result.set_size}):")
    for t in sig:
        print(f"  {t.concept:28s} {t.target_name:12s} {t.layer:24s} TCAV {t.mean:.3f} vs random {t.random_mean:.3f} "
              f"(p_holm {t.p_adjusted:.1e})")
    if res.get("tcav_vs_sop"):
        print("TCAV beside SOP:")
        for s in res["tcav_vs_sop"]["sentences"]:
            print("  " + s)
    print(f"written: {out / 'concepts.md'}, concepts.csv, concepts.json, concepts.png"
          + (", tcav_vs_sop.md, case_study/" if res.get("tcav_vs_sop") else ""))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sop concepts`` to the ``sop`` command."""
    p = subparsers.add_parser(
        "concepts", help="TCAV: is the backbone sensitive to the task's concepts (t-test against random concepts)?",
        description="Concept activation vectors of the task's own concepts (cosmology: voids and clusters; fashion: "
                    "stripes, silhouettes, halves; sentiment: negation and lexicon spans) at every layer, TCAV "
                    "scores on the test inputs, a two-sided Welch t-test against random concepts and the Holm "
                    "correction; only significant concepts are reported as findings. With --checkpoint, also TCAV "
                    "beside SOP's weights for the concepts that are kinds of SOP groups (cosmology).")
    p.add_argument("task", help="task name (see `sop tasks`)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="an SOP checkpoint: TCAV on its frozen backbone, and the TCAV-vs-SOP comparison")
    p.add_argument("--weights", default=None,
                   help="the backbone instead: 'backbone' (default), a .safetensors file of the task's backbone, or an "
                        "SOP checkpoint directory")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                   help="layers to test (default: the task's choice; see the adapter's named layers)")
    p.add_argument("--n-random", type=int, default=20, help="random concepts and counterparts (default: %(default)s)")
    p.add_argument("--set-size", type=int, default=50, help="examples per set of a CAV (default: %(default)s)")
    p.add_argument("--n-probe", type=int, default=None,
                   help="test inputs per output (class) for the scores (default: the task's, 100-200)")
    p.add_argument("--targets", type=int, nargs="+", default=None, help="outputs to test (default: all)")
    p.add_argument("--alpha", type=float, default=0.05, help="level after the Holm correction (default: %(default)s)")
    p.add_argument("--case-study-n", type=int, default=None, help="test maps of the case study (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: sop-runs/TASK/concepts)")
    p.add_argument("--backbone", default=None, help="which backbone of the task (e.g. vit | cnn for fashion)")
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data, concept and CAV seed (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache")
    p.add_argument("--threads", type=int, default=None, help="torch and BLAS threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_concepts)
