"""Send real SIGINTs (Ctrl-C) at random instants to `sop train` and check every checkpoint left behind.

For each of ``--runs`` runs: start ``sop train --task synthetic --size small`` on a long schedule,
wait until it has written its first checkpoint (``checkpoint_every=50``, so later SIGINTs may also
land while one is written) and then a random 0.5-3 s, send SIGINT, and compare the trainer's step in ``last/trainer_state.json``
with the step count stored in every parameter's AdamW state (``last/optimizer.safetensors``):
they must be equal (a torn checkpoint would have the optimiser one step ahead). The last run is
then resumed to check that the checkpoint continues.

    python scripts/stress_sigint.py --runs 8

The child processes get the default SIGINT handler explicitly: a background job of a
non-interactive shell starts with SIGINT ignored, and `sop train` keeps honouring that.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sumofparts.io import load_tensors


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1, help="seed of the random delays")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="sop-sigint-"))
    base = [sys.executable, "-m", "sumofparts.cli", "train", "--task", "synthetic", "--size", "small",
            "--threads", "1", "--no-progress", "--steps", "100000", "--cache-dir", str(root / "cache"),
            "--train-set", "eval_every=100000", "batch_size=8", "checkpoint_every=50"]
    # build the data and the backbone once, so that every SIGINT below lands during training
    warm = [a if a != "100000" else "1" for a in base]
    subprocess.run(warm + ["--out", str(root / "warm")], check=True, capture_output=True)
    torn = 0
    for i in range(1, args.runs + 1):
        out = root / f"run{i}"
        proc = subprocess.Popen(base + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        t0 = time.time()
        while not (out / "last").exists() and time.time() - t0 < 300:  # 50 steps are done
            time.sleep(0.05)
        delay = rng.uniform(0.5, 3)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        if not (out / "last" / "trainer_state.json").is_file():
            print(f"run {i}: no checkpoint written; the command said:\n{err}", flush=True)
            return 1
        step = json.loads((out / "last" / "trainer_state.json").read_text())["step"]
        counts = {int(v) for k, v in load_tensors(out / "last" / "optimizer.safetensors").items()
                  if k.endswith(".step")}
        ok = counts == {step}
        torn += not ok
        print(f"run {i}: SIGINT {delay:.1f} s after the first checkpoint, exit {proc.returncode}; trainer step {step}, "
              f"optimiser steps {sorted(counts)}: {'consistent' if ok else 'TORN'}", flush=True)
    proc = subprocess.Popen(base + ["--out", str(out), "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    t0 = time.time()
    while time.time() - t0 < 300:  # until the resumed run has written a later checkpoint
        try:
            if json.loads((out / "last" / "trainer_state.json").read_text())["step"] > step:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    resumed = json.loads((out / "last" / "trainer_state.json").read_text())["step"]
    print(f"resumed run {args.runs} from step {step} to step {resumed}")
    print(f"{torn} torn checkpoints of {args.runs}")
    shutil.rmtree(root, ignore_errors=True)
    return 1 if torn or resumed <= step else 0


if __name__ == "__main__":
    sys.exit(main())
