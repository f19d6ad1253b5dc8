"""SOP explanation cost / one backbone forward, for ViTs, with and without patch dropping.

    python benchmarks/bench_sop_cost.py [--threads 2] [--batch 8] [--repeats 5] [--models fashion vit-s]

Every number in one run comes from the same models and inputs. The cost of an SOP
explanation is one forward of the generator's encoder copy (L-1 layers) plus G group
passes of the backbone; with patch dropping a group of tau·N patches costs about
(1 + tau·N) / (1 + N) of a pass (attention even less). The authors' module measures
about 31x one backbone forward on CPU for a small ViT at 224 px.
"""
from __future__ import annotations

import argparse

import torch

from _timing import timeit


def build_vit(kind: str):
    from transformers import ViTConfig, ViTForImageClassification

    if kind == "fashion":
        try:
            from sumofparts.tasks import default_cache_dir, get_task

            task = get_task("fashion")
            data = task.load_data(default_cache_dir(), size="small", progress=False)
            model = task.load_backbone(data, default_cache_dir(), backbone="vit", train_if_missing=False,
                                       progress=False)
            return model.eval(), "fashion ViT (trained, 32 px, patch 4, 64 cells)"
        except Exception as exc:  # noqa: BLE001 - fall back to the same shape untrained
            print(f"(fashion backbone unavailable: {exc}; using the same shape, untrained)")
        cfg = ViTConfig(image_size=32, patch_size=4, num_channels=1, hidden_size=128, num_hidden_layers=6,
                        num_attention_heads=4, intermediate_size=256, num_labels=10)
        label = "ViT 32 px, patch 4, 64 cells (untrained)"
    elif kind == "vit-s":
        cfg = ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=384, num_hidden_layers=12,
                        num_attention_heads=6, intermediate_size=1536, num_labels=1000)
        label = "ViT-S/16 224 px, 196 cells (random weights: cost does not depend on them)"
    else:
        raise SystemExit(f"unknown model {kind!r}: expected fashion or vit-s")
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return ViTForImageClassification(cfg).eval(), label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--models", nargs="*", default=["fashion", "vit-s"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sumofparts import SumOfParts

    print(f"threads={args.threads} batch={args.batch} G={args.groups} tau={args.tau} repeats={args.repeats} "
          f"(median times)")
    print("| model | backbone forward (s) | SOP, masked pixels (s) | ratio | SOP, dropped patches (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for kind in args.models:
        model, label = build_vit(kind)
        cfg = model.config
        x = torch.randn(args.batch, cfg.num_channels, cfg.image_size, cfg.image_size)
        masked = SumOfParts.from_backbone(model, adapter="vit", num_groups=args.groups, tau=args.tau,
                                          group_batch_size=512).eval()
        dropped = SumOfParts.from_backbone(model, adapter="vit", num_groups=args.groups, tau=args.tau,
                                           drop_patches=True, group_batch_size=512).eval()
        dropped.load_state_dict(masked.state_dict())
        with torch.inference_mode():
            t_b = timeit(lambda: model(pixel_values=x), args.repeats)
            t_m = timeit(lambda: masked.explain(x), args.repeats)
            t_d = timeit(lambda: dropped.explain(x), args.repeats)
        print(f"| {label} | {t_b:.3f} | {t_m:.3f} | {t_m / t_b:.1f} | {t_d:.3f} | {t_d / t_b:.1f} |")


if __name__ == "__main__":
    main()
