"""TCAV beside SOP: the deepest significant layer's sign against SOP's enriched/depleted weight."""
from __future__ import annotations

import torch

from sumofparts.analysis.tcav import ConceptSet, ConceptSets, TCAVResult, TCAVTest
from sumofparts.analysis.tcav_report import tcav_figure, tcav_markdown, tcav_vs_sop, tcav_vs_sop_markdown

LAYERS = ["early", "late"]


def _test(concept, layer, k, mean, sig):
    return TCAVTest(concept=concept, layer=layer, target=k, target_name=["Omega_m", "sigma_8"][k],
                    scores=[mean] * 4, magnitudes=[mean] * 4, random_scores=[0.5] * 4, cav_accuracy=0.7,
                    random_cav_accuracy=0.5, t=0.0, p_value=0.001 if sig else 0.5, p_adjusted=0.01 if sig else 1.0,
                    significant=sig)


def _fixture():
    tests = [
        _test("void", "early", 0, 0.1, True), _test("void", "late", 0, 0.9, True),   # deepest: raises Omega_m
        _test("void", "early", 1, 0.2, True), _test("void", "late", 1, 0.5, False),  # deepest: lowers sigma_8
        _test("cluster", "early", 0, 0.5, False), _test("cluster", "late", 0, 0.5, False),  # nowhere
        _test("cluster", "early", 1, 0.5, False), _test("cluster", "late", 1, 0.8, True),
    ]
    result = TCAVResult(tests=tests, alpha=0.05, n_random=4, set_size=10, pool_sizes={}, layers=LAYERS,
                        output_names=["Omega_m", "sigma_8"], seed=0, C=1.0, test_fraction=1 / 3)
    x = torch.zeros(40, 1, 4, 4)
    sets = ConceptSets(concepts=[ConceptSet("void", x, sop_kind="void"), ConceptSet("cluster", x, sop_kind="cluster")],
                       randoms={"random": ConceptSet("random", x)}, probes={0: x, 1: x},
                       output_names=["Omega_m", "sigma_8"])
    case = {"output_names": ["Omega_m", "sigma_8"], "n_groups": 100, "group_counts": {"void": 20, "cluster": 30},
            "shares": {"void": [0.5, 0.1], "cluster": [0.25, 0.6]},
            "mean_weight_per_group": {"void": [0.02, 0.01], "cluster": [0.01, 0.02]},
            "bootstrap": {"shares": {"void": {"low": [0.4, 0.05], "high": [0.6, 0.15]},
                                     "cluster": {"low": [0.2, 0.5], "high": [0.35, 0.7]}}}}
    return result, sets, case


def test_agreement_uses_the_deepest_significant_layer_and_the_weight_interval():
    result, sets, case = _fixture()
    join = tcav_vs_sop(result, sets, case)
    rows = {(r["concept"], r["output"]): r for r in join["rows"]}
    v0 = rows[("void", "Omega_m")]
    assert v0["tcav_layer"] == "late" and v0["tcav_direction"] == "+" and abs(v0["tcav_effect"] - 0.4) < 1e-12
    assert v0["sop"] == "enriched" and v0["agrees"] is True and abs(v0["sop_enrichment"] - 2.5) < 1e-12
    v1 = rows[("void", "sigma_8")]
    assert v1["tcav_layer"] == "early" and v1["tcav_direction"] == "-" and v1["sop"] == "depleted" and v1["agrees"]
    c0 = rows[("cluster", "Omega_m")]
    assert c0["tcav_direction"] == "none" and c0["sop"] == "unclear" and c0["agrees"] is None  # 0.3 in [0.2, 0.35]
    c1 = rows[("cluster", "sigma_8")]
    assert c1["tcav_direction"] == "+" and c1["sop"] == "enriched" and c1["agrees"]
    order = {o["concept"]: o for o in join["orderings"]}
    assert order["void"]["sop_weighs_more_for"] == "Omega_m" and order["void"]["tcav_raises_more"] == "Omega_m"
    assert order["cluster"]["tcav_raises_more"] == "sigma_8" and order["cluster"]["agrees"]
    assert join["summary"] == {"agree": 3, "compared": 3, "orderings_agree": 2, "orderings_compared": 2}
    text = tcav_vs_sop_markdown(join, command="sop concepts cosmology --checkpoint x")
    assert "| void | Omega_m | early (-), late (+) | late: +0.400 | 50.0% [40.0%, 60.0%] | 20.0% | enriched, x2.50 | yes |" \
        in text
    # a disagreement: SOP relies on voids for sigma_8 while TCAV says they lower it
    case["shares"]["void"][1], case["bootstrap"]["shares"]["void"]["low"][1] = 0.5, 0.45
    case["bootstrap"]["shares"]["void"]["high"][1] = 0.55
    assert {(r["concept"], r["output"]): r for r in tcav_vs_sop(result, sets, case)["rows"]}[("void", "sigma_8")][
        "agrees"] is False


def test_no_comparison_for_an_output_sop_gets_wrong():
    """The case study's rule: below its minimum R² for an output, SOP's weights for it are not compared."""
    result, sets, case = _fixture()
    case["r2"], case["min_r2"] = [-2.2, 0.88], 0.7
    join = tcav_vs_sop(result, sets, case)
    rows = {(r["concept"], r["output"]): r for r in join["rows"]}
    assert rows[("void", "Omega_m")]["sop"] == "not stated (SOP's R² -2.20 < 0.7)"
    assert rows[("void", "Omega_m")]["agrees"] is None and rows[("void", "sigma_8")]["agrees"] is True
    assert all(o["agrees"] is None and not o["stated"] for o in join["orderings"])
    assert join["summary"] == {"agree": 2, "compared": 2, "orderings_agree": 0, "orderings_compared": 0}
    assert "no comparison, SOP's R² for Omega_m is -2.20" in " ".join(join["sentences"])


def test_tables_and_figure_of_a_result():
    result, sets, _ = _fixture()
    text = tcav_markdown(result, sets, title="TCAV: x", model="m", command="sop concepts x")
    assert "## Significant concepts (4 of 8 tests)" in text and "| void | Omega_m | 0.10* | 0.90* |" in text
    assert tcav_figure(result, sets).axes
