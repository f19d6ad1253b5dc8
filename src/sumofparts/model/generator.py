"""The group generator: attention maps over cells, binarised to top-tau groups."""
from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import gaussian_kernel
from ..ops import cell_counts, top_cells

__all__ = ["GroupGenerator", "sample_candidates", "binarise_top_tau", "group_scale"]


class GroupGenerator(nn.Module):
    """K heads of scaled attention over the cells, from a trainable copy of the backbone's encoder.

    ``logits_h = s_g · (H W_q^h)(H W_k^h)^T`` (an N×N matrix per head, no 1/sqrt(d)),
    optionally Gaussian-blurred along each query row seen as an image on the cell grid,
    then a softmax over the keys (invalid cells excluded). Each query row is one
    candidate group: a distribution over the N cells.

    Args:
        encoder: ``encoder(inputs) -> (B, N, D)`` cell embeddings (trainable).
        dim: D. num_heads: K. attn_dim: width of the projections. scale: s_g.
        grid: the cell grid (h, w) for the blur (``None`` for sequences).
        blur_kernel / blur_sigma: Gaussian blur of the query rows (0: none).
    """

    def __init__(self, encoder: nn.Module, dim: int, num_heads: int, attn_dim: int, scale: float,
                 grid: tuple[int, int] | None = None, blur_kernel: int = 0, blur_sigma: float = 1.0,
                 norm: bool = True, init: str = "identity", init_noise: float = 0.5):
        super().__init__()
        self.encoder = encoder
        # LayerNorm on the cell embeddings makes s_g mean the same for every backbone: the raw
        # hidden states of a CNN may have norms of 0.1 and a ViT's of 100
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.num_heads = int(num_heads)
        self.attn_dim = int(attn_dim)
        self.scale = float(scale)
        self.query = nn.Linear(dim, num_heads * attn_dim)
        # no key bias: it adds a constant to each query row, to which the softmax is blind
        self.key = nn.Linear(dim, num_heads * attn_dim, bias=False)
        if init == "identity":
            self._identity_init(dim, attn_dim, init_noise)
        elif init != "random":
            raise ValueError(f"generator init must be 'identity' or 'random', got {init!r}")
        self.grid = grid
        self.blur_kernel = int(blur_kernel)
        if self.blur_kernel:
            if grid is None:
                raise ValueError("blur_kernel needs a cell grid: it is for image backbones only")
            self.register_buffer("blur", gaussian_kernel(self.blur_kernel, blur_sigma)[None, None],
                                 persistent=False)

    @torch.no_grad()
    def _identity_init(self, dim: int, attn_dim: int, noise: float) -> None:
        """W_q = W_k = I + noise·R_h/sqrt(D), a different R_h per head.

        Each query cell then starts by attending to the cells most similar to it, so the
        attention is peaked and the scale c starts positive (with PyTorch's default init
        the attention is nearly uniform, c ≈ 2τ − 1 < 0, and every group's output starts
        with its sign flipped); the noise makes the heads propose different groups.
        """
        eye = torch.eye(attn_dim, dim)
        for lin in (self.query, self.key):
            w = torch.cat([eye + noise * torch.randn(attn_dim, dim) / dim**0.5 for _ in range(self.num_heads)])
            lin.weight.copy_(w)
            if lin.bias is not None:
                lin.bias.zero_()

    def forward(self, inputs, valid: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """Candidate groups as attention distributions ``(B, K', N, N)`` (K' = len(heads) or K).

        ``valid (B, N)`` bool: keys outside it get zero probability.
        """
        h = self.norm(self.encoder(inputs))  # (B, N, D)
        B, N, _ = h.shape
        q = self.query(h).view(B, N, self.num_heads, self.attn_dim).transpose(1, 2)  # (B, K, N, A)
        k = self.key(h).view(B, N, self.num_heads, self.attn_dim).transpose(1, 2)
        if heads is not None:
            q, k = q[:, heads], k[:, heads]
        logits = self.scale * q @ k.transpose(-1, -2)  # (B, K', N, N)
        if self.blur_kernel:
            gh, gw = self.grid
            K_ = logits.shape[1]
            img = logits.reshape(B * K_ * N, 1, gh, gw)
            pad = self.blur_kernel // 2
            img = nn.functional.conv2d(nn.functional.pad(img, (pad, pad, pad, pad), mode="replicate"), self.blur)
            logits = img.reshape(B, K_, N, N)
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1)


def sample_candidates(attn: torch.Tensor, valid: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Keep G candidates, evenly spaced, from the K'·n_valid candidates of each input.

    Candidates are ordered by (head, query cell) over the *valid* query cells; the
    kept indices are ``floor(i · M / G)``, i = 0..G-1, with M the number of candidates
    of that input. ``attn: (B, K', N, N)``, ``valid: (B, N)`` -> ``(B, G, N)``.
    """
    B, K_, N, _ = attn.shape
    n_valid = valid.sum(-1)  # (B,)
    M = K_ * n_valid  # (B,)
    i = torch.arange(num_groups, device=attn.device)
    j = (i[None, :] * M[:, None]) // num_groups  # (B, G)
    head = j // n_valid[:, None]
    rank = j % n_valid[:, None]
    # the rank-th valid cell of each input: valid cells first, in their order
    order = torch.sort((~valid).to(torch.int8), dim=-1, stable=True).indices  # (B, N)
    query = torch.gather(order, 1, rank)  # (B, G)
    b = torch.arange(B, device=attn.device)[:, None].expand(B, num_groups)
    return attn[b, head, query]  # (B, G, N)


def binarise_top_tau(probs: torch.Tensor, valid: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-tau binarisation. ``probs (B, G, N)``, ``valid (B, N)`` -> masks ``(B, G, N)`` bool, scale ``(B, G)``.

    Each group keeps the ``k = floor(tau · n_valid)`` most probable valid cells (at least
    one). The mask carries no gradient; the scale ``c = Σ_top a − Σ_rest a = 2 Σ_top a − 1``
    does, and multiplies the group's logits.
    """
    k = cell_counts(valid, tau)  # (B,)
    masks = top_cells(probs, valid[:, None, :], k[:, None])
    return masks, group_scale(probs, masks)


def group_scale(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``c = Σ_kept a − Σ_rest a = 2·Σ_kept a − 1``: ``probs (B, G, N)``, ``masks (B, G, N)`` -> ``(B, G)``.

    The only path by which the generator receives a gradient (the masks carry none).
    """
    return 2.0 * (probs * masks).sum(-1) - 1.0
