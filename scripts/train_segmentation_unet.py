#!/usr/bin/env python
"""Train the segmentation U-Net on Fashion-MNIST silhouettes and write the committed weights.

Reproduces ``src/sumofparts/weights/fashion_unet.safetensors`` and its JSON sidecar (the
configuration, the recipe, the data identity, the per-epoch history, the test scores and this
command)::

    python scripts/train_segmentation_unet.py

Data: the fashion task's ``default`` split (20,000 training images, 2,000 validation images for
the best-epoch checkpoint, seed 0). Target per pixel: 0 outside the silhouette, 1 + the garment's
class inside (:func:`sumofparts.segmentation.unet.segmentation_targets`). Test scores are measured
on the task's 2,000 test images and on all 10,000 Fashion-MNIST test images, on one CPU thread.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from sumofparts.segmentation.unet import (TrainRecipe, UNetConfig, committed_unet_path, evaluate_segmentation,
                                          save_unet, segmentation_targets, train_unet)
from sumofparts.tasks.fashion import FashionTask, load_raw, preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=committed_unet_path(),
                        help="weights file to write, its sidecar beside it (default: %(default)s)")
    parser.add_argument("--size", default="default", help="fashion data size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and batch-order seed")
    parser.add_argument("--channels", type=int, nargs=3, default=list(UNetConfig().channels),
                        help="widths of the three levels (default: %(default)s)")
    for f in fields(TrainRecipe):
        if f.name != "seed":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                                help=f"(default: {f.default})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["scripts/train_segmentation_unet.py", *(argv if argv is not None else sys.argv[1:])])
    data = FashionTask().load_data(size=args.size, seed=args.seed, progress=not args.no_progress)

    def split(ds):
        x, y = ds.tensors[0], ds.tensors[1]
        return x, segmentation_targets(x, y)

    tr_x, tr_t = split(data.train)
    va_x, va_t = split(data.val)
    te_x, te_t = split(data.test)
    img, lab, _ = load_raw("test")
    full_x = preprocess(img)
    full_t = segmentation_targets(full_x, torch.from_numpy(lab.astype("int64")))
    recipe = TrainRecipe(**{f.name: getattr(args, f.name) for f in fields(TrainRecipe) if f.name != "seed"},
                         seed=args.seed)
    config = UNetConfig(channels=tuple(args.channels))
    print(f"training the segmentation U-Net {config} with {recipe} on {len(tr_x)} images", flush=True)
    model, record = train_unet(tr_x, tr_t, va_x, va_t, config=config, recipe=recipe, progress=not args.no_progress)
    t0 = time.perf_counter()
    record["test"] = evaluate_segmentation(model, te_x, te_t).to_dict()
    record["test_full_10k"] = evaluate_segmentation(model, full_x, full_t).to_dict()
    record["eval_seconds"] = round(time.perf_counter() - t0, 1)
    record["data"] = {k: data.meta[k] for k in ("source_sha", "normalisation", "data_hash", "size", "seed",
                                                "n_train", "n_val", "n_test")}
    record["target"] = "0 outside the silhouette (non-zero pixels, holes filled), 1 + label inside"
    record["command"] = command
    record["environment"] = {"torch": torch.__version__, "python": platform.python_version(),
                             "machine": platform.machine()}
    out = save_unet(model, record, args.out)
    t, f = record["test"], record["test_full_10k"]
    print(f"U-Net ({record['num_parameters']} parameters): best val mIoU {record['val_mean_iou']:.4f} "
          f"(epoch {record['best_epoch']}); test ({t['n']}) pixel accuracy {t['pixel_accuracy']:.4f}, mIoU "
          f"{t['mean_iou']:.4f}, foreground IoU {t['foreground_iou']:.4f}, object accuracy {t['object_accuracy']:.4f}; "
          f"test 10k pixel accuracy {f['pixel_accuracy']:.4f}, mIoU {f['mean_iou']:.4f}, foreground IoU "
          f"{f['foreground_iou']:.4f}, object accuracy {f['object_accuracy']:.4f}; {record['train_seconds']} s wall "
          f"-> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
