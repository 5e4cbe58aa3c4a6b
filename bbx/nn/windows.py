"""Window attention tables that shifted-window transformers share (Swin, Swin V2): the relative
position index of a window, the additive mask of a cyclically shifted and padded grid, and the token
order that partitions a grid into (shifted) windows. Pure functions of their arguments, cached."""

from __future__ import annotations

import functools

import torch


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
