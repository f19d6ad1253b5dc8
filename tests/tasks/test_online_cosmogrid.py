"""The ``cosmogrid`` online loader, on a tiny fixture written in the real Hugging Face format.

The fixture mirrors ``BrachioLab/massmaps-cosmogrid-100k`` as its dataset card and file list
describe it (parquet shards ``data/<split>-0000k-of-0000n-<fingerprint>.parquet``, config
``data_files`` ``data/train-*``, ``data/validation-*``, ``data/test-*``; features ``input``, a
sequence of sequences of sequences of float32 (one (1, 66, 66) map), and ``label``, a sequence of
float64 (Omega_m, sigma_8)), including the Hub's case of a validation and a test shard with the same
fingerprint suffix; and ``BrachioLab/massmaps-conv`` (``config.json`` + weights named conv1..conv3,
fc1..fc4).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sumofparts.io import read_json, save_tensors
from sumofparts.tasks import get_task
from sumofparts.tasks import online_cosmogrid as oc
from sumofparts.tasks.cosmology_cnn import CosmoCNN
from sumofparts.tasks.online_cosmogrid import CosmoGridNotFound, CosmoGridTask, SplitOverlapWarning

torch.set_num_threads(1)

SHARDS = {"train": [7, 5], "validation": [4], "test": [3]}   # rows per shard
FINGERPRINT = "1e5f73b2061cc598"                               # the Hub's validation/test suffix


def _rows(n: int, rng: np.random.Generator):
    maps = rng.normal(0, 0.01, (n, 1, 66, 66)).astype(np.float32)
    cosmo = rng.integers(0, 2, n)                       # two cosmologies
    labels = np.stack([0.2 + 0.1 * cosmo, 0.7 + 0.2 * cosmo], 1).astype(np.float64)
    return maps, labels


def _write_rows(path, maps, labels, row_group_size=None):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "input": pa.array(maps.tolist(), type=pa.list_(pa.list_(pa.list_(pa.float32())))),
        "label": pa.array(labels.tolist(), type=pa.list_(pa.float64())),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return maps, labels


def _write_shard(path, n: int, rng: np.random.Generator, row_group_size=None):
    return _write_rows(path, *_rows(n, rng), row_group_size=row_group_size)


def _write_dataset(root, shards=SHARDS, seed=0, row_group_size=3, same_val_test=False):
    """Shards named as on the Hub; ``same_val_test``: the test shard is a copy of the validation
    shard with the same fingerprint suffix (what the Hub's file list suggests)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, sizes in shards.items():
        parts = []
        for i, n in enumerate(sizes):
            suffix = FINGERPRINT if split in ("validation", "test") else f"abc{i}"
            path = root / "data" / f"{split}-{i:05d}-of-{len(sizes):05d}-{suffix}.parquet"
            if split == "test" and same_val_test:
                parts.append(_write_rows(path, *out["validation"], row_group_size=row_group_size))
            else:
                parts.append(_write_shard(path, n, rng, row_group_size))
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def _positions(loaded: np.ndarray, written: np.ndarray) -> list[int]:
    """Index in ``written`` of each loaded map (maps are distinct random fields)."""
    where = {w.tobytes(): i for i, w in enumerate(written)}
    return [where[x.tobytes()] for x in loaded]


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
    assert data.meta["n_maps"] == {"train": 12, "val": 4, "test": 3}   # fewer rows than "small" asks
    for ours, theirs in oc.HF_SPLITS.items():
        split = getattr(data, ours)
        maps, labels = written[theirs]
        x, y = split[0]
        assert x.shape == (1, 66, 66) and x.dtype == torch.float32
        assert y.shape == (2,) and y.dtype == torch.float32
        # every row, each once, in a random order; maps are raw kappa, not rescaled
        pos = _positions(split.inputs.numpy(), maps)
        assert sorted(pos) == list(range(len(maps)))
        np.testing.assert_array_equal(split.inputs.numpy(), maps[pos])
        np.testing.assert_allclose(split.targets.numpy(), labels[pos], rtol=1e-6)
        # maps of one cosmology share an id
        ids = split.cosmology.numpy()
        for c in np.unique(ids):
            assert len(np.unique(labels[pos][ids == c], axis=0)) == 1
    assert data.meta["files"]["train"] == ["train-00000-of-00002-abc0.parquet",
                                           "train-00001-of-00002-abc1.parquet"]


def test_read_split_takes_rows_across_shards_in_the_order_asked(tmp_path):
    written = _write_dataset(tmp_path)
    files = oc._split_files(tmp_path, "train")
    rows = np.array([8, 0, 11, 6, 7])                   # shard 0 holds rows 0-6, shard 1 rows 7-11
    x, y = oc.read_split(files, rows)
    assert x.shape == (5, 1, 66, 66) and y.shape == (5, 2) and y.dtype == np.float32
    np.testing.assert_array_equal(x, written["train"][0][rows])
    np.testing.assert_allclose(y, written["train"][1][rows], rtol=1e-6)
    assert oc.count_rows(files) == 12
    with pytest.raises(IndexError, match=r"\[0, 12\)"):
        oc.read_split(files, np.array([12]))


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


# ---------------------------------------------------------------------------------------------
# validation vs test: hashed on first load
# ---------------------------------------------------------------------------------------------
def _load(root, cache, **kw):
    task_kw = {k: kw.pop(k) for k in ("val_source",) if k in kw}
    return CosmoGridTask(data_dir=root, **task_kw).load_data(cache, progress=False, **{"size": "small", **kw})


def test_identical_validation_and_test_shards_warn(tmp_path, no_network):
    written = _write_dataset(tmp_path / "ds", same_val_test=True)
    with pytest.warns(SplitOverlapWarning, match=r"validation and test shards hold the same rows in the same "
                                                 r"order \(4 of the 4 test rows.*val_source='train'"):
        data = _load(tmp_path / "ds", tmp_path / "cache")
    check = data.meta["split_overlap"]["validation_shard_vs_test_shard"]
    assert check["shared_rows"] == 4 and check["identical"] and check["same_rows"] and check["hashed_now"]
    # the digests are recorded in the cache manifest
    manifest = read_json(tmp_path / check["cache"] / "manifest.json")
    digests = manifest["split_digests"]
    assert digests["validation"] == digests["test"] and digests["test"]["rows"] == 4
    assert [f["name"] for f in manifest["files"]["test"]] == [f"test-00000-of-00001-{FINGERPRINT}.parquet"]
    row_digests = oc.row_digests(*written["validation"])
    stored = oc.load_tensors(tmp_path / check["cache"] / "row-digests.safetensors")
    np.testing.assert_array_equal(stored["validation"].numpy(), row_digests)
    # a second load reads the digests from the cache and still warns
    with pytest.warns(SplitOverlapWarning, match="hold the same rows"):
        again = _load(tmp_path / "ds", tmp_path / "cache")
    assert again.meta["split_overlap"]["validation_shard_vs_test_shard"]["hashed_now"] is False


def test_different_validation_and_test_shards_do_not_warn(tmp_path, no_network):
    _write_dataset(tmp_path / "ds")              # same fingerprint suffix, different rows
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitOverlapWarning)
        data = _load(tmp_path / "ds", tmp_path / "cache")
    overlap = data.meta["split_overlap"]
    check = overlap["validation_shard_vs_test_shard"]
    assert check["shared_rows"] == 0 and not check["identical"] and not check["same_rows"]
    assert check["validation_digest"] != check["test_digest"]
    assert overlap["loaded_train_rows_in_test_shard"] == 0 and overlap["loaded_train_rows_in_loaded_val"] == 0


