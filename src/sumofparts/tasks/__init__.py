"""Tasks: data, ground truth, backbone recipes and SOP defaults (see :mod:`.base`)."""
from __future__ import annotations

import importlib

from .base import Task, TaskData, available_tasks, default_cache_dir, get_task, register_task

__all__ = ["Task", "TaskData", "available_tasks", "default_cache_dir", "get_task", "register_task"]

#: modules that define built-in tasks; a module that is missing is skipped.
_BUILTIN = ["synthetic", "cosmology", "fashion", "sentiment", "online_cosmogrid", "online_imagenet_s",
            "online_multirc"]


def _load_builtin_tasks() -> None:
    for mod in _BUILTIN:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise
