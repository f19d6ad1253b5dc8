"""The ImageNet-S loader on a tiny fixture written in the real layout (nothing is downloaded).

The fixture follows the LUSSeg/ImageNet-S release: ``ImageNetS919/{validation,validation-segmentation,
train-semi}/<wnid>/...``, RGB segmentations with id = R + 256*G, and the release's
``data/mapping/ImageNetS_im919_mapping_validation.txt`` whose lines are
``<ImageNet-1k wnid>/<file> <ImageNet-S wnid>/<file>``. The image names and wnids below are lines of
that real file, including two images filed under a class that is not their ImageNet-1k class
(``ILSVRC2012_val_00026064``, a tench under goldfish; ``ILSVRC2012_val_00019531``, an electric ray
under tiger shark), and a real ``train-semi`` image of a class ImageNet-S merged into another
(``n02808440/n04493381_27386.JPEG``: a tub under bathtub).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from sumofparts.tasks import online_imagenet_s as ins
from sumofparts.tasks.online_imagenet_s import ImageNetSTask

torch.set_num_threads(1)

# real ImageNet-1k wnids in class-index order (a truncated LOC_synset_mapping.txt: the fixture's
# model has these 8 outputs)
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331",
         "n02808440", "n04493381"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray",
         "bathtub", "tub"]
# ImageNet-S class ids (line numbers of ImageNetS_categories_im919.txt) of the folders used
SEG_IDS = {"n01443537": 2, "n01491361": 4, "n02808440": 430}
# (ImageNet-1k wnid, ImageNet-S folder, file): lines of ImageNetS_im919_mapping_validation.txt
VALIDATION = [
    ("n01440764", "n01443537", "ILSVRC2012_val_00026064"),   # a tench under goldfish
    ("n01443537", "n01443537", "ILSVRC2012_val_00004677"),
    ("n01496331", "n01491361", "ILSVRC2012_val_00019531"),   # an electric ray under tiger shark
    ("n01491361", "n01491361", "ILSVRC2012_val_00002922"),
    ("n01491361", "n01491361", "ILSVRC2012_val_00013484"),
    ("n02808440", "n02808440", "ILSVRC2012_val_00019565"),
]
OTHER_LINES = [("n01440764", "n01440764", "ILSVRC2012_val_00000293"),   # classes not in the fixture
               ("n01494475", "n01484850", "ILSVRC2012_val_00049166")]
# train-semi: ImageNet training images are named <wnid>_<number>.JPEG
# (ImageNet-S folder, file): lines of ImageNetSemi_im919_train.txt
TRAIN = [("n01443537", "n01443537_23292.JPEG"), ("n01491361", "n01491361_5245.JPEG"),
         ("n02808440", "n04493381_27386.JPEG"), ("n02808440", "n02808440_38760.JPEG")]
MISMATCHED = {"ILSVRC2012_val_00026064", "ILSVRC2012_val_00019531", "n04493381_27386"}


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


def _jpeg(path, rng, h=40, w=56):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format="JPEG")


def write_mapping(path, lines=VALIDATION + OTHER_LINES):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w}/{f}.JPEG {folder}/{f}.JPEG\n" for w, folder, f in lines))
    return path


@pytest.fixture
def repo_root(tmp_path):
    """A LUSSeg/ImageNet-S checkout with the dataset prepared inside it, as the authors did:
    <repo>/data/mapping/ImageNetS_im919_mapping_validation.txt and
    <repo>/datapreparation/ImageNetS919/{validation,validation-segmentation,train-semi}/<wnid>/..."""
    repo = tmp_path / "ImageNet-S"
    variant = repo / "datapreparation" / "ImageNetS919"
    rng = np.random.default_rng(0)
    for k, (_, folder, name) in enumerate(VALIDATION):
        h = 40 + 8 * (k % 2)
        _jpeg(variant / "validation" / folder / f"{name}.JPEG", rng, h=h)
        _segmentation_png(variant / "validation-segmentation" / folder / f"{name}.png", SEG_IDS[folder], h, 56)
    for folder, name in TRAIN:
        _jpeg(variant / "train-semi" / folder / name, rng, 32, 32)
    write_mapping(repo / "data" / "mapping" / "ImageNetS_im919_mapping_validation.txt")
    (repo / "datapreparation" / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)))
    return repo


@pytest.fixture
def fixture_root(repo_root):
    """The folder holding ImageNetS919 (what IMAGENET_S_ROOT points at)."""
    return repo_root / "datapreparation"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("IMAGENET_S_ROOT", "IMAGENET_S_VAL_LABELS", "IMAGENET_SYNSETS", "SOP_IMAGENET_S_MISMATCHED"):
        monkeypatch.delenv(var, raising=False)


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
    # 3 classes, 1/1/1 per class; the mismatched images are dropped (default), which leaves goldfish
    # and bathtub one validation image each (test), tiger shark two (test + val)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 3)
    # splits disjoint
    sets = [set(map(str, d.paths)) for d in (data.train, data.val, data.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    x, y = data.test[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6  # mean 0.5, std 0.5
    # labels are ImageNet-1k indices
    for d in (data.train, data.val, data.test):
        assert [int(v) for v in d.labels] == [WNIDS.index(w) for w in d.wnids]
    fg = data.test_foreground
    assert fg.shape == (3, 224, 224) and fg.dtype == torch.bool
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
    assert out.logits.shape == (3, len(WNIDS))
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


# ---------------------------------------------------------------------------------------------
# ImageNet-1k labels, not ImageNet-S folders
# ---------------------------------------------------------------------------------------------
def _items(data):
    """{image stem: (label, wnid, folder, split)} over the three splits."""
    out = {}
    for name in ("train", "val", "test"):
        d = getattr(data, name)
        for path, label, wnid, folder in zip(d.paths, d.labels.tolist(), d.wnids, d.folders):
            out[path.stem] = (label, wnid, folder, name)
    return out


def test_mismatched_images_are_dropped_by_default(fixture_root, tiny_vit_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=ins.__name__):
        data = ImageNetSTask(root=fixture_root, model=tiny_vit_dir).load_data(size="default", progress=False)
    items = _items(data)
    # default size: 10 train / 1 val / 1 test per class: every matched image is used, no mismatched one
    expected = {f for w, folder, f in VALIDATION if w == folder} | {
        n[:-5] for folder, n in TRAIN if n.startswith(folder)}
    assert set(items) == expected and not MISMATCHED & set(items)
    for label, wnid, folder, _ in items.values():
        assert wnid == folder and label == WNIDS.index(wnid)
    audit = data.meta["imagenet1k_labels"]
    assert audit["policy"] == "drop"
    assert (audit["validation_images"], audit["validation_mismatched"]) == (6, 2)
    assert (audit["train_images"], audit["train_mismatched"]) == (4, 1)
    assert audit["dropped"] == 3 and sum(audit["relabelled_in_splits"].values()) == 0
    assert audit["source"].endswith("data/mapping/ImageNetS_im919_mapping_validation.txt")
    assert "2 of 6 validation and 1 of 4 training images" in caplog.text and "dropped" in caplog.text


def test_mismatched_images_relabelled_by_their_imagenet1k_class(fixture_root, tiny_vit_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=ins.__name__):
        data = ImageNetSTask(root=fixture_root, model=tiny_vit_dir, mismatched="relabel").load_data(
            size="default", progress=False)
    items = _items(data)
    # goldfish has two validation images (the tench and a goldfish): both are used (test + val)
    label, wnid, folder, _ = items["ILSVRC2012_val_00026064"]
    assert (wnid, folder) == ("n01440764", "n01443537") and label == WNIDS.index("n01440764") == 0
    label, wnid, folder, _ = items["n04493381_27386"]   # a tub under bathtub, from its file name
    assert (wnid, folder, label) == ("n04493381", "n02808440", WNIDS.index("n04493381"))
    if "ILSVRC2012_val_00019531" in items:              # 2 of the 3 tiger-shark folder images are drawn
        assert items["ILSVRC2012_val_00019531"][:2] == (WNIDS.index("n01496331"), "n01496331")
    for stem, (label, wnid, folder, _) in items.items():
        assert label == WNIDS.index(wnid) and (wnid != folder) == (stem in MISMATCHED)
    audit = data.meta["imagenet1k_labels"]
    assert audit["policy"] == "relabel" and audit["dropped"] == 0
    relabelled = sum(audit["relabelled_in_splits"].values())
    assert relabelled == len(MISMATCHED & set(items)) >= 2
    assert "labelled by their ImageNet-1k class" in caplog.text


def test_relabel_draws_the_electric_ray_for_some_seed(fixture_root, tiny_vit_dir):
    task = ImageNetSTask(root=fixture_root, model=tiny_vit_dir, mismatched="relabel")
    seen = set()
    for seed in range(6):
        items = _items(task.load_data(size="default", seed=seed, progress=False))
        if "ILSVRC2012_val_00019531" in items:
            seen.add(items["ILSVRC2012_val_00019531"][0])
    assert seen == {WNIDS.index("n01496331")}


def test_policy_from_environment_and_bad_policy(fixture_root, tiny_vit_dir, monkeypatch):
    monkeypatch.setenv("SOP_IMAGENET_S_MISMATCHED", "relabel")
    data = ImageNetSTask(root=fixture_root, model=tiny_vit_dir).load_data(size="default", progress=False)
    assert data.meta["imagenet1k_labels"]["policy"] == "relabel"
    monkeypatch.setenv("SOP_IMAGENET_S_MISMATCHED", "folder")
    with pytest.raises(ValueError, match=r"SOP_IMAGENET_S_MISMATCHED must be one of drop, relabel.*'folder'"):
        ImageNetSTask(root=fixture_root, model=tiny_vit_dir).load_data(size="default", progress=False)


def test_splits_are_in_a_seeded_random_order(fixture_root, tiny_vit_dir):
    """The test split holds one image per class; its order is random (seeded), not the class order,
    so that the evaluation's first n items are a random sample over classes."""
    task = ImageNetSTask(root=fixture_root, model=tiny_vit_dir)
    orders = {seed: task.load_data(size="default", seed=seed, progress=False).test.folders for seed in range(6)}
    assert task.load_data(size="default", seed=3, progress=False).test.folders == orders[3]
    assert all(sorted(o) == sorted(SEG_IDS) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 1


def _write_kaggle_solution(path):
    rows = ["ImageId,PredictionString"] + [
        f"{f},{w} 12 30 200 180 {w} 5 6 50 60" for w, _, f in VALIDATION + OTHER_LINES]
    path.write_text("\n".join(rows) + "\n")
    return path


def _write_devkit(folder):
    """ILSVRC2012_devkit_t12/data: meta.mat (struct array 'synsets', fields as in the devkit's readme)
    and ILSVRC2012_validation_ground_truth.txt (line i: the ILSVRC2012_ID of ILSVRC2012_val_<i>).
    The IDs are deliberately not the class indices."""
    from scipy.io import savemat

    data = folder / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    wnids = WNIDS + ["n00001740"]                         # plus a non-leaf synset (entity)
    ids = {w: 500 - 37 * i for i, w in enumerate(wnids)}
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = np.zeros((len(wnids), 1), dtype=[(f, "O") for f in fields])
    for i, w in enumerate(wnids):
        leaf = w != "n00001740"
        synsets[i, 0] = (ids[w], w, (NAMES + ["entity"])[i], "a gloss", 0 if leaf else 8,
                         np.zeros((1, 0)) if leaf else np.arange(1, 9), 0 if leaf else 18, 1300 if leaf else 0)
    savemat(data / "meta.mat", {"synsets": synsets})
    by_number = {int(f.rsplit("_", 1)[1]): w for w, _, f in VALIDATION + OTHER_LINES}
    lines = [str(ids[by_number.get(i, "n01484850")]) for i in range(1, 50001)]
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    return data.parent


def test_the_three_ground_truth_formats_agree(repo_root, tmp_path):
    variant = repo_root / "datapreparation" / "ImageNetS919"
    expected = {f: w for w, _, f in VALIDATION + OTHER_LINES}
    from_mapping = ins.imagenet1k_validation_labels(variant)
    assert from_mapping.wnid_of == expected
    csv_file = _write_kaggle_solution(tmp_path / "LOC_val_solution.csv")
    assert ins.imagenet1k_validation_labels(variant, explicit=csv_file).wnid_of == expected
    devkit = _write_devkit(tmp_path / "imagenet")
    got = ins.imagenet1k_validation_labels(variant, explicit=devkit).wnid_of
    assert len(got) == 50000 and {f: got[f] for f in expected} == expected
    got = ins.imagenet1k_validation_labels(
        variant, explicit=devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").wnid_of
    assert {f: got[f] for f in expected} == expected


def test_ground_truth_found_next_to_the_dataset(fixture_root, tiny_vit_dir, repo_root):
    """Without the repository's mapping file, Kaggle's LOC_val_solution.csv beside LOC_synset_mapping.txt
    is used, and the labels are the same."""
    (repo_root / "data" / "mapping" / "ImageNetS_im919_mapping_validation.txt").unlink()
    _write_kaggle_solution(fixture_root / "LOC_val_solution.csv")
    data = ImageNetSTask(root=fixture_root, model=tiny_vit_dir, mismatched="relabel").load_data(
        size="default", progress=False)
    assert data.meta["imagenet1k_labels"]["source"] == str(fixture_root / "LOC_val_solution.csv")
    assert _items(data)["ILSVRC2012_val_00026064"][0] == 0


def test_clear_error_without_ground_truth(fixture_root, tiny_vit_dir, repo_root):
    (repo_root / "data" / "mapping" / "ImageNetS_im919_mapping_validation.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageNet-1k class.*ImageNetS_im919_mapping_validation.txt.*"
                                                r"LUSSeg/ImageNet-S.*IMAGENET_S_VAL_LABELS"):
        ImageNetSTask(root=fixture_root, model=tiny_vit_dir).load_data(size="small", progress=False)


def test_clear_errors_for_bad_ground_truth(fixture_root, tiny_vit_dir, repo_root, tmp_path):
    bad = tmp_path / "mapping.txt"
    bad.write_text("n01440764/ILSVRC2012_val_00026064.JPEG n01443537/ILSVRC2012_val_00026064.JPEG\n"
                   "ILSVRC2012_val_00004677.JPEG 1\n")
    with pytest.raises(ValueError, match=r"mapping.txt:2: expected '<ImageNet-1k wnid>/<file>"):
        ImageNetSTask(root=fixture_root, model=tiny_vit_dir, val_labels=bad).load_data(progress=False)
    # a mapping that does not name one of the images
    partial = write_mapping(tmp_path / "partial.txt", VALIDATION[1:])
    with pytest.raises(ValueError, match=r"ILSVRC2012_val_00026064.JPEG: not in the ImageNet-1k validation labels"):
        ImageNetSTask(root=fixture_root, model=tiny_vit_dir, val_labels=partial).load_data(progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetSTask(root=fixture_root, model=tiny_vit_dir, val_labels=tmp_path / "nothing.csv").load_data(
            progress=False)


def test_training_image_wnid_from_its_name():
    assert ins.training_image_wnid("x/n02808440/n04493381_27386.JPEG") == "n04493381"
    with pytest.raises(ValueError, match=r"<wnid>_<number>.JPEG"):
        ins.training_image_wnid("x/n02808440/IMG_0001.JPEG")
