"""End to end: `evaluate_task` and `sop evaluate` with the real methods, and the meaning of each column."""
from __future__ import annotations

import csv
import json
import pytest
import torch
from eval_helpers import linear_task, test_methods, trained  # noqa: F401 (fixtures)

from sumofparts import metrics as M
from sumofparts.evaluation import evaluate_task

torch.set_num_threads(1)


def test_evaluate_task_writes_both_tables(trained, tmp_path):
    out = tmp_path / "ev"
    tables = evaluate_task((trained.sop, trained.data), methods=["sop", "gradxinput", "intgrad", "gradcam", "rise",
                                                                 "lime", "bagnet"],
                           n=16, seed=3, out_dir=out, progress=False, batch_size=8, n_boot=200,
                           method_options={"intgrad": {"n_steps": 8}, "bagnet": {"steps": 30}},
                           command="sop evaluate synthetic --n 16")
    acc = [r["method"] for r in tables.accuracy]
    faith = [(r["method"], r["protocol"]) for r in tables.faithfulness]
    assert acc == ["backbone", "SOP", "Grad×Input-F", "IG-F", "GradCAM-F", "RISE-F", "LIME-F", "BagNet"]
    assert [m for m, _ in faith] == ["SOP", "SOP", "Grad×Input", "IG", "GradCAM", "RISE", "LIME", "BagNet"]
    assert "paper" in faith[0][1] and "cells" in faith[1][1]  # SOP under both protocols
    budget = trained.sop.config.num_groups + 1
    assert tables.meta["budget"] == budget
    assert tables.meta["method_options"]["lime"]["n_samples"] == budget  # the sampling methods get SOP's budget
    assert tables.meta["method_options"]["rise"]["n_masks"] == budget
    assert tables.row("faithfulness", "RISE")["passes"] == budget  # counted while it explains
    assert tables.row("faithfulness", "SOP", "paper")["passes"] == budget  # G groups + the encoder copy
    assert tables.row("faithfulness", "IG")["passes"] == 8
    # fidelity: 0 for SOP and BagNet by construction, ≈ 0 for IG against f(x) − f(∅); N/A for RISE and
    # Grad-CAM, whose scores are not meant to add up, with the reason
    assert tables.row("faithfulness", "SOP", "paper")["fidelity"] < 1e-6
    assert tables.row("faithfulness", "BagNet")["fidelity"] < 1e-6
    for name in ("RISE", "GradCAM"):
        assert tables.row("faithfulness", name)["fidelity"] is None
        assert any(n.startswith(f"{name} (") and "fidelity: N/A" in n for n in tables.notes)
    for r in tables.accuracy:
        assert 0.0 <= r["error"] <= 1.0 and r["n"] == 16 and r["nonfinite"] == "0"
    for r in tables.accuracy[1:]:
        assert 0.0 <= r["purity"] <= 1.0 and 0.0 <= r["iou"] <= r["purity"] + 1e-12
    for r in tables.faithfulness:
        assert 0 < r["insertion_raw"] <= 1 and 0 < r["deletion_raw"] <= 1
        assert r["insertion"] == pytest.approx(r["insertion"]) and r["insertion_std"] >= 0
        assert r["insertion_paper"] is not None and r["deletion_paper"] is not None
    assert any("empty" in n and "purity" in n for n in tables.notes)  # the "none" class has no foreground

    files = {p.name for p in out.iterdir()}
    assert {"evaluation.md", "evaluation.json", "evaluation_accuracy.csv", "evaluation_faithfulness.csv",
            "shards"} <= files
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["seed"] == 3 and saved["n"] == 16 and saved["command"] == "sop evaluate synthetic --n 16"
    assert saved["versions"]["torch"] == torch.__version__ and saved["versions"]["captum"]
    assert set(saved["seconds_per_item"]) >= {"sop", "sop-cells", "gradxinput", "lime"}
    assert all(v > 0 for k, v in saved["cpu_seconds_per_item"].items() if k != "_shared")
    assert len(saved["curves"]["sop"]["insertion"]) == 10 and "accuracy" in saved["curves"]["sop"]["sparsity"]
    with open(out / "evaluation_accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == acc and list(rows[0]) == tables.accuracy_columns
    with open(out / "evaluation_faithfulness.csv") as fh:
        header = next(csv.reader(fh))
    assert header == tables.faithfulness_columns and "deletion_paper" in header and "protocol" in header
    md = (out / "evaluation.md").read_text()
    for text in ("## Accuracy and purity", "## Faithfulness", "deletion (paper: ÷ curve at k=1)", "passes / item",
                 "constant maps", "non-finite", "sop evaluate synthetic --n 16", "seed 3", "Forward-pass budget"):
        assert text in md


def test_the_sop_cells_row_is_sop_on_the_masked_inputs(trained):
    """The top-k-cells protocol scores SOP's own output on the input with its top cells kept, as for any model."""
    sop, data = trained.sop, trained.data
    tables = evaluate_task((sop, data), methods=["sop"], n=4, progress=False, batch_size=4, n_boot=50, steps=4)
    x = torch.stack([data.test[i][0] for i in range(4)])
    with torch.no_grad():
        out = sop(x)
    t = out.logits.argmax(-1)
    attr = out.group_attributions.gather(2, t.view(-1, 1, 1).expand(-1, out.num_groups, 1))[..., 0]
    cells = torch.einsum("bg,bgn->bn", attr, out.masks.float())
    valid = torch.ones(4, 16, dtype=torch.bool)
    ranks = M.cell_ranks(cells, valid, M.tie_keys(range(4), 16, 1, 0)[:, 0])
    p = []
    for k in (4, 8, 12, 16):  # floor(k · 16) cells for k = 1/4 … 1
        kept = sop.backbone.mask_inputs(x, (ranks < k)[:, None])
        with torch.no_grad():
            p.append(sop(kept).logits.softmax(-1).gather(1, t.view(-1, 1))[:, 0])
    p = torch.stack(p, 1).double()
    expected = float((p.mean(1) / out.logits.softmax(-1).gather(1, t.view(-1, 1))[:, 0].double()).mean())
    assert tables.row("faithfulness", "SOP", "cells")["insertion"] == pytest.approx(expected, rel=1e-4)
    assert tables.row("faithfulness", "SOP", "cells")["insertion_raw"] == pytest.approx(float(p.mean()), rel=1e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_regression_tables_rank_the_exact_attribution_first_for_both_signs(test_methods, sign):
    """A linear regression backbone whose prediction lies above (+) or below (−) the empty input's."""
    g = torch.Generator().manual_seed(0)
    w = sign * torch.rand(1, 16, generator=g) + 0.3 * torch.randn(1, 16, generator=g)
    x = torch.rand(40, 1, 4, 4, generator=g) + 0.2
    y = (x.flatten(1) @ w.T) + 0.05 * torch.randn(40, 1, generator=g)
    sop, data = linear_task(w, torch.tensor([0.7]), x, y, train_y=torch.full((50, 1), 0.25))
    tables = evaluate_task((sop, data), methods=["exact", "noise", "reversed", "rise", "intgrad"], n=40,
                           progress=False, batch_size=16, n_boot=100)
    ins = {m: tables.row("faithfulness", m)["insertion"] for m in ("exact", "noise", "reversed")}
    dele = {m: tables.row("faithfulness", m)["deletion"] for m in ("exact", "noise", "reversed")}
    assert ins["exact"] > ins["noise"] > ins["reversed"] and ins["exact"] <= 1.0 + 1e-9
    assert dele["exact"] < dele["noise"] < dele["reversed"] and dele["exact"] >= 0.0
    assert tables.row("faithfulness", "exact")["insertion"] == pytest.approx(1.0, abs=0.35)
    # fidelity against f(x) − f(∅): 0 for the exact map and IG (not f(∅) = b² = 0.49)
    assert tables.row("faithfulness", "exact")["fidelity"] < 1e-10
    assert tables.row("faithfulness", "IG")["fidelity"] < 1e-8
    # RISE is told the task: it weighs its masks by the output value, not by a softmax over one output
    assert tables.meta["method_options"]["rise"]["task"] == "regression"
    # per-target MSE and R² beside the training-mean predictor
    back = tables.row("accuracy", "backbone")
    mean_row = tables.row("accuracy", "training mean")
    with torch.no_grad():
        pred = x.flatten(1) @ w.T + 0.7
    sse = float(((pred - y) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    assert back["mse_y0"] == pytest.approx(sse / 40, rel=1e-5) and back["r2_y0"] == pytest.approx(1 - sse / sst,
                                                                                                 rel=1e-5)
    assert mean_row["mse_y0"] == pytest.approx(float(((0.25 - y) ** 2).mean()), rel=1e-5)
    assert mean_row["r2_y0"] == pytest.approx(1 - float(((0.25 - y) ** 2).sum()) / sst, rel=1e-5)
    assert mean_row["r2_y0"] < 0  # the training mean (0.25) is not the evaluated items' mean
    assert "R² y0" in tables.markdown() and "| training mean |" in tables.markdown()


def test_ties_constant_maps_and_nonfinite_scores_are_counted(test_methods):
    g = torch.Generator().manual_seed(1)
    w = torch.linspace(-1, 2, 48).reshape(3, 16)
    x = torch.randn(24, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    sop, data = linear_task(w, torch.zeros(3), x, y, train_y=torch.zeros(10, dtype=torch.long),
                            kind="classification")
    tables = evaluate_task((sop, data), methods=["zero", "raster", "nanfirst", "exact"], n=24, progress=False,
                           batch_size=8, n_boot=50)
    zero, raster = tables.row("faithfulness", "zero"), tables.row("faithfulness", "raster")
    assert zero["constant_maps"] == 24 and raster["constant_maps"] == 0
    assert any(n.startswith("zero: 24 of 24 maps are constant") for n in tables.notes)
    # a constant map is not scored as the raster order (the old index tie-break)
    assert abs(zero["insertion_raw"] - raster["insertion_raw"]) > 0.02
    # NaN: one map per batch (3 of 24 items) has a NaN cell; its fidelity is NaN and left out, and counted
    nan_row = tables.row("faithfulness", "nanfirst")
    assert nan_row["n"] == 24 and nan_row["nonfinite"] == "fidelity 3, map 3"
    exact_row = tables.row("faithfulness", "exact")
    assert nan_row["fidelity"] == pytest.approx(exact_row["fidelity"], abs=1e-6)  # the mean of the 21 others
    assert any(n.startswith("nanfirst (") and "fidelity 3, map 3 of 24 items" in n for n in tables.notes)


def test_robustness_on_every_item_with_its_spread(trained):
    tables = evaluate_task((trained.sop, trained.data), methods=["gradxinput", "saliency"], n=12, progress=False,
                           batch_size=4, n_boot=50, robustness=True)
    for name in ("Grad×Input", "Saliency"):
        r = tables.row("faithfulness", name)
        assert r["infidelity"] > 0 and r["infidelity_std"] > 0 and r["max_sensitivity"] >= 0
    assert "infidelity ↓" in tables.markdown()


def test_unknown_methods_are_skipped_with_a_note(trained):
    tables = evaluate_task((trained.sop, trained.data), methods=["sop", "nosuch"], n=4, progress=False, n_boot=50)
    assert [r["method"] for r in tables.faithfulness] == ["SOP", "SOP"]
    assert any(n.startswith("nosuch: skipped") for n in tables.notes)
    assert tables.paths == {}  # no out_dir: nothing written


def test_progress_bar_names_the_method_and_the_examples(trained, capsys):
    evaluate_task((trained.sop, trained.data), methods=["sop", "gradxinput"], n=6, progress=True,
                  batch_size=3, n_boot=50)
    err = capsys.readouterr().err
    assert "evaluate sop-cells: examples 4-6/6" in err or "evaluate gradxinput: examples 4-6/6" in err


def test_sop_evaluate_command(trained, tmp_path, capsys):
    from sumofparts.cli import main

    out = tmp_path / "cli"
    rc = main(["evaluate", "synthetic", "--checkpoint", str(trained.best), "--size", "small", "--n", "8",
               "--methods", "sop", "gradxinput", "--out", str(out), "--no-progress", "--threads", "1",
               "--seed", "0", "--cache-dir", str(trained.root / "cache")])
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


def test_bad_arguments_are_refused(trained, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate_task((trained.sop, trained.data), methods=["sop"], n=2, progress=False, batch_size=0)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        evaluate_task((trained.sop, trained.data), methods=["sop"], n=0, progress=False)
    with pytest.raises(ValueError, match="tie_samples|samples must be >= 1"):
        evaluate_task((trained.sop, trained.data), methods=["sop"], n=2, progress=False, tie_samples=0)


class _Texts(torch.utils.data.Dataset):
    def __init__(self, batch, labels):
        self.batch, self.labels = batch, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}, self.labels[i]


def test_text_tasks_get_both_sop_protocols():
    """Text: the masked inputs SOP is run on are token ids with [MASK] (what the backbone sees as embeddings);
    an input with every token masked has no group, and SOP's prediction from no groups is its base value."""
    from conftest import text_batch, tiny_bert

    from sumofparts.adapters import BertAdapter
    from sumofparts.model import SOPConfig, SumOfParts
    from sumofparts.tasks import TaskData

    adapter = BertAdapter(tiny_bert())
    x = text_batch(6, L=16)  # 12 to 2 groupable tokens
    masks = torch.rand(6, 3, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        direct = adapter(adapter.restrict_inputs(x, masks)).reshape(6, 3, -1)
        grouped, _ = adapter.forward_groups(x, masks)
    torch.testing.assert_close(direct, grouped, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    sop = SumOfParts(adapter, SOPConfig(num_groups=4, num_heads=1, tau=0.25, generator_scale=0.1)).eval()
    ds = _Texts(x, torch.tensor([0, 1, 0, 1, 1, 0]))
    data = TaskData(name="text", kind="classification", train=ds, val=ds, test=ds, output_names=["neg", "pos"])
    tables = evaluate_task((sop, data), methods=["sop", "gradxinput"], n=6, progress=False, batch_size=3, n_boot=50)
    cells = tables.row("faithfulness", "SOP", "cells")
    assert cells["nonfinite"] == "0" and 0 < cells["insertion_raw"] <= 1 and 0 < cells["deletion_raw"] <= 1
    assert tables.row("faithfulness", "SOP", "paper")["fidelity"] < 1e-6
    assert tables.row("faithfulness", "SOP", "paper")["passes"] == 5  # G = 4 groups + the encoder (a dict batch)
