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

Sizes and subsets: ``small`` (512 / 128 / 128 rows of train / validation / test), ``default``
(20,000 / 2,000 / 2,000) and ``full`` (every row). A split is a uniform random subset of its
shards' rows, drawn without replacement by ``numpy.random.default_rng([seed, k])`` (``k`` = 0 for
train, 1 for validation, 2 for test; ``seed`` is ``load_data``'s), and kept in that random order,
so any prefix of a split (the evaluation's first ``n`` test maps, the validation batches of
training) is itself a random sample. ``full`` keeps every row, in a random order. Only the row
groups holding chosen rows are decoded.

Are validation and test the same rows? On the Hub the two shards carry the same fingerprint
suffix (``validation-00000-of-00001-1e5f73b2061cc598.parquet`` and
``test-00000-of-00001-1e5f73b2061cc598.parquet``) and the same size (10,000 rows, 177,160,000
bytes). On first load every row of both shards is hashed (BLAKE2b-128 of the row's stored bytes:
the float32 map then the float64 labels) and the digests are cached under
``<cache_dir>/cosmogrid/splits-<key>/`` (``manifest.json``: the shard files, row counts, an
ordered and an order-free digest of each split and how many rows they share;
``row-digests.safetensors``: the row digests), ``<key>`` hashing the shard files' names, sizes
and modification times. When test rows also appear in the validation shard, a
:class:`SplitOverlapWarning` says so: a test score would then be a score on the data used to
choose the checkpoint. ``val_source="train"`` (``$SOP_COSMOGRID_VAL_SOURCE=train``) then draws
the validation rows from the training shards instead, disjoint from the training rows. The loaded
training (and validation) rows are hashed on every load too and checked against the test shard.
``meta["split_overlap"]`` records every count.

Where the files are looked for, in order: the ``data_dir`` / ``model_dir`` argument
(``--data-dir`` on the CLI), ``$SOP_COSMOGRID_DATA`` / ``$SOP_COSMOGRID_MODEL``, the Hugging Face
cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), then a download
with ``huggingface_hub`` unless ``$HF_HUB_OFFLINE`` (or ``$SOP_OFFLINE``) is set. When all fail,
:class:`CosmoGridNotFound` says what was looked for, where, and what to install or set.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..io import atomic_directory, atomic_write_json, content_hash, load_tensors, read_json, save_tensors
from .base import Task, TaskData, default_cache_dir, register_task
from .cosmology import OUTPUT_NAMES, ConvergenceMaps, _freeze, load_cnn
from .cosmology_cnn import CosmoCNN, evaluate_regression, train_cnn
from ..errors import InputError, MissingFileError

