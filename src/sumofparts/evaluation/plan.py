"""Which rows the tables get, and how each method is built for the task.

Each evaluated name becomes one or two :class:`PlanEntry` objects; an entry fills at most one
row of the accuracy table and one of the faithfulness table. Roles:

* ``"sop"``: SOP's own prediction and groups; its faithfulness row uses the paper's protocol
  (groups re-made at τ = k, SOP's own output: :func:`~sumofparts.metrics.sop_curves`);
* ``"sop-cells"``: the same SOP, faithfulness row only, with the keep/remove-top-k-cells
  protocol every post-hoc method gets, applied to SOP's own model and SOP's per-cell map;
* ``"posthoc"``: an attribution of the frozen backbone; its accuracy row is its "-F" form (the
  backbone on the top τ of the cells);
* ``"grouped"``: a method with groups and a prediction of its own (FRESH, a requested "-f");
* ``"own"``: a self-attributing model with a predictor of its own (BagNet).

Methods are asked for capabilities, never for a family or a name: ``method.grouped``, the options
they take (``seed``, ``task``: :func:`~sumofparts.attribution.takes_option`), a model of their own
(``method.model`` that is not the backbone).
Sampling methods (LIME, KernelSHAP, RISE) get SOP's forward-pass budget, G + 1 per item
(G group passes and one pass of the generator's encoder copy), unless the caller sets theirs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SOPError

__all__ = ["PlanEntry", "build_plan", "DEFAULT_METHODS", "default_methods", "resolve_methods", "label",
           "SAMPLE_BUDGET_OPTIONS", "sop_budget"]

#: the methods ``sop evaluate`` runs when none are named: fast ones from each kind of input
DEFAULT_METHODS = {
    "image": ["sop", "gradxinput", "intgrad", "gradcam", "lime", "kernelshap", "rise", "fresh", "bagnet"],
    "text": ["sop", "gradxinput", "intgrad", "lime", "kernelshap", "rise", "fresh"],
}

#: the option that sets a sampling method's number of forward passes per explained input
SAMPLE_BUDGET_OPTIONS = {"lime": "n_samples", "kernelshap": "n_samples", "rise": "n_masks"}
#: options that change only how the work is batched, not the result (CPU convolutions run faster on
#: small batches): Integrated Gradients' path points per forward call, LIME/KernelSHAP's samples per call
SPEED_OPTIONS: dict[str, dict[str, Any]] = {"intgrad": {"internal_batch_size": 32},
                                            "lime": {"perturbations_per_eval": 32},
                                            "kernelshap": {"perturbations_per_eval": 32}}

_LABELS = {"sop": "SOP", "fresh": "FRESH", "bagnet": "BagNet", "gradcam": "GradCAM", "intgrad": "IG",
           "kernelshap": "SHAP", "lime": "LIME", "rise": "RISE", "gradxinput": "Grad×Input",
           "saliency": "Saliency", "smoothgrad": "SmoothGrad", "deeplift": "DeepLIFT", "lrp": "LRP",
           "guided_backprop": "GuidedBackprop", "guided_gradcam": "GuidedGradCAM", "deconvolution": "Deconvolution",
           "feature_ablation": "FeatureAblation", "occlusion": "Occlusion", "shapley": "Shapley"}


def label(name: str) -> str:
    """The row label of a registry name (``"lime-f"`` -> ``"LIME-F"``)."""
    if name.endswith("-f"):
        return _LABELS.get(name[:-2], name[:-2]) + "-F"
    return _LABELS.get(name, name)


@dataclass
class PlanEntry:
    """One evaluated explainer and the rows it fills.

    Attributes:
        key: unique name in the plan (``"sop"``, ``"sop-cells"``, a registry name).
        role: ``"sop"``, ``"sop-cells"``, ``"posthoc"``, ``"grouped"`` or ``"own"`` (module docs).
        method: the attribution method (``None`` for the SOP roles, which use the model itself).
        accuracy_row: label of its accuracy/purity row, or ``None``.
        faithfulness_row: label of its faithfulness row, or ``None``.
        protocol: how its insertion/deletion paths are made and scored (shown in the table).
        source: where its accuracy row's prediction comes from.
        options: the options it was built with (recorded in the JSON).
    """

    key: str
    role: str
    method: Any
    accuracy_row: str | None
    faithfulness_row: str | None
    protocol: str | None
    source: str
    options: dict[str, Any] = field(default_factory=dict)


def _available() -> list[str]:
    from ..attribution import available_methods

    return list(available_methods())


def default_methods(adapter) -> list[str]:
    """The default set for the adapter's kind of input (a cell grid: the image list, else the text list);
    a method the adapter lacks the capabilities for is skipped by the plan with a note saying why."""
    avail = _available()
    kind = "image" if "cell_grid" in adapter.capabilities else "text"
    return [m for m in DEFAULT_METHODS[kind] if m == "sop" or m in avail]


def resolve_methods(methods, adapter) -> list[str]:
    """``None``/empty -> :func:`default_methods`; ``["all"]`` -> SOP and every method that is not an "-F"
    conversion (each post-hoc method brings its "-F" row anyway); else the names, deduplicated."""
    if methods is None or len(methods) == 0:
        return default_methods(adapter)
    names = [str(m).lower() for m in methods]
    if "all" in names:
        return ["sop"] + [m for m in _available() if not m.endswith("-f") and m != "sop"]
    seen: list[str] = []
    for m in names:
        if m not in seen:
            seen.append(m)
    return seen


def sop_budget(sop) -> int:
    """SOP's forward passes per explained input: G groups through the backbone + 1 encoder pass."""
    return int(sop.config.num_groups) + 1




