"""``sop segment``: attribution maps of a segmentation U-Net's predicted segment on Fashion-MNIST."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from ..errors import InputError
from .paths import run_dir

__all__ = ["register"]


def _command_line(args: argparse.Namespace) -> str:
    parts = ["sop", "segment", "--n", str(args.n)]
    for flag, value, default in (("--methods", args.methods, None), ("--layer", args.layer, None),
                                 ("--n-steps", args.n_steps, None), ("--batch-size", args.batch_size, 16),
                                 ("--figures", args.figures, 4), ("--weights", args.weights, None),
                                 ("--out", args.out, None), ("--size", args.size, "default"), ("--seed", args.seed, 0),
                                 ("--cache-dir", args.cache_dir, None), ("--threads", args.threads, None)):
        if value is None or value == default:
            continue
        parts += [flag, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_segment(args: argparse.Namespace) -> int:
    import torch

    from ..tasks import default_cache_dir, get_task
    from ..segmentation.attribution import DEFAULT_IG_STEPS, DEFAULT_LAYER
    from ..segmentation.study import run_segmentation
    from ..segmentation.unet import load_unet

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    n_steps = DEFAULT_IG_STEPS if args.n_steps is None else args.n_steps
    if n_steps < 1 or args.batch_size < 1 or args.figures < 0:
        raise InputError(f"--n-steps and --batch-size must be >= 1 and --figures >= 0, got {n_steps}, "
                         f"{args.batch_size}, {args.figures}")
    model, info = load_unet(args.weights)
    layer = args.layer or DEFAULT_LAYER
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        raise InputError(f"unknown layer {layer!r} of the U-Net; expected one of: {', '.join(names)}")
    task = get_task("fashion")
    data = task.load_data(args.cache_dir or default_cache_dir(), size=args.size, seed=args.seed,
                          progress=not args.no_progress)
    images, labels = data.test.tensors[0], data.test.tensors[1]
    out = args.out or run_dir("fashion", "segmentation")
    unet_info = {k: info.get(k) for k in ("num_parameters", "test", "test_full_10k", "command", "weights_sha256",
                                          "config")}
    unet_info["weights"] = str(args.weights) if args.weights else "sumofparts/weights/fashion_unet.safetensors"
    result = run_segmentation(model, images, labels, out, foreground=data.test_foreground,
                              class_names=["background", *data.output_names], n=args.n,
                              methods=args.methods or ["intgrad", "guided_backprop", "layer_gradcam"], layer=layer,
                              n_steps=n_steps, batch_size=args.batch_size, seed=args.seed,
                              n_figures=args.figures, progress=not args.no_progress, command=_command_line(args),
                              unet_info=unet_info)
    print(result.markdown())
    print(f"written: {', '.join(str(p) for p in result.paths.values())}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sop segment`` to the ``sop`` command."""
    p = subparsers.add_parser(
        "segment", help="attribution of a segmentation U-Net's predicted segment (IG, Guided Backprop, Grad-CAM)",
        description="Run the committed Fashion-MNIST segmentation U-Net on the first N test images, explain the sum "
                    "of each image's predicted garment-class logits over its predicted segment with Integrated "
                    "Gradients, Guided Backprop and Layer Grad-CAM, and write how much of each map lies on the "
                    "segment (against a random map) as Markdown, CSV and JSON, with figures.")
    p.add_argument("--n", type=int, default=64, help="test images, the first N (default: %(default)s)")
    p.add_argument("--methods", nargs="+", default=None, choices=["intgrad", "guided_backprop", "layer_gradcam"],
                   metavar="METHOD", help="intgrad, guided_backprop, layer_gradcam (default: all three)")
    p.add_argument("--layer", default=None, help="U-Net layer for Layer Grad-CAM (default: up1, the last "
                                                 "up-sampling)")
    p.add_argument("--n-steps", type=int, default=None,
                   help="Integrated Gradients steps (default: 256, see docs/segmentation.md)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default: %(default)s)")
    p.add_argument("--figures", type=int, default=4, help="examples drawn in the figure (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None,
                   help="a U-Net .safetensors with its .json sidecar (default: the committed one)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: sop-runs/fashion/segmentation, where `sop report fashion` "
                        "looks for it)")
    p.add_argument("--size", default="default", help="fashion data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data seed and the random map's seed (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_segment)
