"""The fashion task: Fashion-MNIST data, silhouettes, splits and the committed backbones."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import last_robust_step

from sumofparts.adapters import CNNAdapter, ViTAdapter
from sumofparts.io import read_json
from sumofparts.tasks import fashion as fm
from sumofparts.tasks.fashion import FashionCNN, FashionTask

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(
    not all((fm.DEFAULT_DIR / n).is_file() for pair in fm.FILES.values() for n in pair)
    and "SOP_FASHION_MNIST_DIR" not in __import__("os").environ,
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def small():
    return FashionTask().load_data(size="small", seed=0, progress=False)


def test_shapes_and_dtypes(small):
    assert small.name == "fashion" and small.kind == "classification"
    assert small.output_names == fm.CLASS_NAMES and small.num_outputs == 10
    n_train, n_val, n_test = fm.SIZES["small"]
    assert (len(small.train), len(small.val), len(small.test)) == (n_train, n_val, n_test)
    x, y = small.train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64
    fg = small.test_foreground
    assert fg.shape == (n_test, 32, 32) and fg.dtype == torch.bool
    assert small.meta["grid"] == [8, 8]


def test_splits_disjoint_and_seeded(small):
    tr, va = set(small.train.source_indices), set(small.val.source_indices)
    assert not tr & va
    assert small.train.source == small.val.source == "train" and small.test.source == "test"
    again = FashionTask().load_data(size="small", seed=0, progress=False)
    np.testing.assert_array_equal(again.train.source_indices, small.train.source_indices)
    other = FashionTask().load_data(size="small", seed=1, progress=False)
    assert set(other.train.source_indices) != tr
    # the small splits sit inside the default ones (same seed): val and train pools are fixed
    d_train, d_val, d_test = fm._split_indices("default", 0)
    assert tr <= set(d_train) and va <= set(d_val) and set(small.test.source_indices) <= set(d_test)
    assert not set(d_train) & set(d_val)


def test_normalisation_and_padding(small):
    x = small.test.images
    assert torch.all(x[..., :2, :] == 0) and torch.all(x[..., -2:, :] == 0)
    assert torch.all(x[..., :, :2] == 0) and torch.all(x[..., :, -2:] == 0)
    pixels = x * fm.NORM_STD + fm.NORM_MEAN  # back to [0, 1]
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    raw, _, _ = fm.load_raw("test")
    idx = small.test.source_indices[0]
    np.testing.assert_allclose(pixels[0, 0, 2:30, 2:30].numpy(), raw[idx] / 255.0, atol=1e-6)
    # the background (0) stays 0: zeroing a region erases it to background
    assert float((x == 0).float().mean()) > 0.3


def test_foreground_nonempty_and_covers_object(small):
    fg = small.test_foreground
    assert torch.all(fg.flatten(1).any(1))
    assert not fg[:, :2].any() and not fg[:, :, -2:].any()
    obj = small.test.images[:, 0] > 0
    assert torch.all(fg | ~obj)  # every non-zero pixel is foreground
    frac = fg.float().mean(dim=(1, 2))
    assert 0.2 < float(frac.mean()) < 0.8


def test_ring_becomes_filled_disk():
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 13.5, xx - 13.5)
    ring = ((r > 6) & (r < 9)).astype(np.uint8) * 200
    fg = fm.foreground_masks(ring[None])[0]
    np.testing.assert_array_equal(fg, r < 9)
    assert fg[14, 14]  # the hole is filled
    # an open "C" is not a hole
    c = ring.copy()
    c[12:16, 20:] = 0
    assert not fm.foreground_masks(c[None])[0][14, 14]


def test_read_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(tmp_path / "a.gz", "wb") as fh:
        fh.write(header + arr.tobytes())
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        fm.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(header + arr.tobytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        fm.read_idx(tmp_path / "short")


def test_missing_data_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("SOP_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fm.fashion_mnist_dir()


def test_unknown_size_and_backbone(small, tmp_path):
    with pytest.raises(ValueError, match="unknown size"):
        FashionTask().load_data(size="huge")
    with pytest.raises(ValueError, match="unknown backbone"):
        FashionTask().load_backbone(small, tmp_path, backbone="resnet")


def test_cnn_feature_layer_is_8x8():
    model = FashionCNN().eval()
    seen = {}
    getattr(model, FashionCNN.feature_layer).register_forward_hook(
        lambda m, i, o: seen.setdefault("map", o))
    logits = model(torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 10)
    assert seen["map"].shape[-2:] == (8, 8)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == seen["map"].shape[1]
    names = dict(model.named_children())
    assert {"conv1", "conv2", "conv3", "conv4", "pool1", "pool2", "head"} <= set(names)


def test_vit_is_eager_with_64_patches():
    model = fm.build_vit(fm.vit_config()).eval()
    out = model(torch.zeros(2, 1, 32, 32), output_attentions=True)
    assert out.logits.shape == (2, 10)
    assert out.attentions is not None and out.attentions[0].shape[-1] == 65  # CLS + 8x8 patches


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_committed_weights_load_and_reach_recorded_accuracy(kind, small, tmp_path):
    weights = fm.committed_weights_dir() / f"fashion_{kind}.safetensors"
    assert weights.is_file(), f"{weights} is committed with the package"
    info = read_json(weights.with_suffix(".json"))
    for key in ("model_config", "data", "seed", "epochs", "val_accuracy", "test_accuracy", "command"):
        assert key in info
    if kind == "vit":
        assert info["vit_config"]["patch_size"] == 4 and info["vit_config"]["image_size"] == 32
        # the committed ViT is group-robust (scripts/make_backbones.sh): shown one random group of
        # 20 % of its patches (the others dropped), it is right far above the 10 % of chance
        last = last_robust_step(info)
        after = info[f"robust_step_{last}"]["after"]["test"]
        assert after["groups/drop"]["accuracy"] > 0.5 and after["mean of 20 groups/drop"]["accuracy"] > 0.7
    model = FashionTask().load_backbone(small, tmp_path, backbone=kind, train_if_missing=False)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert not list(tmp_path.iterdir())  # nothing was trained or cached
    if kind == "vit":  # SOP's groups drop the other patches, the mode the ViT was made robust to
        assert FashionTask().make_adapter(model).drop_patches
    raw, labels, _ = fm.load_raw("test")
    test = fm.FashionDataset(fm.preprocess(raw[:500]), torch.from_numpy(labels[:500].copy()),
                             "test", np.arange(500))
    acc = fm.evaluate_accuracy(model, test)
    # 500 images: a standard error of about 0.02 around the accuracy recorded on all 10k
    assert acc >= 0.75
    assert abs(acc - info["test_accuracy_full_10k"]) <= 0.05


def test_trains_and_caches_when_weights_do_not_match(small, tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "committed_weights_dir", lambda: tmp_path / "nothing")
    monkeypatch.setitem(fm.TRAIN_RECIPES, "cnn", dict(fm.TRAIN_RECIPES["cnn"], epochs=1))
    with pytest.raises(FileNotFoundError, match="train_fashion_backbones"):
        FashionTask().load_backbone(small, tmp_path, backbone="cnn", train_if_missing=False)
    model = FashionTask().load_backbone(small, tmp_path, backbone="cnn", progress=False)
    cached = list((tmp_path / "fashion").glob("cnn-*.safetensors"))
    assert len(cached) == 1 and cached[0].with_suffix(".json").is_file()
    again = FashionTask().load_backbone(small, tmp_path, backbone="cnn", train_if_missing=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_make_adapter():
    task = FashionTask()
    cnn = task.make_adapter(FashionCNN())
    assert isinstance(cnn, CNNAdapter) and cnn.cell_grid == (8, 8)
    vit = task.make_adapter(fm.build_vit(fm.vit_config()))
    assert isinstance(vit, ViTAdapter) and vit.cell_grid == (8, 8)


def test_adapters_run_on_groups():
    task = FashionTask()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    masks = torch.zeros(2, 3, 64, dtype=torch.bool)
    masks[:, :, :12] = True
    for model in (FashionCNN(), fm.build_vit(fm.vit_config())):
        adapter = task.make_adapter(model)
        assert adapter.num_cells(x) == 64
        logits, emb = adapter.forward_groups(x, masks)
        assert logits.shape == (2, 3, 10) and emb.shape[:2] == (2, 3)
