"""Recompute a regression SOP's per-target test scores from its saved checkpoint, independently.

    python scripts/recompute_r2.py sop-runs/cosmology [--task cosmology] [--checkpoint best]

Loads ``RUN/sop/<checkpoint>`` with :meth:`SumOfParts.from_pretrained` (the backbone rebuilt from
the checkpoint's own weights, not from the task's committed file), the task's test split, and
computes with NumPy, outside the library's metric code: per target the MSE, R² = 1 − SSE/SST
(SST around the *test* mean) and the training-mean predictor's R²; the exactness of
``prediction = b + Σ group attributions``; and compares with the numbers the run wrote in
``results.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a `sop run` output directory")
    ap.add_argument("--task", default="cosmology")
    ap.add_argument("--checkpoint", default="best", help="best | last")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sumofparts import SumOfParts
    from sumofparts.tasks import default_cache_dir, get_task

    task = get_task(args.task)
    data = task.load_data(default_cache_dir(), progress=False)
    sop = SumOfParts.from_pretrained(args.run / "sop" / args.checkpoint).eval()
    x, y = data.test.inputs, data.test.targets.double().numpy()
    preds, gaps = [], []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            out = sop(x[i:i + 64], validate=False)
            preds.append(out.logits.double().numpy())
            base = 0.0 if out.base_value is None else out.base_value.double().numpy()
            gaps.append(np.abs(out.logits.double().numpy() - base
                               - out.group_attributions.double().sum(1).numpy()).max())
    p = np.concatenate(preds)
    train_mean = data.train.targets.double().numpy().mean(0)
    rows = []
    for j, name in enumerate(data.output_names):
        sst = ((y[:, j] - y[:, j].mean()) ** 2).sum()
        rows.append({"target": name, "mse": float(((p[:, j] - y[:, j]) ** 2).mean()),
                     "r2": float(1 - ((p[:, j] - y[:, j]) ** 2).sum() / sst),
                     "r2_training_mean": float(1 - ((train_mean[j] - y[:, j]) ** 2).sum() / sst),
                     "mean_prediction": float(p[:, j].mean()), "mean_truth": float(y[:, j].mean())})
    print(f"{len(y)} test items, max |prediction - b - sum of group attributions| = {max(gaps):.2e}")
    print("| target | MSE | R² | R² of the training mean | mean prediction | mean truth |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['mse']:.5f} | {r['r2']:.4f} | {r['r2_training_mean']:.4f} | "
              f"{r['mean_prediction']:.4f} | {r['mean_truth']:.4f} |")
    results = args.run / "results.json"
    if results.is_file():
        saved = json.loads(results.read_text())
        print("results.json says: R²", json.dumps(saved["sop"]["r2_per_output"]),
              "MSE", json.dumps(saved["sop"]["mse_per_output"]))


if __name__ == "__main__":
    main()
