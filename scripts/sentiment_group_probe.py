"""How the sentiment backbone does on random groups of words, shown with [MASK] tokens or dropped.

    HF_HUB_OFFLINE=1 python scripts/sentiment_group_probe.py [--n 128] [--groups 8] [--backbone W.safetensors]

For the first N test sentences, G random groups of ⌊τ·n⌋ of each sentence's words (τ = 0.2, the
groups SOP uses) are drawn once (seeded); the frozen backbone scores each group in both masking modes
of ``BertAdapter`` ("zero": the other words replaced by [MASK]; "drop": the other words taken out of
attention). Printed: accuracy on the whole sentences, on one group, and on the mean of the G groups'
logits (what a uniform weighting of SOP's groups would predict) per mode. docs/results.md (sentiment)
quotes its output.
"""
from __future__ import annotations

import argparse
import json

import torch

from sumofparts.tasks import default_cache_dir, get_task
from sumofparts.training.sop import iterate_batches


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
    g = torch.Generator().manual_seed(args.seed)
    right = {"whole": 0, "zero: one group": 0, "zero: mean of groups": 0, "drop: one group": 0,
             "drop: mean of groups": 0}
    total = 0
    with torch.no_grad():
        for _, (x, y) in iterate_batches(data.test.subset(args.n), 32, seed=None):
            valid = adapter.valid_cells(x)
            B, L = valid.shape
            k = torch.clamp((valid.sum(-1).float() * args.tau).floor().long(), min=1)  # (B,)
            draw = torch.rand(B, args.groups, L, generator=g).masked_fill(~valid[:, None], 2.0)
            masks = draw.argsort(-1).argsort(-1) < k[:, None, None]  # k random valid words per group
            right["whole"] += int((adapter(x).argmax(-1) == y).sum())
            for mode in ("zero", "drop"):
                logits, _ = adapter.forward_groups(x, masks, mode=mode)  # (B, G, 2)
                right[f"{mode}: one group"] += int((logits[:, 0].argmax(-1) == y).sum())
                right[f"{mode}: mean of groups"] += int((logits.mean(1).argmax(-1) == y).sum())
            total += B
    print(json.dumps({"sentences": total, "groups": args.groups, "tau": args.tau,
                      "accuracy": {k: round(v / total, 4) for k, v in right.items()}}, indent=1))


if __name__ == "__main__":
    main()
