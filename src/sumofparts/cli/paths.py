"""Where the ``sop`` commands read and write by default: the ``sop-runs`` convention, in one place.

``sop-runs/TASK/`` is a task's run directory (``sop run``'s ``--out``); inside it ``sop/`` holds the
SOP checkpoints (``sop/best`` the one the other commands load), and each command writes its own
subdirectory (``evaluation/``, ``case_study/``, ``concepts/``, ``compare/``, ``segmentation/``) or file
(``report.html``, ``robust-backbone.safetensors``).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["RUNS_DIR", "run_dir", "sop_dir", "best_checkpoint"]

#: the directory every run directory lies in, relative to the working directory
RUNS_DIR = Path("sop-runs")


def run_dir(task: str, *parts: str) -> Path:
    """``sop-runs/TASK`` (or a path inside it: ``run_dir(task, "evaluation")``)."""
    return RUNS_DIR.joinpath(task, *parts)


def sop_dir(task: str) -> Path:
    """``sop-runs/TASK/sop``: where ``sop train`` / ``sop run`` write the SOP checkpoints."""
    return run_dir(task, "sop")


def best_checkpoint(task: str) -> Path:
    """``sop-runs/TASK/sop/best``: the SOP checkpoint the other commands load by default."""
    return sop_dir(task) / "best"
