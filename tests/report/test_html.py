"""The HTML report: built from the tiny synthetic task, self-contained, schema as documented."""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch.utils.data import TensorDataset

from sumofparts.model import SOPConfig, SumOfParts
from sumofparts.report.html import SCHEMA, build_report, collect_payload, render_html
from sumofparts.tasks import TaskData
from sumofparts.tasks.synthetic import BarsCNN, SyntheticTask, make_bars

torch.set_num_threads(1)
NAMES = ["none", "vertical", "horizontal", "both"]


def tiny_synthetic(n: int = 12, train_steps: int = 5):
    """An SOP around an untrained BarsCNN on a few bars images, trained for a few steps."""
    torch.manual_seed(0)
    x, y, fg = make_bars(n, seed=5)
    ds = TensorDataset(x, y)
    data = TaskData(name="synthetic", kind="classification", train=ds, val=ds, test=ds, output_names=NAMES,
                    test_foreground=fg)
    task = SyntheticTask()
    sop = SumOfParts(task.make_adapter(BarsCNN().eval()), SOPConfig.from_dict(task.sop_defaults))
    opt = torch.optim.AdamW(sop.trainable_parameters(), lr=1e-2)
    for _ in range(train_steps):
        loss = torch.nn.functional.cross_entropy(sop(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sop.eval(), data


EVAL = {
    "task": "synthetic", "metric": "error", "kind": "classification",
    "accuracy": [{"method": "SOP", "error": 0.25, "purity": 0.6, "n": 12},
                 {"method": "LIME-F", "error": 0.5, "purity": float("nan"), "n": 12}],
    "accuracy_columns": ["method", "error", "purity", "n"],
    "faithfulness": [{"method": "SOP", "fidelity": 0.0, "insertion": 0.9, "deletion": 0.1}],
    "faithfulness_columns": ["method", "fidelity", "insertion", "deletion"],
    "notes": ["LIME-F: purity: no foreground"],
    "curves": {"SOP": {"fractions": [0.5, 1.0], "insertion": [0.5, 0.9], "deletion": [0.3, 0.1]}},
    "command": "sop evaluate synthetic --n 12",
}
RESULTS = {"rows": [{"model": "backbone (BarsCNN)", "error": 0.1, "n_test": 12},
                    {"model": "SOP", "error": 0.2, "n_test": 12}], "command": "sop run synthetic"}


@pytest.fixture(scope="module")
def payload():
    sop, data = tiny_synthetic()

    def grad_x_input(inputs, target):
        x = inputs.clone().requires_grad_(True)
        out = sop.backbone(x).gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, x)
        return g * x

    def broken(inputs, target):
        raise RuntimeError("boom")

    return collect_payload(sop, data, n_examples=3, methods={"Grad×Input": grad_x_input, "broken": broken},
                           eval_tables=EVAL, results=RESULTS)


def test_payload_schema(payload):
    assert payload["schema"] == SCHEMA
    assert payload["task"]["modality"] == "image" and payload["task"]["output_names"] == NAMES
    assert len(payload["examples"]) == 3
    ex = payload["examples"][0]
    assert ex["thumbnail"].startswith("data:image/png;base64,")
    assert len(ex["groups"]) == 8
    weights = [g["weight"] for g in ex["groups"]]
    assert weights == sorted(weights, reverse=True)
    assert abs(sum(weights) - 1) < 1e-4  # sparsemax
    for g in ex["groups"]:
        assert g["image"].startswith("data:image/png;base64,") and isinstance(g["agrees"], bool)
        assert g["zero_weight"] == (g["weight"] == 0)
        assert g["agrees"] == (g["predicted"] == ex["prediction"])
    assert ex["attribution"]["image"].startswith("data:image/png") and ex["attribution"]["peak"] >= 0
    assert list(ex["methods"]) == ["Grad×Input"]
    assert "boom" in ex["method_errors"]["broken"] and any("broken" in n for n in payload["notes"])
    assert payload["tables"]["curves_figure"].startswith("data:image/png;base64,")
    json.dumps(payload, allow_nan=False)  # plain JSON types only


def test_report_is_self_contained(payload, tmp_path):
    path = build_report(payload, tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text.lower() and not re.search(r"<script[^>]+src=", text, re.I)
    for src in re.findall(r"""src="([^"]+)\"""", text):
        assert src.startswith("data:image/png;base64,")
    data = json.loads(re.search(r'<script type="application/json" id="sop-data">(.*?)</script>', text, re.S).group(1))
    uris = [data["examples"][0]["thumbnail"]] + [g["image"] for g in data["examples"][0]["groups"]]
    assert all(u.startswith("data:image/png;base64,") for u in uris)
    # header, scores and both tables, with N/A for the NaN cell
    for needle in ("Sum-of-Parts report: synthetic", "BarsCNN", "backbone (BarsCNN)", "Accuracy and purity",
                   "Faithfulness", "N/A", 'id="thumbs"', 'id="group-panel"', 'id="methods-panel"',
                   "sop evaluate synthetic --n 12"):
        assert needle in text


def test_page_inlines_the_asset_files_and_the_package_ships_them(payload):
    """The style sheet and the script are the files under report/assets, inlined verbatim (after the
    colour variables), and pyproject's package data names every one of them."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    from sumofparts.report import figures as F
    from sumofparts.report.html import ASSETS

    text = render_html(payload)
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    assert style.startswith(f":root {{ --agree: {F.AGREE_COLOR}; --disagree: {F.DISAGREE_COLOR}; }}")
    assert style.endswith((ASSETS / "report.css").read_text(encoding="utf-8"))
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    assert scripts == [(ASSETS / "report.js").read_text(encoding="utf-8")]
    assert "%%" not in style and "#thumbs button.active" in style and "function show(i)" in scripts[0]

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sumofparts"]
    shipped = sorted(f.name for f in ASSETS.iterdir() if any(fnmatch.fnmatch(f"report/assets/{f.name}", g) for g in globs))
    assert shipped == sorted(f.name for f in ASSETS.iterdir()) == ["report.css", "report.js"]


def test_report_escapes_and_refuses_bad_payload(payload, tmp_path):
    evil = dict(payload, title="</script><script>alert(1)</script>")
    text = render_html(evil)
    assert "<script>alert(1)" not in text
    with pytest.raises(ValueError, match="missing"):
        render_html({"title": "x"})
    with pytest.raises(TypeError):
        render_html([])


class _TextSet(torch.utils.data.Dataset):
    def __init__(self, batch, labels):
        self.batch, self.labels = batch, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}, self.labels[i]


def test_text_payload_and_report(tmp_path):
    from conftest import text_batch, tiny_bert

    torch.manual_seed(0)
    batch = text_batch(B=3, L=12)
    ds = _TextSet(batch, torch.tensor([0, 1, 1]))
    data = TaskData(name="text-standin", kind="classification", train=ds, val=ds, test=ds,
                    output_names=["rotten", "fresh"])
    sop = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=4, tau=0.3).eval()

    def ones(inputs, target):
        return inputs["attention_mask"].float()

    p = collect_payload(sop, data, n_examples=2, methods={"ones": ones})
    ex1 = p["examples"][1]
    n_real = int(batch["attention_mask"][1].sum())
    assert p["task"]["modality"] == "text" and ex1["thumbnail"] is None and ex1["snippet"]
    assert len(ex1["tokens"]) == n_real
    assert all(len(g["tokens_in"]) == n_real and g["image"] is None for g in ex1["groups"])
    assert len(ex1["attribution"]["scores"]) == n_real and ex1["methods"]["ones"]["scores"] == [1.0] * n_real
    text = build_report(p, tmp_path / "t.html").read_text()
    assert "https://" not in text and "http://" not in text


def test_regression_payload():
    from torch.utils.data import TensorDataset as TD

    from sumofparts.adapters import CNNAdapter

    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    ds = TD(x, torch.rand(4, 2))
    data = TaskData(name="cosmology", kind="regression", train=ds, val=ds, test=ds,
                    output_names=["Omega_m", "sigma_8"])
    sop = SumOfParts(CNNAdapter(BarsCNN(num_classes=2).eval(), feature_layer="pool2", classifier="head",
                                grid=(4, 4)), SOPConfig(num_groups=6, num_heads=2, tau=0.25, task="regression"))
    p = collect_payload(sop, data, n_examples=2, methods=None, target=1)
    ex = p["examples"][0]
    assert ex["target"] == "sigma_8" and "Omega_m = " in ex["prediction"] and "sigma_8 = " in ex["label"]
    assert all(g["agrees"] is None and g["predicted"].startswith("sigma_8 = ") for g in ex["groups"])
    assert p["explained"] == "sigma_8"


REGRESSION_EVAL = {
    "task": "cosmology", "metric": "mse", "kind": "regression",
    "accuracy": [{"method": "backbone", "mse": 0.003, "mse_std": 0.001, "mse_Omega_m": 0.002, "r2_Omega_m": 0.9,
                  "mse_sigma_8": 0.004, "r2_sigma_8": 0.96, "purity": None, "iou": None, "nonfinite": "0", "n": 500},
                 {"method": "training mean", "mse": 0.015, "mse_std": 0.001, "mse_Omega_m": 0.02,
                  "r2_Omega_m": -0.01, "mse_sigma_8": 0.01, "r2_sigma_8": -0.002, "purity": None, "iou": None,
                  "nonfinite": "0", "n": 500}],
    "accuracy_columns": ["method", "mse", "mse_std", "mse_Omega_m", "r2_Omega_m", "mse_sigma_8", "r2_sigma_8",
                         "purity", "iou", "nonfinite", "n"],
    "faithfulness": [{"method": "SOP", "protocol": "groups re-made at τ = k; SOP's output (paper)", "insertion": 0.7,
                      "deletion": 0.2, "gap": 0.1, "n": 500}],
    "faithfulness_columns": ["method", "protocol", "insertion", "deletion", "gap", "n"],
    "notes": [], "command": "sop evaluate cosmology --n 500",
    "curves": {"sop": {"label": "SOP (groups re-made at τ = k)", "fractions": [0.5, 1.0], "insertion": [0.4, 1.0],
                       "deletion": [0.3, 0.0]}},
}


def test_regression_tables_show_each_output_and_the_training_mean():
    from sumofparts.report.html import _tables_payload

    tables = _tables_payload(REGRESSION_EVAL)
    acc = tables["accuracy"]
    assert acc["columns"] == ["method", "mse", "mse_std", "mse_Omega_m", "r2_Omega_m", "mse_sigma_8", "r2_sigma_8",
                              "nonfinite", "n"]  # purity and IoU are empty on every row: left out
    assert [r["method"] for r in acc["rows"]] == ["backbone", "training mean"]
    assert "R² = 1 − SSE/SST" in acc["title"] and "training-mean" in acc["title"]
    assert "share of the way from the empty input's prediction" in tables["curves_caption"]
    text = render_html({"task": {"name": "cosmology", "kind": "regression"}, "examples": [], "tables": tables})
    for needle in ("r2_Omega_m", "training mean", "-0.01", "share of the way"):
        assert needle in text
