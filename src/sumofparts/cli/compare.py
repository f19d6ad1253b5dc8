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
from typing import Any

from ..analysis import similarity as S
from ..errors import InputError

__all__ = ["register", "run_compare"]


def _matrix_csv(mat) -> str:
    from ..evaluation import _csv

    rows = [{"layer": r, **{c: float(v) for c, v in zip(mat.cols, mat.values[i])}} for i, r in enumerate(mat.rows)]
    return _csv(rows, ["layer", *mat.cols])


def run_compare(task_name: str, a: str, b: str | None, out_dir: Path, *, n: int = 500, metrics=None,
                layers_a=None, layers_b=None, pca_layer: str | None = None, backbone: str | None = None,
                size: str = "default", seed: int = 0, cache_dir: Path | None = None, batch_size: int = 64,
                progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Load the task's data and the two models, compare them on the first ``n`` test inputs and
    write the tables and figures (see the module docstring); returns the comparison's dict."""
    from ..io import atomic_write_json, atomic_write_text
    from ..report.figures import save_figure
    from ..tasks import default_cache_dir, get_task
    from ..analysis.compare import (comparison_markdown, compare_models, diagonal_figure, heatmap_figure, pca_figure,
                          resolve_model, task_inputs)

    task = get_task(task_name)
    cache_dir = Path(cache_dir or default_cache_dir())
    data = task.load_data(cache_dir, size=size, seed=seed, progress=progress)
    view_a = resolve_model(a, task, data, cache_dir, backbone=backbone)
    view_b = None if b is None or b == a else resolve_model(b, task, data, cache_dir, backbone=backbone)
    if pca_layer is not None and pca_layer not in view_a.layers and (view_b is None or pca_layer not in view_b.layers):
        raise InputError(f"--pca-layer {pca_layer!r} is not a layer of the compared models: {', '.join(view_a.layers)}")
    inputs, targets = task_inputs(data, n)
    acts_a = view_a.activations(inputs, layers_a, batch_size=batch_size, progress=progress)
    if view_b is None and layers_b is None:
        acts_b = acts_a
    else:
        acts_b = (view_b or view_a).activations(inputs, layers_b, batch_size=batch_size, progress=progress)
    comp = compare_models(view_a, view_b, inputs, metrics=metrics or list(S.METRICS), progress=progress,
                          activations=(acts_a, acts_b))
    out_dir = Path(out_dir)
    figures = []
    save_figure(heatmap_figure(comp), out_dir / "compare_heatmaps", close=True)
    figures.append("compare_heatmaps.png")
    if view_b is not None and comp.diagonal():
        save_figure(diagonal_figure(comp), out_dir / "compare_diagonal", close=True)
        figures.append("compare_diagonal.png")
    shared = [k for k in acts_a if k in acts_b]
    layer = pca_layer or (shared[-1] if shared else list(acts_a)[-1])
    embeddings = {}
    if layer in acts_a:
        embeddings[f"A: {comp.a}"] = acts_a[layer]
    if view_b is not None and layer in acts_b:
        embeddings[f"B: {comp.b}"] = acts_b[layer]
    if not embeddings:
        raise InputError(f"--pca-layer {layer!r} is not among the compared layers: {', '.join(acts_a)} (choose it "
                         "with --layers-a / --layers-b too)")
    save_figure(pca_figure(embeddings, targets, target_names=data.output_names, kind=data.kind, layer=layer),
                out_dir / "pca", close=True)
    figures.append("pca.png")
    result = comp.to_dict() | {"task": task_name, "command": command, "pca_layer": layer, "figures": figures,
                               "inputs": f"the first {comp.n} test inputs of {task_name} ({size}, seed {seed})"}
    for m, mat in comp.matrices.items():
        atomic_write_text(out_dir / f"compare_{m}.csv", _matrix_csv(mat))
    atomic_write_json(out_dir / "compare.json", result)
    atomic_write_text(out_dir / "compare.md", comparison_markdown(comp, command=command, figures=figures))
    result["comparison"] = comp
    return result


def _cmd_compare(args: argparse.Namespace) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 3:
        raise InputError(f"--n must be at least 3, got {args.n}")
    out = args.out or Path("sop-runs") / args.task / "compare"
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
    p.add_argument("--metrics", nargs="+", default=None, choices=list(S.METRICS),
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
