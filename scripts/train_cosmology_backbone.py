#!/usr/bin/env python
"""Reproduce the committed cosmology backbone (src/sumofparts/weights/cosmology_cnn.*).

    python scripts/train_cosmology_backbone.py                # default data, seed 0
    python scripts/train_cosmology_backbone.py --out /tmp/cnn.safetensors --max-epochs 5

Simulates (or reads from the cache) the default ``cosmology`` data, trains the CosmoGrid CNN
(:func:`sumofparts.tasks.cosmology_cnn.train_cnn`, the recipe below), evaluates it on the
validation and test cosmologies and writes the weights (safetensors) and a JSON sidecar with
the data's content hash, seed, epochs, val/test MSE and R² per parameter and this command.
One CPU thread; about 2-4 minutes on a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sumofparts.tasks import default_cache_dir
from sumofparts.tasks.cosmology import BACKBONE_RECIPES, COMMITTED_WEIGHTS, CosmologyTask, save_cnn
from sumofparts.tasks.cosmology_cnn import evaluate_regression, train_cnn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data cache (default: $SOP_CACHE or ~/.cache/sumofparts)")
    parser.add_argument("--size", default="default", help="data size (default: default)")
    parser.add_argument("--data-seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: recipe's)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=COMMITTED_WEIGHTS,
                        help=f"weights file (default: {COMMITTED_WEIGHTS})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cache_dir = args.cache_dir or default_cache_dir()
    task = CosmologyTask()
    t0 = time.perf_counter()
    data = task.load_data(cache_dir, size=args.size, seed=args.data_seed, progress=not args.no_progress)
    data_seconds = time.perf_counter() - t0
    recipe = BACKBONE_RECIPES.get(args.size, BACKBONE_RECIPES["default"])
    if args.seed is not None:
        recipe = replace(recipe, seed=args.seed)
    if args.max_epochs is not None:
        recipe = replace(recipe, max_epochs=args.max_epochs)
    model, log = train_cnn(data.train, data.val, recipe, progress=not args.no_progress)
    test = evaluate_regression(model, data.test)
    record = {
        "data_hash": data.meta["content_hash"],
        "data_size": args.size,
        "data_seed": args.data_seed,
        "seed": recipe.seed,
        "epochs": log["epochs_run"],
        "best_epoch": log["best_epoch"],
        "recipe": log["recipe"],
        "train_seconds": log["train_seconds"],
        "data_seconds": round(data_seconds, 1),
        "data_generated": data.meta["generated"],
        "n_maps": data.meta["n_maps"],
        "output_names": data.output_names,
        "target_scale": data.meta["target_scale"],
        "input_normalisation": data.meta["input_normalisation"],
        "val": log["val"],
        "test": test,
        "history": log["history"],
        "torch": torch.__version__,
        "threads": args.threads,
        "command": "python scripts/train_cosmology_backbone.py "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    }
    save_cnn(model, args.out, record)
    names = data.output_names
    print(f"data {data.meta['content_hash']} ({data_seconds:.1f} s), trained {log['epochs_run']} epochs "
          f"(best {log['best_epoch']}) in {log['train_seconds']:.0f} s")
    for split, res in (("val", log["val"]), ("test", test)):
        r2 = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, res["r2_per_output"]))
        mse = ", ".join(f"{n} {v:.5f}" for n, v in zip(names, res["mse_per_output"]))
        print(f"{split}: MSE {res['mse']:.5f} (per parameter: {mse}); R² {r2}")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
