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
from typing import Any, Sequence
from ..errors import InputError

__all__ = ["register", "run_concepts"]


def run_concepts(task_name: str, out_dir: Path, *, checkpoint: Path | None = None, weights: str | None = None,
                 backbone: str | None = None, layers: Sequence[str] | None = None, n_random: int = 20,
                 set_size: int = 50, n_probe: int | None = None, targets: Sequence[int] | None = None,
                 alpha: float = 0.05, seed: int = 0, size: str = "default", cache_dir: Path | None = None,
                 batch_size: int = 64, case_study_n: int | None = None, progress: bool = True,
                 command: str | None = None) -> dict[str, Any]:
    """Build the task's concepts, run TCAV on the chosen backbone, write the tables and figures,
    and (with an SOP ``checkpoint``) the TCAV-vs-SOP comparison. Returns the written dict."""
    from ..io import atomic_write_json, atomic_write_text
    from ..report.figures import save_figure
    from ..tasks import default_cache_dir, get_task
    from ..analysis.compare import resolve_model
    from ..analysis.tcav import TCAV
    from ..analysis.tcav_report import TCAV_COLUMNS, tcav_figure, tcav_markdown

    if checkpoint is not None and weights is not None:
        raise InputError("give either --checkpoint (an SOP model's backbone) or --weights, not both")
    task = get_task(task_name)
    cache_dir = Path(cache_dir or default_cache_dir())
    data = task.load_data(cache_dir, size=size, seed=seed, progress=progress)
    sop = None
    if checkpoint is not None:
        from ..model import SumOfParts

        sop = SumOfParts.from_pretrained(checkpoint)
        sop.eval()
        adapter, model_label = sop.backbone, f"the frozen backbone of the SOP checkpoint {checkpoint}"
    else:
        spec = weights or "backbone"
        if spec.startswith("generator:"):
            raise InputError("TCAV needs a model with outputs: the generator's encoder copy has none; use "
                             "--checkpoint DIR for the SOP model's backbone")
        view = resolve_model(spec, task, data, cache_dir, backbone=backbone)
        adapter, model_label = view.adapter, view.label
    options: dict[str, Any] = {"seed": seed, "pool_size": n_random * set_size, "random_size": 2 * n_random * set_size}
    if n_probe is not None:
        options["n_probe"] = n_probe
    sets = task.concept_sets(data, adapter, **options)
    tcav = TCAV(adapter, layers, n_random=n_random, set_size=set_size, alpha=alpha, seed=seed, batch_size=batch_size,
                progress=progress)
    result = tcav.interpret(sets, targets)
    out_dir = Path(out_dir)
    save_figure(tcav_figure(result, sets), out_dir / "concepts", close=True)
    from ..evaluation import _csv

    atomic_write_text(out_dir / "concepts.csv", _csv(result.rows(), TCAV_COLUMNS))
    written = result.to_dict() | {
        "task": task_name, "model": model_label, "command": command,
        "concepts": [{"name": c.name, "description": c.description, "size": c.size, "random_family": c.random_family,
                      "sop_kind": c.sop_kind} for c in sets.concepts],
        "random_pools": {f: {"description": p.description, "size": p.size} for f, p in sets.randoms.items()},
        "notes": sets.notes, "significant": result.rows(only_significant=True)}
    atomic_write_text(out_dir / "concepts.md", tcav_markdown(result, sets, title=f"TCAV: {task_name}",
                                                             model=model_label, command=command,
                                                             figure="concepts.png"))
    if sop is not None and any(c.sop_kind for c in sets.concepts):
        written["tcav_vs_sop"] = _join(sop, data, sets, result, out_dir, n=case_study_n, seed=seed, command=command)
    elif sop is not None:
        written["tcav_vs_sop"] = None
        written["notes"] = list(written["notes"]) + [f"no concept of {task_name} names a kind of SOP group: "
                                                     "no TCAV-vs-SOP comparison"]
    atomic_write_json(out_dir / "concepts.json", written)
    written["result"], written["sets"] = result, sets
    return written


def _join(sop, data, sets, result, out_dir: Path, *, n: int | None, seed: int, command: str | None) -> dict[str, Any]:
    from ..io import atomic_write_json, atomic_write_text
    from ..report.case_study import run_case_study
    from ..report.figures import save_figure
    from ..analysis.tcav_report import tcav_vs_sop, tcav_vs_sop_figure, tcav_vs_sop_markdown

    case = run_case_study(sop, data, out_dir / "case_study", n=n, seed=seed, command=command)
    join = tcav_vs_sop(result, sets, case)
    join["case_study"] = {"n_maps": case["n_maps"], "verdict": case["verdict"], "path": str(out_dir / "case_study")}
    save_figure(tcav_vs_sop_figure(join), out_dir / "tcav_vs_sop", close=True)
    atomic_write_json(out_dir / "tcav_vs_sop.json", join)
    atomic_write_text(out_dir / "tcav_vs_sop.md", tcav_vs_sop_markdown(join, command=command, figure="tcav_vs_sop.png"))
    return join


def _cmd_concepts(args: argparse.Namespace) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("sop-runs") / args.task / "concepts"
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
