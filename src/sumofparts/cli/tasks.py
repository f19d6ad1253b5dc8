"""``sop tasks``: list the tasks."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def _cmd_tasks(args: argparse.Namespace) -> int:
    from ..tasks import available_tasks, get_task

    for name in available_tasks():
        print(f"{name:12s} {get_task(name).description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sop tasks`` to the ``sop`` command."""
    p = sub.add_parser("tasks", help="list the tasks")
    p.set_defaults(func=_cmd_tasks)
