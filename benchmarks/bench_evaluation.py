"""The evaluation of one task end to end: seconds per item per method, and the shared backbone passes.

    python benchmarks/bench_evaluation.py TASK [--n 64] [--methods ...] [--threads 1] [--steps 100]
                                          [--checkpoint DIR] [--tie-samples 1]

Trains SOP briefly on the task (or loads ``--checkpoint``), runs ``evaluate_task`` on the first n
test items with the task's default methods and prints, per method, the wall and CPU seconds per
item (everything both tables need: the explanation, its "-F" prediction and purity, the
insertion and deletion paths, the fidelity), the total time (with BagNet's training, when it is
evaluated), and how many group passes were requested and computed (the rest shared within a
batch). CPU seconds are this process's (``time.process_time``): on a machine busy with other
work they are the better measure of what the evaluation costs, and with one torch thread they
bound the wall time of an idle machine from above.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="SOP training steps when no checkpoint is given")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--tie-samples", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    from sumofparts.evaluation import evaluate_task
    from sumofparts.model import SumOfParts
    from sumofparts.pipeline import build_sop
    from sumofparts.tasks import get_task
    from sumofparts.training import TrainConfig, train

    sop, data = build_sop(args.task, cache_dir=args.cache_dir, progress=False)
    if args.checkpoint:
        sop = SumOfParts.from_pretrained(args.checkpoint, backbone=sop.backbone.model)
    else:
        task = get_task(args.task)
        with tempfile.TemporaryDirectory() as tmp:
            train(sop, data.train, data.val, TrainConfig.from_dict({**task.train_defaults, "steps": args.steps,
                                                                    "eval_every": args.steps}), tmp, progress=False)
    c0 = time.process_time()
    tables = evaluate_task((sop, data), methods=args.methods, n=args.n, progress=False,
                           tie_samples=args.tie_samples)
    cpu = time.process_time() - c0
    meta = tables.meta
    wall, per_cpu = meta["seconds_per_item"], meta["cpu_seconds_per_item"]
    print(f"task={args.task} n={meta['n']} threads={args.threads} tie_samples={args.tie_samples}: "
          f"{meta['seconds']:.1f} s wall, {cpu:.1f} s CPU in all (BagNet's training and loading included)")
    print(f"group passes: {meta['group_passes']['requested']} requested, {meta['group_passes']['computed']} "
          "computed")
    print("| method | wall s / item | CPU s / item | forward passes / item |")
    print("|---|---|---|---|")
    for key in wall:
        print(f"| {key} | {wall[key]:.4f} | {per_cpu[key]:.4f} | {meta['passes_per_item'].get(key, '')} |")
    print(f"| all methods | {sum(wall.values()):.4f} | {sum(per_cpu.values()):.4f} | |")


if __name__ == "__main__":
    main()
