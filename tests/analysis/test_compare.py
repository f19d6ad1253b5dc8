"""Layer-by-layer comparison: identical models give 1, a changed layer shows where, generator drift."""
from __future__ import annotations

import pytest
import torch

from sumofparts import SOPConfig, SumOfParts
from sumofparts.analysis.compare import (ModelView, compare_models, comparison_markdown, diagonal_figure,
                                         heatmap_figure, pca_figure, resolve_model)
from sumofparts.adapters import CNNAdapter

from conftest import tiny_cnn


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """On a shared 2-core machine OpenBLAS's own threads make small linear algebra 30x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _view(model, label="m"):
    adapter = CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(4, 4))
    return ModelView(label, label, adapter, adapter.named_layers())


def _inputs(n=80, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_a_model_against_itself_and_against_a_copy_with_one_layer_changed():
    a = _view(tiny_cnn(seed=0), "a")
    b_model = tiny_cnn(seed=0)
    with torch.no_grad():
        b_model.fc.weight.add_(0.5 * torch.randn_like(b_model.fc.weight))
    b = _view(b_model, "b")
    x = _inputs()
    same = compare_models(a, _view(tiny_cnn(seed=0), "a again"), x, progress=False)
    for row in same.diagonal():
        for m in same.metrics:
            assert row[m] == pytest.approx(1.0, abs=1e-6), (row["layer"], m)
    comp = compare_models(a, b, x, progress=False)
    diag = {r["layer"]: r for r in comp.diagonal()}
    for layer in ("conv1", "act1", "pool1", "conv2", "act2", "pool2"):  # before the change: identical
        assert diag[layer]["cka_linear"] == pytest.approx(1.0, abs=1e-6)
    assert diag["fc"]["cka_linear"] < 0.99 and diag["act3"]["cka_rbf"] < 0.99
    assert comp.matrices["cka_linear"].values.shape == (8, 8)
    text = comparison_markdown(comp, command="sop compare x")
    assert "| fc | 32 |" in text and "Command: `sop compare x`" in text
    for fig in (heatmap_figure(comp), diagonal_figure(comp),
                pca_figure({"a": torch.randn(80, 5)}, torch.randint(0, 3, (80,)), target_names=["x", "y", "z"],
                           kind="classification", layer="fc")):
        assert fig.axes


def test_within_one_model_the_matrix_is_symmetric_for_cka():
    a = _view(tiny_cnn(seed=1))
    comp = compare_models(a, None, _inputs(), metrics=["cka_linear", "cka_rbf"], progress=False)
    v = comp.matrices["cka_linear"].values
    assert torch.allclose(torch.from_numpy(v), torch.from_numpy(v.T), atol=1e-10)
    assert comp.same_model


def test_generator_drift_is_read_layer_by_layer_from_a_checkpoint(tmp_path):
    """The generator copy of a saved SOP model, read through resolve_model('generator:DIR'): equal to
    the backbone before training; after its conv2 is changed, the layers from conv2 on differ and
    the ones before do not."""
    backbone = tiny_cnn(seed=2)
    sop = SumOfParts(CNNAdapter(backbone, feature_layer="pool2", classifier="head", grid=(4, 4)),
                     SOPConfig(num_groups=4, num_heads=1))
    sop.save_pretrained(tmp_path / "fresh")
    with torch.no_grad():
        conv2 = sop.generator.encoder.net.conv2
        conv2.weight.add_(0.3 * torch.randn_like(conv2.weight))
    sop.save_pretrained(tmp_path / "trained")
    x = _inputs()
    base = resolve_model(str(tmp_path / "fresh"), None, None, tmp_path)
    assert base.label.startswith("SOP backbone") and list(base.layers)[0] == "conv1"
    fresh = resolve_model(f"generator:{tmp_path / 'fresh'}", None, None, tmp_path)
    trained = resolve_model(f"generator:{tmp_path / 'trained'}", None, None, tmp_path)
    assert list(fresh.layers) == ["conv1", "act1", "pool1", "conv2", "act2", "pool2"]
    d0 = {r["layer"]: r for r in compare_models(base, fresh, x, progress=False).diagonal()}
    d1 = {r["layer"]: r for r in compare_models(base, trained, x, progress=False).diagonal()}
    assert all(d0[k]["cka_linear"] == pytest.approx(1.0, abs=1e-6) for k in d0)
    assert d1["pool1"]["cka_linear"] == pytest.approx(1.0, abs=1e-6)
    assert d1["conv2"]["cka_linear"] < 0.999 and d1["conv2"]["svcca"] < 0.999


def test_different_numbers_of_examples_and_bad_specs_are_refused(tmp_path):
    a = _view(tiny_cnn(seed=0))
    acts = a.activations(_inputs(40))
    fewer = {k: v[:30] for k, v in acts.items()}
    with pytest.raises(ValueError, match=r"different numbers of examples \(\[40\] and \[30\]\)"):
        compare_models(a, a, None, activations=(acts, fewer), progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        compare_models(a, a, _inputs(10), metrics=["cosine"], progress=False)
    with pytest.raises(FileNotFoundError, match="expected 'backbone', a .safetensors weights file, an SOP checkpoint"):
        resolve_model(str(tmp_path / "nothing"), None, None, tmp_path)
