"""Typed outputs of a Sum-of-Parts model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import InputError
from ..ops import check_target

__all__ = ["SOPOutput", "GroupedExplanation", "GroupInfo"]


@dataclass
class GroupInfo:
    """One group of one input, as listed by :meth:`SOPOutput.groups`."""

    index: int  #: position among the G groups
    weight: float  #: w_i for the chosen output
    scale: float  #: c_i
    logit: float  #: y_i for the chosen output (the group's own prediction score)
    attribution: float  #: w_i · c_i · y_i, the group's share of the final logit
    predicted: int  #: argmax of the group's own logits
    zero_weight: bool  #: the selector gave this group weight exactly 0 for the chosen output
    cells: list[int] = field(default_factory=list)  #: indices of the cells in the group


@dataclass
class SOPOutput:
    """What a forward pass of :class:`~sumofparts.SumOfParts` returns.

    Shapes: B inputs, G groups, C outputs, N cells; ``*S`` the input's spatial shape
    ((H, W) for images, (L,) for tokens).

    Attributes:
        logits: ``(B, C)``, the model's prediction, ``b + Σ_i w_i ⊙ c_i ⊙ (y_i − b)``.
        group_logits: ``(B, G, C)``, y_i, the frozen backbone's output on group i alone.
        group_weights: ``(B, G, C)``, w_i, sparsemax over groups for each output.
        masks: ``(B, G, N)`` bool, the groups on the cells.
        input_masks: ``(B, G, *S)`` bool, the groups at input resolution.
        scale: ``(B, G)``, c_i = 2·Σ_top a − 1.
        base_value: ``(C,)``, b, what the prediction is before any group is added
            (zeros unless the model's config sets it; for regression, e.g. the training
            targets' mean): ``logits = base_value + Σ_i group_attributions_i`` exactly.
        task: ``"classification"`` or ``"regression"``.
    """

    logits: torch.Tensor
    group_logits: torch.Tensor
    group_weights: torch.Tensor
    masks: torch.Tensor
    input_masks: torch.Tensor
    scale: torch.Tensor
    base_value: torch.Tensor
    task: str

    @property
    def group_attributions(self) -> torch.Tensor:
        """``(B, G, C)``: ``w ⊙ c·(y − b)``, each group's additive share of each output.

        ``logits == base_value + group_attributions.sum(1)``.
        """
        return self.group_weights * self.scale.unsqueeze(-1) * (self.group_logits - self.base_value)

    @property
    def num_groups(self) -> int:
        return int(self.group_logits.shape[1])

    def _targets(self, target: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` long: the output to explain for each input (checked; floats are refused, not truncated)."""
        B, C = self.logits.shape
        if target is not None:
            return check_target(target, B, C, self.logits.device)
        if C > 1 and self.task == "regression":
            raise InputError(f"a regression model has {C} outputs: pass target= to say which one to explain")
        return self.logits.argmax(-1)

    def attribution_map(self, target: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Per-input attribution ``(B, *S)``: ``Σ_i input_mask_i · attr_i[target]``.

        ``target``: an output index, one per input, or ``None`` for the predicted class.
        Summed over the cells of the input it is *not* the logit (a cell may lie in
        several groups); summed over groups it is: ``base_value + group_attributions.sum(1) == logits``.
        """
        t = self._targets(target)
        attr = self.group_attributions.gather(2, t.view(-1, 1, 1).expand(-1, self.num_groups, 1)).squeeze(-1)
        m = self.input_masks.to(attr.dtype)
        return torch.einsum("bg,bg...->b...", attr, m)

    def groups(self, index: int = 0, target: int | None = None) -> list[GroupInfo]:
        """The groups of input ``index``, best first (by weight for ``target``), zero-weight ones flagged."""
        B = self.logits.shape[0]
        if not 0 <= index < B:
            raise IndexError(f"input index must be in [0, {B}), got {index}")
        t = int(self._targets(target)[index])
        w = self.group_weights[index, :, t].detach()
        c = self.scale[index].detach()
        y = self.group_logits[index, :, t].detach()
        attr = self.group_attributions[index, :, t].detach()
        pred = self.group_logits[index].argmax(-1)
        order = sorted(range(self.num_groups), key=lambda i: (-float(w[i]), -float(attr[i])))
        return [
            GroupInfo(index=i, weight=float(w[i]), scale=float(c[i]), logit=float(y[i]),
                      attribution=float(attr[i]), predicted=int(pred[i]), zero_weight=bool(w[i] == 0),
                      cells=torch.nonzero(self.masks[index, i]).flatten().tolist())
            for i in order
        ]

    def detach(self) -> "SOPOutput":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclass
class GroupedExplanation(SOPOutput):
    """An :class:`SOPOutput` with the explained output and its per-input attribution.

    Attributes:
        target: ``(B,)`` the output explained for each input.
        attributions: ``(B, *S)`` per-pixel (or per-token) attribution for ``target``.
    """

    target: torch.Tensor
    attributions: torch.Tensor
