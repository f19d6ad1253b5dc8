"""Does group-robust training of *all* MiniLM layers help SOP on sentiment? One measured run.

    HF_HUB_OFFLINE=1 python scripts/sentiment_all_layers_probe.py OUT [--lr 1e-4] [--epochs 1] [--seed 0]

The committed sentiment backbone trains (and its weights file holds) only the top two layers,
the pooler and the classifier, so ``sop robust-finetune sentiment`` can only move those. This
script runs :func:`sumofparts.training.robust.robust_finetune` on the committed backbone with
``trainable=None`` (every parameter), dropped-word groups, batch 32, scored before and after on
256 validation and 256 test sentences (one group, the mean of 8), writes the whole fine-tuned
model to ``OUT/all_layers.safetensors`` (not loadable as a sentiment backbone file: that format
holds the top-2 tensors only) and then trains and tests SOP on it with the task's defaults, as
``sop run sentiment --eval-n 0`` would (``OUT/sop_run``). docs/results.md (sentiment) quotes it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sumofparts.io import save_tensors
from sumofparts.pipeline import run_task
from sumofparts.tasks import default_cache_dir, get_task
from sumofparts.tasks.sentiment import SentimentTask
from sumofparts.training.robust import RobustConfig, robust_finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="the robust run's seed (SOP uses seed 0)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    task = get_task("sentiment")
    data = task.load_data(default_cache_dir(), progress=False)
    model = task.load_backbone(data, default_cache_dir(), progress=False)
    config = RobustConfig(epochs=args.epochs, lr=args.lr, batch_size=32, modes=("drop",), eval_items=256,
                          eval_groups=8, seed=args.seed)
    t0 = time.perf_counter()
    result = robust_finetune(task.make_adapter(model), data.train, data.val, config, task="classification",
                             test=data.test, trainable=None, progress=False,
                             checkpoint_dir=args.out / "checkpoint", checkpoint_every=100)
    scores = {split: {view: {"before": round(result.before[split][view]["accuracy"], 4),
                             "after": round(result.after[split][view]["accuracy"], 4)}
                      for view in result.after[split]} for split in result.after}
    print(json.dumps({"seconds": round(time.perf_counter() - t0), "accuracy": scores}, indent=1))
    save_tensors(args.out / "all_layers.safetensors", model.state_dict())
    # SOP around this in-memory model: the task's loader is replaced for this process only
    SentimentTask.load_backbone = lambda self, data, cache_dir, **kw: model  # type: ignore[method-assign]
    run = run_task("sentiment", args.out / "sop_run", seed=0, progress=False, eval_n=0, report=False,
                   command="python scripts/sentiment_all_layers_probe.py " + str(args.out))
    print(run["table"])
    print("best step", run["best_step"], "validation accuracy", round(run["best_val"], 4))


if __name__ == "__main__":
    main()
