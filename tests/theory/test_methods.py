"""Post-hoc methods on the polynomials, the theory table, its files and the CLI."""
import argparse
import json

import numpy as np
import pytest
import torch

from sumofparts.theory import (
    METHOD_NAMES,
    SumOfMonomials,
    binomial,
    run_method,
    run_methods,
    total_deletion_error,
    total_insertion_error,
)
from sumofparts.cli.theory import main, register
from sumofparts.theory.report import format_markdown, theory_rows, write_report

torch.set_num_threads(1)


def test_gradient_x_input_on_linear_models_is_exact():
    rng = np.random.default_rng(0)
    d = 7
    w = rng.normal(size=d)
    lin = SumOfMonomials(d, [[i] for i in range(d)], w.tolist(), const=-0.3)
    alpha = run_method("gradient_x_input", lin)
    np.testing.assert_allclose(alpha, w, atol=1e-12)
    assert total_insertion_error(lin, alpha) == pytest.approx(0.0, abs=1e-10)
    assert total_deletion_error(lin, alpha) == pytest.approx(0.0, abs=1e-10)
    torch.manual_seed(0)
    net = torch.nn.Linear(d, 1)
    before = net.weight.detach().clone()
    a2 = run_method("gradient_x_input", net, d=d)
    assert net.weight.dtype == torch.float32 and torch.equal(net.weight, before)  # caller's module untouched
    assert total_insertion_error(net.double(), a2) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("d", [6, 9])
def test_deterministic_methods_on_binomial(d):
    p = binomial(d)
    m = d // 3
    shap = p.shapley_values()
    grad = np.array([1.0] * m + [2.0] * m + [1.0] * m)
    out = run_methods(p, ["integrated_gradients", "shapley_exact", "gradient_x_input", "saliency",
                          "feature_ablation", "deeplift"])
    # IG of a product of k inputs along the straight path gives c/k to each: here equal to Shapley
    np.testing.assert_allclose(out["integrated_gradients"], shap, atol=1e-6)
    np.testing.assert_allclose(out["shapley_exact"], shap, atol=1e-12)
    for name in ("gradient_x_input", "saliency", "feature_ablation", "deeplift"):
        np.testing.assert_allclose(out[name], grad, atol=1e-12, err_msg=name)


def test_sampling_methods_are_seeded_and_efficient():
    p = binomial(6)
    budget = {"lime": 100, "kernel_shap": 100, "shapley_sampling": 10}
    for name in ("lime", "kernel_shap", "shapley_sampling"):
        a = run_method(name, p, seed=3, budget=budget)
        b = run_method(name, p, seed=3, budget=budget)
        assert a.shape == (6,) and np.array_equal(a, b), name
    # every sampled permutation is efficient: the values sum to p(1) - p(0) = 2
    # (Captum accumulates in float32)
    assert run_method("shapley_sampling", p, seed=1, budget=budget).sum() == pytest.approx(2.0, abs=1e-6)


def test_method_errors():
    with pytest.raises(ValueError, match="unknown method"):
        run_method("gradcam", binomial(3))
    with pytest.raises(ValueError, match="budget keys"):
        run_method("lime", binomial(3), budget={"rise": 3})
    with pytest.raises(ValueError, match="d=4 given"):
        run_method("saliency", binomial(3), d=4)
    assert set(METHOD_NAMES) >= {"lime", "kernel_shap", "integrated_gradients", "gradient_x_input"}


def test_theory_rows_properties_and_extra_hook():
    p_groups = lambda d, poly: {"sop_stub": (poly.groups, [1.0, 1.0]), "half": np.full(d, 2.0 / d)}  # noqa: E731
    rows = theory_rows(9, methods=["shapley_exact", "gradient_x_input"], extra_attributions=p_groups, progress=False)
    assert [r["d"] for r in rows] == [3, 6, 9]
    for r in rows:
        for pre in ("ins", "del"):
            assert r[f"{pre}_grouped"] == 0.0 and r[f"{pre}_sop_stub"] == 0.0
            assert abs(r[f"{pre}_lp"] - r[f"{pre}_dual_lp"]) <= 1e-6 * max(1, r[f"{pre}_lp"])
            assert r[f"{pre}_certificate"] <= r[f"{pre}_lp"] + 1e-9
            for k in ("zero", "shapley_exact", "gradient_x_input", "half"):
                assert r[f"{pre}_{k}"] >= r[f"{pre}_lp"] - 1e-9
    assert [r["ins_lp"] for r in rows] == pytest.approx([2, 8, 16])
    md = format_markdown(rows)
    assert "| 9 | 16 | 16 | 16 |" in md and "sop_stub" in md
    with pytest.raises(ValueError, match="d_max must be >= 3"):
        theory_rows(2, progress=False)
    with pytest.raises(ValueError, match="d_max must be <= 20"):
        theory_rows(21, progress=False)
    with pytest.raises(ValueError, match="unknown methods"):
        theory_rows(3, methods=["rise"], progress=False)


def test_write_report_and_cli(tmp_path, capsys):
    rows = theory_rows(6, methods=["gradient_x_input"], lp_d_max=3, progress=False)
    assert np.isnan(rows[1]["ins_lp"]) and rows[1]["ins_certificate"] == 8
    paths = write_report(rows, tmp_path / "r", {"command": "test"})
    for ext in ("csv", "md", "json", "png", "svg"):
        assert paths[ext].exists() and paths[ext].stat().st_size > 0
    data = json.loads(paths["json"].read_text())
    assert data["rows"][1]["ins_lp"] is None and data["rows"][0]["del_grouped"] == 0.0
    assert paths["csv"].read_text().splitlines()[0].startswith("d,")

    out = tmp_path / "cli"
    rc = main(["theory", "--d-max", "6", "--out", str(out), "--methods", "shapley_exact", "--no-progress"])
    assert rc == 0 and (out / "theory.md").exists()
    printed = capsys.readouterr().out
    assert "| 6 | 8 | 8 | 8 |" in printed
    assert main(["--d-max", "2", "--out", str(out), "--no-progress"]) == 2

    parser = argparse.ArgumentParser(prog="sop")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["theory"])
    assert args.d_max == 12 and args.out == "./sop-theory" and args.methods is None
    assert args.func.__name__ == "main_theory"
    with pytest.raises(SystemExit):
        parser.parse_args(["theory", "--methods", "lime,gradcam"])