__all__ = [
    "DATASET_REPO",
    "MODEL_REPO",
    "SIZES",
    "CosmoGridNotFound",
    "CosmoGridTask",
    "SplitOverlapWarning",
    "SplitCheck",
    "VAL_SOURCES",
    "row_digests",
    "choose_rows",
    "check_validation_test",
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
#: rows per split, a seeded random subset (module docs); None = every row.
SIZES: dict[str, dict[str, int | None]] = {
    "small": {"train": 512, "val": 128, "test": 128},
    "default": {"train": 20_000, "val": 2_000, "test": 2_000},
    "full": {"train": None, "val": None, "test": None},
}
INSTALL_HINT = "pip install pyarrow huggingface_hub"
#: where the validation rows come from: the dataset's validation shard, or the training shards
VAL_SOURCES = ("validation", "train")
#: the random stream of each split's subset: default_rng([seed, SPLIT_STREAM[split]])
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
DIGEST_BYTES = 16


class CosmoGridNotFound(MissingFileError):
    """The authors' CosmoGrid data or model is not on disk and cannot be downloaded."""


class SplitOverlapWarning(UserWarning):
    """Rows of the test split also appear in the validation (or loaded training) rows."""


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
            raise InputError(f"ragged list column (lengths {lengths[:5]}...): not fixed-shape maps")
        shape.append(int(lengths[0]) if len(arr) else 0)
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(shape)


def _parquet(files: list[Path]):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading the CosmoGrid parquet shards needs pyarrow: {INSTALL_HINT}") from exc
    out = []
    for f in files:
        pf = pq.ParquetFile(f)
        missing = {"input", "label"} - set(pf.schema_arrow.names)
        if missing:
            raise InputError(f"{f} is not a massmaps-cosmogrid shard: no column(s) {sorted(missing)} "
                             f"(has {pf.schema_arrow.names})")
        out.append(pf)
    return out


def count_rows(files: list[Path]) -> int:
    """Rows in the shards, from their parquet metadata (nothing is decoded)."""
    return sum(pf.metadata.num_rows for pf in _parquet(files))


def _read_raw(files: list[Path], rows: np.ndarray | None = None, progress: bool = False,
              desc: str = "cosmogrid") -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` as stored (float32 maps, float64 labels) of the global row indices
    ``rows`` (rows numbered across the shards in file order), in the order of ``rows``; every row
    in file order when ``rows`` is None. Only row groups holding a chosen row are decoded."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    shards = _parquet(files)
    total = sum(pf.metadata.num_rows for pf in shards)
    rows = np.arange(total) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        raise IndexError(f"row indices must lie in [0, {total}), got {rows.min()}..{rows.max()}")
    slot = np.full(total, -1, dtype=np.int64)      # slot[r] = where row r goes in the output
    slot[rows] = np.arange(rows.size)
    x = y = None
    offset = 0
    bar = tqdm(total=int(rows.size), desc=desc, unit="map", disable=not progress, leave=False)
    for pf in shards:
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            where = slot[offset:offset + n]
            offset += n
            keep = np.flatnonzero(where >= 0)
            if keep.size == 0:
                continue
            table = pf.read_row_group(g, columns=["input", "label"])
            if keep.size < n:
                table = table.take(pa.array(keep))
            maps, labels = _nested_to_numpy(table.column("input")), _nested_to_numpy(table.column("label"))
            if x is None:
                x = np.empty((rows.size,) + maps.shape[1:], dtype=maps.dtype)
                y = np.empty((rows.size,) + labels.shape[1:], dtype=labels.dtype)
            x[where[keep]] = maps
            y[where[keep]] = labels
            bar.update(int(keep.size))
    bar.close()
    if x is None:
        return np.zeros((0, 1, 66, 66), np.float32), np.zeros((0, 2), np.float64)
    return x, y


def read_split(files: list[Path], rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(inputs (n, 1, 66, 66) float32, labels (n, 2) float32)`` from parquet shards: the
    global row indices ``rows`` in that order (every row in file order when None)."""
    x, y = _read_raw(files, rows)
    x, y = x.astype(np.float32, copy=False), y.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    return x, y


def row_digests(inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(n, 16)`` uint8: BLAKE2b-128 of each row's stored bytes (the map, then its labels).

    Two rows have the same digest exactly when their maps and labels are equal bit for bit (up to
    hash collisions), whatever file, row group or compression they came from."""
    if len(inputs) != len(labels):
        raise InputError(f"expected as many label rows as maps, got {len(labels)} and {len(inputs)}")
    out = np.empty((len(inputs), DIGEST_BYTES), dtype=np.uint8)
    for i in range(len(inputs)):
        h = hashlib.blake2b(np.ascontiguousarray(inputs[i]).tobytes(), digest_size=DIGEST_BYTES)
        h.update(np.ascontiguousarray(labels[i]).tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


def _digest_of(digests: np.ndarray, ordered: bool = True) -> str:
    """SHA-256 of a split's row digests, in file order (``ordered``) or sorted (order-free)."""
    rows = digests if ordered else digests[np.lexsort(digests.T[::-1])]
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()


def _shared(a: np.ndarray, b: np.ndarray) -> int:
    """How many rows of ``b`` have a digest that is also a row digest of ``a``."""
    if not len(a) or not len(b):
        return 0
    seen = {bytes(r) for r in a}
    return sum(bytes(r) in seen for r in b)


def choose_rows(total: int, n: int | None, seed: int, split: str) -> np.ndarray:
    """The rows of a split: ``n`` of ``total`` (all when ``n`` is None or at least ``total``) drawn
    uniformly without replacement by ``default_rng([seed, SPLIT_STREAM[split]])``, in that random
    order. The same arguments give the same rows in the same order."""
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    if n is None or n >= total:
        return rng.permutation(total)
    return rng.choice(total, size=n, replace=False)


def _file_identity(files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        st = Path(f).stat()
        out.append({"name": Path(f).name, "blob": Path(f).resolve().name, "bytes": st.st_size,
                    "mtime_ns": st.st_mtime_ns})
    return out


@dataclass(frozen=True)
class SplitCheck:
    """Whether the validation and test shards hold the same rows (hashed on first load).

    Attributes:
        validation_rows, test_rows: rows in each split's shards.
        shared_rows: test rows whose digest is also a validation row's digest.
        identical: both splits hold the same rows in the same order.
        same_rows: both splits hold the same multiset of rows (in any order).
        validation_digest, test_digest: SHA-256 over each split's row digests in file order.
        cache: the directory holding ``manifest.json`` and ``row-digests.safetensors``.
        hashed_now: whether this call hashed the shards (False: read from the cache).
    """

    validation_rows: int
    test_rows: int
    shared_rows: int
    identical: bool
    same_rows: bool
    validation_digest: str
    test_digest: str
    cache: str
    hashed_now: bool


def check_validation_test(files: dict[str, list[Path]], cache_dir: Path, *, progress: bool = False
                          ) -> tuple[SplitCheck, dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Hash the rows of the ``validation`` and ``test`` shards (once; cached) and compare them.

    Args:
        files: ``{"validation": shards, "test": shards}`` (other keys are ignored).
        cache_dir: the task cache; the result goes to ``<cache_dir>/cosmogrid/splits-<key>/``.
    Returns:
        ``(check, digests, arrays)``: the :class:`SplitCheck`; ``{split: (n, 16) uint8}`` row
        digests in file order; ``{split: (inputs, labels)}`` as stored when this call read the
        shards (so that the caller need not read them again), else empty.
    """
    identity = {s: _file_identity(files[s]) for s in ("validation", "test")}
    folder = Path(cache_dir) / "cosmogrid" / f"splits-{content_hash(identity)}"
    manifest_file, digest_file = folder / "manifest.json", folder / "row-digests.safetensors"
    if manifest_file.is_file() and digest_file.is_file():
        try:
            manifest = read_json(manifest_file)
            digests = {k: v.numpy() for k, v in load_tensors(digest_file).items()}
            check = SplitCheck(**{**manifest["validation_vs_test"], "cache": str(folder), "hashed_now": False})
            if set(digests) == {"validation", "test"} and manifest.get("files") == identity:
                return check, digests, {}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("cosmogrid: ignoring the unreadable split manifest %s (%s); hashing again",
                        folder, exc)
    arrays, digests = {}, {}
    for split in ("validation", "test"):
        arrays[split] = _read_raw(files[split], progress=progress, desc=f"cosmogrid: hash {split} rows")
        digests[split] = row_digests(*arrays[split])
    v, t = digests["validation"], digests["test"]
    check = SplitCheck(
        validation_rows=len(v), test_rows=len(t), shared_rows=_shared(v, t),
        identical=bool(v.shape == t.shape and np.array_equal(v, t)),
        same_rows=_digest_of(v, ordered=False) == _digest_of(t, ordered=False),
        validation_digest=_digest_of(v), test_digest=_digest_of(t), cache=str(folder), hashed_now=True)
    recorded = {k: val for k, val in asdict(check).items() if k not in ("cache", "hashed_now")}
    with atomic_directory(folder) as tmp:
        save_tensors(tmp / "row-digests.safetensors",
                     {k: torch.from_numpy(np.ascontiguousarray(d)) for k, d in digests.items()})
        atomic_write_json(tmp / "manifest.json", {
            "dataset": DATASET_REPO, "files": identity,
            "row_digest": f"BLAKE2b-{8 * DIGEST_BYTES} of each row's stored bytes (float32 map, float64 labels)",
            "split_digests": {
                s: {"ordered": _digest_of(d), "order_free": _digest_of(d, ordered=False), "rows": len(d)}
                for s, d in digests.items()},
            "validation_vs_test": recorded})
    return check, digests, arrays


def load_massmaps_conv(model_dir: Path) -> CosmoCNN:
    """The authors' CNN as a :class:`CosmoCNN` (``fc4`` → ``head``), eval mode."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if config_file.is_file():
        cfg = json.loads(config_file.read_text())
        n = cfg.get("num_classes", cfg.get("num_labels", 2))
        if n != 2:
            raise InputError(f"{config_file}: expected num_classes 2 (Omega_m, sigma_8), got {n}")
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
                 model_dir: str | os.PathLike | None = None, download: bool = True,
                 val_source: Literal["validation", "train"] | None = None):
        self.data_dir = data_dir
        self.model_dir = model_dir
        self.download = download
        self.val_source = val_source

    def _val_source(self) -> str:
        source = self.val_source or os.environ.get("SOP_COSMOGRID_VAL_SOURCE") or "validation"
        if source not in VAL_SOURCES:
            where = "val_source" if self.val_source else "$SOP_COSMOGRID_VAL_SOURCE"
            raise InputError(f"{where} must be one of {', '.join(VAL_SOURCES)} (where the validation rows "
                             f"come from), got {source!r}")
        return source

    def load_data(self, cache_dir: Path | None = None, *, size: str = "default", seed: int = 0,
                  progress: bool = True, data_dir: str | os.PathLike | None = None) -> TaskData:
        """The three splits, seeded random subsets of the shards' rows (module docs).

        Hashes the validation and test shards on first load (cached under ``cache_dir``) and
        warns (:class:`SplitOverlapWarning`) when test rows also appear among the validation rows
        or the loaded training rows.
        """
        if size not in SIZES:
            raise InputError(f"unknown cosmogrid size {size!r}: expected one of {', '.join(SIZES)}")
        val_source = self._val_source()
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root = find_dataset_dir(data_dir or self.data_dir, download=self.download)
        files = {theirs: _split_files(root, theirs) for theirs in HF_SPLITS.values()}
        check, digests, read_now = check_validation_test(files, cache_dir, progress=progress)
        totals = {"train": count_rows(files["train"]), "validation": check.validation_rows,
                  "test": check.test_rows}

        # which rows of which shards make each split
        wanted = SIZES[size]
        if val_source == "validation":
            plan = {"train": ("train", choose_rows(totals["train"], wanted["train"], seed, "train")),
                    "val": ("validation", choose_rows(totals["validation"], wanted["val"], seed, "val")),
                    "test": ("test", choose_rows(totals["test"], wanted["test"], seed, "test"))}
        else:
            n_val = wanted["val"] if wanted["val"] is not None else totals["validation"]
            n_train = wanted["train"] if wanted["train"] is not None else totals["train"] - n_val
            if n_train + n_val > totals["train"] or n_train <= 0:
                raise InputError(f"val_source='train' needs {n_val} validation rows and at least one training "
                                 f"row from the {totals['train']} rows of the training shards; size {size!r} "
                                 f"asks for {n_train} + {n_val}")
            # one permutation of the training rows: its first part trains, the next validates
            order = choose_rows(totals["train"], n_train + n_val, seed, "train")
            plan = {"train": ("train", order[:n_train]), "val": ("train", order[n_train:]),
                    "test": ("test", choose_rows(totals["test"], wanted["test"], seed, "test"))}

        splits, loaded_digests = {}, {}
        for ours, (theirs, rows) in plan.items():
            if theirs in read_now:                      # read while hashing: take the rows from memory
                x, y = (a[rows] for a in read_now[theirs])
            else:
                x, y = _read_raw(files[theirs], rows, progress=progress, desc=f"cosmogrid: read {ours}")
            loaded_digests[ours] = digests[theirs][rows] if theirs in digests else row_digests(x, y)
            x, y = x.astype(np.float32, copy=False), y.astype(np.float32)
            if x.ndim == 3:
                x = x[:, None]
            if len(x) == 0:
                raise InputError(f"no rows in the {theirs} shards under {root}")
            if x.shape[1:] != (1, 66, 66) or y.shape[1:] != (2,):
                raise InputError(f"{theirs}: expected inputs (n, 1, 66, 66) and labels (n, 2), "
                                 f"got {x.shape} and {y.shape}")
            splits[ours] = ConvergenceMaps(torch.from_numpy(x), torch.from_numpy(y),
                                           torch.from_numpy(_cosmology_ids(y)), kappa_norm=1.0)
        del read_now

        overlap = {
            "validation_shard_vs_test_shard": asdict(check),
            "loaded_train_rows_in_test_shard": _shared(digests["test"], loaded_digests["train"]),
            "loaded_val_rows_in_test_shard": _shared(digests["test"], loaded_digests["val"]),
            "loaded_train_rows_in_loaded_val": _shared(loaded_digests["val"], loaded_digests["train"]),
        }
        problems = []
        if val_source == "validation" and check.shared_rows:
            what = ("hold the same rows in the same order" if check.identical else
                    "hold the same rows" if check.same_rows else f"share {check.shared_rows} rows")
            problems.append(
                f"the validation and test shards {what} ({check.shared_rows} of the {check.test_rows} test "
                f"rows are validation rows; row digests in {check.cache}): a test score is then a score on "
                "the data that chose the checkpoint, not a held-out score. Draw the validation rows from the "
                "training shards instead with CosmoGridTask(val_source='train') or "
                "SOP_COSMOGRID_VAL_SOURCE=train")
        if overlap["loaded_train_rows_in_test_shard"]:
            problems.append(f"{overlap['loaded_train_rows_in_test_shard']} of the {len(splits['train'])} "
                            "loaded training rows are also test rows")
        if val_source == "train" and overlap["loaded_val_rows_in_test_shard"]:
            problems.append(f"{overlap['loaded_val_rows_in_test_shard']} of the {len(splits['val'])} "
                            "validation rows drawn from the training shards are also test rows")
        if overlap["loaded_train_rows_in_loaded_val"]:
            problems.append(f"{overlap['loaded_train_rows_in_loaded_val']} loaded training rows are also "
                            "validation rows")
        for problem in problems:
            warnings.warn(f"cosmogrid ({root}): {problem}.", SplitOverlapWarning, stacklevel=2)

        identity = {s: [(f["name"], f["bytes"]) for f in _file_identity(files[s])] for s in files}
        chosen = {ours: [theirs, content_hash(rows.tolist())] for ours, (theirs, rows) in plan.items()}
        meta: dict[str, Any] = {
            "size": size,
            "seed": seed,
            "source": DATASET_REPO,
            "data_dir": str(root),
            "files": {ours: [f.name for f in files[theirs]] for ours, (theirs, _) in plan.items()},
            "val_source": val_source,
            "rows_in_shards": totals,
            "n_maps": {k: len(v) for k, v in splits.items()},
            "subset": ("uniform without replacement, in random order, numpy default_rng([seed, k]) "
                       "(k: train 0, val 1, test 2; val_source='train' splits one draw of the training rows)"),
            "split_overlap": overlap,
            "kappa_norm": 1.0,
            "input_normalisation": "raw kappa (as the authors' CNN expects)",
            "target_scale": "physical (Omega_m, sigma_8), not standardised",
            "content_hash": f"{DATASET_REPO}:{size}:seed={seed}:" + content_hash(
                {"files": identity, "rows": chosen}),
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
        from ..adapters import CNNAdapter

        return CNNAdapter(model, feature_layer="pool2", classifier="head", grid=(14, 14),
                          input_shape=tuple(getattr(model, "input_shape", (1, 66, 66))))
