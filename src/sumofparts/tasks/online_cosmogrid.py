"""``cosmogrid``: the authors' CosmoGridV1 maps and CNN from the Hugging Face Hub.

The real artefacts (format read from the dataset card and the authors' ``exlib`` code):

* **Data** ``BrachioLab/massmaps-cosmogrid-100k`` (dataset repo, CC-BY-4.0): parquet shards
  ``data/train-0000k-of-00004-*.parquet`` (90,000 rows), ``data/validation-00000-of-00001-*.parquet``
  (10,000) and ``data/test-00000-of-00001-*.parquet`` (10,000); columns ``input``
  (list<list<list<float32>>>, one ``(1, 66, 66)`` convergence map in raw kappa units) and
  ``label`` (list<float64>, ``(Omega_m, sigma_8)``). The Hub's parquet conversion
  (``default/<split>/0000.parquet``) has the same columns and is accepted too.
* **Model** ``BrachioLab/massmaps-conv``: a transformers ``PreTrainedModel``
  (``MassMapsConvnetForImageRegression``, ``config.json`` with ``num_classes: 2``) whose layers are
  ``conv1..conv3`` (16/32/48, kernel 4), ``fc1..fc4`` (1200-128-64-32-2) with LeakyReLU and
  max-pooling: exactly :class:`~sumofparts.tasks.cosmology_cnn.CosmoCNN` with ``fc4`` named
  ``head``. Weights are read from ``model.safetensors`` or, for older uploads, from
  ``pytorch_model.bin`` with ``torch.load(weights_only=True)`` (torch's restricted loader, which
  refuses anything but tensors and containers). It consumes raw kappa, so the maps are *not*
  rescaled here (``kappa_norm = 1``), and it outputs the labels on their physical scale.

Where the files are looked for, in order: the ``data_dir`` / ``model_dir`` argument
(``--data-dir`` on the CLI), ``$SOP_COSMOGRID_DATA`` / ``$SOP_COSMOGRID_MODEL``, the Hugging Face
cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), then a download
with ``huggingface_hub`` unless ``$HF_HUB_OFFLINE`` (or ``$SOP_OFFLINE``) is set. When all fail,
:class:`CosmoGridNotFound` says what was looked for, where, and what to install or set.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Task, TaskData, register_task
from .cosmology import OUTPUT_NAMES, ConvergenceMaps, _freeze, load_cnn
from .cosmology_cnn import CosmoCNN, evaluate_regression, train_cnn

__all__ = [
    "DATASET_REPO",
    "MODEL_REPO",
    "SIZES",
    "CosmoGridNotFound",
    "CosmoGridTask",
    "find_dataset_dir",
    "find_model_dir",
    "read_split",
    "load_massmaps_conv",
]

log = logging.getLogger(__name__)

DATASET_REPO = "BrachioLab/massmaps-cosmogrid-100k"
MODEL_REPO = "BrachioLab/massmaps-conv"
#: our split name → the dataset's
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
#: rows read per split (the first rows of the shards, in order): None = all.
SIZES: dict[str, dict[str, int | None]] = {
    "small": {"train": 512, "val": 128, "test": 128},
    "default": {"train": 20_000, "val": 2_000, "test": 2_000},
    "full": {"train": None, "val": None, "test": None},
}
INSTALL_HINT = "pip install pyarrow huggingface_hub"


class CosmoGridNotFound(FileNotFoundError):
    """The authors' CosmoGrid data or model is not on disk and cannot be downloaded."""


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "SOP_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory, as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _cached_snapshots(repo: str, repo_type: str) -> list[Path]:
    root = hf_hub_cache() / f"{repo_type}s--{repo.replace('/', '--')}" / "snapshots"
    return sorted(root.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []


def _split_files(root: Path, hf_split: str) -> list[Path]:
    """Parquet shards of a split under ``root`` (repo layout or the Hub's parquet conversion)."""
    files = sorted((root / "data").glob(f"{hf_split}-*.parquet"))
    if not files:
        files = sorted((root / "default" / hf_split).glob("*.parquet"))
    if not files:
        files = sorted(root.glob(f"{hf_split}-*.parquet"))
    return files


def _has_dataset(root: Path) -> bool:
    return all(_split_files(root, s) for s in HF_SPLITS.values())


def _has_model(root: Path) -> bool:
    return (root / "model.safetensors").is_file() or (root / "pytorch_model.bin").is_file()


def _download(repo: str, repo_type: str, patterns: list[str]) -> tuple[Path | None, str]:
    if _offline():
        return None, "download skipped: offline mode ($HF_HUB_OFFLINE / $SOP_OFFLINE set)"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, f"download impossible: huggingface_hub is not installed ({INSTALL_HINT})"
    try:
        return Path(snapshot_download(repo, repo_type=repo_type, allow_patterns=patterns,
                                      etag_timeout=10)), ""
    except Exception as exc:  # network errors come in many types
        return None, f"download of {repo} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _readers_status() -> str:
    import importlib.util

    missing = [m for m in ("pyarrow", "huggingface_hub") if importlib.util.find_spec(m) is None]
    return f"missing here: {', '.join(missing)}" if missing else "both are installed here"


def _not_found(what: str, repo: str, looked: list[str], why: str, env: str, extra: str) -> CosmoGridNotFound:
    lines = [f"the authors' CosmoGrid {what} ({repo}) was not found.", "Looked in:"]
    lines += [f"  - {p}" for p in looked] or ["  - (nowhere)"]
    if why:
        lines.append(why)
    lines += [
        "To use it:",
        f"  * install the readers: {INSTALL_HINT} ({_readers_status()})",
        f"  * on a machine with network: huggingface-cli download {repo}"
        + (" --repo-type dataset" if what == "data" else "") + " (fills the Hugging Face cache), then",
        f"  * point to it with {extra}, ${env}=<dir>, or HF_HOME / HF_HUB_CACHE for a copied cache;",
        "  * or use the offline stand-in: --task cosmology (simulated maps, no download).",
    ]
    return CosmoGridNotFound("\n".join(lines))


def _find_repo_dir(repo: str, kind: str, explicit: str | os.PathLike | None, env: str, expects: str,
                   present, patterns: list[str], what: str, flag: str, download: bool) -> Path:
    """Search ``explicit``, ``$env``, the Hugging Face cache, then (if allowed) download ``repo``."""
    looked: list[str] = []
    candidates = [Path(c).expanduser() for c in (explicit, os.environ.get(env)) if c]
    cached = _cached_snapshots(repo, kind)
    for c in candidates + cached:
        looked.append(f"{c} (expects {expects})")
        if present(c):
            return c
    if not cached:
        looked.append(f"{hf_hub_cache()}/{kind}s--{repo.replace('/', '--')} (Hugging Face cache)")
    why = ""
    if download:
        got, why = _download(repo, kind, patterns)
        if got is not None and present(got):
            return got
    raise _not_found(what, repo, looked, why, env, flag)


def find_dataset_dir(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The directory holding the dataset's parquet shards (see the module docs for the order)."""
    return _find_repo_dir(DATASET_REPO, "dataset", data_dir, "SOP_COSMOGRID_DATA",
                          "data/{train,validation,test}-*.parquet", _has_dataset, ["data/*.parquet", "README.md"],
                          "data", "--data-dir DIR", download)


def find_model_dir(model_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The directory holding ``config.json`` and the weights of ``massmaps-conv``."""
    return _find_repo_dir(MODEL_REPO, "model", model_dir, "SOP_COSMOGRID_MODEL",
                          "model.safetensors or pytorch_model.bin", _has_model,
                          ["config.json", "*.safetensors", "*.bin"], "model", "--backbone DIR", download)


def _nested_to_numpy(column) -> np.ndarray:
    """A (chunked) pyarrow list<list<...<float>>> column → a dense numpy array."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape = [len(column)]
    arr = column
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = np.unique(np.diff(arr.offsets.to_numpy())) if not pa.types.is_fixed_size_list(arr.type) \
            else np.array([arr.type.list_size])
        if len(arr) and len(lengths) != 1:
            raise ValueError(f"ragged list column (lengths {lengths[:5]}...): not fixed-shape maps")
        shape.append(int(lengths[0]) if len(arr) else 0)
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(shape)


def read_split(files: list[Path], limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(inputs (n, 1, 66, 66) float32, labels (n, 2) float32)`` from parquet shards."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading the CosmoGrid parquet shards needs pyarrow: {INSTALL_HINT}") from exc
    inputs, labels, n = [], [], 0
    for f in files:
        pf = pq.ParquetFile(f)
        missing = {"input", "label"} - set(pf.schema_arrow.names)
        if missing:
            raise ValueError(f"{f} is not a massmaps-cosmogrid shard: no column(s) {sorted(missing)} "
                             f"(has {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=2048, columns=["input", "label"]):
            take = batch.num_rows if limit is None else min(batch.num_rows, limit - n)
            batch = batch.slice(0, take)
            inputs.append(_nested_to_numpy(batch.column("input")).astype(np.float32))
            labels.append(_nested_to_numpy(batch.column("label")).astype(np.float32))
            n += take
            if limit is not None and n >= limit:
                break
        if limit is not None and n >= limit:
            break
    x = np.concatenate(inputs) if inputs else np.zeros((0, 1, 66, 66), np.float32)
    y = np.concatenate(labels) if labels else np.zeros((0, 2), np.float32)
    if x.ndim == 3:
        x = x[:, None]
    return x, y


def load_massmaps_conv(model_dir: Path) -> CosmoCNN:
    """The authors' CNN as a :class:`CosmoCNN` (``fc4`` → ``head``), eval mode."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if config_file.is_file():
        cfg = json.loads(config_file.read_text())
        n = cfg.get("num_classes", cfg.get("num_labels", 2))
        if n != 2:
            raise ValueError(f"{config_file}: expected num_classes 2 (Omega_m, sigma_8), got {n}")
    if (model_dir / "model.safetensors").is_file():
        return load_cnn(model_dir / "model.safetensors")
    state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return CosmoCNN.from_authors_state_dict(state).eval()


def _cosmology_ids(labels: np.ndarray) -> np.ndarray:
    """Index of each row's distinct (Omega_m, sigma_8) pair: maps of one cosmology share it."""
    _, inverse = np.unique(np.round(labels.astype(np.float64), 6), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


@register_task
class CosmoGridTask(Task):
    """The authors' CosmoGridV1 maps (Hugging Face) with their CNN; needs the files on disk."""

    name = "cosmogrid"
    kind = "regression"
    description = ("CosmoGridV1 weak-lensing maps (BrachioLab/massmaps-cosmogrid-100k) and the "
                   "authors' CNN (BrachioLab/massmaps-conv); needs network or a local copy.")
    #: SOPConfig / TrainConfig fields: as for ``cosmology`` (the authors' CosmoGrid setting), with
    #: their final learning rate 5e-6 (SPEC §3).
    sop_defaults = {
        "num_heads": 4,
        "num_groups": 20,
        "tau": 0.2,
        "generator_scale": 0.06,
        "blur_kernel": 0,
        "selector_scale": 10.0,
        "task": "regression",
    }
    train_defaults = {"steps": 2000, "batch_size": 16, "lr": 5e-6, "weight_decay": 0.01,
                      "warmup_steps": 200, "eval_every": 500, "val_batches": 16}

    def __init__(self, data_dir: str | os.PathLike | None = None,
                 model_dir: str | os.PathLike | None = None, download: bool = True):
        self.data_dir = data_dir
        self.model_dir = model_dir
        self.download = download

    def load_data(self, cache_dir: Path, *, size: str = "default", seed: int = 0,
                  progress: bool = True, data_dir: str | os.PathLike | None = None) -> TaskData:
        if size not in SIZES:
            raise ValueError(f"unknown cosmogrid size {size!r}: expected one of {', '.join(SIZES)}")
        root = find_dataset_dir(data_dir or self.data_dir, download=self.download)
        splits, files_used = {}, {}
        for ours, theirs in HF_SPLITS.items():
            files = _split_files(root, theirs)
            x, y = read_split(files, SIZES[size][ours])
            if len(x) == 0:
                raise ValueError(f"no rows in the {theirs} shards under {root}")
            if x.shape[1:] != (1, 66, 66) or y.shape[1:] != (2,):
                raise ValueError(f"{theirs}: expected inputs (n, 1, 66, 66) and labels (n, 2), "
                                 f"got {x.shape} and {y.shape}")
            splits[ours] = ConvergenceMaps(torch.from_numpy(x), torch.from_numpy(y),
                                           torch.from_numpy(_cosmology_ids(y)), kappa_norm=1.0)
            files_used[ours] = [f.name for f in files]
        meta: dict[str, Any] = {
            "size": size,
            "source": DATASET_REPO,
            "data_dir": str(root),
            "files": files_used,
            "n_maps": {k: len(v) for k, v in splits.items()},
            "kappa_norm": 1.0,
            "input_normalisation": "raw kappa (as the authors' CNN expects)",
            "target_scale": "physical (Omega_m, sigma_8), not standardised",
            "content_hash": f"{DATASET_REPO}:{size}:" + ",".join(
                f"{k}={v}" for k, v in sorted({k: len(s) for k, s in splits.items()}.items())),
        }
        return TaskData(name=self.name, kind="regression", train=splits["train"], val=splits["val"],
                        test=splits["test"], output_names=list(OUTPUT_NAMES), meta=meta)

    def load_backbone(self, data: TaskData, cache_dir: Path, *, backbone: str | None = None,
                      train_if_missing: bool = False, progress: bool = True) -> nn.Module:
        """The authors' ``massmaps-conv`` (``backbone``: a local directory, else found as documented).

        If it cannot be found and ``train_if_missing`` is true, a CosmoCNN is trained on the loaded
        maps with the cosmology task's recipe instead (cached under ``cache_dir``).
        """
        try:
            return _freeze(load_massmaps_conv(find_model_dir(backbone or self.model_dir,
                                                             download=self.download)))
        except CosmoGridNotFound:
            if not train_if_missing:
                raise
        from .cosmology import BACKBONE_RECIPES, save_cnn

        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(data.meta.get("content_hash")))
        target = Path(cache_dir) / "cosmogrid" / f"backbone-{safe}" / "cosmology_cnn.safetensors"
        if target.is_file():
            return _freeze(load_cnn(target))
        log.warning("massmaps-conv not found: training a CosmoCNN on the loaded CosmoGrid maps")
        model, train_log = train_cnn(data.train, data.val, BACKBONE_RECIPES["default"], progress=progress)
        save_cnn(model, target, train_log | {"data_hash": data.meta.get("content_hash"),
                                             "test": evaluate_regression(model, data.test)})
        return _freeze(model)

    def make_adapter(self, model: nn.Module):
        from ..backbones import CNNAdapter

        return CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(14, 14),
                          input_shape=tuple(getattr(model, "input_shape", (1, 66, 66))))
