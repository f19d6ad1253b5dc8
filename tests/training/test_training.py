"""Training: it learns, the backbone stays frozen, it is reproducible and resumes after interruption."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from sumofparts import SOPConfig, SumOfParts, TrainConfig, train
from sumofparts.errors import ResumeError
from sumofparts.io import load_tensors
from sumofparts.tasks import get_task
from sumofparts.training import iterate_batches, lr_factor


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    task = get_task("synthetic")
    data = task.load_data(cache, size="small")
    model = task.load_backbone(data, cache, progress=False)
    return task, data, model


def fresh_sop(task, model, seed=0):
    torch.manual_seed(seed)
    return SumOfParts(task.make_adapter(model), SOPConfig(**task.sop_defaults))


def small_cfg(**kw):
    return TrainConfig(**{"steps": 12, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "eval_every": 6,
                          "val_batches": 2, **kw})


def weights(sop):
    return {k: v.clone() for k, v in sop.state_dict().items()}


def test_backbone_is_accurate_and_sop_learns_beyond_chance(bars, tmp_path):
    task, data, model = bars
    x, y = data.test.tensors
    assert (model(x).argmax(-1) == y).float().mean() > 0.95
    sop = fresh_sop(task, model)
    res = train(sop, data.train, data.val, small_cfg(steps=60, eval_every=30, val_batches=0), tmp_path,
                progress=False)
    with torch.no_grad():
        acc = (sop(x).logits.argmax(-1) == y).float().mean().item()
    assert acc > 0.5  # 4 balanced classes: chance is 0.25
    assert res.metric == "accuracy" and 0 < res.best_score <= 1
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert (tmp_path / "history.json").is_file()


def test_backbone_weights_do_not_change(bars, tmp_path):
    task, data, model = bars
    sop = fresh_sop(task, model)
    before = {k: v.clone() for k, v in sop.backbone.model.state_dict().items()}
    gen_before = {k: v.clone() for k, v in sop.generator.state_dict().items()}
    train(sop, data.train, data.val, small_cfg(steps=5, eval_every=5), tmp_path, progress=False)
    after = sop.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(gen_before[k], v) for k, v in sop.generator.state_dict().items())


def test_training_is_reproducible_with_a_seed(bars, tmp_path):
    task, data, model = bars
    a = fresh_sop(task, model)
    train(a, data.train, data.val, small_cfg(steps=6), tmp_path / "a", progress=False)
    b = fresh_sop(task, model)
    train(b, data.train, data.val, small_cfg(steps=6), tmp_path / "b", progress=False)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_training_resumes_to_the_same_weights(bars, tmp_path):
    task, data, model = bars
    straight = fresh_sop(task, model)
    train(straight, data.train, data.val, small_cfg(), tmp_path / "straight", progress=False)
    final_straight = load_tensors(tmp_path / "straight" / "last" / "model.safetensors")

    interrupted = fresh_sop(task, model)

    def stop_at_7(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, data.train, data.val, small_cfg(), tmp_path / "run", progress=False, on_step=stop_at_7)
    import json
    assert json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["step"] == 7

    resumed = fresh_sop(task, model, seed=123)  # different init: everything must come from the checkpoint
    train(resumed, data.train, data.val, small_cfg(), tmp_path / "run", resume=True, progress=False)
    final_resumed = load_tensors(tmp_path / "run" / "last" / "model.safetensors")
    for k, v in final_straight.items():
        assert torch.allclose(v, final_resumed[k], atol=1e-6), k


def test_resume_without_checkpoint_or_with_other_seed_is_refused(bars, tmp_path):
    task, data, model = bars
    with pytest.raises(ResumeError, match="cannot resume: no checkpoint"):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(), tmp_path, resume=True, progress=False)
    train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=6), tmp_path, progress=False)
    with pytest.raises(ResumeError, match="train steps: 6 -> 8; train seed: 0 -> 1"):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=8, seed=1), tmp_path, resume=True,
              progress=False)


def test_a_killed_process_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, torch
        torch.set_num_threads(1)
        from sumofparts import SOPConfig, SumOfParts, TrainConfig, train
        from sumofparts.tasks import get_task
        task = get_task("synthetic")
        data = task.load_data({str(cache)!r}, size="small")
        model = task.load_backbone(data, {str(cache)!r}, progress=False)
        torch.manual_seed(0)
        sop = SumOfParts(task.make_adapter(model), SOPConfig(**task.sop_defaults))
        cfg = TrainConfig(steps=400, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=1000, checkpoint_every=5,
                          val_batches=1)
        def slow(step, loss):
            print("step", step, flush=True)
            time.sleep(0.05)
        train(sop, data.train, data.val, cfg, {str(tmp_path / 'run')!r}, progress=False, on_step=slow,
              resume=len(sys.argv) > 1)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    last = 0
    for line in proc.stdout:
        last = int(line.split()[1])
        if last >= 23:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import json
    saved = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["step"]
    assert last - 5 <= saved <= last and saved % 5 == 0
    # no half-written directories are left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == ["last"]
    # resuming continues from the saved step, not from zero
    proc = subprocess.run([sys.executable, str(script), "--resume"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    first = int(proc.stdout.split()[1])
    assert first == saved + 1


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup_steps=10)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01


def test_batch_order_is_a_function_of_seed_and_step(bars):
    _, data, _ = bars
    it = iterate_batches(data.train, 16, seed=3)
    seq = [next(it)[1][1] for _ in range(40)]
    it2 = iterate_batches(data.train, 16, seed=3, start_step=27)
    assert torch.equal(next(it2)[1][1], seq[27])


def test_train_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown TrainConfig keys \\['learning_rate'\\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000000000\], got 0"):
        TrainConfig(steps=0)
