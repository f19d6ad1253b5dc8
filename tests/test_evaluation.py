"""End to end: `evaluate_task` and `sop evaluate` on the tiny synthetic task with a quickly trained SOP.

The attribution methods are small stand-ins defined here (the interface of
:mod:`sumofparts.attribution`), so these tests pin the evaluation itself; one test also runs
the real methods when they are installed.
"""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

import sumofparts.attribution as attribution_pkg
from sumofparts.evaluation import evaluate_task

torch.set_num_threads(1)


# -- stand-in methods (the sumofparts.attribution interface) -------------------------------------------
def _targets(target, B):
    t = torch.as_tensor(target).long()
    return t.expand(B).clone() if t.ndim == 0 else t


class StandInGradXInput:
    name, grouped = "gradxinput", False

    def __init__(self, adapter, **opts):
        self.adapter = adapter

    def attribute(self, x, target):
        x = x.detach().clone().requires_grad_(True)
        t = _targets(target, x.shape[0])
        (grad,) = torch.autograd.grad(self.adapter(x).gather(1, t[:, None]).sum(), x)
        return (grad * x).detach()

    def attribute_cells(self, x, target):
        return self.adapter.pool_to_cells(self.attribute(x, target), x)


class StandInOcclusion(StandInGradXInput):
    """Cell occlusion: the drop of the target logit when one cell is zeroed."""

    name = "occlusion"

    def attribute_cells(self, x, target):
        B, N = x.shape[0], self.adapter.num_cells(x)
        t = _targets(target, B)
        with torch.no_grad():
            full = self.adapter(x).gather(1, t[:, None])
            masks = ~torch.eye(N, dtype=torch.bool).expand(B, N, N)
            y, _ = self.adapter.forward_groups(x, masks)
        return full - y.gather(2, t.view(B, 1, 1).expand(B, N, 1)).squeeze(-1)


class StandInTopCells:
    """A grouped method: one group, the top 20% of the cells of a base attribution (an "-F" / FRESH)."""

    grouped = True

    def __init__(self, adapter, base, name):
        self.adapter, self.base, self.name = adapter, base, name

    def attribute_cells(self, x, target):
        return self.base.attribute_cells(x, target)

    def explain_groups(self, x, target):
        t = _targets(target, x.shape[0])
        cells = self.base.attribute_cells(x, t)
        k = max(1, int(0.2 * cells.shape[1]))
        keep = torch.zeros_like(cells, dtype=torch.bool).scatter_(1, cells.topk(k, dim=1).indices, True)
        with torch.no_grad():
            pred = self.adapter.forward_groups(x, keep[:, None])[0][:, 0]
        return SimpleNamespace(masks=keep[:, None], scores=pred.gather(1, t[:, None]), prediction=pred, target=t)


class StandInEnergy(StandInGradXInput):
    """A class-independent cell score (the input's energy), like FRESH's attention."""

    def attribute_cells(self, x, target):
        return self.adapter.pool_to_cells(x.detach() ** 2, x)


