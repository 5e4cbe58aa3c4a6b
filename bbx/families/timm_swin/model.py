"""Swin Transformer in timm's layout: the network of timm's ``swin_*`` architectures.

Loads timm's keys (``patch_embed.{proj, norm}``, ``layers.<i>.downsample.{norm, reduction}`` at
the start of stages 1.., ``layers.<i>.blocks.<j>.{norm1, attn.qkv,
attn.relative_position_bias_table, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``; the head and
the ``relative_position_index`` / ``attn_mask`` buffers are dropped). Checkpoints in the original
layout, which merges at the end of a stage (``layers.0.downsample``), load too.

The network, as timm's ``SwinTransformer``: a patch embedding (conv, LayerNorm) to ``[N, H, W,
C]`` tokens; stages of blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` whose attention runs in
``window_size`` windows with a learned relative-position bias (:mod:`bbx.nn.windows`), every second
block on a grid rolled by ``window_size // 2`` with the shifted-window mask. timm rolls the grid
first and pads it to whole windows after (transformers pads first), and a stage whose grid is no
larger than the window attends without a shift. Patch merging (2x2 neighbours, LayerNorm, linear
4C -> 2C; an odd grid padded) opens every stage but the first. LayerNorm eps 1e-5.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.timm_swin import TimmSwinSettings
from bbx.nn.backbone import Backbone
from bbx.nn.layers import Mlp
from bbx.nn.windows import PatchMerging, WindowAttention, relative_position_index, shifted_window_mask


class PatchEmbed(nn.Module):
    def __init__(self, s: TimmSwinSettings):
        super().__init__()
        self.proj = nn.Conv2d(s.in_chans, s.embed_dim, s.patch_size, stride=s.patch_size)
        self.norm = nn.LayerNorm(s.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, shifted: bool, s: TimmSwinSettings):
        super().__init__()
        self.window = s.window_size
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, s.window_size, s.qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(s.mlp_ratio * dim), "gelu")

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        # timm's _calc_window_shift: no shift where the grid is no larger than the window
        shift = ws // 2 if self.shifted and min(h, w) > ws else 0
        y = self.norm1(x)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        pad_h, pad_w = -h % ws, -w % ws
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = y.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, ws * ws, c)
        mask = shifted_window_mask(hp, wp, ws, ws // 2, device=x.device, dtype=x.dtype) if shift else None
        y = self.attn(windows, self.attn.attention_bias(index, mask))
        y = y.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        y = y[:, :h, :w]
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y
        return self.mlp(self.norm2(x), add=x)


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, merge: bool, s: TimmSwinSettings):
        super().__init__()
        self.merge = PatchMerging(dim // 2) if merge else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, heads, j % 2 == 1, s) for j in range(depth))

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        for block in self.blocks:
            x = block(x, index)
        return x


class TimmSwin(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = TimmSwinSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = PatchEmbed(s)
        self.stages = nn.ModuleList(
            Stage(d, depth, heads, i > 0, s) for i, (d, depth, heads) in enumerate(zip(s.dims, s.depths, s.num_heads))
        )
        self.norm = nn.LayerNorm(s.dims[-1])
        self.register_buffer("rel_index", relative_position_index(s.window_size, "cpu"), persistent=False)
        if stage_norm != "final":
            self.optional_keys = {"norm.weight": 1.0, "norm.bias": 0.0}  # unused then (TimmBackbone lacks it)

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("norm.") for k in missing):
            return (
                "stage norm 'final' needs the trained final norm (norm.weight, norm.bias), which this checkpoint lacks"
            )
        return ""

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        """Frozen weights: the MLPs' linear layers (with the residual sum) as fused oneDNN kernels."""
        for stage in self.stages:
            for block in stage.blocks:
                block.mlp.fused = fuse_kernels

    def init_computed_buffers(self) -> None:
        self.rel_index = relative_position_index(self.settings.window_size, self.patch_embed.proj.weight.device)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        self.settings.map_sizes((x.shape[2], x.shape[3]))  # refuse what timm would shrink windows for
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x, self.rel_index)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.norm(raw)
        return raw.permute(0, 3, 1, 2).contiguous()


_RULES = [
    (re.compile(r"^layers\.(\d+)\.downsample\."), r"stages.\1.merge."),
    (re.compile(r"^layers\.(\d+)\.blocks\."), r"stages.\1.blocks."),
    (re.compile(r"\.attn\.relative_position_bias_table$"), ".attn.bias_table"),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """timm's Swin keys -> bbx's; the head and the computed buffers are dropped. Unrecognised keys
    keep their name for the strict load."""
    old_layout = "layers.0.downsample.reduction.weight" in state_dict  # merging at the end of a stage
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("head.") or key.endswith(("relative_position_index", "attn_mask")):
            continue
        k = key
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", k)
        if m and old_layout:
            k = f"layers.{int(m[1]) + 1}.downsample.{m[2]}"
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        out[k] = value
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> TimmSwin:
    return TimmSwin(config, stage_norm=stage_norm)
