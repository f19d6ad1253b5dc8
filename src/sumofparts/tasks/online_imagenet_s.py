"""The ``imagenet-s`` task: ImageNet-S with a Hugging Face ViT-B/16 (the paper's image setting).

This is the real loader; nothing here is downloaded. It needs

* the **ImageNet-S** dataset prepared with the LUSSeg scripts
  (https://github.com/LUSSeg/ImageNet-S: ``data_preparation.sh`` extracts the images from an
  ImageNet copy, ``datapreparation_anno.sh`` fetches the segmentations), in its usual layout::

      <root>/ImageNetS919/                 (or ImageNetS300, ImageNetS50; <root> may be this folder)
          train/<wnid>/<name>.JPEG         training images, no masks
          train-semi/<wnid>/<name>.JPEG    10 annotated training images per class
          train-semi-segmentation/<wnid>/<name>.png
          validation/<wnid>/<name>.JPEG
          validation-segmentation/<wnid>/<name>.png
          train-full/<wnid>/               (optional) the 1000 ImageNet-1k classes

  A segmentation PNG is RGB; the ImageNet-S class id of a pixel is ``R + 256 * G``, 0 is
  "other" (background) and 1000 is "ignore". The foreground is ``id not in {0, 1000}``.
  ``<root>`` is the ``root`` argument, else ``$IMAGENET_S_ROOT``, else ``<cache_dir>/imagenet-s``.

* the model ``google/vit-base-patch16-224`` (``$SOP_IMAGENET_S_MODEL`` or the ``model``
  argument may name another hub id or a local ``save_pretrained`` directory), loaded with
  ``ViTForImageClassification.from_pretrained(..., attn_implementation="eager")``. With
  ``HF_HUB_OFFLINE=1`` only the local Hugging Face cache is used.

* the ImageNet-1k class order (the model predicts 1000 ImageNet-1k classes; the label of an
  image is the index of its ImageNet-1k wnid, see "Labels" below): taken from, in this order, a
  ``LOC_synset_mapping.txt`` / ``synsets.txt`` (one ``wnid [name]`` per line, in class-index
  order) in ``<root>`` or its variant folder, the file named by ``$IMAGENET_SYNSETS``, the 1000
  folders of ``train-full`` (sorted, the ImageNet-1k convention), or the model's ``id2label`` when
  its labels are wnids.

Inputs are ``(3, 224, 224)`` float32: the image resized to 224×224 (bilinear, as the model's
image processor does) and normalised with mean 0.5 and std 0.5 per channel. The foreground is
resized to 224×224 with nearest neighbour, so it lines up with the input.

Labels: the ImageNet-1k class of each image, not its ImageNet-S folder. ImageNet-S files a
validation image under the class its segmentation annotates, which for 1,652 of the 12,419
ImageNet-S-919 validation images (13.3%; 529 of 4,097 for -300, 136 of 752 for -50) is not the
image's ImageNet-1k class, the class the ViT was trained to predict (``ILSVRC2012_val_00026064``,
a tench, sits under goldfish). The ImageNet-1k class of a validation image is read from, in this
order (see :func:`imagenet1k_validation_labels`): the file named by the ``val_labels`` argument or
``$IMAGENET_S_VAL_LABELS``; the release's own ``ImageNetS_im<variant>_mapping_validation.txt``
(lines ``<ImageNet-1k wnid>/<file> <ImageNet-S wnid>/<file>``, in ``data/mapping/`` of the LUSSeg
repository, found next to the dataset when it was prepared inside the repository); the ImageNet
validation ground truth of the Kaggle localisation release, ``LOC_val_solution.csv``
(``ImageId,PredictionString``, the first word of the prediction string is the wnid); or the
ILSVRC2012 devkit's ``ILSVRC2012_validation_ground_truth.txt`` (line i: the ILSVRC2012_ID of
``ILSVRC2012_val_<i>``) with its ``meta.mat`` (ILSVRC2012_ID -> WNID). A training image's class is
the wnid its file name starts with (``n04493381_27386.JPEG``), as ImageNet names them (this is how
the LUSSeg preparation script finds its source; 20 of the 9,190 ``train-semi`` images sit under a
class that ImageNet-S merged them into).

What happens to an image whose folder is not its ImageNet-1k class is the ``mismatched`` option
(``$SOP_IMAGENET_S_MISMATCHED``):

* ``"drop"`` (default): left out before the splits are drawn. This is what the authors' code does
  in effect (their loader pairs each segmentation with the image of the same name inside the
  *ImageNet-1k* class folder of the same wnid and silently skips it when there is none), and it
  keeps the foreground meaningful: the segmentation annotates the folder's class.
* ``"relabel"``: kept, labelled by its ImageNet-1k class. Its foreground still shows the object of
  the folder's class, so purity on these images measures a different object than the label.

Either way the number of images concerned is logged and recorded in
``meta["imagenet1k_labels"]``.

Splits: ``test`` and ``val`` come from ``validation`` (disjoint: per class, a seeded shuffle
gives the first ``n_test`` images to test and the next ``n_val`` to val); ``train`` comes from
``train-semi`` (or ``train`` when it is absent). ``default``: 10 train / 1 val / 1 test image
per class (919 test images for ImageNet-S-919, as in the paper); ``small``: 1 / 1 / 1 per class
for at most 8 classes. Each split is then put in a seeded random order, so that any prefix of it
(the evaluation's first ``n`` test items, the validation batches of training) is a random sample
over classes rather than the classes that sort first.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import InputError, MissingFileError
from ..io import content_hash
from .base import Task, TaskData, default_cache_dir, register_task

__all__ = [
    "ImageNetSTask",
    "ImageNetSDataset",
    "MODEL_ID",
    "IMAGE_SIZE",
    "MEAN",
    "STD",
    "IGNORE_ID",
    "OTHER_ID",
    "SIZES",
    "find_imagenet_s_root",
    "read_segmentation",
    "load_image",
    "load_foreground",
    "imagenet_class_index",
    "imagenet1k_validation_labels",
    "training_image_wnid",
    "ValidationLabels",
    "MISMATCHED_POLICIES",
    "load_vit",
]

log = logging.getLogger(__name__)

MODEL_ID = "google/vit-base-patch16-224"
IMAGE_SIZE = 224
PATCH_SIZE = 16
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
OTHER_ID = 0
IGNORE_ID = 1000
VARIANTS = {"919": "ImageNetS919", "300": "ImageNetS300", "50": "ImageNetS50"}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
#: per size: (train per class, val per class, test per class, at most this many classes or None)
SIZES: dict[str, tuple[int, int, int, int | None]] = {
    "default": (10, 1, 1, None),
    "small": (1, 1, 1, 8),
}
_WNID = re.compile(r"^n\d{8}$")
_TRAIN_NAME = re.compile(r"^(n\d{8})_")
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")
#: what to do with an image whose ImageNet-S folder is not its ImageNet-1k class (module docs)
MISMATCHED_POLICIES = ("drop", "relabel")

_DATA_HELP = (
    "ImageNet-S cannot be downloaded automatically (it is built from an ImageNet copy). Prepare it "
    "with the scripts of https://github.com/LUSSeg/ImageNet-S (datapreparation/data_preparation.sh "
    "<imagenet> <dest> 919, then datapreparation_anno.sh <dest> 919) and point IMAGENET_S_ROOT at "
    "<dest> (the folder holding ImageNetS919/validation and ImageNetS919/validation-segmentation)."
)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def find_imagenet_s_root(root: str | os.PathLike | None = None, variant: str = "919",
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """The variant folder (e.g. ``.../ImageNetS919``) holding ``validation`` and
    ``validation-segmentation``; raises ``FileNotFoundError`` saying where it looked and how to
    get the data."""
    if variant not in VARIANTS:
        raise InputError(f"unknown ImageNet-S variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    candidates: list[Path] = []
    if root is not None:
        candidates.append(Path(root))
    elif os.environ.get("IMAGENET_S_ROOT"):
        candidates.append(Path(os.environ["IMAGENET_S_ROOT"]))
    else:
        candidates.append(Path(cache_dir if cache_dir is not None else default_cache_dir()) / "imagenet-s")
    looked = []
    for base in candidates:
        for folder in (base / VARIANTS[variant], base):
            looked.append(str(folder))
            if (folder / "validation").is_dir() and (folder / "validation-segmentation").is_dir():
                return folder
    raise MissingFileError(
        f"ImageNet-S ({VARIANTS[variant]}) not found: no 'validation' and 'validation-segmentation' "
        f"folders in {' or '.join(looked)}. {_DATA_HELP}")


def _list_images(split_dir: Path) -> dict[str, list[Path]]:
    """``{wnid: sorted image paths}`` of a split folder laid out as ``<wnid>/<file>``."""
    out: dict[str, list[Path]] = {}
    if not split_dir.is_dir():
        return out
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            out[class_dir.name] = files
    return out


def read_segmentation(path: str | os.PathLike) -> np.ndarray:
    """An ImageNet-S segmentation PNG -> ``(H, W)`` int64 class ids, ``id = R + 256 * G``
    (0: other/background, 1000: ignore). Single-channel PNGs are read as ids directly."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("RGB", "RGBA"):
            arr = np.asarray(img.convert("RGB"), dtype=np.int64)
            return arr[..., 0] + 256 * arr[..., 1]
        if img.mode in ("L", "I", "I;16"):
            return np.asarray(img, dtype=np.int64)
        raise InputError(f"{path}: expected an RGB segmentation PNG (id = R + 256*G), got PIL mode "
                         f"{img.mode!r}")


