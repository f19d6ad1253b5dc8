"""`sop compare` and `sop concepts` end to end on the synthetic task; their errors as one line."""
from __future__ import annotations

import json

import pytest
import torch

from sumofparts.cli import main
from sumofparts.io import load_tensors, save_tensors


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory):
    """The small synthetic task's backbone, trained once into a fresh cache (seconds)."""
    from sumofparts.tasks import get_task

    task = get_task("synthetic")
    cache = tmp_path_factory.mktemp("cache")
    data = task.load_data(cache, size="small", progress=False)
    task.load_backbone(data, cache, progress=False)
    return cache, next((cache / "backbones").glob("synthetic-cnn-*.safetensors"))


def test_compare_two_weight_files_writes_tables_and_figures(synthetic_cache, tmp_path, capsys):
    cache, weights = synthetic_cache
    state = load_tensors(weights)
    state["fc.weight"] = state["fc.weight"] + 0.3 * torch.randn_like(state["fc.weight"])
    changed = save_tensors(tmp_path / "changed.safetensors", state)
    out = tmp_path / "cmp"
    rc = main(["compare", "synthetic", "--a", "backbone", "--b", str(changed), "--size", "small", "--cache-dir",
               str(cache), "--n", "60", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    res = json.loads((out / "compare.json").read_text())
    diag = {r["layer"]: r for r in res["diagonal"]}
    assert diag["pool2"]["cka_linear"] == pytest.approx(1.0, abs=1e-6) and diag["fc"]["cka_linear"] < 0.999
    assert res["command"].startswith("sop compare synthetic --a backbone --b ")
    for name in ("compare.md", "compare_cka_linear.csv", "compare_pwcca.csv", "compare_heatmaps.png",
                 "compare_diagonal.svg", "pca.png"):
        assert (out / name).is_file(), name
    assert (out / "compare_cka_linear.csv").read_text().splitlines()[0] == \
        "layer,conv1,act1,pool1,conv2,act2,pool2,fc,act3"
    assert "same layer in both" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["compare", "synthetic", "--layers-a", "conv1", "conv9"], "error: unknown layer 'conv9'; this model's layers are: "
                                                              "conv1, act1"),
    (["compare", "synthetic", "--b", "NOWEIGHTS.safetensors"], "error: no weights file at NOWEIGHTS.safetensors"),
    (["compare", "synthetic", "--pca-layer", "head"], "error: --pca-layer 'head' is not a layer of the compared models"),
    (["concepts", "synthetic"], "error: task 'synthetic' defines no concepts for TCAV; tasks that do: cosmology, "
                                "fashion, sentiment"),
    (["concepts", "synthetic", "--weights", "generator:x"], "error: TCAV needs a model with outputs"),
])
def test_bad_input_is_one_line(synthetic_cache, tmp_path, capsys, args, message):
    cache, _ = synthetic_cache
    rc = main(args + ["--size", "small", "--cache-dir", str(cache), "--no-progress", "--n" if args[0] == "compare"
                      else "--n-random", "20", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_weights_file_of_another_model_is_refused(synthetic_cache, tmp_path, capsys):
    cache, weights = synthetic_cache
    state = load_tensors(weights)
    wrong = save_tensors(tmp_path / "wrong.safetensors", {"fc.weight": torch.zeros(3, 3), "extra.bias": torch.zeros(2)})
    rc = main(["compare", "synthetic", "--b", str(wrong), "--size", "small", "--cache-dir", str(cache),
               "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not hold weights of the synthetic backbone (BarsCNN): unexpected tensors ['extra.bias']" in err
    bad_shape = save_tensors(tmp_path / "bad.safetensors", {"fc.weight": torch.zeros(3, 3)})
    rc = main(["compare", "synthetic", "--b", str(bad_shape), "--size", "small", "--cache-dir", str(cache),
               "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 2 and "fc.weight: (3, 3) vs (32, 256)" in capsys.readouterr().err
    assert set(state) >= {"fc.weight"}


@pytest.mark.slow
def test_concepts_and_the_tcav_vs_sop_join_on_a_small_cosmology_run(tmp_path, capsys):
    """The whole chain on the small cosmology data: backbone, a briefly trained SOP, TCAV of voids and
    clusters on its backbone, the case study of its groups, the two side by side (minutes)."""
    cache = tmp_path / "cache"
    common = ["--size", "small", "--cache-dir", str(cache), "--no-progress", "--threads", "1"]
    assert main(["train", "--task", "cosmology", "--steps", "10", "--out", str(tmp_path / "sop"), *common]) == 0
    out = tmp_path / "concepts"
    rc = main(["concepts", "cosmology", "--checkpoint", str(tmp_path / "sop" / "best"), "--n-random", "4",
               "--set-size", "10", "--n-probe", "20", "--case-study-n", "40", "--out", str(out), *common])
    assert rc == 0
    res = json.loads((out / "concepts.json").read_text())
    assert res["n_tests"] == 3 * 6 * 2 and len(res["tests"]) == 36
    join = json.loads((out / "tcav_vs_sop.json").read_text())
    assert {r["concept"] for r in join["rows"]} == {"void", "cluster", "high-significance cluster"}
    assert {r["output"] for r in join["rows"]} == {"Omega_m", "sigma_8"}
    for name in ("concepts.md", "concepts.csv", "concepts.png", "tcav_vs_sop.md", "tcav_vs_sop.png",
                 "case_study/case_study.json"):
        assert (out / name).is_file(), name
    assert "TCAV beside SOP" in capsys.readouterr().out
