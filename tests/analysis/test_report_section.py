"""The report's section on concepts and comparison: read from a run directory, embedded, small."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from sumofparts.analysis.html import analysis_payload, render_analysis
from sumofparts.model import SOPConfig, SumOfParts
from sumofparts.report.build import write_task_report
from sumofparts.tasks import TaskData
from sumofparts.tasks.synthetic import BarsCNN, SyntheticTask, make_bars


def tiny_synthetic():
    """An untrained SOP around an untrained BarsCNN on a few bars images (the report only draws it)."""
    torch.manual_seed(0)
    x, y, fg = make_bars(6, seed=5)
    ds = TensorDataset(x, y)
    data = TaskData(name="synthetic", kind="classification", train=ds, val=ds, test=ds,
                    output_names=["none", "vertical", "horizontal", "both"], test_foreground=fg)
    task = SyntheticTask()
    return SumOfParts(task.make_adapter(BarsCNN().eval()), SOPConfig.from_dict(task.sop_defaults)).eval(), data

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "concepts").mkdir(parents=True)
    (run / "compare").mkdir()
    sig = {"concept": "void", "output": "Omega_m", "layer": "pool3", "tcav": 0.91, "random_tcav": 0.48,
           "direction": "+", "cav_accuracy": 0.8, "p_holm": 1.2e-5}
    (run / "concepts" / "concepts.json").write_text(json.dumps({
        "model": "the backbone", "command": "sop concepts cosmology", "n_tests": 36, "n_significant": 1,
        "alpha": 0.05, "correction": "holm", "n_random": 20, "set_size": 50, "significant": [sig],
        "tcav_vs_sop": {"rows": [{"concept": "void", "output": "Omega_m", "tcav_significant_layers": ["pool3 (+)"],
                                  "tcav_layer": "pool3", "tcav_effect": 0.43, "sop_weight_share": 0.6,
                                  "sop_group_share": 0.2, "sop": "enriched", "agrees": True}],
                        "sentences": ["void for Omega_m: TCAV: significant at pool3 (+) -> agree."]}}))
    (run / "concepts" / "concepts.png").write_bytes(PNG)
    (run / "compare" / "compare.json").write_text(json.dumps({
        "a": "backbone", "b": "generator copy", "a_spec": "backbone", "b_spec": "generator:x", "n": 500,
        "metrics": ["cka_linear"], "diagonal": [{"layer": "pool2", "cka_linear": 0.95}], "command": "sop compare"}))
    (run / "compare" / "compare_heatmaps.png").write_bytes(PNG)
    return run


def test_payload_and_html_from_a_run_directory(tmp_path):
    assert analysis_payload(tmp_path) is None and render_analysis(None) == ""
    section = analysis_payload(_run_dir(tmp_path))
    assert section["concepts"]["figure"].startswith("data:image/png;base64,")
    assert section["concepts"]["tcav_vs_sop"]["figure"] is None  # no tcav_vs_sop.png written
    assert list(section["compare"]["figures"]) == ["heat maps"]
    html = render_analysis(section)
    assert "Significant concepts (TCAV)" in html and "<td>pool3</td>" in html and "<td>0.91</td>" in html
    assert "TCAV beside SOP" in html and "agree" in html and "<td>0.95</td>" in html
    assert "<td>1.20e-05</td>" in html  # a p-value is not rounded to 0


def test_the_task_report_shows_the_section_once(tmp_path):
    sop, data = tiny_synthetic()
    run = _run_dir(tmp_path)
    path = write_task_report("synthetic", sop, data, run, methods=[], n_examples=2)
    text = path.read_text()
    assert text.count('id="analysis"') == 1 and "Significant concepts (TCAV)" in text
    blob = re.search(r'<script type="application/json" id="sop-data">(.*?)</script>', text, re.S).group(1)
    assert "analysis" not in json.loads(blob)  # the figures are not embedded a second time
    assert not re.search(r"https?://", text)
    assert torch.is_tensor(data.test[0][0])
