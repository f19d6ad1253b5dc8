"""How the sentiment backbone does on random groups of words, shown with [MASK] tokens or dropped.

    HF_HUB_OFFLINE=1 python scripts/sentiment_group_probe.py [--n 128] [--groups 8] [--backbone W.safetensors]

For the first N test sentences the frozen backbone is scored by
:func:`sumofparts.training.robust.score_backbone` in both masking modes of ``BertAdapter``
("zero": the other words replaced by [MASK]; "drop": the other words taken out of attention): on
whole sentences, on one random group of ⌊τ·n⌋ words (τ = 0.2, SOP's group size) and on the mean of
G such groups' logits (what a uniform weighting of SOP's groups would predict). docs/results.md
(sentiment) quotes its output.
"""
from __future__ import annotations

import argparse
import json

import torch

from sumofparts.tasks import default_cache_dir, get_task
from sumofparts.training.robust import score_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="test sentences (the first N)")
    ap.add_argument("--groups", type=int, default=8, help="random groups per sentence (SOP's G)")
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--backbone", default=None, help="a fine-tuned backbone (default: the committed one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("sentiment")
    data = task.load_data(default_cache_dir(), progress=False)
    adapter = task.make_adapter(task.load_backbone(data, default_cache_dir(), backbone=args.backbone, progress=False))
    scores = score_backbone(adapter, data.test.subset(args.n), task="classification", tau=args.tau,
                            modes=("zero", "drop"), seed=args.seed, mean_of=args.groups, progress=True)
    print(json.dumps({"sentences": scores["whole"]["n"], "groups": args.groups, "tau": args.tau,
                      "accuracy": {view: round(s["accuracy"], 4) for view, s in scores.items()}}, indent=1))


if __name__ == "__main__":
    main()