def load_foreground(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """``(size, size)`` bool foreground (id not 0 and not 1000), resized with nearest neighbour."""
    from PIL import Image

    ids = read_segmentation(path)
    fg = (ids != OTHER_ID) & (ids != IGNORE_ID)
    img = Image.fromarray(fg.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(img) > 127


def load_image(path: str | os.PathLike, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``(3, size, size)`` float32: RGB, resized (bilinear), ``(x / 255 - 0.5) / 0.5``."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy(arr / 255.0).permute(2, 0, 1)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


def _read_synset_file(path: Path) -> tuple[list[str], list[str]]:
    wnids, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        wnid, _, name = line.partition(" ")
        if not _WNID.match(wnid):
            raise InputError(f"{path}: expected lines 'wnid [name]' (e.g. 'n01440764 tench'), got {line!r}")
        wnids.append(wnid)
        names.append(name.strip() or wnid)
    return wnids, names


def imagenet_class_index(root: Path, model_config: Any = None) -> tuple[dict[str, int], list[str], str]:
    """``({wnid: ImageNet-1k index}, class names in index order, where the order came from)``.

    See the module docs for the sources tried; raises ``FileNotFoundError`` naming them.
    """
    tried = []
    files = [root / n for n in ("LOC_synset_mapping.txt", "synsets.txt")]
    files += [root.parent / n for n in ("LOC_synset_mapping.txt", "synsets.txt")]
    if os.environ.get("IMAGENET_SYNSETS"):
        files.insert(0, Path(os.environ["IMAGENET_SYNSETS"]))
    for f in files:
        tried.append(str(f))
        if f.is_file():
            wnids, names = _read_synset_file(f)
            return {w: i for i, w in enumerate(wnids)}, names, str(f)
    full = root / "train-full"
    tried.append(f"{full}/ (1000 class folders)")
    if full.is_dir():
        wnids = sorted(p.name for p in full.iterdir() if p.is_dir() and _WNID.match(p.name))
        if len(wnids) == 1000:
            return {w: i for i, w in enumerate(wnids)}, list(wnids), str(full)
    id2label = getattr(model_config, "id2label", None) or {}
    tried.append("the model's id2label (when its labels are wnids)")
    if id2label and all(_WNID.match(str(v).split(" ")[0]) for v in id2label.values()):
        order = sorted(id2label, key=int)
        wnids = [str(id2label[k]).split(" ")[0] for k in order]
        return {w: int(k) for w, k in zip(wnids, order)}, [str(id2label[k]) for k in order], "model id2label"
    raise MissingFileError(
        "cannot map ImageNet-S class folders (wnids) to the model's ImageNet-1k class indices: "
        f"found none of {'; '.join(tried)}. Put the ImageNet LOC_synset_mapping.txt (shipped with "
        "the ImageNet/ILSVRC download; 1000 lines 'wnid name' in class-index order) in the dataset "
        "folder, or set IMAGENET_SYNSETS to such a file.")


# ---------------------------------------------------------------------------------------------
# the ImageNet-1k class of each image
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationLabels:
    """The ImageNet-1k class of ILSVRC2012 validation images.

    Attributes:
        wnid_of: ``{image stem, e.g. "ILSVRC2012_val_00026064": ImageNet-1k wnid}``.
        source: the file(s) the classes were read from.
    """

    wnid_of: dict[str, str]
    source: str


def _mapping_file_labels(path: Path) -> dict[str, str]:
    """An ImageNet-S ``..._mapping_validation.txt``: lines ``<in1k wnid>/<file> <ins wnid>/<file>``."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        src = parts[0].split("/") if len(parts) == 2 else []
        if len(src) != 2 or not _WNID.match(src[0]):
            raise InputError(f"{path}:{lineno}: expected '<ImageNet-1k wnid>/<file> <ImageNet-S wnid>/<file>' "
                             f"(e.g. 'n01440764/ILSVRC2012_val_00026064.JPEG n01443537/ILSVRC2012_val_00026064.JPEG'), "
                             f"got {line!r}")
        out[Path(src[1]).stem] = src[0]
    return out


def _kaggle_solution_labels(path: Path) -> dict[str, str]:
    """Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` (first word: the wnid)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise InputError(f"{path}: expected the columns ImageId,PredictionString (Kaggle's ImageNet "
                             f"localisation solution), got {reader.fieldnames}")
        for lineno, row in enumerate(reader, 2):
            words = (row["PredictionString"] or "").split()
            if not words or not _WNID.match(words[0]):
                raise InputError(f"{path}:{lineno}: expected a prediction string starting with a wnid "
                                 f"(e.g. 'n01440764 10 20 200 180'), got {row['PredictionString']!r}")
            out[row["ImageId"]] = words[0]
    return out


def _devkit_labels(ground_truth: Path, meta: Path) -> dict[str, str]:
    """The ILSVRC2012 devkit: line i of ``ILSVRC2012_validation_ground_truth.txt`` is the
    ILSVRC2012_ID of ``ILSVRC2012_val_<i:08d>``; ``meta.mat``'s ``synsets`` maps IDs to WNIDs."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        id_to_wnid = {int(i): str(w) for i, w in zip(np.atleast_1d(synsets["ILSVRC2012_ID"]),
                                                       np.atleast_1d(synsets["WNID"]))}
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise InputError(f"{meta}: expected the ILSVRC2012 devkit's meta.mat (a 'synsets' struct array "
                         f"with fields ILSVRC2012_ID and WNID): {exc}") from exc
    out: dict[str, str] = {}
    for lineno, line in enumerate(ground_truth.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out[f"ILSVRC2012_val_{lineno:08d}"] = id_to_wnid[int(line)]
        except (ValueError, KeyError):
            raise InputError(f"{ground_truth}:{lineno}: expected an ILSVRC2012_ID listed in {meta}, "
                             f"got {line.strip()!r}") from None
    return out


def _read_validation_labels(path: Path) -> dict[str, str]:
    """Any supported ground-truth file (or a devkit folder), recognised by its name."""
    if path.is_dir():
        for data in (path / "data", path):
            gt, meta = data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"
            if gt.is_file() and meta.is_file():
                return _devkit_labels(gt, meta)
        raise MissingFileError(f"{path}: expected an ILSVRC2012 devkit folder (data/ILSVRC2012_validation_"
                                "ground_truth.txt and data/meta.mat)")
    if path.suffix.lower() == ".csv":
        return _kaggle_solution_labels(path)
    if path.name == "ILSVRC2012_validation_ground_truth.txt":
        return _devkit_labels(path, path.parent / "meta.mat")
    return _mapping_file_labels(path)


def imagenet1k_validation_labels(variant_dir: Path, variant: str = "919",
                                 explicit: str | os.PathLike | None = None) -> ValidationLabels:
    """The ImageNet-1k class of every ILSVRC2012 validation image the sources below name.

    Tried in order: ``explicit`` (else ``$IMAGENET_S_VAL_LABELS``): a mapping file, a
    ``LOC_val_solution.csv``, an ``ILSVRC2012_validation_ground_truth.txt`` (with ``meta.mat``
    beside it) or a devkit folder; then, in ``variant_dir``, its parent and grandparent (and their
    ``data/mapping/`` folders, the LUSSeg repository layout), ImageNet-S's
    ``ImageNetS_im<variant>_mapping_validation.txt`` (any variant's), ``LOC_val_solution.csv``,
    and ``ILSVRC2012_devkit_t12/data/`` (or ``data/``) of the devkit.
    Raises ``FileNotFoundError`` naming every place tried and where to get the files.
    """
    explicit = explicit if explicit is not None else os.environ.get("IMAGENET_S_VAL_LABELS") or None
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise MissingFileError(f"the ImageNet-1k validation labels file {path} does not exist")
        return ValidationLabels(_read_validation_labels(path), str(path))
    variant_dir = Path(variant_dir)
    bases = [variant_dir, variant_dir.parent, variant_dir.parent.parent]
    folders = [d for b in bases for d in (b, b / "data" / "mapping", b / "mapping")]
    mapping_names = [f"ImageNetS_im{variant}_mapping_validation.txt"] + [
        f"ImageNetS_im{v}_mapping_validation.txt" for v in VARIANTS if v != variant]
    tried: list[str] = []
    for name in mapping_names:
        for d in folders:
            tried.append(str(d / name))
            if (d / name).is_file():
                return ValidationLabels(_mapping_file_labels(d / name), str(d / name))
    for b in bases:
        tried.append(str(b / "LOC_val_solution.csv"))
        if (b / "LOC_val_solution.csv").is_file():
            return ValidationLabels(_kaggle_solution_labels(b / "LOC_val_solution.csv"),
                                    str(b / "LOC_val_solution.csv"))
        for data in (b / "ILSVRC2012_devkit_t12" / "data", b / "data"):
            gt, meta = data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"
            tried.append(f"{gt} + meta.mat")
            if gt.is_file() and meta.is_file():
                return ValidationLabels(_devkit_labels(gt, meta), f"{gt} + {meta.name}")
    raise MissingFileError(
        "cannot tell the ImageNet-1k class of the ImageNet-S validation images (an image's ImageNet-S "
        "folder is not always its ImageNet-1k class): found none of " + "; ".join(tried) + ". Copy "
        f"data/mapping/ImageNetS_im{variant}_mapping_validation.txt from https://github.com/LUSSeg/ImageNet-S "
        "(the repository whose scripts prepared the dataset) next to the dataset, or set "
        "IMAGENET_S_VAL_LABELS to it, to Kaggle's LOC_val_solution.csv, or to the ILSVRC2012 devkit folder.")


def training_image_wnid(path: str | os.PathLike) -> str:
    """The ImageNet-1k wnid of an ImageNet training image, from its name (``n04493381_27386.JPEG``)."""
    match = _TRAIN_NAME.match(Path(path).name)
    if match is None:
        raise InputError(f"{path}: expected an ImageNet training image named '<wnid>_<number>.JPEG' "
                         "(e.g. n01440764_10026.JPEG), whose name gives its ImageNet-1k class")
    return match.group(1)



class ImageNetSDataset(Dataset):
    """``(image (3, 224, 224) float32, label int64 scalar)`` items read from disk on access.

    Attributes: ``paths``, ``labels`` (ImageNet-1k indices of ``wnids``), ``wnids`` (each image's
    ImageNet-1k class), ``folders`` (its ImageNet-S class folder; differs from ``wnids`` only for
    images kept with ``mismatched="relabel"``), ``segmentations`` (the PNG of each item or ``None``).
    """

    def __init__(self, paths: list[Path], labels: list[int], wnids: list[str],
                 segmentations: list[Path | None], image_size: int = IMAGE_SIZE,
                 folders: list[str] | None = None):
        self.paths = list(paths)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.wnids = list(wnids)
        self.folders = list(folders) if folders is not None else list(wnids)
        self.segmentations = list(segmentations)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image(self.paths[index], self.image_size), self.labels[index]


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_vit(model: str | os.PathLike | None = None) -> nn.Module:
    """``ViTForImageClassification.from_pretrained(model, attn_implementation="eager")``, frozen,
    eval mode. ``model`` defaults to ``$SOP_IMAGENET_S_MODEL`` or ``google/vit-base-patch16-224``.
    Raises ``RuntimeError`` saying what is missing when the model is neither local nor reachable."""
    try:
        from transformers import ViTForImageClassification
    except ImportError as exc:  # pragma: no cover - transformers is a dependency
        raise RuntimeError("the imagenet-s task needs transformers: pip install transformers") from exc
    name = str(model or os.environ.get("SOP_IMAGENET_S_MODEL") or MODEL_ID)
    local = Path(name).is_dir()
    offline = _hub_offline()
    try:
        vit = ViTForImageClassification.from_pretrained(
            name, attn_implementation="eager", local_files_only=offline or local)
    except Exception as exc:  # OSError from the cache, httpx/requests errors from the hub, ...
        where = (f"the local folder {name} holds no loadable model (config.json + model.safetensors)"
                 if local else
                 f"{name!r} is not in the local Hugging Face cache "
                 f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}/hub) and "
                 + ("HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub could not be reached"))
        raise RuntimeError(
            f"cannot load the imagenet-s backbone: {where}. On a machine with network run "
            f"`pip install huggingface_hub && hf download {MODEL_ID}` (older clients: "
            f"`huggingface-cli download {MODEL_ID}`) and copy the cache here, or save the model with "
            "save_pretrained and set SOP_IMAGENET_S_MODEL to that folder. "
            f"(The loader said: {type(exc).__name__}: {exc})") from exc
    vit.eval()
    for p in vit.parameters():
        p.requires_grad_(False)
    return vit


def _model_config(model: str | os.PathLike | None):
    """The model's config without its weights, or ``None`` when it cannot be read offline."""
    from transformers import ViTConfig

    name = str(model or os.environ.get("SOP_IMAGENET_S_MODEL") or MODEL_ID)
    try:
        return ViTConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------
@register_task
class ImageNetSTask(Task):
    """ImageNet-S (919 classes annotated) with ``google/vit-base-patch16-224`` (see module docs).

    Args:
        root: dataset folder (default ``$IMAGENET_S_ROOT`` or ``<cache_dir>/imagenet-s``).
        model: hub id or local folder of the ViT (default ``$SOP_IMAGENET_S_MODEL`` or
            ``google/vit-base-patch16-224``).
        variant: ``"919"``, ``"300"`` or ``"50"``.
        mismatched: ``"drop"`` (default) or ``"relabel"``: what happens to an image whose
            ImageNet-S folder is not its ImageNet-1k class (module docs); default
            ``$SOP_IMAGENET_S_MISMATCHED`` or ``"drop"``.
        val_labels: a file holding the ImageNet-1k class of the validation images (default
            ``$IMAGENET_S_VAL_LABELS``, else searched next to the dataset; see
            :func:`imagenet1k_validation_labels`).
    """

    name = "imagenet-s"
    kind = "classification"
    description = "ImageNet-S (online; needs the dataset and google/vit-base-patch16-224 locally)"
    #: the authors' ImageNet settings (SPEC §2-3): 20 groups, tau 0.2, s_g 0.06, blur 3, s_s 0.01.
    sop_defaults = {
        "num_groups": 20,
        "top_fraction": 0.2,
        "generator_scale": 0.06,
        "blur_kernel": 3,
        "selector_scale": 0.01,
    }
    train_defaults = {
        "epochs": 1,
        "batch_size": 16,
        "lr": 5e-6,
        "weight_decay": 0.01,
        "warmup_steps": 2000,
    }

    def __init__(self, root: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                 variant: str = "919", mismatched: Literal["drop", "relabel"] | None = None,
                 val_labels: str | os.PathLike | None = None):
        self.root = root
        self.model = model
        self.variant = variant
        self.mismatched = mismatched
        self.val_labels = val_labels

    def _mismatched_policy(self) -> str:
        policy = self.mismatched or os.environ.get("SOP_IMAGENET_S_MISMATCHED") or "drop"
        if policy not in MISMATCHED_POLICIES:
            where = "mismatched" if self.mismatched else "$SOP_IMAGENET_S_MISMATCHED"
            raise InputError(f"{where} must be one of {', '.join(MISMATCHED_POLICIES)} (what to do with an "
                             f"ImageNet-S image whose folder is not its ImageNet-1k class), got {policy!r}")
        return policy

    def load_data(self, cache_dir: Path | None = None, *, size: str = "default", seed: int = 0,
                  progress: bool = True) -> TaskData:
        from tqdm.auto import tqdm

        if size not in SIZES:
            raise InputError(f"unknown size {size!r} for task 'imagenet-s': expected one of "
                             f"{', '.join(SIZES)}")
        policy = self._mismatched_policy()
        n_train, n_val, n_test, max_classes = SIZES[size]
        root = find_imagenet_s_root(self.root, self.variant, cache_dir)
        config = _model_config(self.model)
        index, names, order_source = imagenet_class_index(root, config)
        if config is not None and getattr(config, "id2label", None):
            # the model's own class names (its output size), e.g. "tench, Tinca tinca"
            names = [str(config.id2label[k]) for k in sorted(config.id2label, key=int)]

        validation = _list_images(root / "validation")
        seg_dir = root / "validation-segmentation"
        train_name = "train-semi" if (root / "train-semi").is_dir() else "train"
        training = _list_images(root / train_name)
        if not validation:
            raise MissingFileError(f"no images in {root / 'validation'}/<wnid>/. {_DATA_HELP}")
        unknown = sorted(set(validation) - set(index))
        if unknown:
            raise InputError(f"class folders {unknown[:5]} of {root / 'validation'} are not in the "
                             f"ImageNet-1k class order taken from {order_source}")
        ground_truth = imagenet1k_validation_labels(root, self.variant, self.val_labels)
        rng = np.random.default_rng(seed)
        classes = sorted(validation)
        if max_classes is not None and len(classes) > max_classes:
            classes = sorted(rng.choice(classes, size=max_classes, replace=False).tolist())

        def validation_wnid(f: Path) -> str:
            wnid = ground_truth.wnid_of.get(f.stem)
            if wnid is None:
                raise InputError(f"{f}: not in the ImageNet-1k validation labels read from "
                                 f"{ground_truth.source} (expected ILSVRC2012 validation images named "
                                 "ILSVRC2012_val_<8 digits>.JPEG)")
            return wnid

        audit = {"source": ground_truth.source, "train_source": "ImageNet file names (<wnid>_<n>.JPEG)",
                 "policy": policy, "classes": len(classes),
                 "validation_images": 0, "validation_mismatched": 0,
                 "train_images": 0, "train_mismatched": 0}
        split: dict[str, list[tuple[Path, str, str, Path | None]]] = {"train": [], "val": [], "test": []}
        for folder in classes:
            for kind, files, wnid_of in (("validation", validation[folder], validation_wnid),
                                         ("train", training.get(folder, []), training_image_wnid)):
                # (image, its ImageNet-1k wnid, its ImageNet-S folder)
                items = [(f, wnid_of(f), folder) for f in files]
                mismatched = [it for it in items if it[1] != folder]
                audit[f"{kind}_images"] += len(items)
                audit[f"{kind}_mismatched"] += len(mismatched)
                if policy == "drop":
                    items = [it for it in items if it[1] == folder]
                rng.shuffle(items)
                if kind == "validation":
                    for j, (f, wnid, fold) in enumerate(items[:n_test + n_val]):
                        seg = seg_dir / fold / (f.stem + ".png")
                        split["test" if j < n_test else "val"].append((f, wnid, fold, seg if seg.is_file() else None))
                else:
                    split["train"].extend((f, wnid, fold, None) for f, wnid, fold in items[:n_train])

        labelled = {w for items in split.values() for _, w, _, _ in items}
        outside = sorted(w for w in labelled if w not in index or index[w] >= len(names))
        if outside:
            raise InputError(f"ImageNet-1k classes {outside[:5]} of the images are not among the {len(names)} "
                             f"outputs of the model (class order from {order_source})")
        missing = [str(f) for f, _, _, seg in split["test"] if seg is None]
        if missing:
            raise MissingFileError(f"{len(missing)} test images have no segmentation PNG in {seg_dir} "
                                    f"(first: {missing[0]}). {_DATA_HELP}")
        for name in split:
            rng.shuffle(split[name])  # any prefix of a split is a random sample over classes
        mism = audit["validation_mismatched"] + audit["train_mismatched"]
        audit["dropped"] = mism if policy == "drop" else 0
        audit["relabelled_in_splits"] = {name: sum(1 for _, w, fold, _ in items if w != fold)
                                         for name, items in split.items()}
        if mism:
            log.warning(
                "imagenet-s: %d of %d validation and %d of %d training images of the %d classes sit in a "
                "folder that is not their ImageNet-1k class (labels from %s): %s (mismatched=%r)",
                audit["validation_mismatched"], audit["validation_images"], audit["train_mismatched"],
                audit["train_images"], len(classes), ground_truth.source,
                "dropped" if policy == "drop" else "labelled by their ImageNet-1k class", policy)

        def make(items):
            return ImageNetSDataset([f for f, _, _, _ in items], [index[w] for _, w, _, _ in items],
                                    [w for _, w, _, _ in items], [s for _, _, _, s in items],
                                    folders=[fold for _, _, fold, _ in items])

        train, val, test = make(split["train"]), make(split["val"]), make(split["test"])
        fg = np.zeros((len(test), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for i, seg in enumerate(tqdm(test.segmentations, desc="imagenet-s masks",
                                     disable=not progress, leave=False)):
            fg[i] = load_foreground(seg)
        meta = {
            "size": size, "seed": seed, "variant": self.variant, "root": str(root),
            "train_source": train_name, "class_order": order_source,
            "n_train": len(train), "n_val": len(val), "n_test": len(test), "n_classes": len(classes),
            "normalisation": {"mean": list(MEAN), "std": list(STD), "image_size": IMAGE_SIZE},
            "grid": [IMAGE_SIZE // PATCH_SIZE] * 2, "patch_size": PATCH_SIZE,
            "foreground": "segmentation id (R + 256*G) not 0 (other) and not 1000 (ignore)",
            "labels": "ImageNet-1k class of each image (not its ImageNet-S folder)",
            "imagenet1k_labels": audit,
        }
        meta["data_hash"] = content_hash({
            "files": [str(p.relative_to(root)) for p in test.paths + val.paths + train.paths],
            "labels": [int(v) for d in (test, val, train) for v in d.labels], "size": size, "seed": seed})
        return TaskData(name=self.name, kind="classification", train=train, val=val, test=test,
                        output_names=list(names), test_foreground=torch.from_numpy(fg), meta=meta)

    def load_backbone(self, data: TaskData, cache_dir: Path | None = None, *,
                      backbone: str | None = None, train_if_missing: bool = True,
                      progress: bool = True) -> nn.Module:
        if backbone not in (None, "vit"):
            raise InputError(f"the imagenet-s task has one backbone, 'vit' ({MODEL_ID}); got {backbone!r}")
        vit = load_vit(self.model)
        if vit.config.num_labels != data.num_outputs:
            raise InputError(f"the model predicts {vit.config.num_labels} classes but the data's "
                             f"class order has {data.num_outputs}")
        return vit

    def make_adapter(self, model: nn.Module):
        from ..adapters import ViTAdapter

        return ViTAdapter(model)
