"""The evaluation of one task end to end: seconds per example per method.

    python benchmarks/bench_evaluation.py TASK [--n 16] [--methods ...] [--threads 2] [--steps 100]

Trains SOP briefly on the task (or loads ``--checkpoint``), runs ``evaluate_task`` on
the first n test items and prints the time each method took per example (all the
metrics of both tables included: the method's attributions, its -F prediction, the
insertion and deletion curves and, for post-hoc methods, one attribution per class
for the fidelity).
"""
from __future__ import annotations

import argparse
import tempfile
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100, help="SOP training steps when no checkpoint is given")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    from sumofparts.evaluation import evaluate_task
    from sumofparts.model import SumOfParts
    from sumofparts.pipeline import build_sop
    from sumofparts.tasks import get_task
    from sumofparts.training import TrainConfig, train

    sop, data = build_sop(args.task, progress=False)
    if args.checkpoint:
        sop = SumOfParts.from_pretrained(args.checkpoint, backbone=sop.backbone.model)
    else:
        task = get_task(args.task)
        with tempfile.TemporaryDirectory() as tmp:
            train(sop, data.train, data.val, TrainConfig.from_dict({**task.train_defaults, "steps": args.steps,
                                                                    "eval_every": args.steps}), tmp, progress=False)
    tables = evaluate_task((sop, data), methods=args.methods, n=args.n, progress=False)
    per = tables.meta["seconds_per_example"]
    print(f"task={args.task} n={tables.meta['n']} threads={args.threads} total {tables.meta['seconds']:.1f} s")
    print("| method | seconds per example |")
    print("|---|---|")
    for key, sec in sorted(per.items(), key=lambda kv: kv[1]):
        print(f"| {key} | {sec:.3f} |")


if __name__ == "__main__":
    main()