def _own_model(method) -> nn.Module | None:
    """A predictor of the method's own that is not the backbone (BagNet), or None."""
    model = getattr(method, "model", None)
    if isinstance(model, nn.Module) and model is not getattr(method.adapter, "model", None) \
            and not getattr(method, "grouped", False):
        return model
    return None


def build_plan(names: list[str], sop, kind: str, options: dict[str, dict[str, Any]], seed: int, fraction: float,
               notes: list[str]) -> dict[str, PlanEntry]:
    """The plan for ``names``: methods built with the task's options, rows and protocols named."""
    adapter = sop.backbone
    from ..attribution import get_method, takes_option

    plan: dict[str, PlanEntry] = {}
    budget = sop_budget(sop)
    requested = set(names)
    for name in names:
        if name == "sop":
            plan["sop"] = PlanEntry("sop", "sop", None, "SOP", "SOP", "groups re-made at τ = k; SOP's output (paper)",
                                    "SOP")
            plan["sop-cells"] = PlanEntry("sop-cells", "sop-cells", None, None, "SOP",
                                          "top-k cells of SOP's map; SOP's output", "SOP")
            continue
        opts = dict(options.get(name, {}))
        base = name[:-2] if name.endswith("-f") else name
        if base in SAMPLE_BUDGET_OPTIONS:
            opts.setdefault(SAMPLE_BUDGET_OPTIONS[base], budget)
        for k, v in SPEED_OPTIONS.get(base, {}).items():
            opts.setdefault(k, v)
        if takes_option(name, "task"):
            opts.setdefault("task", kind)
        extra = {"seed": seed} if takes_option(name, "seed") and "seed" not in opts else {}
        try:
            method = get_method(name, adapter, **opts, **extra)
        except (SOPError, NotImplementedError) as exc:  # an unknown name or option, a missing capability
            notes.append(f"{name}: skipped: {exc}")
            continue
        if getattr(method, "grouped", False):
            conversion = name.endswith("-f")
            plan[name] = PlanEntry(name, "grouped", method, label(name), None if conversion else label(name),
                                   None if conversion else "top-k cells of its selection scores; backbone",
                                   name, opts)
            continue
        if _own_model(method) is not None:
            plan[name] = PlanEntry(name, "own", method, label(name), label(name),
                                   "top-k cells; its own model's output", name, opts)
            continue
        acc_row = None if f"{name}-f" in requested else label(f"{name}-f")
        plan[name] = PlanEntry(name, "posthoc", method, acc_row, label(name), "top-k cells; backbone",
                               f"top {100 * fraction:g}% of the cells by {name} (oriented for regression), "
                               "the backbone predicts", opts)
    return plan


def options_for_json(plan: dict[str, PlanEntry]) -> dict[str, dict[str, Any]]:
    """The options each method was built with, as JSON-friendly values."""
    def clean(v: Any) -> Any:
        if isinstance(v, (int, float, str, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, torch.Tensor):
            return v.tolist()
        return type(v).__name__
    return {k: {o: clean(v) for o, v in e.options.items() if o not in ("train_data",)} for k, e in plan.items()}
