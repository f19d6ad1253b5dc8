"""The `sop` command end to end on the tiny synthetic task: run, explain, train --resume, tasks."""
from __future__ import annotations

import json

from sumofparts.cli import main


def test_sop_run_writes_results_evaluation_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "synthetic", "--size", "small", "--steps", "20", "--eval-n", "8", "--methods", "sop",
               "gradxinput", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
               "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| SOP |" in printed and "report:" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "synthetic" and results["command"].startswith("sop run synthetic")
    sop_row = next(r for r in results["rows"] if r["model"] == "SOP")
    assert sop_row["max gap (logit - b - Σ groups)"] < 1e-5  # the prediction is the sum of the groups
    assert 0.0 <= results["sop"]["error"] <= 1.0 and results["backbone"]["error"] < 0.2
    assert {r["method"] for r in results["evaluation"]["faithfulness"]} >= {"SOP", "Grad×Input"}
    assert results["peak_memory_mib"] > 0
    html = (out / "report.html").read_text()
    assert "https://" not in html and "http://" not in html
    assert (out / "sop" / "best" / "model.safetensors").is_file()


def test_sop_train_resume_and_explain(tmp_path, capsys):
    ck = tmp_path / "sop"
    common = ["--task", "synthetic", "--size", "small", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
              "--threads", "1", "--out", str(ck)]
    assert main(["train", *common, "--steps", "6", "--train-set", "eval_every=3"]) == 0
    # more steps change the learning-rate schedule: refused unless allowed explicitly, saying what differs
    capsys.readouterr()
    assert main(["train", *common, "--steps", "9", "--train-set", "eval_every=3", "--resume"]) == 2
    assert "train steps: 6 -> 9" in capsys.readouterr().err
    assert main(["train", *common, "--steps", "9", "--train-set", "eval_every=3", "--resume",
                 "--allow-config-change"]) == 0
    state = json.loads((ck / "last" / "trainer_state.json").read_text())
    assert state["step"] == 9
    capsys.readouterr()
    assert main(["explain", str(ck / "best"), "--task", "synthetic", "--size", "small", "--index", "2",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "sum of shares" in text
    shares, output = text.split("sum of shares = ")[1].split(" = output ")
    assert abs(float(shares) - float(output)) < 1e-5


def test_sop_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert names >= {"cosmology", "fashion", "sentiment", "synthetic", "cosmogrid", "imagenet-s", "multirc"}


def test_bad_arguments_give_a_clear_error(tmp_path, capsys):
    rc = main(["run", "nope", "--out", str(tmp_path)])
    assert rc == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- one-line errors (issue 10)

def one_line_error(capsys, argv):
    """Run ``sop argv``; it must fail with exit status 2 and exactly one line on stderr."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_user_mistakes_get_one_line_and_no_traceback(tmp_path, capsys):
    import torch

    (tmp_path / "file").write_text("x")
    train = ["train", "--task", "synthetic", "--size", "small", "--no-progress", "--out", str(tmp_path / "o")]
    cases = [
        (["train", "--threads", "-3"], "argument --threads: expected an integer >= 1, got '-3'"),
        (["run", "synthetic", "--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
        ([*train, "--set", "generator_scale=NaN"], "error: --set generator_scale must be a finite number"),
        ([*train, "--set", "sequential_heads=no"], "error: --set sequential_heads must be a boolean"),
        ([*train, "--train-set", "lr=abc"], "error: --train-set lr must be a finite number in (0, 10], got 'abc'"),
        ([*train, "--set", "groups=3"], "error: --set: unknown key 'groups'"),
        ([*train, "--train-set", "learning_rate=1"], "error: --train-set: unknown key 'learning_rate'"),
        ([*train, "--out", str(tmp_path / "file" / "run")], "error: cannot create the output directory"),
        (["train", "--task", "nope"], "error: unknown task 'nope'"),
        ([*train, "--device", "tpu:0"], "error: --device must be cpu, cuda, cuda:N or mps, got 'tpu:0'"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*train, "--device", "cuda"], "error: --device cuda: CUDA is not available on this machine"))
    for argv, expected in cases:
        line = one_line_error(capsys, argv)
        assert expected in line, (argv, line)


def test_explaining_a_crafted_checkpoint_is_a_one_line_refusal(tmp_path, capsys):
    from conftest import tiny_cnn

    from sumofparts import SumOfParts

    ck = SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", grid=(4, 4), num_groups=4,
                                  tau=0.25).save_pretrained(tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["backbone"]["factory"] = "os:system"
    (ck / "config.json").write_text(json.dumps(cfg))
    line = one_line_error(capsys, ["explain", str(ck), "--task", "synthetic", "--size", "small"])
    assert "factory string 'os:system'" in line and "backbone=model" in line


def test_a_real_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import pytest

    import sumofparts.pipeline as pipeline

    def bug(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(pipeline, "build_sop", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["train", "--task", "synthetic", "--size", "small", "--out", str(tmp_path / "o"), "--no-progress"])


def test_sop_run_resume_continues_the_evaluation_from_its_shards(tmp_path, capsys, monkeypatch):
    from sumofparts.evaluation import evaluate as evaluate_module

    out = tmp_path / "run"
    args = ["run", "synthetic", "--size", "small", "--steps", "6", "--eval-n", "16", "--methods", "sop",
            "gradxinput", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--threads", "1"]
    assert main(args) == 0
    first = json.loads((out / "evaluation" / "evaluation.json").read_text())
    shards = sorted((out / "evaluation" / "shards").glob("batch-*.safetensors"))
    assert shards  # as if the run had been stopped after these shards were written
    real = evaluate_module.evaluate_batch
    calls = []

    def counting(*a, **k):
        calls.append(a[2].index)
        return real(*a, **k)

    monkeypatch.setattr(evaluate_module, "evaluate_batch", counting)
    assert main([*args, "--resume"]) == 0
    assert calls == []  # every batch comes from its shard; nothing is computed again
    again = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert again["batches_resumed"] == len(shards)
    assert again["accuracy"] == first["accuracy"] and again["faithfulness"] == first["faithfulness"]
    # other evaluation settings cannot take over these shards, unless the change is allowed
    capsys.readouterr()
    changed = [*args[:7], "12", *args[8:]]
    assert main([*changed, "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    calls.clear()
    assert main([*changed, "--resume", "--allow-config-change"]) == 0
    assert calls == list(range(len(shards)))  # started over
