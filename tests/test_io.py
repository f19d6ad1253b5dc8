"""Atomic publication of directories, leftovers of killed writers, and files that name themselves when bad."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from sumofparts.errors import CorruptFileError, MissingFileError
from sumofparts.io import (atomic_directory, atomic_write_json, file_digest, load_tensors, read_json,
                           recover_directory, save_tensors)

WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import sumofparts.io as io
    path, version, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    real_exchange, real_replace = io._exchange, os.replace
    if mode == "before-exchange":
        io._exchange = lambda a, b: os._exit(9)
    elif mode == "after-exchange":
        io._exchange = lambda a, b: real_exchange(a, b) and os._exit(9)
    elif mode == "between-renames":  # a file system that cannot exchange: two renames, killed between them
        io._exchange = lambda a, b: False
        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).name.startswith("." + path.name + ".old-"):
                os._exit(9)
        io.os.replace = replace
    with io.atomic_directory(path) as tmp:
        io.atomic_write_json(tmp / "config.json", {"version": version})
        (tmp / "weights.bin").write_bytes(version.encode() * 1000)
""")


def publish_in_child(tmp_path, path, version, mode):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.run([sys.executable, str(script), str(path), version, mode], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    return proc.returncode


def publish(path, version):
    with atomic_directory(path) as tmp:
        atomic_write_json(tmp / "config.json", {"version": version})
        (tmp / "weights.bin").write_bytes(version.encode() * 1000)


def version_of(path):
    return json.loads((path / "config.json").read_text())["version"]


def hidden(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mode, expected", [("before-exchange", "old"), ("after-exchange", "new")])
def test_a_writer_killed_around_the_exchange_leaves_a_complete_copy(tmp_path, mode, expected):
    path = tmp_path / "ck"
    publish(path, "old")
    assert publish_in_child(tmp_path, path, "new", mode) == 9  # killed (os._exit(9))
    assert version_of(path) == expected  # never missing, never half-written
    assert (path / "weights.bin").read_bytes() == expected.encode() * 1000
    assert hidden(tmp_path)  # the killed writer's temporary directory is still there ...
    with atomic_directory(path) as tmp:  # ... until the next writer removes it
        atomic_write_json(tmp / "config.json", {"version": "next"})
    assert hidden(tmp_path) == [] and version_of(path) == "next"


def test_without_exchange_a_kill_between_the_renames_is_repaired(tmp_path):
    path = tmp_path / "ck"
    publish(path, "old")
    assert publish_in_child(tmp_path, path, "new", "between-renames") == 9
    assert not path.exists() and any(".old-" in n for n in hidden(tmp_path))
    recover_directory(path)  # what from_pretrained and resume call first
    assert version_of(path) == "old" and hidden(tmp_path) == []


def test_readers_always_find_a_complete_directory_while_it_is_republished(tmp_path):
    path = tmp_path / "ck"
    with atomic_directory(path) as tmp:
        atomic_write_json(tmp / "config.json", {"version": 0})
    misses, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                json.loads((path / "config.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError) as exc:
                misses.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 60):
            with atomic_directory(path) as tmp:
                atomic_write_json(tmp / "config.json", {"version": i})
    finally:
        stop.set()
        reader.join()
    assert misses == [] and version_of(path) == 59 and hidden(tmp_path) == []


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from sumofparts.io import _writer_id

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = _writer_id().split("-")[1]
    path = tmp_path / "ck"
    path.mkdir()
    keep = [f".ck.{_writer_id()}.live.tmp",  # this process: alive
            f".ck.{dead}-0000beef.abc.tmp", f".ck.old-{dead}-0000beef",  # another host: never judged
            ".other.1-00000000.x.tmp"]  # another directory's
    for name in (f".ck.{dead}-{host}.abc123.tmp", f".ck.old-{dead}-{host}", *keep):
        (tmp_path / name).mkdir()
    with atomic_directory(path) as tmp:
        atomic_write_json(tmp / "config.json", {"version": 1})
    assert hidden(tmp_path) == sorted(keep)


def test_a_failed_body_leaves_the_old_directory_untouched(tmp_path):
    path = tmp_path / "ck"
    with atomic_directory(path) as tmp:
        atomic_write_json(tmp / "config.json", {"version": "old"})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(path) as tmp:
            atomic_write_json(tmp / "config.json", {"version": "new"})
            raise RuntimeError("boom")
    assert version_of(path) == "old" and hidden(tmp_path) == []


def test_bad_files_name_themselves(tmp_path):
    with pytest.raises(MissingFileError, match=str(tmp_path / "none.json")):
        read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(CorruptFileError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptFileError, match="deep.json is not JSON this reader accepts: it nests too deeply"):
        read_json(tmp_path / "deep.json")
    save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(100.0)})
    blob = (tmp_path / "t.safetensors").read_bytes()
    assert file_digest(tmp_path / "t.safetensors") == __import__("hashlib").sha256(blob).hexdigest()
    (tmp_path / "t.safetensors").write_bytes(blob[:-20])
    with pytest.raises(CorruptFileError, match=r"t.safetensors is not a readable safetensors file"):
        load_tensors(tmp_path / "t.safetensors")
