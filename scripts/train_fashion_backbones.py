#!/usr/bin/env python
"""Train the fashion task's backbones and write the committed weights.

Reproduces ``src/sumofparts/weights/fashion_vit.safetensors`` and ``fashion_cnn.safetensors``
with their JSON sidecars (model config, the ViTConfig dict, data identity and hash, seed, recipe,
epochs, validation and test accuracy, training time, this command)::

    python scripts/train_fashion_backbones.py                 # both, as committed
    python scripts/train_fashion_backbones.py --backbone cnn  # one of them

The backbones are trained on the ``default`` split of the fashion task (20,000 training images,
2,000 validation images for the best-epoch checkpoint, seed 0) on one CPU thread; the test
accuracy is measured on the task's 2,000 test images and on all 10,000 Fashion-MNIST test images.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from sumofparts.tasks.fashion import (
    TRAIN_RECIPES,
    FashionDataset,
    FashionTask,
    committed_weights_dir,
    evaluate_accuracy,
    load_raw,
    preprocess,
    save_backbone,
    train_backbone,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=["vit", "cnn", "both"], default="both")
    parser.add_argument("--out-dir", type=Path, default=committed_weights_dir(),
                        help="where to write fashion_<backbone>.safetensors/.json (default: %(default)s)")
    parser.add_argument("--size", default="default", help="fashion data size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    data = FashionTask().load_data(size=args.size, seed=args.seed, progress=not args.no_progress)
    te_img, te_lab, _ = load_raw("test")
    full_test = FashionDataset(preprocess(te_img), torch.from_numpy(te_lab.copy()), "test",
                               torch.arange(len(te_lab)).numpy())
    kinds = ["vit", "cnn"] if args.backbone == "both" else [args.backbone]
    for kind in kinds:
        overrides = {"seed": args.seed}
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        print(f"training the fashion {kind}: recipe {dict(TRAIN_RECIPES[kind], **overrides)}", flush=True)
        model, record = train_backbone(kind, data.train, data.val, progress=not args.no_progress,
                                       **overrides)
        t0 = time.perf_counter()
        record["test_accuracy"] = evaluate_accuracy(model, data.test)
        record["test_accuracy_full_10k"] = evaluate_accuracy(model, full_test)
        record["eval_seconds"] = round(time.perf_counter() - t0, 1)
        record["epochs"] = record["recipe"]["epochs"]
        record["seed"] = args.seed
        record["num_parameters"] = sum(p.numel() for p in model.parameters())
        record["data"] = {k: data.meta[k] for k in ("source_sha", "normalisation", "data_hash", "size",
                                                    "seed", "n_train", "n_val", "n_test")}
        record["command"] = command
        record["environment"] = {"torch": torch.__version__, "python": platform.python_version(),
                                 "machine": platform.machine()}
        if kind == "vit":
            import transformers

            record["environment"]["transformers"] = transformers.__version__
        out = save_backbone(model, record, args.out_dir / f"fashion_{kind}.safetensors")
        print(f"{kind}: val {record['val_accuracy']:.4f} (epoch {record['best_epoch']}), "
              f"test {record['test_accuracy']:.4f}, test 10k {record['test_accuracy_full_10k']:.4f}, "
              f"{record['train_seconds']} s wall / {record['train_cpu_seconds']} s CPU -> {out}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
