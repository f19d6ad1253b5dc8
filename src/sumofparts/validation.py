"""Table-driven checks of configuration values: one declared type and range per field.

A *field table* maps each field name to a :class:`Field` (its type, bounds, choices).
:func:`check_value` checks one value and returns it normalised (``numpy.int64(3)`` ->
``3``, ``1`` -> ``1.0`` for a float field); :func:`check_fields` checks a whole mapping
against a table: unknown keys, missing required keys, every value. Every failure is a
:class:`~sumofparts.errors.ConfigError` whose message names the field, what was expected
and what came, e.g. ``tau must be a finite number in (0, 1], got nan``.

The same tables serve the Python API (``SOPConfig(...)``, ``TrainConfig(...)``), the JSON
files (``config.json``, ``trainer_state.json``), the ``--set``/``--train-set`` options of
the command line and the argument schemas of the buildable backbones, so a rule is
written once. Types are strict on purpose: ``"44"`` is not an integer, ``2.5`` is not an
integer, ``"no"`` is not a boolean, and NaN/inf are never a valid number.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .errors import ConfigError

__all__ = ["Field", "check_value", "check_fields", "MISSING"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: marks a field without a default (it must be present wherever it is read)
MISSING: Any = _Missing()


@dataclass(frozen=True)
class Field:
    """The declared type and constraints of one field.

    Args:
        kind: ``int``, ``float``, ``bool``, ``str``, ``dict`` or ``list``.
        min / max: inclusive bounds of a number (of each item for a list of numbers).
        gt: exclusive lower bound of a number (e.g. ``gt=0`` for "> 0").
        choices: the allowed values (strings, or numbers/booleans when only some are valid).
        optional: ``None`` (JSON ``null``) is allowed.
        item: the type of a list's items (``int``, ``float`` or ``str``).
        length: exact length of a list; ``max_length``: its largest length.
        check: a further rule: ``check(value) -> None`` or a message completing
            "``<name>`` must ...".
        required: the field must be present in a file (configs read from disk); fields
            that change no computation may be optional with a ``default``.
        default: the value a file may leave out (only with ``required=False``).
        doc: what the field means (for error messages and docs).
    """

    kind: type
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    item: type | None = None
    length: int | None = None
    max_length: int | None = None
    check: Callable[[Any], str | None] | None = None
    required: bool = True
    default: Any = MISSING
    doc: str = ""

    # -- description ---------------------------------------------------------------------------
    def _range(self) -> str:
        lo = None if self.gt is None and self.min is None else (
            f"({_num(self.gt)}" if self.gt is not None else f"[{_num(self.min)}")
        hi = None if self.max is None else f"{_num(self.max)}]"
        if lo and hi:
            return f" in {lo}, {hi}"
        if lo:
            return f" > {_num(self.gt)}" if self.gt is not None else f" >= {_num(self.min)}"
        if hi:
            return f" <= {_num(self.max)}"
        return ""

    def describe(self) -> str:
        """What a valid value looks like, e.g. ``an integer >= 1``."""
        if self.choices is not None and self.kind in (str, int, float, bool):
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.kind is bool:
            text = "a boolean (true or false)"
        elif self.kind is int:
            text = "an integer" + self._range()
        elif self.kind is float:
            text = "a finite number" + self._range()
        elif self.kind is str:
            text = "a string"
        elif self.kind is dict:
            text = "a JSON object (dict)"
        elif self.kind is list:
            n = f"{self.length} " if self.length is not None else ""
            nouns: dict[type | None, str] = {int: "integers", float: "finite numbers", str: "strings"}
            noun = nouns.get(self.item, "values")
            text = f"a list of {n}{noun}" + (self._range() if self.item in (int, float) else "")
            if self.max_length is not None:
                text += f" (at most {self.max_length})"
        else:  # pragma: no cover - a table error
            text = self.kind.__name__
        return text + (" or null" if self.optional else "")


def _num(x: float | None) -> str:
    """A bound as people write it: 1000000000, 0.5, 1e-06."""
    if x is not None and float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:g}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _what(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _number(value: Any, spec: Field, kind: type, what: str) -> int | float:
    if kind is int:
        if not _is_int(value):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        out: int | float = int(value)
    else:
        if not isinstance(value, numbers.Real) or _is_bool(value):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        out = float(value)
        if not math.isfinite(out):
            raise ConfigError(f"{what} must be {spec.describe()}, got {out!r}")
    if (spec.min is not None and out < spec.min) or (spec.max is not None and out > spec.max) or (
            spec.gt is not None and out <= spec.gt):
        raise ConfigError(f"{what} must be {spec.describe()}, got {out!r}")
    return out


def check_value(name: str, value: Any, spec: Field, *, where: str = "") -> Any:
    """Check ``value`` against ``spec``; return it normalised. ``where`` prefixes the message."""
    what = f"{where}{name}"
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"{what} must be {spec.describe()}, got None (null)")
    kind = spec.kind
    if kind in (int, float):
        out: Any = _number(value, spec, kind, what)
    elif kind is bool:
        if not _is_bool(value):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        out = bool(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        out = value
    elif kind is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        out = dict(value)
    elif kind is list:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        items = list(value)
        if (spec.length is not None and len(items) != spec.length) or (
                spec.max_length is not None and len(items) > spec.max_length):
            raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
        if spec.item in (int, float):
            try:
                out = [_number(v, spec, spec.item, what) for v in items]
            except ConfigError:
                raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}") from None
        elif spec.item is str:
            if not all(isinstance(v, str) for v in items):
                raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
            out = items
        else:
            out = items
    else:  # pragma: no cover - a table error
        raise TypeError(f"field table error: unsupported kind {kind!r} for {name}")
    if spec.choices is not None and kind in (str, int, float, bool) and out not in spec.choices:
        raise ConfigError(f"{what} must be {spec.describe()}, got {_what(value)}")
    if spec.check is not None:
        problem = spec.check(out)
        if problem:
            raise ConfigError(f"{what} must {problem}, got {_what(value)}")
    return out


def reject_unknown_keys(data: Mapping[str, Any], known: Iterable[str], name: str) -> None:
    """Refuse keys of ``data`` that are not fields of the config ``name``, naming them and the known ones."""
    known = set(known)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"unknown {name} keys {unknown}; expected some of {sorted(known)}")


def check_fields(values: Mapping[str, Any], table: Mapping[str, Field], *, where: str = "",
                 require: bool = False, allow_unknown: bool = False) -> dict[str, Any]:
    """Check every entry of ``values`` against ``table``; return the normalised dict.

    ``require``: every field with ``required=True`` must be present (files); the others
    get their ``default`` when absent. ``allow_unknown``: keep keys the table does not
    know instead of refusing them. ``where`` prefixes messages (e.g. the file's path).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}expected a JSON object (dict) of fields, got {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in table)
    if unknown and not allow_unknown:
        raise ConfigError(f"{where}unknown keys {unknown}; expected some of {sorted(table)}")
    out: dict[str, Any] = {k: v for k, v in values.items() if k not in table}
    if require:
        missing = sorted(k for k, f in table.items() if f.required and k not in values)
        if missing:
            raise ConfigError(f"{where}missing fields {missing}: each of them changes the computation, so it "
                              "must be stated (a default might not be what the file was written with)")
    for name, spec in table.items():
        if name in values:
            out[name] = check_value(name, values[name], spec, where=where)
        elif require and spec.default is not MISSING:
            out[name] = spec.default
    return out
