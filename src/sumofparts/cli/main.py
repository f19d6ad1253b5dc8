"""The ``sop`` command: :func:`main` parses the command line and runs one command module.

Each command is a module of this package with a ``register(subparsers)`` function; the list below
is the whole command set. A user's mistake (an :class:`~sumofparts.errors.SOPError`) prints one
line and returns 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import SOPError
from . import compare, concepts, evaluate, explain, report, robust, run, segment, tasks, theory, train
from .arguments import resolve_configs
from .train import init_distributed

__all__ = ["main", "build_parser", "resolve_configs", "init_distributed", "COMMANDS"]

#: the command modules, in the order ``sop --help`` lists them
COMMANDS = (run, train, explain, tasks, theory, evaluate, report, robust, segment, compare, concepts)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="sop", description="Sum-of-Parts models: faithful by construction.")
    parser.add_argument("--version", action="version", version=f"sumofparts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sop``. A user's mistake (any :class:`~sumofparts.errors.SOPError`: a bad option, a
    bad file, an unwritable directory) prints one line and returns 2; anything else is a bug
    and propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    except SOPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