def test_same_rows_reordered_and_partial_overlap_are_found(tmp_path, no_network):
    rng = np.random.default_rng(5)
    _write_dataset(tmp_path / "ds")
    val = (tmp_path / "ds" / "data").glob("validation-*.parquet").__next__()
    test = (tmp_path / "ds" / "data").glob("test-*.parquet").__next__()
    maps, labels = _rows(4, rng)
    _write_rows(val, maps, labels)
    _write_rows(test, maps[::-1], labels[::-1], row_group_size=1)          # same rows, reversed
    with pytest.warns(SplitOverlapWarning, match=r"hold the same rows \(4 of the 4"):
        data = _load(tmp_path / "ds", tmp_path / "cache")
    check = data.meta["split_overlap"]["validation_shard_vs_test_shard"]
    assert check["same_rows"] and not check["identical"]
    other, other_labels = _rows(2, rng)                                     # 2 of 4 test rows shared
    _write_rows(test, np.concatenate([maps[1:3], other]), np.concatenate([labels[1:3], other_labels]))
    with pytest.warns(SplitOverlapWarning, match=r"share 2 rows \(2 of the 4 test rows"):
        data = _load(tmp_path / "ds", tmp_path / "cache")                  # the shard changed: hashed again
    assert data.meta["split_overlap"]["validation_shard_vs_test_shard"]["hashed_now"]
    # a map equal to a test map but with other labels is another row
    _write_rows(test, maps, labels + 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitOverlapWarning)
        _load(tmp_path / "ds", tmp_path / "cache")


