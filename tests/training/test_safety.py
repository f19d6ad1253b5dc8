"""Interrupted and concurrent runs (issue 10): consistent checkpoints whatever instant a Ctrl-C lands,
a lock on the output directory, resumes that refuse a changed configuration or a torn checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import TensorDataset

from sumofparts import SOPConfig, SumOfParts, TrainConfig, train
from sumofparts.errors import ConfigError, InputError, OutputError, ResumeError
from sumofparts.io import directory_lock, load_tensors, save_tensors
from sumofparts.tasks import get_task


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    task = get_task("synthetic")
    data = task.load_data(cache, size="small")
    model = task.load_backbone(data, cache, progress=False)
    return task, data, model


def fresh_sop(task, model, seed=0, **changes):
    torch.manual_seed(seed)
    return SumOfParts(task.make_adapter(model), SOPConfig(**{**task.sop_defaults, **changes}))


def small_cfg(**kw):
    return TrainConfig(**{"steps": 12, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "eval_every": 6,
                          "val_batches": 2, **kw})


@pytest.fixture(scope="module")
def straight(bars, tmp_path_factory):
    """The final weights of an uninterrupted 12-step run."""
    task, data, model = bars
    out = tmp_path_factory.mktemp("straight")
    train(fresh_sop(task, model), data.train, data.val, small_cfg(), out, progress=False)
    return load_tensors(out / "last" / "model.safetensors")


def resume_and_compare(bars, straight, out):
    task, data, model = bars
    train(fresh_sop(task, model, seed=123), data.train, data.val, small_cfg(), out, resume=True, progress=False)
    final = load_tensors(out / "last" / "model.safetensors")
    for k, v in straight.items():
        assert torch.allclose(v, final[k], atol=1e-6), k


def optimizer_steps(out):
    """The step count stored with every parameter's AdamW state in ``last/``."""
    tensors = load_tensors(out / "last" / "optimizer.safetensors")
    return {int(v) for k, v in tensors.items() if k.endswith(".step")}


def patch_adamw(monkeypatch, at_call, action):
    """Run ``action()`` right after the ``at_call``-th AdamW update has changed the parameters."""
    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call:
            action()
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_a_sigint_between_the_optimiser_update_and_the_step_counter_is_deferred(bars, straight, tmp_path,
                                                                                monkeypatch):
    task, data, model = bars
    patch_adamw(monkeypatch, 7, lambda: os.kill(os.getpid(), signal.SIGINT))  # a real Ctrl-C, mid-update
    with pytest.raises(KeyboardInterrupt):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(), tmp_path, progress=False)
    monkeypatch.undo()
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert state["step"] == 7 and optimizer_steps(tmp_path) == {7}  # one instant: 7 updates, step 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    resume_and_compare(bars, straight, tmp_path)


def test_an_interrupt_raised_inside_the_update_keeps_the_last_checkpoint(bars, straight, tmp_path, monkeypatch):
    task, data, model = bars

    def interrupt():
        raise KeyboardInterrupt

    patch_adamw(monkeypatch, 7, interrupt)  # parameters updated, step counter not: a torn state
    with pytest.raises(KeyboardInterrupt):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(), tmp_path, progress=False)
    monkeypatch.undo()
    state = json.loads((tmp_path / "last" / "trainer_state.json").read_text())
    assert state["step"] == 6 and optimizer_steps(tmp_path) == {6}  # the checkpoint of step 6, not the torn one
    resume_and_compare(bars, straight, tmp_path)


def test_the_output_directory_is_locked_and_a_dead_holder_does_not_block(bars, tmp_path):
    task, data, model = bars
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from sumofparts.io import directory_lock
        with directory_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"in use by another process \(PID {holder.pid}\)"):
            train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=2), out, progress=False)
        assert not (out / "last").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (SIGKILL): its lock went with it
    train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=2, eval_every=2), out, progress=False)
    assert (out / "last" / "trainer_state.json").is_file()


def test_a_run_holds_the_lock_while_it_trains(bars, tmp_path):
    task, data, model = bars
    seen = []

    def try_lock(step, loss):
        if step == 1:
            with pytest.raises(OutputError, match="in use by another process"):
                with directory_lock(tmp_path):
                    pass
            seen.append(step)

    train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=2, eval_every=2), tmp_path,
          progress=False, on_step=try_lock)
    assert seen == [1]
    with directory_lock(tmp_path):  # released at the end
        pass


