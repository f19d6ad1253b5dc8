"""The group generator: attention maps over cells, binarised to top-tau groups."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..ops import cell_counts, top_cells

__all__ = ["GroupGenerator", "sample_candidates", "candidate_queries", "lattice_cells", "binarise_top_tau",
           "group_scale", "gaussian_kernel", "CANDIDATE_SCHEMES"]


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel ``(size, size)``."""
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return k / k.sum()


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
            raise ConfigError(f"generator init must be 'identity' or 'random', got {init!r}")
        self.grid = grid
        self.blur_kernel = int(blur_kernel)
        if self.blur_kernel:
            if grid is None:
                raise ConfigError("blur_kernel needs a cell grid: it is for image backbones only")
            self.blur: torch.Tensor
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

    def forward(self, inputs: Any, valid: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
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
            assert self.grid is not None  # checked in __init__
            gh, gw = self.grid
            K_ = logits.shape[1]
            img = logits.reshape(B * K_ * N, 1, gh, gw)
            pad = self.blur_kernel // 2
            img = nn.functional.conv2d(nn.functional.pad(img, (pad, pad, pad, pad), mode="replicate"), self.blur)
            logits = img.reshape(B, K_, N, N)
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1)


#: how the G candidates are chosen among the K'·N (head, query cell) pairs (``SOPConfig.candidate_queries``)
CANDIDATE_SCHEMES = ("paper", "spread")


def sample_candidates(attn: torch.Tensor, valid: torch.Tensor, num_groups: int, *, scheme: str = "paper",
                      grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep G of the K'·n_valid candidate distributions of each input: ``(B, K', N, N)`` -> ``(B, G, N)``.

    Candidate (h, q) is row q (query cell q) of head h's attention. ``valid: (B, N)``.
    See :func:`candidate_queries` for which (h, q) are kept under each ``scheme``.
    """
    B = attn.shape[0]
    head, query = candidate_queries(valid, attn.shape[1], num_groups, scheme=scheme, grid=grid)
    b = torch.arange(B, device=attn.device)[:, None].expand(B, num_groups)
    return attn[b, head, query]  # (B, G, N)


def candidate_queries(valid: torch.Tensor, num_heads: int, num_groups: int, *, scheme: str = "paper",
                      grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The head and the query cell of each of the G kept candidates: two ``(B, G)`` long tensors.

    * ``"paper"`` (the authors' rule): candidates are ordered by (head, valid query cell) and
      the kept ones are ``floor(i · M / G)``, i = 0..G-1, M = K'·n_valid. With K' = K heads the
      kept queries repeat from head to head, and on a grid whose width divides N / G they
      fall in one column: on an 8×8 grid with K = 4 and G = 16, every group's query is a cell
      of the first column (the background of a centred object).
    * ``"spread"``: G query cells spread over the input, heads taken in turn (candidate i uses
      head ``i mod K'``). On a cell grid whose cells are all valid, the queries are the centres
      of a gh × gw lattice (gh·gw ≥ G, shaped like the grid; the G kept evenly along it); for
      sequences, the valid cells at ranks ``floor((i + ½) · n_valid / G)``. Training one head
      at a time (K' = 1) uses the same queries as evaluation with all heads.
    """
    if scheme not in CANDIDATE_SCHEMES:
        raise ConfigError(f"candidate scheme must be one of {', '.join(CANDIDATE_SCHEMES)}, got {scheme!r}")
    B, N = valid.shape
    device = valid.device
    n_valid = valid.sum(-1)  # (B,)
    i = torch.arange(num_groups, device=device)
    # the rank-th valid cell of each input: valid cells first, in their order
    order = torch.sort((~valid).to(torch.int8), dim=-1, stable=True).indices  # (B, N)
    if scheme == "paper":
        M = num_heads * n_valid  # (B,)
        j = (i[None, :] * M[:, None]) // num_groups  # (B, G)
        head, rank = j // n_valid[:, None], j % n_valid[:, None]
        return head, torch.gather(order, 1, rank)
    head = (i % num_heads)[None, :].expand(B, num_groups)
    if grid is not None and grid[0] * grid[1] == N and bool(valid.all()):
        query = torch.tensor(lattice_cells(grid, num_groups), device=device)[None, :].expand(B, num_groups)
        return head, query
    rank = torch.minimum(((2 * i[None, :] + 1) * n_valid[:, None]) // (2 * num_groups), n_valid[:, None] - 1)
    return head, torch.gather(order, 1, rank)


def lattice_cells(grid: tuple[int, int], count: int) -> list[int]:
    """``count`` cells of an ``h × w`` grid spread over it: centres of a gh × gw lattice (row-major ids).

    gh·gw is the smallest product ≥ ``count`` with gh ≤ h, gw ≤ w (ties: the lattice shaped most
    like the grid); when it exceeds ``count``, the cells kept are evenly spaced along the lattice.
    Cells repeat only when ``count`` > h·w.
    """
    h, w = grid
    if count > h * w:
        return [(k * h * w) // count for k in range(count)]
    best: tuple[tuple[int, float], int, int] | None = None
    for gh in range(1, h + 1):
        gw = -(-count // gh)
        if gw > w:
            continue
        key = (gh * gw - count, abs(gh / gw - h / w))
        if best is None or key < best[0]:
            best = (key, gh, gw)
    assert best is not None  # gh = h always fits: ceil(count / h) <= w since count <= h·w
    _, gh, gw = best
    rows = [((2 * r + 1) * h) // (2 * gh) for r in range(gh)]
    cols = [((2 * c + 1) * w) // (2 * gw) for c in range(gw)]
    cells = [r * w + c for r in rows for c in cols]
    L = len(cells)
    return [cells[((2 * k + 1) * L) // (2 * count)] for k in range(count)]


def binarise_top_tau(probs: torch.Tensor, valid: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-tau binarisation. ``probs (B, G, N)``, ``valid (B, N)`` -> masks ``(B, G, N)`` bool, scale ``(B, G)``.

    Each group keeps the ``k = floor(tau · n_valid)`` most probable valid cells (at least
    one). The mask carries no gradient; the scale ``c = Σ_top a − Σ_rest a = 2 Σ_top a − 1``
    does, and multiplies the group's logits.
    """
    k = cell_counts(valid, tau, at_least_one=True)  # (B,)
    masks = top_cells(probs, valid[:, None, :], k[:, None])
    return masks, group_scale(probs, masks)


def group_scale(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``c = Σ_kept a − Σ_rest a = 2·Σ_kept a − 1``: ``probs (B, G, N)``, ``masks (B, G, N)`` -> ``(B, G)``.

    The only path by which the generator receives a gradient (the masks carry none).
    """
    return 2.0 * (probs * masks).sum(-1) - 1.0
