"""The group selector: sparse cross-attention from class queries to group embeddings."""
from __future__ import annotations

import torch
from entmax import sparsemax
from torch import nn

from ..errors import InputError

__all__ = ["GroupSelector"]


class GroupSelector(nn.Module):
    """One head of sparse cross-attention.

    Queries are a trainable copy of the backbone's classifier weight ``U (C, D)``; keys
    are the group embeddings ``z_i (D)``. ``s_ij = s_s · <W_q u_j, W_k z_i>`` with ``W_q``
    and ``W_k`` initialised to the identity, and the weights are a sparsemax over the
    groups, separately for each class j: ``w_{·j} = sparsemax_i(s_ij)``.

    At initialisation ``<u_j, z_i>`` is group i's own logit for class j (less the bias),
    so the selector starts by favouring the groups that already predict each class.

    With ``input_scale`` s_x > 0 (beyond the authors' code, within the paper's definition of
    the selector as a function θ(Γ(x), x) of the groups *and* the input) each score gains a
    term for how much group i resembles the whole input:
    ``s_ij = s_s · <W_q u_j, W_k z_i> + s_x · <W_x z_x, W_k z_i>``, where ``z_x`` is the frozen
    backbone's embedding of the whole input and ``W_x`` starts as the identity. The term is
    the same for every class, so it moves weight towards the groups the backbone reads most
    like the whole input. The prediction stays exactly ``Σ_i w_i c_i y_i``.
    """

    def __init__(self, classifier_weight: torch.Tensor, scale: float, input_scale: float = 0.0):
        super().__init__()
        C, D = classifier_weight.shape
        self.class_queries = nn.Parameter(classifier_weight.detach().clone())
        self.query = nn.Linear(D, D, bias=False)
        self.key = nn.Linear(D, D, bias=False)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(D))
            self.key.weight.copy_(torch.eye(D))
        self.scale = float(scale)
        self.input_scale = float(input_scale)
        if self.input_scale > 0:
            self.input_query = nn.Linear(D, D, bias=False)
            with torch.no_grad():
                self.input_query.weight.copy_(torch.eye(D))

    @property
    def uses_input(self) -> bool:
        """Whether the scores need the whole input's embedding ``z_x``."""
        return self.input_scale > 0

    def scores(self, z: torch.Tensor, z_input: torch.Tensor | None = None) -> torch.Tensor:
        """``z (B, G, D)`` (and ``z_input (B, D)`` when :attr:`uses_input`) -> scores ``(B, G, C)``."""
        q = self.query(self.class_queries)  # (C, D)
        k = self.key(z)  # (B, G, D)
        s = self.scale * torch.einsum("bgd,cd->bgc", k, q)
        if not self.uses_input:
            return s
        if z_input is None or z_input.ndim != 2 or z_input.shape[0] != z.shape[0] or z_input.shape[1] != z.shape[2]:
            got = None if z_input is None else tuple(z_input.shape)
            raise InputError(f"this selector weighs groups against the whole input: expected its embedding of "
                             f"shape {(z.shape[0], z.shape[2])} (B, D), got {got}")
        x = torch.einsum("bgd,bd->bg", k, self.input_query(z_input.to(k.dtype)))  # (B, G)
        return s + self.input_scale * x.unsqueeze(-1)

    def forward(self, z: torch.Tensor, z_input: torch.Tensor | None = None) -> torch.Tensor:
        """Group weights ``(B, G, C)``: for each input and class, a sparse distribution over groups."""
        weights: torch.Tensor = sparsemax(self.scores(z, z_input), dim=1)
        return weights
