"""The paper's two tables for a task (``sop evaluate``): :func:`evaluate_task` in :mod:`.evaluate`.

:mod:`.plan` (rows and protocols), :mod:`.runner` (one batch), :mod:`.passes` (shared backbone
passes), :mod:`.shards` (resumable, shardable per-batch files), :mod:`.tables` (statistics and files).
"""
from .evaluate import (DEFAULT_METHODS, EvalSettings, EvalTables, PlanEntry, default_methods, evaluate_task,
                       resolve_methods, training_target_mean)

__all__ = ["EvalTables", "EvalSettings", "evaluate_task", "default_methods", "resolve_methods", "DEFAULT_METHODS",
           "PlanEntry", "training_target_mean"]
