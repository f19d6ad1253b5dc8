"""The errors the library raises on purpose: bad input, bad configuration, bad or unsafe files.

Every one of them derives from :class:`SOPError`, so a caller (the ``sop`` command, a
service wrapping the library) can tell "the user gave something wrong" from "the code
has a bug": catch ``SOPError`` and show its message; let everything else propagate
with its traceback. Each class also derives from the built-in exception a caller would
expect (``ValueError``, ``TypeError``, ``FileNotFoundError``, ...), so code written
against the built-in types keeps working.

Hierarchy::

    SOPError
    ├── ConfigError (ValueError)            a configuration field is missing, unknown, mistyped or out of range
    ├── InputError (ValueError)             an input batch or target the model cannot take
    │   └── InputTypeError (TypeError)      ... because it is of the wrong type altogether
    ├── CheckpointError (ValueError)        a checkpoint or weights file that does not fit or cannot be trusted
    │   ├── UnsafeCheckpointError           it asks to build something outside the allow-list
    │   └── ResumeError                     an interrupted run cannot be continued as asked
    ├── CorruptFileError (ValueError)       a file is truncated or not in the expected format
    ├── MissingFileError (FileNotFoundError) a file or directory that should exist does not
    ├── OutputError (OSError)               the output directory is not writable or is locked by another run
    └── MissingDependencyError (ImportError) an optional package the call needs is not installed

Messages name what was expected and what came.
"""
from __future__ import annotations

__all__ = [
    "SOPError",
    "ConfigError",
    "InputError",
    "InputTypeError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "ResumeError",
    "CorruptFileError",
    "MissingFileError",
    "OutputError",
    "MissingDependencyError",
    "SOPWarning",
    "CacheWarning",
]


class SOPError(Exception):
    """Base class of every error the library raises on purpose for a user's mistake or a bad file."""


class ConfigError(SOPError, ValueError):
    """A configuration field is missing, unknown, of the wrong type or out of its range."""


class InputError(SOPError, ValueError):
    """An input batch (or a target) that the model cannot take: shape, dtype, range, emptiness."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong type altogether (e.g. a list where a tensor is expected)."""


class CheckpointError(SOPError, ValueError):
    """A checkpoint or weights file that does not fit the model or is inconsistent."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to build something that is not on the allow-list (see docs/security.md)."""


class ResumeError(CheckpointError):
    """An interrupted training run cannot be continued as asked (missing state, changed configuration)."""


class CorruptFileError(SOPError, ValueError):
    """A file is truncated, corrupt or not in the format expected."""


class MissingFileError(SOPError, FileNotFoundError):
    """A file or directory that should exist does not."""


class OutputError(SOPError, OSError):
    """The output directory cannot be written, or another process holds its lock."""


class MissingDependencyError(SOPError, ImportError):
    """An optional package needed for this call is not installed."""


class SOPWarning(UserWarning):
    """Base class of the library's warnings."""


class CacheWarning(SOPWarning):
    """A cache entry could not be trusted (digest mismatch, unreadable file) and is being regenerated."""
