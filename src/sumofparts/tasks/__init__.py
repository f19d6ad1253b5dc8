"""Tasks: data, ground truth, backbone recipes and SOP defaults (see :mod:`.base`).

Importing the package registers the built-in tasks (each module's ``@register_task``).
"""
from __future__ import annotations

from . import (cosmology, fashion, online_cosmogrid, online_imagenet_s, online_multirc,  # noqa: F401 (registration)
               sentiment, synthetic)
from .base import Task, TaskData, available_tasks, default_cache_dir, get_task, register_task

__all__ = ["Task", "TaskData", "available_tasks", "default_cache_dir", "get_task", "register_task"]
