"""Shifted-window attention pieces (Swin Transformer, Liu et al. 2021), shared by the Swin families
(transformers' layout and timm's, Swin V2): the relative-position index of a window, the additive
mask of a cyclically shifted grid, the token order that partitions a grid into (shifted) windows,
window attention with its learned relative-position bias, and patch merging. Where the families
differ (how a shifted grid is padded, when windows shrink) is theirs. The tables are pure functions
of their arguments, cached.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F


def relative_position_index(window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """For every (query, key) pair of a window's ``window**2`` tokens, flattened: the row of the
    relative-position bias table holding their offset ``(dy, dx)``."""
    ys, xs = torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (window - 1)
    dx = xs[:, None] - xs[None, :] + (window - 1)
    return (dy * (2 * window - 1) + dx).flatten()


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached tables must stay usable by autograd after an inference run
def shifted_window_mask(
    height: int, width: int, window: int, shift: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask ``[num_windows, N, N]`` for attention on a cyclically shifted (and padded)
    ``height`` x ``width`` grid: -100 between tokens from different regions of the unshifted
    image, 0 within a region. Along each axis the last ``window`` positions split into two regions
    at ``shift`` from the end; everything before them is a third. Cached (a pure function of its
    arguments, read only): stages ask for it at every forward."""

    def band(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()

    region = band(height)[:, None] * 3 + band(width)[None, :]
    region = region.view(height // window, window, width // window, window).transpose(1, 2)
    region = region.reshape(-1, window * window)
    apart = region[:, :, None] != region[:, None, :]
    return torch.zeros(apart.shape, device=device, dtype=dtype).masked_fill_(apart, -100.0)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached tables must stay usable by autograd after an inference run
def window_order(
    height: int, width: int, window: int, shift: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token gather indices for (shifted) window attention on a padded ``height`` x ``width`` grid.

    ``order[k]`` is the flat grid position of the ``k``-th token in window layout (window by
    window, row-major inside each) after a cyclic shift by ``-shift`` on both axes; ``inverse``
    puts window-layout tokens back. One gather replaces a roll, a partition copy and their
    reverses (torch.roll is a narrow + cat on CPU)."""
    rows = torch.arange(height, device=device).view(height // window, window)
    cols = torch.arange(width, device=device).view(width // window, window)
    rows, cols = (rows + shift) % height, (cols + shift) % width
    # [window row, window col, row in window, col in window] -> flat position
    order = rows[:, None, :, None] * width + cols[None, :, None, :]
    order = order.flatten()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    return order, inverse


class WindowAttention(nn.Module):
    """Multi-head self-attention within each window, with a learned bias per relative offset."""

    def __init__(self, dim: int, heads: int, window: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # query, key and value projections, stacked
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))

    def attention_bias(self, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The additive attention bias: the relative-position bias ``[1, h, N, N]``, or with the
        shifted-window mask ``[1, nW * h, N, N]`` (windows x heads as heads, shared over the batch)."""
        n = int(index.numel() ** 0.5)
        bias = self.bias_table[index].view(n, n, self.heads).permute(2, 0, 1)  # h, N, N
        if mask is None:
            return bias.unsqueeze(0)
        return (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, -1, n, n)

    def forward(self, windows: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """``windows``: ``[B, nW, N, C]`` tokens of each window; ``attn_bias`` from
        :meth:`attention_bias`."""
        b, nw, n, c = windows.shape
        h = self.heads
        d = c // h
        qkv = self.qkv(windows).view(b, nw, n, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # 3, B, nW, h, N, d
        if attn_bias.shape[1] == h:  # one bias for every window: windows x batch is the batch
            q, k, v = qkv.reshape(3, b * nw, h, n, d).unbind(0)
        else:  # a bias per window: windows x heads are the heads, shared over the batch
            q, k, v = qkv.reshape(3, b, nw * h, n, d).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype))
        out = out.view(b, nw, h, n, d).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class PatchMerging(nn.Module):
    """Each 2x2 neighbourhood -> one token of twice the width (an odd grid is zero-padded)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # channel order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))
