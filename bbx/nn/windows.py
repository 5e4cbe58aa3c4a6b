"""Shifted-window attention (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", 2021): the blocks more than one family builds, in transformers' numerics.

A patch embedding (a ``patch_size`` convolution with stride ``patch_size``, then a LayerNorm),
then stages of blocks that attend within ``window_size`` x ``window_size`` windows, every second
block on windows cyclically shifted by ``window_size // 2`` (with a mask keeping tokens that the
shift brought together from opposite borders apart). Each stage after the first starts with a
patch merging (2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C). Windows keep their size
and shifted blocks keep their shift at every input size (transformers' ``always_partition=True``):
the token grid is zero-padded on the right and bottom to a multiple of the window (after the
block's first norm), the input image to a multiple of the patch size, and an odd grid by one
row/column before patch merging.

The pieces (the relative-position index of a window, the additive mask of a cyclically shifted
grid, the token order that partitions a grid into shifted windows, window attention with its
learned relative-position bias, patch merging) serve every shifted-window family, timm's layout and
Swin V2 included, where they differ elsewhere (how a shifted grid is padded, when windows shrink).
The whole blocks and stages serve the families in transformers' numerics (Swin, MaskFormer's
Swin): they give them their settings (any object with ``window_size``, ``layer_norm_eps``,
``qkv_bias``, ``mlp_ratio`` and ``hidden_act``), keep their own stage list, stage norms and
checkpoint layout, and turn the block keys of transformers' checkpoints into these modules' names
with :func:`remap_keys`. The tables are pure functions of their arguments, cached.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from bbx.errors import ModelError
from bbx.nn.layers import Mlp, in_row_slices

# transformers builds these norms with nn.LayerNorm's default eps, not config.layer_norm_eps:
# the patch embedding's, patch merging's and the backbone's stage norms.
DEFAULT_EPS = 1e-5


class WindowSettings(Protocol):
    window_size: int
    layer_norm_eps: float
    qkv_bias: bool
    mlp_ratio: float
    hidden_act: str


# --- size-dependent tables --------------------------------------------------------------------


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


# --- blocks -----------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> normed patch tokens ``[B, h, w, D]`` (padded to whole patches)."""

    def __init__(self, channels: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=DEFAULT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -x.shape[2] % self.patch, -x.shape[3] % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


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


class WindowBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each residual. Tokens are ``[B, H, W, C]``."""

    def __init__(self, dim: int, heads: int, shift: int, s: WindowSettings):
        super().__init__()
        self.window = s.window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.attn = WindowAttention(dim, heads, s.window_size, s.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.mlp = Mlp(dim, int(s.mlp_ratio * dim), s.hidden_act)
        #: attention biases per padded grid size, once the weights are frozen (optimize_for_inference)
        self.bias_cache: dict[tuple[int, int, torch.device], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, height, width, c = x.shape
        w, shift = self.window, self.shift
        y = self.norm1(x)
        pad_h, pad_w = -height % w, -width % w
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = height + pad_h, width + pad_w
        order, inverse = window_order(hp, wp, w, shift, y.device)
        windows = y.reshape(b, hp * wp, c).index_select(1, order).view(b, -1, w * w, c)
        y = self.attn(windows, self._bias(index, mask if shift else None, hp, wp))
        y = y.reshape(b, hp * wp, c).index_select(1, inverse).view(b, hp, wp, c)
        if pad_h or pad_w:
            y = y[:, :height, :width]
        x = x + y
        if self.mlp.fused:
            return in_row_slices(self._mlp, x, width=self.mlp.fc1.out_features)
        return self._mlp(x)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x), add=x)

    def _bias(self, index: torch.Tensor, mask: torch.Tensor | None, hp: int, wp: int) -> torch.Tensor:
        if self.bias_cache is None:  # weights may still change: compute every time
            return self.attn.attention_bias(index, mask)
        key = (hp, wp, index.device)
        if key not in self.bias_cache:
            self.bias_cache[key] = self.attn.attention_bias(index, mask)
        return self.bias_cache[key]


class PatchMerging(nn.Module):
    """Each 2x2 neighbourhood -> one token of twice the width (an odd grid is zero-padded)."""

    def __init__(self, dim: int, eps: float = DEFAULT_EPS):
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


class WindowStage(nn.Module):
    """Patch merging (all stages but the first), then ``depth`` blocks alternating plain and
    shifted windows."""

    def __init__(self, dim: int, depth: int, heads: int, s: WindowSettings, *, merge: bool):
        super().__init__()
        self.window = s.window_size
        self.shift = s.window_size // 2
        self.merge = PatchMerging(dim // 2) if merge else nn.Identity()
        shifts = [0 if j % 2 == 0 else self.shift for j in range(depth)]
        self.blocks = nn.ModuleList(WindowBlock(dim, heads, shift, s) for shift in shifts)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        mask = None
        if self.shift and len(self.blocks) > 1:
            w = self.window
            hp, wp = x.shape[1] + (-x.shape[1] % w), x.shape[2] + (-x.shape[2] % w)
            mask = shifted_window_mask(hp, wp, w, self.shift, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, index, mask)
        return x


def window_stages(s: WindowSettings, dims: list[int], depths: tuple[int, ...], heads: tuple[int, ...]) -> nn.ModuleList:
    """The stages of a shifted-window network: stage ``i`` has width ``dims[i]``."""
    return nn.ModuleList(
        WindowStage(dim, depth, h, s, merge=i > 0) for i, (dim, depth, h) in enumerate(zip(dims, depths, heads))
    )


def prepare_stages(stages: nn.ModuleList, *, fuse_kernels: bool) -> None:
    """Frozen weights: each block's attention bias (relative positions plus the shifted-window
    mask) is computed once per input size instead of at every call; ``fuse_kernels``: the MLPs
    run the fused kernels."""
    for stage in stages:
        for block in stage.blocks:
            block.bias_cache = {}
            block.mlp.fused = fuse_kernels


# --- checkpoint keys --------------------------------------------------------------------------
# transformers' shifted-window blocks (its Swin and the copies other models carry) name their
# parts alike; these rules turn a block's or a merging's key into the modules' names above.

_BLOCK_KEY = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_MERGE_KEY = re.compile(r"^encoder\.layers\.(\d+)\.downsample\.(.+)$")
# block-relative names, in the hub's (transformers 4) spelling and transformers 5's in-memory one
_BLOCK_PARTS = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "attention.o_proj.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "mlp.fc1.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "mlp.fc2.": "mlp.fc2.",
    "attention.self.relative_position_bias_table": "attn.bias_table",
    "attention.relative_position_bias.relative_position_bias_table": "attn.bias_table",
}
_QKV_PARTS = {
    "attention.self.query.": 0,
    "attention.self.key.": 1,
    "attention.self.value.": 2,
    "attention.q_proj.": 0,
    "attention.k_proj.": 1,
    "attention.v_proj.": 2,
}
_QKV_NAMES = ("query", "key", "value")


def rename_prefix(name: str, parts: Mapping[str, str]) -> str | None:
    """``name`` with the first of ``parts``' prefixes it starts with replaced; None if none."""
    for old, new in parts.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def remap_keys(
    state_dict: Mapping[str, torch.Tensor],
    window: int,
    *,
    clean: Callable[[str], str | None],
    top: Callable[[str], str],
) -> dict[str, torch.Tensor]:
    """transformers' shifted-window keys -> these modules'. ``clean(key)`` strips the family's
    wrapper prefix (None: a key to drop, such as a head); block and merging keys are renamed here
    (each block's query/key/value projections stacked into one; ``relative_position_index``
    tables, saved by transformers 4, checked against ``window`` and dropped); ``top`` renames the
    rest (embeddings, norms). Anything unrecognised keeps its name, so the strict load reports it."""
    expected_index: torch.Tensor | None = None
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        k = clean(key)
        if k is None:
            continue
        if k.endswith("relative_position_index"):
            if expected_index is None:
                expected_index = relative_position_index(window)
            if value.numel() != expected_index.numel() or not torch.equal(value.flatten().long(), expected_index):
                raise ModelError(f"{key} does not match window_size {window} of config.json")
            continue
        block = _BLOCK_KEY.match(k)
        merge = _MERGE_KEY.match(k)
        if block:
            stage, index, rest = block.groups()
            prefix = f"stages.{stage}.blocks.{index}.attn"
            slot = next((i for part, i in _QKV_PARTS.items() if rest.startswith(part)), None)
            if slot is not None:
                leaf = rest.rsplit(".", 1)[-1]
                qkv.setdefault((prefix, leaf), {})[slot] = value
                continue
            renamed = rename_prefix(rest, _BLOCK_PARTS)
            if renamed is not None:
                k = f"stages.{stage}.blocks.{index}.{renamed}"
        elif merge:
            # transformers' stage i ends with the merging; here it opens stage i + 1
            stage, rest = merge.groups()
            k = f"stages.{int(stage) + 1}.merge.{rest}"
        else:
            k = top(k)
        out[k] = value
    for (prefix, leaf), parts in qkv.items():
        if len(parts) == 3:
            out[f"{prefix}.qkv.{leaf}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:  # incomplete: leave the pieces for the strict load to report
            for slot, tensor in parts.items():
                out[f"{prefix}.{_QKV_NAMES[slot]}.{leaf}"] = tensor
    return out
