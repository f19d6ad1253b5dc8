"""Grouped methods: SOP itself, FRESH and the "-F" conversion (BagNet is in :mod:`.bagnet`).

* :class:`SOPMethod`: a trained :class:`~sumofparts.SumOfParts` behind the interface.
* :class:`FRESH`: keep the top-τ cells by the backbone's last-layer attention from CLS
  (averaged over heads) and predict with the frozen backbone on them alone.
* :class:`FConversion`: the "-F" form of any post-hoc method: sum its attribution inside
  each cell, keep the top-τ cells, predict with the frozen backbone on them alone.

For the grouped methods ``explain_groups(x, target).scores.sum(1)`` equals
``prediction[target]``: the explanation is the prediction.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapters.base import BackboneAdapter, Inputs
from ..errors import InputError, InputTypeError
from ..metrics.ranking import tie_keys
from .base import AttributionMethod, GroupedResult, Target, top_tau_cells

__all__ = ["SOPMethod", "FRESH", "FConversion"]


def _check_tau(tau: float) -> float:
    if not isinstance(tau, (int, float)) or not 0.0 < float(tau) <= 1.0:
        raise InputError(f"tau must be in (0, 1], got {tau!r}")
    return float(tau)


class _OneGroupMethod(AttributionMethod):
    """A grouped method with a single group: the top-τ cells of some cell scores, predicted
    by the frozen backbone on that group alone. The group's score is that prediction's
    logit for the target."""

    grouped = True
    completeness = "output"  # the group's score is the prediction itself
    multiplies_by_inputs = True

    def __init__(self, adapter: BackboneAdapter, *, tau: float = 0.2, tie_seed: int | None = 0):
        super().__init__(adapter)
        self.tau = _check_tau(tau)
        self.tie_seed = tie_seed

    def cell_importance(self, inputs: Inputs, target: torch.Tensor) -> torch.Tensor:
        """``(B, N)``: the scores the group is chosen by."""
        raise NotImplementedError

    def cell_ranking(self, inputs: Inputs, target: Target) -> torch.Tensor:
        """The importance the group is selected by (the curves rank cells by it)."""
        return self.cell_importance(inputs, self._prepare(inputs, target))

    def explain_groups(self, inputs: Inputs, target: Target) -> GroupedResult:
        t = self._prepare(inputs, target)
        importance = self.cell_importance(inputs, t)
        valid = self.adapter.valid_cells(inputs)
        # ties (e.g. a map that is 0 on many cells) in a seeded random order of the cells, not the raster
        keys = None if self.tie_seed is None else tie_keys(range(valid.shape[0]), valid.shape[1], 1,
                                                           self.tie_seed)[:, 0]
        masks = top_tau_cells(importance, valid, self.tau, keys).unsqueeze(1)  # (B, 1, N)
        with torch.no_grad():
            logits, _ = self.adapter.forward_groups(inputs, masks)
        prediction = logits[:, 0]
        scores = prediction.gather(1, t.view(-1, 1))
        return GroupedResult(masks=masks, scores=scores, prediction=prediction, target=t)


class FRESH(_OneGroupMethod):
    """FRESH (Jain et al., 2020) with the backbone as both extractor and predictor.

    Cell importance: the last layer's attention from the CLS token to each cell, averaged
    over heads (ViT: to each patch; BERT: to each token; special tokens and padding are
    never kept). The group: the top ``max(1, floor(tau · n_valid))`` cells. The prediction:
    the frozen backbone on that group alone (``adapter.forward_groups``). Needs the adapter's
    ``cls_attention`` capability (transformer backbones computing attention maps,
    ``attn_implementation="eager"``).
    """

    name = "fresh"
    requires = frozenset({"cls_attention"})

    def cell_importance(self, inputs: Inputs, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.adapter.cls_attention(inputs)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        self.adapter.validate(inputs)
        return self.explain_groups(inputs, 0).prediction


class FConversion(_OneGroupMethod):
    """The "-F" conversion of a post-hoc method: a post-hoc attribution made self-attributing.

    ``attribute_cells`` of the wrapped method (its attribution summed inside each cell, or
    each cell's score for methods whose features are cells) ranks the valid cells; the top
    ``max(1, floor(tau · n_valid))`` form one group; the frozen backbone predicts from that
    group alone (other cells zeroed / masked). The group depends on the explained target;
    :meth:`predict` explains the backbone's own predicted class.
    """

    def __init__(self, method: AttributionMethod, *, tau: float = 0.2, tie_seed: int | None = 0):
        if not isinstance(method, AttributionMethod):
            raise InputTypeError(f"FConversion wraps an AttributionMethod, got {type(method).__name__}")
        if method.grouped:
            raise InputError(f"method {method.name!r} is already self-attributing; '-F' applies to post-hoc methods")
        self.requires = method.requires
        super().__init__(method.adapter, tau=tau, tie_seed=tie_seed)
        self.method = method
        self.name = f"{method.name}-f"

    def cell_importance(self, inputs: Inputs, target: torch.Tensor) -> torch.Tensor:
        return self.method.attribute_cells(inputs, target)

    def inapplicable_metrics(self) -> dict[str, str]:
        return self.method.inapplicable_metrics()

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        self.adapter.validate(inputs)
        return self.explain_groups(inputs, self.adapter(inputs).argmax(-1)).prediction


class SOPMethod(AttributionMethod):
    """A :class:`~sumofparts.SumOfParts` model as an attribution method.

    ``attribute``: ``sop.explain(x, target).attributions`` (``Σ_i mask_i · w_i c_i y_i[t]``),
    repeated on every channel for images. ``explain_groups``: the G groups, their
    attributions ``w_i c_i y_i[t]`` and SOP's logits (which those attributions sum to).
    """

    name = "sop"
    grouped = True
    completeness = "base_value"  # Σ group attributions = f(x) − b
    multiplies_by_inputs = True

    def __init__(self, adapter: BackboneAdapter | None = None, *, model: nn.Module):
        from ..model import SumOfParts

        if not isinstance(model, SumOfParts):
            raise InputTypeError(f"the 'sop' method needs model= a SumOfParts, got {type(model).__name__}")
        super().__init__(adapter if adapter is not None else model.backbone)
        self.model = model

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            raise InputTypeError(f"SOPMethod.attribute got unexpected arguments {sorted(kwargs)}")
        attr = self.model.explain(inputs, target).attributions
        if isinstance(inputs, torch.Tensor):
            return attr.unsqueeze(1).expand(-1, inputs.shape[1], *attr.shape[1:]).contiguous()
        return attr

    def completeness_reference(self, empty_outputs: torch.Tensor) -> torch.Tensor:
        """SOP's attributions add up to ``f(x) − b``: the reference is the base value b."""
        return self.model.base_value.to(empty_outputs).expand_as(empty_outputs)

    def explain_groups(self, inputs: Inputs, target: Target) -> GroupedResult:
        t = self._prepare(inputs, target)
        expl = self.model.explain(inputs, t)
        G = expl.num_groups
        scores = expl.group_attributions.gather(2, t.view(-1, 1, 1).expand(-1, G, 1))[..., 0]
        return GroupedResult(masks=expl.masks, scores=scores, prediction=expl.logits, target=t)

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            return self.model(inputs).logits
        finally:
            self.model.train(was)
