"""The ``cosmogrid`` online loader, on a tiny fixture written in the real Hugging Face format.

The fixture mirrors ``BrachioLab/massmaps-cosmogrid-100k`` (parquet shards ``data/<split>-0000k-of-
0000n-<hash>.parquet``, columns ``input`` list<list<list<float32>>> (1, 66, 66) and ``label``
list<float64> (Omega_m, sigma_8)) and ``BrachioLab/massmaps-conv`` (``config.json`` +
weights named conv1..conv3, fc1..fc4).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sumofparts.io import save_tensors
from sumofparts.tasks import get_task
from sumofparts.tasks import online_cosmogrid as oc
from sumofparts.tasks.cosmology_cnn import CosmoCNN
from sumofparts.tasks.online_cosmogrid import CosmoGridNotFound, CosmoGridTask

torch.set_num_threads(1)

SHARDS = {"train": [7, 5], "validation": [4], "test": [3]}   # rows per shard


def _write_shard(path, n: int, rng: np.random.Generator):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    maps = rng.normal(0, 0.01, (n, 1, 66, 66)).astype(np.float32)
    cosmo = rng.integers(0, 2, n)                       # two cosmologies per shard
    labels = np.stack([0.2 + 0.1 * cosmo, 0.7 + 0.2 * cosmo], 1).astype(np.float64)
    table = pa.table({
        "input": pa.array(maps.tolist(), type=pa.list_(pa.list_(pa.list_(pa.float32())))),
        "label": pa.array(labels.tolist(), type=pa.list_(pa.float64())),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return maps, labels


def _write_dataset(root):
    rng = np.random.default_rng(0)
    out = {}
    for split, sizes in SHARDS.items():
        parts = [_write_shard(root / "data" / f"{split}-{i:05d}-of-{len(sizes):05d}-abc{i}.parquet", n, rng)
                 for i, n in enumerate(sizes)]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def _write_model(root, *, fmt: str = "safetensors"):
    torch.manual_seed(0)
    ref = CosmoCNN().eval()
    theirs = {("fc4." + k[5:] if k.startswith("head.") else k): v for k, v in ref.state_dict().items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "architectures": ["MassMapsConvnetForImageRegression"], "num_classes": 2,
        "torch_dtype": "float32", "transformers_version": "4.34.0"}))
    if fmt == "safetensors":
        save_tensors(root / "model.safetensors", theirs)
    else:
        torch.save(theirs, root / "pytorch_model.bin")
    return ref


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline, no SOP_COSMOGRID_* variables."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("SOP_COSMOGRID_DATA", raising=False)
    monkeypatch.delenv("SOP_COSMOGRID_MODEL", raising=False)


def test_registered():
    task = get_task("cosmogrid")
    assert isinstance(task, CosmoGridTask) and task.kind == "regression"


def test_loads_the_real_layout_from_a_data_dir(tmp_path, no_network):
    written = _write_dataset(tmp_path / "ds")
    data = CosmoGridTask(data_dir=tmp_path / "ds").load_data(tmp_path / "cache", size="small", progress=False)
    assert data.name == "cosmogrid" and data.output_names == ["Omega_m", "sigma_8"]
    assert data.meta["n_maps"] == {"train": 12, "val": 4, "test": 3}
    for ours, theirs in oc.HF_SPLITS.items():
        split = getattr(data, ours)
        maps, labels = written[theirs]
        x, y = split[0]
        assert x.shape == (1, 66, 66) and x.dtype == torch.float32
        assert y.shape == (2,) and y.dtype == torch.float32
        np.testing.assert_array_equal(split.inputs.numpy(), maps)      # raw kappa, not rescaled
        np.testing.assert_allclose(split.targets.numpy(), labels, rtol=1e-6)
        # maps of one cosmology share an id
        ids = split.cosmology.numpy()
        for c in np.unique(ids):
            assert len(np.unique(labels[ids == c], axis=0)) == 1
    assert data.meta["files"]["train"] == ["train-00000-of-00002-abc0.parquet",
                                           "train-00001-of-00002-abc1.parquet"]


def test_row_limit_spans_shards(tmp_path):
    written = _write_dataset(tmp_path)
    files = oc._split_files(tmp_path, "train")
    x, y = oc.read_split(files, limit=9)                 # 7 from the first shard, 2 from the second
    assert x.shape == (9, 1, 66, 66) and y.shape == (9, 2)
    np.testing.assert_array_equal(x, written["train"][0][:9])


def test_found_in_the_hugging_face_cache(tmp_path, no_network, monkeypatch):
    hub = tmp_path / "hub"
    snap = hub / "datasets--BrachioLab--massmaps-cosmogrid-100k" / "snapshots" / "0123abcd"
    _write_dataset(snap)
    ref = _write_model(hub / "models--BrachioLab--massmaps-conv" / "snapshots" / "4567ef01")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    task = CosmoGridTask()
    data = task.load_data(tmp_path / "cache", size="small", progress=False)
    assert data.meta["data_dir"] == str(snap)
    model = task.load_backbone(data, tmp_path / "cache")
    x = data.test.inputs
    torch.testing.assert_close(model(x), ref(x))
    assert isinstance(model, CosmoCNN) and not model.training


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_authors_weights_load_into_cosmocnn(tmp_path, fmt):
    ref = _write_model(tmp_path / "m", fmt=fmt)
    model = oc.load_massmaps_conv(tmp_path / "m")
    x = torch.randn(2, 1, 66, 66)
    torch.testing.assert_close(model(x), ref(x))
    torch.testing.assert_close(model.head.weight, ref.head.weight)


def test_clear_error_when_data_absent(tmp_path, no_network):
    with pytest.raises(CosmoGridNotFound) as err:
        CosmoGridTask(data_dir=tmp_path / "nowhere").load_data(tmp_path / "cache", size="small")
    msg = str(err.value)
    for needle in ("BrachioLab/massmaps-cosmogrid-100k", str(tmp_path / "nowhere"), "empty-hub",
                   "pip install pyarrow huggingface_hub", "--data-dir", "SOP_COSMOGRID_DATA",
                   "HF_HOME", "offline", "--task cosmology"):
        assert needle in msg, (needle, msg)
    assert isinstance(err.value, FileNotFoundError)


def test_clear_error_when_model_absent(tmp_path, no_network):
    _write_dataset(tmp_path / "ds")
    task = CosmoGridTask(data_dir=tmp_path / "ds")
    data = task.load_data(tmp_path / "cache", size="small", progress=False)
    with pytest.raises(CosmoGridNotFound) as err:
        task.load_backbone(data, tmp_path / "cache")
    msg = str(err.value)
    for needle in ("BrachioLab/massmaps-conv", "SOP_COSMOGRID_MODEL", "--backbone", "offline"):
        assert needle in msg, (needle, msg)


def test_wrong_columns_are_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data" / "train-00000-of-00001-x.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image": [1, 2]}), path)
    with pytest.raises(ValueError, match="no column"):
        oc.read_split([path])
