"""The group selector: sparse cross-attention from class queries to group embeddings."""
from __future__ import annotations

import torch
from entmax import sparsemax
from torch import nn

__all__ = ["GroupSelector"]


class GroupSelector(nn.Module):
    """One head of sparse cross-attention.

    Queries are a trainable copy of the backbone's classifier weight ``U (C, D)``; keys
    are the group embeddings ``z_i (D)``. ``s_ij = s_s · <W_q u_j, W_k z_i>`` with ``W_q``
    and ``W_k`` initialised to the identity, and the weights are a sparsemax over the
    groups, separately for each class j: ``w_{·j} = sparsemax_i(s_ij)``.

    At initialisation ``<u_j, z_i>`` is group i's own logit for class j (less the bias),
    so the selector starts by favouring the groups that already predict each class.
    """

    def __init__(self, classifier_weight: torch.Tensor, scale: float):
        super().__init__()
        C, D = classifier_weight.shape
        self.class_queries = nn.Parameter(classifier_weight.detach().clone())
        self.query = nn.Linear(D, D, bias=False)
        self.key = nn.Linear(D, D, bias=False)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(D))
            self.key.weight.copy_(torch.eye(D))
        self.scale = float(scale)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, G, D)`` -> scores ``(B, G, C)``."""
        q = self.query(self.class_queries)  # (C, D)
        k = self.key(z)  # (B, G, D)
        return self.scale * torch.einsum("bgd,cd->bgc", k, q)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Group weights ``(B, G, C)``: for each input and class, a sparse distribution over groups."""
        weights: torch.Tensor = sparsemax(self.scores(z), dim=1)
        return weights