def test_an_unwritable_output_is_refused_before_training(bars, tmp_path):
    task, data, model = bars
    (tmp_path / "file").write_text("not a directory")
    steps = []
    with pytest.raises(OutputError, match="cannot create the output directory"):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(), tmp_path / "file" / "run", progress=False,
              on_step=lambda s, loss: steps.append(s))
    assert steps == []
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(OutputError, match="not writable"):
            train(fresh_sop(task, model), data.train, data.val, small_cfg(), ro, progress=False)


@pytest.fixture
def six_steps(bars, tmp_path):
    task, data, model = bars
    train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=6), tmp_path, progress=False)
    return tmp_path


def test_resume_with_a_changed_configuration_says_what_differs(bars, six_steps):
    task, data, model = bars
    with pytest.raises(ResumeError, match=r"SOP tau: 0.25 -> 0.3; train lr: 0.002 -> 0.001.*allow_config_change"):
        train(fresh_sop(task, model, tau=0.3), data.train, data.val, small_cfg(steps=6, lr=1e-3), six_steps,
              resume=True, progress=False)
    # how often last/ is written changes nothing: allowed
    train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=6, checkpoint_every=3), six_steps,
          resume=True, progress=False)
    # an explicit change is allowed and applied
    res = train(fresh_sop(task, model, tau=0.3), data.train, data.val, small_cfg(steps=8), six_steps, resume=True,
                progress=False, allow_config_change=True)
    assert res.best_step in (6, 8)
    assert json.loads((six_steps / "last" / "config.json").read_text())["tau"] == 0.3
    assert json.loads((six_steps / "last" / "trainer_state.json").read_text())["step"] == 8


@pytest.mark.parametrize("damage, error, match", [
    ("no-rng", ResumeError, "has no random-number state"),
    ("no-optimizer-file", ResumeError, "lacks optimizer.safetensors"),
    ("no-moments", ResumeError, "holds no optimiser state"),
    ("wrong-moments", ResumeError, "has shape"),
    ("no-optimizer-groups", ConfigError, r"missing fields \['optimizer'\]"),
    ("bad-rng", ResumeError, "random-number state .* has shape"),
])
def test_resume_from_an_incomplete_checkpoint_is_refused_clearly(bars, six_steps, damage, error, match):
    task, data, model = bars
    last = six_steps / "last"
    tensors = load_tensors(last / "optimizer.safetensors")
    if damage == "no-rng":
        del tensors["rng.torch"]
    elif damage == "no-moments":
        tensors = {"rng.torch": tensors["rng.torch"]}
    elif damage == "wrong-moments":
        name = next(k for k in tensors if k.endswith(".exp_avg"))
        tensors[name] = torch.zeros(3)
    elif damage == "bad-rng":
        tensors["rng.torch"] = tensors["rng.torch"][:10]
    save_tensors(last / "optimizer.safetensors", tensors)
    if damage == "no-optimizer-file":
        (last / "optimizer.safetensors").unlink()
    if damage == "no-optimizer-groups":
        st = json.loads((last / "trainer_state.json").read_text())
        del st["optimizer"]
        (last / "trainer_state.json").write_text(json.dumps(st))
    with pytest.raises(error, match=match):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=6), six_steps, resume=True,
              progress=False)


def test_float_class_targets_are_refused_not_truncated(bars, tmp_path):
    task, data, model = bars
    x, y = data.train.tensors
    floats = TensorDataset(x, y.float() + 0.9)  # 2.9 would become class 2
    steps = []
    with pytest.raises(InputError, match="classification targets must be integer class indices, got dtype "
                                         "torch.float32"):
        train(fresh_sop(task, model), floats, data.val, small_cfg(), tmp_path, progress=False,
              on_step=lambda s, loss: steps.append(s))
    assert steps == []


def test_a_run_saved_in_the_0_1_layout_resumes_without_the_flag(bars, six_steps):
    """A checkpoint written before format_version and registered names is the same configuration."""
    task, data, model = bars
    path = six_steps / "last" / "config.json"
    cfg = json.loads(path.read_text())
    b = cfg["backbone"]
    b["factory"], b["factory_kwargs"] = "sumofparts.tasks.synthetic:BarsCNN", b.pop("architecture_kwargs")
    del b["architecture"], b["class_name"], cfg["format_version"]
    path.write_text(json.dumps(cfg))
    train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=6, checkpoint_every=3), six_steps,
          resume=True, progress=False)
    # ... while another backbone is a difference
    b["factory_kwargs"] = {"num_classes": 5}
    path.write_text(json.dumps(cfg))
    with pytest.raises(ResumeError, match="SOP backbone spec"):
        train(fresh_sop(task, model), data.train, data.val, small_cfg(steps=6), six_steps, resume=True,
              progress=False)
