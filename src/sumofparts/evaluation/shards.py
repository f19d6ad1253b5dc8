"""Shards of a sharded or resumable evaluation: one safetensors file per batch.

``out_dir/shards/`` holds ``manifest.json`` (the fingerprint of the run: task, items, settings,
methods and their options, the SOP weights' hash) and ``batch-00012.safetensors`` for each
finished batch: every per-item tensor of :class:`~sumofparts.evaluation.runner.BatchResult`
under ``"<method>/<name>"``, and its seconds, forward passes and dedupe counts as JSON strings
in the safetensors metadata. Each shard is written atomically (temporary file + rename), so a
batch is either complete on disk or absent: an interrupted evaluation restarted with
``resume=True`` skips the batches whose shard exists and computes the others. The tables are
built from all shards in batch order, so they do not depend on how many processes made them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ResumeError
from ..io import atomic_write_json, content_hash, load_tensors, read_json, save_tensors, weights_hash
from .runner import BatchResult

__all__ = ["ShardStore", "weights_hash"]


class ShardStore:
    """The shard directory of one evaluation (see the module docs)."""

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any]):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.digest = content_hash(fingerprint)

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"

    def path(self, index: int) -> Path:
        return self.directory / f"batch-{int(index):05d}.safetensors"

    def prepare(self, resume: bool) -> None:
        """Start a run (call on one process only): with ``resume``, keep the shards of a run with the
        same fingerprint (and refuse others); without, remove any earlier shards."""
        if self.manifest.is_file():
            old = read_json(self.manifest).get("fingerprint", {})
            if resume and old != self.fingerprint:
                diff = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
                raise ResumeError(f"cannot resume: the shards in {self.directory} come from an evaluation with other "
                                 f"settings ({', '.join(diff)} differ); run without --resume to start over, or use "
                                 "another --out")
        if not resume:
            for p in list(self.directory.glob("*.safetensors")) + [self.manifest]:  # batches and the BagNet
                p.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest, {"fingerprint": self.fingerprint, "digest": self.digest})

    def done(self) -> set[int]:
        """Indices of the batches whose shard exists."""
        return {int(p.stem.split("-")[1]) for p in self.directory.glob("batch-*.safetensors")}

    def write(self, index: int, result: BatchResult) -> Path:
        tensors = {f"{key}/{name}": v.contiguous() for key, vals in result.values.items() for name, v in vals.items()}
        meta = {"digest": self.digest, "index": str(int(index)), "seconds": json.dumps(result.seconds),
                "passes": json.dumps(result.passes), "dedupe": json.dumps(result.dedupe)}
        return save_tensors(self.path(index), tensors, metadata=meta)

    def read(self, index: int) -> BatchResult:
        from safetensors import safe_open

        path = self.path(index)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("digest") != self.digest:
            raise ResumeError(f"{path} belongs to another evaluation (fingerprint {meta.get('digest')}, expected "
                             f"{self.digest}); remove the shard directory or run without --resume")
        res = BatchResult(seconds=json.loads(meta["seconds"]), passes=json.loads(meta["passes"]),
                          dedupe=json.loads(meta["dedupe"]))
        for name, t in load_tensors(path).items():
            key, metric = name.split("/", 1)
            res.values.setdefault(key, {})[metric] = t
        return res
