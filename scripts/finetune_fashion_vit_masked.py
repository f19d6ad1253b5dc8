"""Fine-tune the committed fashion ViT so that it can predict from part of an image.

SOP (and every "-F" baseline, and the insertion/deletion metrics) shows the frozen backbone
images in which most patches are zeroed. A small ViT trained only on whole images predicts
little from them (measured before this fine-tune: 20 % accuracy on images with a random 20 % of
the patches kept, 31 % with 50 %). This script continues the training of the committed weights
for a few epochs in which half of each batch keeps only a random fraction (uniform in
[0.1, 0.7]) of its 4x4 patches, the rest zeroed, and writes the weights and an updated sidecar
back to src/sumofparts/weights/ (fashion_vit.*). Large pretrained ViTs are partly robust to
such masking already; this gives the small one the same property.

This is step 2 of the committed ViT's chain (scripts/make_backbones.sh), kept so that the chain
can be re-run; the library's `sop robust-finetune` (sumofparts.training.robust) does this and
more (dropped patches, distillation, groups shaped like SOP's) for every family, and makes the
steps after it.

    python scripts/finetune_fashion_vit_masked.py [--epochs 3] [--threads 1] [--weights PATH]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sumofparts.io import atomic_write_json, read_json
from sumofparts.tasks import default_cache_dir
from sumofparts.tasks.fashion import (FashionTask, _file_sha256, backbone_logits, evaluate_accuracy,
                                      save_tensors)

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "sumofparts" / "weights" / "fashion_vit.safetensors"


def masked_accuracy(model, dataset, keep: float, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x, y = dataset.tensors[0], dataset.tensors[1]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            xb = x[i:i + 500]
            m = (torch.rand(len(xb), 1, 8, 8, generator=g) < keep).float()
            xb = xb * F.interpolate(m, size=xb.shape[-2:], mode="nearest")
            correct += int((backbone_logits(model, xb).argmax(-1) == y[i:i + 500]).sum())
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=WEIGHTS,
                    help="ViT weights to fine-tune in place (+ .json sidecar); default: the committed ones")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = FashionTask()
    data = task.load_data(default_cache_dir(), progress=False)
    model = task.load_backbone(data, default_cache_dir(), backbone=str(args.weights), train_if_missing=False,
                              progress=False)
    for p in model.parameters():
        p.requires_grad_(True)
    before = {"clean": evaluate_accuracy(model, data.test), "keep_0.2": masked_accuracy(model, data.test, 0.2),
              "keep_0.5": masked_accuracy(model, data.test, 0.5)}
    print("before:", before)
    xs, ys = data.train.tensors[0], data.train.tensors[1]
    g = torch.Generator().manual_seed(args.seed)
    bs, n = 128, len(xs)
    per_epoch = math.ceil(n / bs)
    total = per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    t0 = time.process_time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        for s in range(per_epoch):
            idx = order[s * bs:(s + 1) * bs]
            x = xs[idx].clone()
            half = torch.rand(len(x), generator=g) < 0.5
            keep = 0.1 + 0.6 * torch.rand(len(x), 1, 1, 1, generator=g)
            m = (torch.rand(len(x), 1, 8, 8, generator=g) < keep).float()
            m[~half] = 1.0
            x = x * F.interpolate(m, size=x.shape[-2:], mode="nearest")
            loss = F.cross_entropy(backbone_logits(model, x), ys[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        print(f"epoch {epoch + 1}: val clean {evaluate_accuracy(model, data.val):.4f}, "
              f"keep 0.2 {masked_accuracy(model, data.val, 0.2):.4f}", flush=True)
    model.eval()
    after = {"clean": evaluate_accuracy(model, data.test), "keep_0.2": masked_accuracy(model, data.test, 0.2),
             "keep_0.5": masked_accuracy(model, data.test, 0.5)}
    print("after:", after)
    save_tensors(args.weights, model.state_dict())
    side = args.weights.with_suffix(".json")
    info = read_json(side)
    info["weights_sha256"] = _file_sha256(args.weights)
    info["test_accuracy"] = after["clean"]
    info["masked_finetune"] = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                               "keep_fraction": "U(0.1, 0.7) on half of each batch", "cpu_seconds":
                               round(time.process_time() - t0, 1), "test_before": before, "test_after": after,
                               "command": f"python scripts/finetune_fashion_vit_masked.py --epochs {args.epochs}"}
    atomic_write_json(side, info)


if __name__ == "__main__":
    main()
