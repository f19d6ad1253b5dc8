"""Post-hoc attributions through Captum, behind the project's interface.

Each class wraps one Captum method; ``attribute`` returns what Captum returns for the
same arguments (see ``tests/attribution/test_captum_equivalence.py``), reshaped only
where the interface asks (text: one score per token).

What the model is, by the adapter's capabilities (never its family):

* **tensor inputs** (images ``(B, C, H, W)``, feature vectors ``(B, d)``): the forward is
  ``adapter.forward`` (logits ``(B, C)``) on the input tensor; the baseline is 0 (the
  "zero occlusion" SOP uses after normalisation, the theory's empty input).
* **token inputs** (capability ``token_input``): gradient methods attribute with respect to
  the **input embeddings** (the word embeddings, before position / token-type embeddings
  are added): the forward is ``adapter.embedding_forward()``, with the adapter's extra
  arguments (attention mask, token types) bound through Captum's
  ``additional_forward_args``; the baseline is ``adapter.input_embeddings(x).baseline``
  (for BERT: the ``[MASK]`` embedding at every real token, special tokens and padding
  keeping their own, exactly what ``adapter.mask_inputs`` does outside a group).
  Per-token scores are the attributions summed over the embedding dimension.
* **perturbation methods** (Feature Ablation, Shapley Value Sampling, KernelSHAP, LIME)
  use the cells as features: ``feature_mask = adapter.cell_index_map(inputs)`` (a patch,
  a feature-map cell or a token; for text the token's whole embedding vector). Captum
  repeats a feature's score on every element of the feature; ``attribute`` keeps that
  (images ``(B, C, H, W)``; text: one value per token) and ``attribute_cells`` returns
  each cell's score once.

Sampling methods draw from torch's global generator; every call runs under
``seed`` (default 0) with the global RNG state restored afterwards.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ..adapters.base import BackboneAdapter, Inputs
from ..errors import InputTypeError
from ..ops import seeded
from .base import AttributionMethod

__all__ = ["CaptumMethod", "quiet_captum", "DEFAULT_SAMPLE_BUDGET"]

#: SOP's number of groups on ImageNet: the budget the paper gives the sampling methods.
DEFAULT_SAMPLE_BUDGET = 20


def _captum():
    import captum.attr as ca

    return ca



# ---------------------------------------------------------------------------------------------
# the common wrapper
# ---------------------------------------------------------------------------------------------
class CaptumMethod(AttributionMethod):
    """A Captum attribution method behind :class:`AttributionMethod`.

    Subclasses name the Captum class (``captum_class``), the ``attribute`` keyword
    arguments they pass by default (``defaults``) and whether the method takes
    ``baselines`` and a ``feature_mask``. Options given at construction override the
    defaults; keyword arguments given to :meth:`attribute` override both for one call.
    """

    captum_class: Any = None
    defaults: dict[str, Any] = {}
    uses_baselines: bool = False
    uses_feature_mask: bool = False
    needs_module: bool = False  #: Captum wants an nn.Module (hooks on its layers), not a function
    sampling: bool = False  #: draws random numbers (runs under ``seed``)

    def __init__(self, adapter: BackboneAdapter, *, seed: int | None = 0, **options: Any):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise InputTypeError(f"method {self.name!r} got unexpected options {sorted(unknown)}; "
                            f"expected some of {sorted(self.defaults) + ['seed']}")
        super().__init__(adapter)
        self.options = {**self.defaults, **options}
        self.seed = seed

    # what Captum is given -----------------------------------------------------------------------
    def forward_module(self) -> nn.Module:
        """The model Captum sees: the adapter (tensor inputs) or its embedding forward (token inputs)."""
        return self.adapter.embedding_forward() if self.is_text else self.adapter

    def make_captum(self) -> Any:
        model = self.forward_module()
        return self.captum_class(model if self.needs_module else model.forward)

    def captum_inputs(self, inputs: Inputs) -> tuple[torch.Tensor, dict[str, Any]]:
        """The tensor Captum attributes to and the ``attribute`` keyword arguments it needs."""
        kwargs: dict[str, Any] = {}
        if self.is_text:
            x, baseline, extra = self.adapter.input_embeddings(inputs)
            kwargs["additional_forward_args"] = extra
        else:
            x, baseline = inputs, torch.zeros_like(inputs)
        if self.uses_baselines:
            kwargs["baselines"] = baseline
        if self.uses_feature_mask:
            kwargs["feature_mask"] = self.feature_mask(inputs, x)
        return x, kwargs

    def feature_mask(self, inputs: Inputs, x: torch.Tensor) -> torch.Tensor:
        """Cells as features, shaped ``(1, *x.shape[1:])``."""
        ids = self.adapter.cell_index_map(inputs).to(x.device)
        if self.is_text:  # (L,) -> (1, L, D): a token's whole embedding is one feature
            return ids.view(1, -1, 1).expand(1, x.shape[1], x.shape[2]).contiguous()
        return ids.unsqueeze(0)

    def call_kwargs(self, kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        return {**self.options, **kwargs}

    def _attribute(self, inputs: Inputs, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x, base_kwargs = self.captum_inputs(inputs)
        call = {**base_kwargs, **self.call_kwargs(kwargs, x)}
        method = self.make_captum()
        with seeded(self.seed if self.sampling else None), quiet_captum():
            attr = method.attribute(x, target=target, **call)
        return self.reduce(attr.detach())

    #: text, gradient methods: how the (B, L, D) attribution becomes (B, L): "sum" over D, or
    #: "abs_sum" (the L1 norm) for raw-gradient methods, whose plain sum over D is ~0 because
    #: the LayerNorm after the embeddings removes the gradient's mean over D.
    text_reduce: str = "sum"

    def reduce(self, attr: torch.Tensor) -> torch.Tensor:
        """Captum's output -> the interface's shape (text: one score per token)."""
        if not self.is_text:
            return attr
        if self.cell_features:
            return attr[..., 0]  # a token's score repeated on its D elements: take it once
        if self.text_reduce == "abs_sum":
            return attr.abs().sum(-1)
        return attr.sum(-1)


@contextlib.contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's routine notices (inputs made to require grad, hooks set and removed,
    one LIME/KernelSHAP model per example)."""
    with warnings.catch_warnings():
        for message in (".*did not already require gradients.*", ".*Setting backward hooks.*",
                        ".*Setting forward, backward hooks.*", ".*multiple inputs for Lime.*"):
            warnings.filterwarnings("ignore", message=message)
        yield
