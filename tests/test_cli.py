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
    assert main(["train", *common, "--steps", "9", "--train-set", "eval_every=3", "--resume"]) == 0
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
