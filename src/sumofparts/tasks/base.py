"""What a task is: data splits, ground truth, a backbone recipe and SOP defaults.

A task bundles everything ``sop run TASK`` needs. Each task module registers a
``Task`` subclass with :func:`register_task`; the CLI and the evaluation look
tasks up by name with :func:`get_task`.

Dataset items are ``(inputs, target)`` pairs:

* images: ``inputs`` is a float32 tensor ``(C, H, W)``, already normalised;
* text: ``inputs`` is a dict ``{"input_ids": (L,) int64, "attention_mask": (L,) int64}``
  padded to the task's fixed length;
* classification: ``target`` is an int64 scalar tensor (class index);
* regression: ``target`` is a float32 tensor ``(T,)`` (one value per output).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn

from ..errors import ConfigError, InputError, MissingFileError

__all__ = ["TaskData", "Task", "register_task", "get_task", "available_tasks", "default_cache_dir"]


@dataclass
class TaskData:
    """The splits of a task and what is known about them.

    Attributes:
        name: task name (``"cosmology"``, ``"fashion"``, ...).
        kind: ``"classification"`` or ``"regression"``.
        train, val, test: datasets of ``(inputs, target)`` items (see module docs).
        output_names: class names (classification) or target names (regression), length C.
        test_foreground: ``(n_test, H, W)`` bool ground-truth foreground of the test
            items at input resolution, or ``None`` when the task has none.
        meta: anything else worth recording (sizes, seeds, normalisation, hashes).
        display: how figures show an input: ``cmap`` (matplotlib colour map of an image's values,
            default ``"gray"``) and ``value_label`` (what its values are).
    """

    name: str
    kind: Literal["classification", "regression"]
    # map-style datasets (``len(d)``, ``d[i] -> (input, target)``); some carry their tensors as
    # attributes (``tensors``, ``targets``, ``input_ids`` ...), hence ``Any``
    train: Any
    val: Any
    test: Any
    output_names: list[str]
    test_foreground: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    display: dict[str, str] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)


def train_target_mean(data: TaskData) -> list[float]:
    """The mean of the training targets, one value per output (regression tasks): the base value
    ``base_value="train_mean"`` asks for, and the reference predictor of the result tables."""
    if data.kind != "regression":
        raise ConfigError(f"a training-target mean needs a regression task; {data.name!r} is {data.kind}")
    targets = getattr(data.train, "targets", None)
    if not isinstance(targets, torch.Tensor):
        targets = torch.stack([torch.as_tensor(data.train[i][1]).reshape(-1) for i in range(len(data.train))])
    return [float(v) for v in targets.to(torch.float64).reshape(len(data.train), -1).mean(0)]


class Task:
    """Base class of a task. Subclasses set ``name`` and implement the methods."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "classification"
    description: ClassVar[str] = ""
    #: SOP model defaults for this task (fields of ``SOPConfig``).
    sop_defaults: ClassVar[dict[str, Any]] = {}
    #: training defaults for this task (fields of ``TrainConfig``).
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: test items the evaluation of ``sop run`` uses by default.
    eval_n: ClassVar[int] = 100
    #: ``RobustConfig`` fields of this task's group-robust fine-tune (``sop robust-finetune``).
    robust_defaults: ClassVar[dict[str, Any]] = {}

    def load_data(self, cache_dir: Path, *, size: str = "default", seed: int = 0,
                  progress: bool = True) -> TaskData:
        raise NotImplementedError

    def load_backbone(self, data: TaskData, cache_dir: Path, *, backbone: str | None = None,
                      train_if_missing: bool = True, progress: bool = True) -> nn.Module:
        """Return the trained, frozen backbone (eval mode)."""
        raise NotImplementedError

    def make_adapter(self, model: nn.Module):
        """Wrap the backbone in its :class:`~sumofparts.adapters.BackboneAdapter`."""
        raise NotImplementedError

    def augmentation(self) -> Callable[[Any, torch.Generator], Any] | None:
        """``augment(inputs, generator) -> inputs`` for training batches of this task, or ``None``."""
        return None

    def robust_trainable(self, model: nn.Module) -> list[str] | None:
        """Names of the backbone parameters the robust fine-tune may change (``None``: all)."""
        return None

    def save_backbone(self, model: nn.Module, data: TaskData, path: Path, record: dict[str, Any]) -> Path:
        """Write ``model`` to ``path`` (safetensors + JSON sidecar holding ``record``) so that
        ``load_backbone(data, ..., backbone=str(path))`` reads it back, and so that it can be
        committed as the task's backbone."""
        raise NotImplementedError(f"task {self.name!r} cannot save its backbone")

    def concept_sets(self, data: TaskData, adapter, **options: Any):
        """Concepts made from this task's data for TCAV (``sop concepts``): a
        :class:`~sumofparts.analysis.tcav.ConceptSets` (see :mod:`sumofparts.tasks.concepts`)."""
        having = [n for n in available_tasks() if type(get_task(n)).concept_sets is not Task.concept_sets]
        raise InputError(f"task {self.name!r} defines no concepts for TCAV; tasks that do: {', '.join(having)}")

    def load_backbone_weights(self, data: TaskData, cache_dir: Path, path: Path, *,
                              backbone: str | None = None) -> nn.Module:
        """The task's backbone architecture with the weights of a safetensors file, frozen (eval mode).

        The file holds a state dict of the backbone (all its tensors, or some of them: the others
        keep the task's trained values, and the number loaded is checked to be at least one).
        Unknown names and shape mismatches are refused, naming them.
        """
        from ..io import load_tensors

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"no weights file at {path}")
        model = self.load_backbone(data, cache_dir, backbone=backbone, train_if_missing=False, progress=False)
        own = model.state_dict()
        state = load_tensors(path)
        unknown = sorted(k for k in state if k not in own)
        if unknown:
            raise InputError(f"{path} does not hold weights of the {self.name} backbone "
                             f"({type(model).__name__}): unexpected tensors {unknown[:5]}"
                             + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
        if bad:
            raise InputError(f"{path}: tensors of the wrong shape (file vs backbone): {'; '.join(bad[:5])}")
        model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(cls):
    """Class decorator: make a task available to ``get_task`` / the CLI."""
    if not cls.name:
        raise InputError(f"task class {cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    names = available_tasks()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}: expected one of {', '.join(names)}")
    return _REGISTRY[name]()


def default_cache_dir() -> Path:
    """Where generated data and trained backbones are cached (``$SOP_CACHE`` or ~/.cache/sumofparts)."""
    import os

    root = os.environ.get("SOP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "sumofparts"
