"""Argument types and checks shared by the ``sop`` subcommands (one place for each rule).

* :func:`field_type` turns a :class:`~sumofparts.validation.Field` into an argparse
  ``type=``: ``--threads -3`` then fails in argparse with "expected an integer >= 1, got
  '-3'" (a one-line usage error, no traceback), by the same rule the configs use.
* :func:`parse_overrides` reads ``--set KEY=VALUE`` / ``--train-set KEY=VALUE`` pairs
  against a field table (unknown keys and mistyped values are a
  :class:`~sumofparts.errors.ConfigError` naming the option and the field).
* :func:`check_device` checks ``--device`` against what this machine has;
* :func:`set_threads` applies ``--threads``; :func:`resolve_configs` checks ``--set`` /
  ``--train-set`` / ``--steps`` before any work starts; :func:`add_run_options` adds the options
  that ``sop run`` and ``sop train`` share; :func:`check_out` refuses an unwritable ``--out`` early.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError
from ..validation import Field, check_value

__all__ = ["field_type", "POSITIVE_INT", "NONNEGATIVE_INT", "parse_overrides", "check_device", "set_threads",
           "resolve_configs", "add_run_options", "check_out"]


def field_type(spec: Field) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses a string and checks it against ``spec``."""

    def convert(text: str) -> Any:
        try:
            value: Any = int(text) if spec.kind is int else float(text) if spec.kind is float else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.describe()}, got {text!r}") from None
        try:
            return check_value("value", value, spec)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"expected {spec.describe()}, got {text!r}") from None

    convert.__name__ = spec.describe()
    return convert


POSITIVE_INT = field_type(Field(int, min=1))
NONNEGATIVE_INT = field_type(Field(int, min=0, max=2**63 - 1))


def parse_overrides(pairs: Sequence[str] | None, table: Mapping[str, Field], option: str,
                    exclude: Sequence[str] = ()) -> dict[str, Any]:
    """``["tau=0.3", "sequential_heads=false"]`` -> ``{"tau": 0.3, "sequential_heads": False}``, checked.

    A value is read as JSON when it parses (numbers, ``true``/``false``, ``null``, lists),
    else as a plain string; it is then checked against the field's declared type, so
    ``tau=abc``, ``num_groups=2.5``, ``sequential_heads=no`` or ``generator_scale=NaN``
    raise a :class:`ConfigError` that names ``option`` and the field.
    """
    out: dict[str, Any] = {}
    allowed = sorted(k for k in table if k not in exclude)
    for item in pairs or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"{option} expects KEY=VALUE pairs, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in table or key in exclude:
            raise ConfigError(f"{option}: unknown key {key!r}; expected one of {', '.join(allowed)}")
        try:
            value: Any = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            value = text
        out[key] = check_value(key, value, table[key], where=f"{option} ")
    return out


def check_device(name: str | None) -> str:
    """``--device``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch

    if name is None:
        return "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cpu":
        return str(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__} "
                              "finds no GPU); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"expected an index in [0, {torch.cuda.device_count()})")
        return str(device)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu")
        return str(device)
    raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {name!r}")


def set_threads(n: int | None) -> None:
    """``--threads N``: torch's intra-op threads (``None``: torch's own choice)."""
    import torch

    if n:
        torch.set_num_threads(n)


def check_out(out: Path) -> None:
    """Refuse an output directory that cannot be written, before any work starts."""
    from ..io import check_writable

    check_writable(out)


def resolve_configs(task_name: str, sop_set: Sequence[str] | None, train_set: Sequence[str] | None, *,
                    steps: int | None = None, seed: int = 0) -> tuple[dict[str, Any], Any]:
    """Check ``--set``/``--train-set``/``--steps`` before any work starts.

    Returns the SOP overrides (checked against :data:`~sumofparts.model.config.SOP_CONFIG_FIELDS`
    and combined with the task's defaults once, so that a bad combination fails now) and
    the :class:`~sumofparts.training.TrainConfig`.
    """
    from ..model.config import SOP_CONFIG_FIELDS, SOPConfig
    from ..tasks import get_task
    from ..training import TRAIN_CONFIG_FIELDS, TrainConfig

    task = get_task(task_name)
    sop_over = parse_overrides(sop_set, SOP_CONFIG_FIELDS, "--set", exclude=("backbone",))
    fields = {**task.sop_defaults, **sop_over}
    if fields.get("base_value") == "train_mean":  # resolved from the training data by build_sop
        fields.pop("base_value")
    SOPConfig.from_dict(fields)
    train_over = parse_overrides(train_set, TRAIN_CONFIG_FIELDS, "--train-set")
    if steps is not None:
        train_over["steps"] = steps
    return sop_over, TrainConfig.from_dict({**task.train_defaults, "seed": seed, **train_over})


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="default", help="data size: default | small (default: %(default)s)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0,
                   help="seed of SOP's initialisation and training batches (default: %(default)s)")
    p.add_argument("--data-seed", type=NONNEGATIVE_INT, default=0,
                   help="seed of the data (simulation, splits); the committed backbones were trained on "
                        "data seed 0, and another one can put their training items in the test split "
                        "(default: %(default)s)")
    p.add_argument("--backbone", default=None, help="which backbone of the task (e.g. vit | cnn for fashion)")
    p.add_argument("--cache-dir", type=Path, default=None, help="data/backbone cache (default: $SOP_CACHE or "
                                                                "~/.cache/sumofparts)")
    p.add_argument("--steps", type=POSITIVE_INT, default=None, help="SOP training steps (default: the task's)")
    p.add_argument("--set", dest="sop_set", nargs="*", metavar="KEY=VALUE",
                   help="override SOP config fields, e.g. --set tau=0.2 num_groups=20")
    p.add_argument("--train-set", dest="train_set", nargs="*", metavar="KEY=VALUE",
                   help="override training fields, e.g. --train-set lr=1e-3 batch_size=32")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: its SOP training, then its evaluation from the shards")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even though the configuration differs from the saved run's")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


