"""Sharded evaluation: two gloo processes give the tables of one process; an interrupted run resumes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import sumofparts.evaluation.evaluate as evaluation
from eval_helpers import trained  # noqa: F401 (fixture)
from sumofparts.evaluation import evaluate_task

torch.set_num_threads(1)

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
from sumofparts.cli import init_distributed
from sumofparts.evaluation import evaluate_task
from sumofparts.model import SumOfParts
from sumofparts.tasks import get_task
checkpoint, cache, out = sys.argv[1:4]
init_distributed()  # gloo on CPU, from torchrun's environment
sop = SumOfParts.from_pretrained(checkpoint)
data = get_task("synthetic").load_data(cache, size="small", progress=False)
evaluate_task((sop, data), **KW, out_dir=out, progress=False)
dist.destroy_process_group()
"""
KW = dict(methods=["sop", "gradxinput", "bagnet"], n=14, batch_size=4, n_boot=100,
          method_options={"bagnet": {"steps": 20}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_tables_of_one(trained, tmp_path):
    from sumofparts.model import SumOfParts

    script = tmp_path / "job.py"
    script.write_text(SCRIPT.replace("**KW", f"**{KW!r}"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(trained.best), str(trained.root / "cache"),
                               str(tmp_path / "two")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    single = evaluate_task((SumOfParts.from_pretrained(trained.best), trained.data), **KW, out_dir=tmp_path / "one",
                           progress=False)
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    two = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    one = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    for key in ("accuracy", "faithfulness", "notes", "curves"):
        assert one[key] == two[key], key  # every number, ± and note identical
    assert two["world_size"] == 2 and single.meta["world_size"] == 1
    assert len(list((tmp_path / "two" / "shards").glob("batch-*.safetensors"))) == 4  # 14 items in batches of 4
    assert (tmp_path / "two" / "shards" / "bagnet.safetensors").is_file()  # trained once, by rank 0


def test_distributed_needs_torchrun(trained, capsys, monkeypatch):
    from sumofparts.cli import main

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = main(["evaluate", "synthetic", "--checkpoint", str(trained.best), "--size", "small", "--methods", "sop",
               "--n", "2", "--no-progress", "--distributed"])
    assert rc == 2 and "torchrun" in capsys.readouterr().err


def test_an_interrupted_evaluation_resumes_from_its_shards(trained, tmp_path, monkeypatch):
    kw = dict(methods=["sop", "gradxinput"], n=20, batch_size=6, progress=False, n_boot=100)
    reference = evaluate_task((trained.sop, trained.data), out_dir=tmp_path / "ref", **kw)
    real = evaluation.evaluate_batch
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the third batch never finishes
        calls.append(args[2].index)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_task((trained.sop, trained.data), out_dir=tmp_path / "run", **kw)
    shards = tmp_path / "run" / "shards"
    assert sorted(p.name for p in shards.glob("batch-*")) == ["batch-00000.safetensors", "batch-00001.safetensors"]
    assert not list(shards.glob(".*.tmp"))  # nothing half-written

    calls.clear()

    def counting(*args, **kwargs):
        calls.append(args[2].index)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_batch", counting)
    resumed = evaluate_task((trained.sop, trained.data), out_dir=tmp_path / "run", resume=True, **kw)
    assert calls == [2, 3]  # only the batches without a shard
    assert resumed.accuracy == reference.accuracy and resumed.faithfulness == reference.faithfulness
    assert resumed.meta["batches_resumed"] == 2
    # other settings cannot resume these shards; without --resume they are replaced
    with pytest.raises(ValueError, match="cannot resume.*settings"):
        evaluate_task((trained.sop, trained.data), out_dir=tmp_path / "run", resume=True, **{**kw, "steps": 5})
    calls.clear()
    evaluate_task((trained.sop, trained.data), out_dir=tmp_path / "run", **{**kw, "steps": 5})
    assert calls == [0, 1, 2, 3]
