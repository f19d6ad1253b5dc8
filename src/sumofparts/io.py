"""Atomic file and directory writes, JSON and safetensors helpers.

Everything the project writes to disk goes through these functions, so that an
interrupted process never leaves a half-written checkpoint, cache or report
behind: data is written to a temporary sibling and moved into place with
``os.replace`` (atomic on POSIX for files and for renames within one volume).
Weights are safetensors; nothing is ever unpickled.

A directory is published by an atomic *exchange* of the new and the old directory
(``renameat2(RENAME_EXCHANGE)`` on Linux), so at every instant the path holds a
complete old or new copy; leftovers of killed writers of this host (``.NAME.PID-HOST.*.tmp``,
``.NAME.old-PID-HOST``) are removed by the next writer. :func:`directory_lock` keeps two
processes from writing into one output directory.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file

from .errors import CorruptFileError, InputTypeError, MissingFileError, OutputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_directory",
    "recover_directory",
    "save_tensors",
    "load_tensors",
    "read_json",
    "content_hash",
    "weights_hash",
    "file_digest",
    "tensor_metadata",
    "directory_lock",
    "check_writable",
]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def _publish(tmp: str) -> None:
    """Give a temporary file the permissions a plain ``open(..., "w")`` would have (mkstemp uses 0600)."""
    os.chmod(tmp, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise InputTypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing file or invalid JSON raises an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"expected a JSON file at {path}, found nothing there")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise CorruptFileError(f"{path} is not JSON this reader accepts: it nests too deeply") from None


# --------------------------------------------------------------------------- directories

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2``); False where unsupported."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - raises AttributeError on an old libc
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange: fall back to two renames
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def _writer_id() -> str:
    """``PID-HOST``: names this process among the writers of a directory that file systems may share."""
    import socket

    host = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
    return f"{os.getpid()}-{host}"


def _writer_dead(writer: str) -> bool:
    """A writer id of this host whose process no longer exists (other hosts' writers are never judged)."""
    pid, _, host = writer.partition("-")
    if host != _writer_id().partition("-")[2] or not pid.isdigit():
        return False
    pid_n = int(pid)
    if pid_n == os.getpid():
        return False
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _leftovers(path: Path) -> tuple[list[Path], list[Path]]:
    """The temporary (``.NAME.PID-HOST.*.tmp``) and old (``.NAME.old-PID-HOST``) siblings of ``path``
    left by writers of this host that are gone."""
    name = re.escape(path.name)
    tmp_re = re.compile(rf"^\.{name}\.(?:(\d+-[0-9a-f]{{8}})\.)?[^/]*\.tmp$")
    old_re = re.compile(rf"^\.{name}\.old-(\d+(?:-[0-9a-f]{{8}})?)$")
    tmps: list[Path] = []
    olds: list[Path] = []
    if not path.parent.is_dir():
        return tmps, olds
    for entry in path.parent.iterdir():
        m = tmp_re.match(entry.name)
        if m and entry.is_dir():
            writer = m.group(1)
            # without a writer id it was written by sumofparts 0.1: stale after an hour
            if (writer is not None and _writer_dead(writer)) or (
                    writer is None and time.time() - entry.stat().st_mtime > 3600):
                tmps.append(entry)
            continue
        m = old_re.match(entry.name)
        if m and entry.is_dir():
            writer = m.group(1)
            if ("-" in writer and _writer_dead(writer)) or (
                    "-" not in writer and time.time() - entry.stat().st_mtime > 3600):
                olds.append(entry)
    return tmps, olds


def recover_directory(path: str | os.PathLike) -> None:
    """Make ``path`` whole again after a writer was killed mid-publish, and remove its leftovers.

    Only needed where the file system cannot exchange directories (then publishing takes
    two renames): if ``path`` is missing but a complete previous copy (``.NAME.old-PID-HOST``
    of a dead process) exists, it is moved back. Leftover temporary directories of dead
    writers are deleted. Only writers of this host are judged (a PID means nothing on
    another machine sharing the file system); unmarked leftovers of 0.1 after an hour.
    """
    path = Path(path)
    tmps, olds = _leftovers(path)
    if not path.exists() and olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        with contextlib.suppress(OSError):
            os.rename(newest, path)
            olds.remove(newest)
    for leftover in tmps + (olds if path.exists() else []):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling and publish it at ``path`` on success.

    >>> with atomic_directory("ckpt") as tmp:
    ...     save_tensors(tmp / "model.safetensors", tensors)

    If the body raises, the temporary directory is removed and any existing ``path`` is
    left untouched. On success the new directory replaces the old one by an atomic
    exchange, so at every instant ``path`` is a complete old or new directory (where the
    file system cannot exchange, two renames are used and :func:`recover_directory`
    repairs a kill between them). Leftovers of killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_writer_id()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(tmp)
    if not path.exists():
        try:
            os.rename(tmp, path)
            _fsync_dir(path.parent)
            return
        except OSError as exc:  # another writer published meanwhile: exchange with it below
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    if _exchange(tmp, path):  # tmp now holds the old directory
        _fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = path.parent / f".{path.name}.old-{_writer_id()}"
    if old.exists():
        shutil.rmtree(old)
    os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, purpose: str = "a run") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (``fcntl.flock`` on ``directory/.lock``).

    A second process (or a second lock in this one) gets an
    :class:`~sumofparts.errors.OutputError` naming the holder's PID at once instead of
    writing into the same files. The kernel releases the lock when its holder dies, so
    the lock of a killed process never blocks the next run.
    """
    import fcntl

    directory = Path(directory)
    check_writable(directory)
    lock = directory / ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise OutputError(f"cannot create the lock file {lock}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise OutputError(f"{directory} is in use by another process (PID {holder}) writing {purpose} there; "
                              "wait for it to finish or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_writable(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check that a file can be written there (before long work starts)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {directory}: {exc.strerror or exc}") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"the output directory {directory} is not writable: {exc.strerror or exc}") from exc
    return directory


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Save a flat name->tensor mapping as safetensors, atomically.

    Tensors are made contiguous and detached; shared storage is cloned (the
    safetensors format refuses aliased tensors).
    """
    path = Path(path)
    clean = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"expected a safetensors file at {path}, found nothing there")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own SafetensorError (and others) for bad files
        raise CorruptFileError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                               "it may be truncated or corrupt") from exc


def tensor_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file's header (no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"expected a safetensors file at {path}, found nothing there")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        raise CorruptFileError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                               "it may be truncated or corrupt") from exc


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """A SHA-256 (16 hex digits) of a module's state dict (names, shapes, dtypes' bytes), any dtype."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def content_hash(obj: Any) -> str:
    """A stable SHA-256 (first 16 hex digits) of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