def test_training_rows_in_the_test_shard_warn(tmp_path, no_network):
    written = _write_dataset(tmp_path / "ds")
    test = next((tmp_path / "ds" / "data").glob("test-*.parquet"))
    maps, labels = written["train"]
    _write_rows(test, maps[[2, 9]], labels[[2, 9]])
    with pytest.warns(SplitOverlapWarning, match=r"2 of the 12 loaded training rows are also test rows"):
        data = _load(tmp_path / "ds", tmp_path / "cache")
    assert data.meta["split_overlap"]["loaded_train_rows_in_test_shard"] == 2


def test_validation_from_the_training_shards(tmp_path, no_network, monkeypatch):
    written = _write_dataset(tmp_path / "ds", same_val_test=True)
    monkeypatch.setitem(oc.SIZES, "tiny", {"train": 8, "val": 3, "test": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitOverlapWarning)     # the validation shard is not used
        data = _load(tmp_path / "ds", tmp_path / "cache", size="tiny", val_source="train")
    train_pos = _positions(data.train.inputs.numpy(), written["train"][0])
    val_pos = _positions(data.val.inputs.numpy(), written["train"][0])
    assert len(train_pos) == 8 and len(val_pos) == 3 and not set(train_pos) & set(val_pos)
    assert data.meta["val_source"] == "train" and data.meta["files"]["val"] == data.meta["files"]["train"]
    # the validation shard was still hashed and its overlap recorded
    assert data.meta["split_overlap"]["validation_shard_vs_test_shard"]["identical"]
    monkeypatch.setenv("SOP_COSMOGRID_VAL_SOURCE", "train")
    assert _load(tmp_path / "ds", tmp_path / "cache", size="tiny").meta["val_source"] == "train"
    monkeypatch.setenv("SOP_COSMOGRID_VAL_SOURCE", "test")
    with pytest.raises(ValueError, match=r"SOP_COSMOGRID_VAL_SOURCE must be one of validation, train.*'test'"):
        _load(tmp_path / "ds", tmp_path / "cache", size="tiny")
    monkeypatch.setitem(oc.SIZES, "tiny", {"train": 11, "val": 3, "test": 2})
    with pytest.raises(ValueError, match=r"needs 3 validation rows.*12 rows of the training shards"):
        _load(tmp_path / "ds", tmp_path / "cache", size="tiny", val_source="train")


# ---------------------------------------------------------------------------------------------
# subsets: seeded, random, reproducible
# ---------------------------------------------------------------------------------------------
def test_subset_is_seeded_random_and_reproducible(tmp_path, no_network, monkeypatch):
    shards = {"train": [23, 17], "validation": [30], "test": [30]}
    written = _write_dataset(tmp_path / "ds", shards=shards, row_group_size=4)
    monkeypatch.setitem(oc.SIZES, "tiny", {"train": 10, "val": 5, "test": 6})
    runs = {seed: _load(tmp_path / "ds", tmp_path / "cache", size="tiny", seed=seed) for seed in (0, 1, 2)}
    pos = {seed: {s: _positions(getattr(d, s).inputs.numpy(), written[t][0]) for s, t in oc.HF_SPLITS.items()}
           for seed, d in runs.items()}
    again = _load(tmp_path / "ds", tmp_path / "cache", size="tiny", seed=1)
    assert {s: _positions(getattr(again, s).inputs.numpy(), written[t][0]) for s, t in oc.HF_SPLITS.items()} \
        == pos[1]
    assert again.meta["content_hash"] == runs[1].meta["content_hash"] != runs[0].meta["content_hash"]
    for seed in pos:
        for split, rows in pos[seed].items():
            expected = oc.choose_rows(40 if split == "train" else 30, oc.SIZES["tiny"][split], seed, split)
            assert rows == expected.tolist()                      # the documented draw, in its order
            assert len(set(rows)) == len(rows)
            assert sorted(rows) != list(range(len(rows)))          # not the first N rows
    assert pos[0]["test"] != pos[1]["test"] != pos[2]["test"]
    # rows of both training shards are drawn
    assert any(r >= 23 for seed in pos for r in pos[seed]["train"])


def test_choose_rows_is_uniform():
    counts = np.zeros(40)
    for seed in range(2000):
        rows = oc.choose_rows(40, 10, seed, "train")
        counts[rows] += 1
        assert len(set(rows.tolist())) == 10
    freq = counts / 2000
    assert np.all(np.abs(freq - 0.25) < 0.05)                       # each row drawn 1 time in 4
    # not a contiguous block, not sorted: a uniform subset in random order
    rows = oc.choose_rows(40, 10, 0, "train")
    assert rows.max() - rows.min() > 9 and list(rows) != sorted(rows)
    assert oc.choose_rows(40, 10, 0, "val").tolist() != rows.tolist()   # one stream per split
    np.testing.assert_array_equal(np.sort(oc.choose_rows(7, None, 3, "test")), np.arange(7))