def _get_method(name, adapter, **opts):
    if name == "gradxinput":
        return StandInGradXInput(adapter)
    if name == "occlusion":
        return StandInOcclusion(adapter)
    if name == "gradxinput-f":
        return StandInTopCells(adapter, StandInGradXInput(adapter), name)
    if name == "fresh":
        return StandInTopCells(adapter, StandInEnergy(adapter), name)
    raise ValueError(f"unknown method {name!r}")


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setattr(attribution_pkg, "get_method", _get_method, raising=False)
    monkeypatch.setattr(attribution_pkg, "available_methods",
                        lambda: ["gradxinput", "gradxinput-f", "occlusion", "fresh"], raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic-task SOP trained for a few steps, saved where `sop run` would put it."""
    from sumofparts.pipeline import build_sop
    from sumofparts.training import TrainConfig, train

    root = tmp_path_factory.mktemp("eval")
    sop, data = build_sop("synthetic", cache_dir=root / "cache", size="small", progress=False)
    res = train(sop, data.train, data.val, TrainConfig(steps=30, batch_size=32, lr=2e-3, warmup_steps=5,
                                                       eval_every=30), root / "run" / "sop", progress=False)
    return SimpleNamespace(sop=sop.eval(), data=data, best=res.best_dir, root=root)


# -- tests ----------------------------------------------------------------------------------------
def test_evaluate_task_writes_both_tables(trained, stand_ins, tmp_path):
    out = tmp_path / "ev"
    tables = evaluate_task((trained.sop, trained.data), methods=["sop", "gradxinput", "occlusion", "fresh"],
                           n=20, seed=3, out_dir=out, progress=False, batch_size=8, n_boot=200,
                           command="sop evaluate synthetic --n 20")
    acc = [r["method"] for r in tables.accuracy]
    faith = [r["method"] for r in tables.faithfulness]
    assert acc == ["backbone", "SOP", "Grad×Input-F", "Occlusion-F", "FRESH"]
    assert faith == ["SOP", "Grad×Input", "Occlusion", "FRESH"]
    sop_acc, sop_faith = tables.row("accuracy", "SOP"), tables.row("faithfulness", "SOP")
    # SOP and FRESH are faithful by construction
    assert sop_faith["fidelity"] < 1e-6 and tables.row("faithfulness", "FRESH")["fidelity"] < 1e-6
    assert tables.row("faithfulness", "Occlusion")["fidelity"] > 0
    for r in tables.accuracy:
        assert 0.0 <= r["error"] <= 1.0 and (r["error_std"] >= 0 or math.isnan(r["error_std"]))
    for r in tables.accuracy[1:]:
        assert 0.0 <= r["purity"] <= 1.0 and 0.0 <= r["iou"] <= r["purity"] + 1e-12
    for r in tables.faithfulness:
        assert r["insertion"] > 0 and r["deletion"] > 0 and r["insertion_raw"] >= 0
    assert sop_acc["purity_authors_order"] is not None  # SOP has many groups: both orders are reported
    assert tables.row("accuracy", "backbone")["purity"] is None
    assert any(n.startswith("backbone: purity") for n in tables.notes)
    assert "gradxinput-f" in tables.row("accuracy", "Grad×Input-F")["source"]
    assert "no occlusion-f registered" in tables.row("accuracy", "Occlusion-F")["source"]

    files = {p.name for p in out.iterdir()}
    assert {"evaluation.md", "evaluation.json", "evaluation_accuracy.csv", "evaluation_faithfulness.csv"} <= files
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["seed"] == 3 and saved["n"] == 20 and saved["command"] == "sop evaluate synthetic --n 20"
    assert saved["versions"]["torch"] == torch.__version__ and saved["versions"]["captum"]
    assert [r["method"] for r in saved["accuracy"]] == acc
    assert len(saved["curves"]["sop"]["insertion"]) == 10 and "accuracy" in saved["curves"]["sop"]["sparsity"]
    with open(out / "evaluation_accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == acc
    assert list(rows[0]) == tables.accuracy_columns and "purity_std" in rows[0]
    with open(out / "evaluation_faithfulness.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:9] == ["method", "fidelity", "fidelity_std", "insertion", "insertion_std", "deletion",
                          "deletion_std", "insertion_raw", "deletion_raw"]
    md = (out / "evaluation.md").read_text()
    assert "## Accuracy and purity" in md and "## Faithfulness" in md and "sop evaluate synthetic --n 20" in md
    assert "seed 3" in md and "| SOP |" in md


def test_unknown_methods_are_skipped_with_a_note(trained, stand_ins):
    tables = evaluate_task((trained.sop, trained.data), methods=["sop", "nosuch"], n=4, progress=False,
                           n_boot=50)
    assert [r["method"] for r in tables.faithfulness] == ["SOP"]
    assert any(n.startswith("nosuch: skipped") for n in tables.notes)
    assert tables.paths == {}  # no out_dir: nothing written


def test_progress_bar_names_the_method_and_the_examples(trained, stand_ins, capsys):
    evaluate_task((trained.sop, trained.data), methods=["sop", "gradxinput"], n=6, progress=True,
                  batch_size=3, n_boot=50)
    err = capsys.readouterr().err
    assert "evaluate sop: examples 4-6/6" in err and "evaluate gradxinput: examples 1-3/6" in err


def test_sop_evaluate_command(trained, stand_ins, tmp_path, capsys):
    from sumofparts.cli import main

    out = tmp_path / "cli"
    rc = main(["evaluate", "synthetic", "--checkpoint", str(trained.best), "--size", "small", "--n", "8",
               "--methods", "sop", "gradxinput", "--out", str(out), "--no-progress", "--threads", "1",
               "--seed", "0"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "## Faithfulness" in printed and "| SOP |" in printed
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["command"].startswith("sop evaluate synthetic --methods sop gradxinput --n 8 --seed 0")
    assert saved["n"] == 8 and saved["task"] == "synthetic"


def test_missing_checkpoint_is_reported(tmp_path, capsys):
    from sumofparts.cli import main

    rc = main(["evaluate", "synthetic", "--checkpoint", str(tmp_path / "none"), "--size", "small",
               "--methods", "sop", "--no-progress"])
    assert rc == 2
    assert "no SOP checkpoint" in capsys.readouterr().err


def test_with_the_real_attribution_methods(trained):
    """Runs only once sumofparts.attribution provides get_method (written in parallel)."""
    if not hasattr(attribution_pkg, "get_method") or not hasattr(attribution_pkg, "available_methods"):
        pytest.skip("sumofparts.attribution.get_method is not available yet")
    wanted = [m for m in ("gradxinput", "gradcam") if m in attribution_pkg.available_methods()]
    if not wanted:
        pytest.skip("neither gradxinput nor gradcam is registered")
    tables = evaluate_task((trained.sop, trained.data), methods=["sop", *wanted], n=8, progress=False,
                           batch_size=8, n_boot=50)
    assert not [n for n in tables.notes if "skipped" in n]
    assert len(tables.faithfulness) == 1 + len(wanted) and len(tables.accuracy) == 2 + len(wanted)
    assert tables.row("faithfulness", "SOP")["fidelity"] < 1e-6
