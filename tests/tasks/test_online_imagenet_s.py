"""The ImageNet-S loader on a tiny fixture written in the real layout (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sumofparts.tasks import online_imagenet_s as ins
from sumofparts.tasks.online_imagenet_s import ImageNetSTask

torch.set_num_threads(1)

# real ImageNet-1k wnids, in class-index order (tench, goldfish, great white shark, tiger shark)
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]
CLASSES = {"n01443537": 2, "n01491361": 4}  # the fixture's class folders -> ImageNet-S ids


def _segmentation_png(path, seg_id: int, h: int, w: int) -> np.ndarray:
    """An RGB segmentation: a rectangle of class ``seg_id`` (R + 256*G), an "ignore" (1000)
    border strip, background 0 elsewhere. Returns the expected foreground."""
    ids = np.zeros((h, w), dtype=np.int64)
    ids[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = seg_id
    ids[:, :2] = 1000
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = ids // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path)
    return (ids != 0) & (ids != 1000)


@pytest.fixture
def fixture_root(tmp_path):
    """<tmp>/imagenet-s/ImageNetS919/{validation,validation-segmentation,train-semi}/<wnid>/..."""
    root = tmp_path / "imagenet-s"
    variant = root / "ImageNetS919"
    rng = np.random.default_rng(0)
    for c, (wnid, seg_id) in enumerate(CLASSES.items()):
        for k in range(2):
            name = f"ILSVRC2012_val_{c * 10 + k:08d}"
            h, w = 40 + 8 * k, 56
            img = variant / "validation" / wnid / f"{name}.JPEG"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img, format="JPEG")
            _segmentation_png(variant / "validation-segmentation" / wnid / f"{name}.png", seg_id, h, w)
        train = variant / "train-semi" / wnid / f"{wnid}_{c}.JPEG"
        train.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(train, format="JPEG")
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)))
    return root


@pytest.fixture
def tiny_vit_dir(tmp_path):
    """A tiny ViT saved with save_pretrained: the stand-in for google/vit-base-patch16-224."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=16,
                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    num_labels=len(WNIDS), id2label=dict(enumerate(NAMES)),
                    label2id={n: i for i, n in enumerate(NAMES)})
    path = tmp_path / "tiny-vit"
    ViTForImageClassification(cfg).save_pretrained(path)
    return path


def test_read_segmentation_decodes_r_plus_256_g(tmp_path):
    ids = np.array([[0, 1, 255], [256, 919, 1000]], dtype=np.int64)
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "s.png")
    np.testing.assert_array_equal(ins.read_segmentation(tmp_path / "s.png"), ids)


def test_load_data_shapes_labels_and_splits(fixture_root, tiny_vit_dir):
    task = ImageNetSTask(root=fixture_root, model=tiny_vit_dir)
    data = task.load_data(size="small", progress=False)
    assert data.name == "imagenet-s" and data.kind == "classification"
    assert data.output_names == NAMES  # the model's id2label
    assert (len(data.train), len(data.val), len(data.test)) == (2, 2, 2)
    # splits disjoint
    sets = [set(map(str, d.paths)) for d in (data.train, data.val, data.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    x, y = data.test[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    assert -1.0 - 1e-6 <= float(x.min()) and float(x.max()) <= 1.0 + 1e-6  # mean 0.5, std 0.5
    # labels are ImageNet-1k indices of the class folders
    for d in (data.train, data.val, data.test):
        assert [int(v) for v in d.labels] == [WNIDS.index(w) for w in d.wnids]
    fg = data.test_foreground
    assert fg.shape == (2, 224, 224) and fg.dtype == torch.bool
    # the central rectangle (half of each side) is foreground; ignore (1000) and 0 are not
    assert fg[:, 112, 112].all() and not fg[:, 5, 5].any() and not fg[:, 112, 1].any()
    frac = fg.float().mean(dim=(1, 2))
    assert torch.all((frac > 0.2) & (frac < 0.3))


def test_backbone_and_forward(fixture_root, tiny_vit_dir):
    task = ImageNetSTask(root=fixture_root, model=tiny_vit_dir)
    data = task.load_data(size="small", progress=False)
    model = task.load_backbone(data)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == "eager"
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    out = model(x, output_attentions=True)
    assert out.logits.shape == (2, len(WNIDS))
    assert out.attentions is not None and out.attentions[0].shape[-1] == 197


def test_registered():
    from sumofparts.tasks.base import _REGISTRY

    assert _REGISTRY["imagenet-s"] is ImageNetSTask


def test_clear_error_when_data_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_S_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=r"ImageNet-S .*not found.*LUSSeg.*IMAGENET_S_ROOT"):
        ImageNetSTask().load_data(tmp_path / "cache", size="small", progress=False)


def test_clear_error_when_model_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("SOP_IMAGENET_S_MODEL", raising=False)
    with pytest.raises(RuntimeError, match=r"google/vit-base-patch16-224.*not in the local Hugging "
                                           r"Face cache.*HF_HUB_OFFLINE.*download"):
        ins.load_vit()


def test_clear_error_without_class_order(fixture_root, tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_SYNSETS", raising=False)
    (fixture_root / "LOC_synset_mapping.txt").unlink()
    task = ImageNetSTask(root=fixture_root, model=tmp_path / "no-model")
    with pytest.raises(FileNotFoundError, match="LOC_synset_mapping.txt"):
        task.load_data(size="small", progress=False)


def test_class_order_from_train_full(fixture_root, monkeypatch):
    monkeypatch.delenv("IMAGENET_SYNSETS", raising=False)
    (fixture_root / "LOC_synset_mapping.txt").unlink()
    variant = fixture_root / "ImageNetS919"
    wnids = [f"n{10000000 + i:08d}" for i in range(998)] + ["n01443537", "n01491361"]
    for w in wnids:
        (variant / "train-full" / w).mkdir(parents=True)
    index, names, source = ins.imagenet_class_index(variant)
    assert source.endswith("train-full")
    assert index["n01443537"] == 0 and index["n01491361"] == 1 and len(index) == 1000
