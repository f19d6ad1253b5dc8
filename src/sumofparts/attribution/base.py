"""One interface for everything that explains a prediction.

Every explainer (SOP itself and every baseline) is an :class:`AttributionMethod`:

>>> method = get_method("intgrad", adapter)
>>> scores = method.attribute(x, target=3)        # shaped like the input's features
>>> cells = method.attribute_cells(x, target=3)   # (B, N): one score per cell

The call mirrors Captum's ``attribute(inputs, target=...)``. Shapes:

* images ``x: (B, C, H, W)`` -> ``attribute``: ``(B, C, H, W)``;
* text ``x = {"input_ids": (B, L), "attention_mask": (B, L)}`` -> ``attribute``: ``(B, L)``,
  one score per token (gradient methods on the input embeddings are summed over the
  embedding dimension);
* ``attribute_cells``: ``(B, N)`` for every family (N cells: patches, feature-map cells, tokens).

Methods that produce *groups* of cells (SOP, FRESH, the "-F" conversions) set
``grouped = True`` and also implement :meth:`AttributionMethod.explain_groups`, which
returns a :class:`GroupedResult`: the groups, each group's additive score for the target,
and the prediction the method itself outputs (for those methods ``scores.sum(1)`` equals
``prediction[target]``).

``target``: an int (the same class for every input) or a ``(B,)`` integer tensor / sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..adapters.base import BackboneAdapter, Inputs
from ..errors import InputError, InputTypeError
from ..ops import cell_counts, check_target, seeded, top_cells

__all__ = ["AttributionMethod", "GroupedResult", "check_target", "seeded", "top_tau_cells",
           "broadcast_to_input", "cell_representatives"]

Target = int | Sequence[int] | torch.Tensor


@dataclass
class GroupedResult:
    """What a grouped method says about a batch.

    Attributes:
        masks: ``(B, G, N)`` bool, the groups on the cells.
        scores: ``(B, G)`` float, each group's additive attribution for the target.
        prediction: ``(B, C)`` logits that the method itself outputs (SOP's logits, the
            backbone's output on the kept group for FRESH and "-F").
        target: ``(B,)`` long, the output explained for each input.
    """

    masks: torch.Tensor
    scores: torch.Tensor
    prediction: torch.Tensor
    target: torch.Tensor

    @property
    def num_groups(self) -> int:
        return int(self.masks.shape[1])

    def cell_attributions(self) -> torch.Tensor:
        """``(B, N)``: ``Σ_g mask_g · score_g`` (a cell in several groups gets each group's score)."""
        return torch.einsum("bg,bgn->bn", self.scores, self.masks.to(self.scores.dtype))


def top_tau_cells(cell_scores: torch.Tensor, valid: torch.Tensor, tau: float,
                  keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, N)`` scores -> ``(B, N)`` bool: the top ``max(1, floor(tau · n_valid))`` valid cells.

    NaN scores rank last and invalid cells (special tokens, padding) are never kept
    (:func:`sumofparts.metrics.ranking.cell_ranks`). Ties: ``keys (B, N)`` a random order of the
    cells (:func:`sumofparts.metrics.ranking.tie_keys`), or ``None`` for the cell index (the
    model's own top-τ rule).
    """
    if not 0.0 < float(tau) <= 1.0:
        raise InputError(f"tau must be in (0, 1], got {tau!r}")
    if cell_scores.shape != valid.shape:
        raise InputError(f"cell scores {tuple(cell_scores.shape)} and valid cells {tuple(valid.shape)} differ")
    return top_cells(cell_scores, valid, cell_counts(valid, float(tau), at_least_one=True), keys)


def broadcast_to_input(adapter: BackboneAdapter, cell_values: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    """Cell values ``(B, N)`` at input resolution: ``(B, C, H, W)`` for images (each pixel and
    channel of a cell gets the cell's value), ``(B, L)`` for tokens."""
    if not isinstance(inputs, torch.Tensor):
        return cell_values
    ids = adapter.cell_index_map(inputs).to(cell_values.device)  # (C, H, W)
    B = cell_values.shape[0]
    flat = cell_values.gather(1, ids.reshape(1, -1).expand(B, -1))
    return flat.reshape(B, *ids.shape)


def cell_representatives(adapter: BackboneAdapter, inputs: Inputs) -> torch.Tensor:
    """``(N,)`` long: for each cell, the flat index of its first input feature."""
    ids = adapter.cell_index_map(inputs).reshape(-1)
    N = adapter.num_cells(inputs)
    pos = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((N,), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, ids, pos, reduce="amin")
    if bool((first == ids.numel()).any()):
        raise InputError("a cell covers no input feature; cell-level scores cannot be read back")
    return first


class AttributionMethod:
    """Base class of every explainer.

    Subclasses set ``name`` and implement :meth:`_attribute` (post-hoc) or
    :meth:`explain_groups` (grouped). ``attribute`` validates the inputs and the target
    and returns scores shaped like the input's features (see the module docs).

    Class attributes:
        name: the registry name (lowercase).
        grouped: the method produces groups of cells (:meth:`explain_groups`).
        cell_features: the method treats whole cells as its features, so ``attribute``
            repeats each cell's score over the cell's input features (perturbation methods
            on ``feature_mask = adapter.cell_index_map``); ``attribute_cells`` then returns
            that score once per cell instead of summing the copies.
        requires: the adapter capabilities the method needs
            (:data:`sumofparts.adapters.CAPABILITIES`); it never asks for a family.
    """

    name: str = "base"
    grouped: bool = False
    cell_features: bool = False
    requires: frozenset[str] = frozenset()
    #: what the attributions add up to (the fidelity metric needs it): ``"baseline"`` — their sum
    #: is meant to be ``f(x) − f(∅)``, the change from the empty input (completeness: IG, DeepLIFT,
    #: Shapley values, KernelSHAP, LIME's surrogate); ``"output"`` — ``f(x)`` itself (LRP's
    #: conservation, a group's own prediction); ``None`` — the scores are not meant to add up to
    #: anything (gradients, Grad-CAM, RISE, single-cell occlusion), and ``not_additive`` says why.
    completeness: str | None = None
    not_additive: str = "its scores are not meant to add up to an output"
    #: the attribution already contains the input factor (x ⊙ ∂f, or the effect of switching a cell
    #: between the empty value and its own): infidelity then uses I / x as the perturbation
    #: (Captum's ``multiply_by_inputs`` convention; see :mod:`sumofparts.metrics.robustness`).
    multiplies_by_inputs: bool = False
    #: the method trains a model of its own on the task's training data (``train_data=``; BagNet): the
    #: evaluation trains it once, keeps it with its shards (:meth:`save_own_model` / :meth:`load_own_model`)
    #: and passes it back as ``model=`` with the options in :attr:`training_options` left out
    trains_own_model: bool = False
    #: options that only shape the training of the method's own model
    training_options: frozenset[str] = frozenset()

    def __init__(self, adapter: BackboneAdapter, **options: Any):
        if not isinstance(adapter, BackboneAdapter):
            raise InputTypeError(f"{type(self).__name__} expects a BackboneAdapter, got {type(adapter).__name__}")
        missing = self.missing_capabilities(adapter)
        if missing:
            raise NotImplementedError(
                f"method {self.name!r} needs the backbone capabilities {', '.join(missing)}, which "
                f"{type(adapter).__name__} does not have (it has: {', '.join(sorted(adapter.capabilities)) or 'none'})")
        if options:
            raise InputTypeError(f"method {self.name!r} got unexpected options {sorted(options)}")
        self.adapter = adapter

    @classmethod
    def missing_capabilities(cls, adapter: BackboneAdapter) -> list[str]:
        """The capabilities the method needs that ``adapter`` lacks (empty: the method supports it)."""
        return sorted(set(cls.requires) - set(adapter.capabilities))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, adapter={type(self.adapter).__name__})"

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def is_text(self) -> bool:
        """The inputs are token ids: gradient methods work on the word embeddings (``adapter.token_inputs``)."""
        return bool(self.adapter.token_inputs)

    def _prepare(self, inputs: Inputs, target: Target) -> torch.Tensor:
        self.adapter.validate(inputs)
        return check_target(target, self.adapter.batch_size(inputs), self.adapter.num_outputs,
                            self.adapter.device)

    # -- the interface ---------------------------------------------------------------------------
    def attribute(self, inputs: Inputs, target: Target, **kwargs: Any) -> torch.Tensor:
        """Scores shaped like the input's features: ``(B, C, H, W)`` images, ``(B, L)`` text.

        ``kwargs`` override the method's defaults for this call (for Captum methods they
        go to Captum's ``attribute``).
        """
        t = self._prepare(inputs, target)
        return self._attribute(inputs, t, **kwargs)

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.grouped:
            return broadcast_to_input(self.adapter, self.explain_groups(inputs, target).cell_attributions(),
                                      inputs)
        raise NotImplementedError

    def attribute_cells(self, inputs: Inputs, target: Target, **kwargs: Any) -> torch.Tensor:
        """``(B, N)``: one score per cell.

        Default: the feature attributions summed inside each cell
        (``adapter.pool_to_cells``); methods whose features are the cells return each
        cell's score once; grouped methods return ``Σ_g mask_g · score_g``.
        """
        t = self._prepare(inputs, target)
        if self.grouped:
            return self.explain_groups(inputs, t).cell_attributions()
        attr = self._attribute(inputs, t, **kwargs)
        if self.cell_features and isinstance(inputs, torch.Tensor):
            idx = cell_representatives(self.adapter, inputs).to(attr.device)
            return attr.reshape(attr.shape[0], -1)[:, idx].to(torch.float32)
        return self.adapter.pool_to_cells(attr, inputs)

    def inapplicable_metrics(self) -> dict[str, str]:
        """Evaluation metrics that say nothing about this method's attributions, each with the reason.

        Keys: ``"prediction"`` (the error / MSE of the method's "-F" prediction),
        ``"fidelity"``, ``"insertion"``, ``"deletion"``, ``"infidelity"``. ``sop evaluate`` shows those cells as
        N/A with the reason under the table. Default: none (every metric applies).
        """
        return {}

    def save_own_model(self, path: Any) -> None:
        """Methods that train a model of their own: write it to ``path`` (safetensors)."""
        raise NotImplementedError(f"method {self.name!r} has no model of its own to save")

    @classmethod
    def load_own_model(cls, path: Any) -> Any:
        """Methods that train a model of their own: read what :meth:`save_own_model` wrote."""
        raise NotImplementedError(f"method {cls.name!r} has no model of its own to load")

    def explain_groups(self, inputs: Inputs, target: Target) -> GroupedResult:
        """Grouped methods only: masks ``(B, G, N)``, scores ``(B, G)``, prediction ``(B, C)``."""
        raise NotImplementedError(f"method {self.name!r} does not produce groups")

    @torch.no_grad()
    def predict(self, inputs: Inputs) -> torch.Tensor:
        """``(B, C)`` logits of the model this method explains (post-hoc: the frozen backbone)."""
        self.adapter.validate(inputs)
        return self.adapter(inputs)

    def cell_ranking(self, inputs: Inputs, target: Target) -> torch.Tensor:
        """``(B, N)``: the scores the insertion/deletion curves rank cells by (default
        :meth:`attribute_cells`; a one-group method ranks by the importance it selects its group by)."""
        return self.attribute_cells(inputs, target)

    def completeness_reference(self, empty_outputs: torch.Tensor) -> torch.Tensor | None:
        """``(B, C)``: what the attributions' sums are measured from, given the model's outputs on the
        empty input ``(B, C)``: those outputs (``completeness = "baseline"``), zeros (``"output"``),
        or ``None`` when the scores are not additive (fidelity is then N/A, see ``not_additive``)."""
        if self.completeness == "baseline":
            return empty_outputs
        if self.completeness == "output":
            return torch.zeros_like(empty_outputs)
        if self.completeness is None:
            return None
        raise InputError(f"unknown completeness {self.completeness!r} for method {self.name!r}")


#: a factory ``(adapter, **options) -> AttributionMethod``
MethodFactory = Callable[..., AttributionMethod]
