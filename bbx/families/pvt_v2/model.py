"""PVT v2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", 2022),
transformers layout.

Loads the weights of ``PvtV2ForImageClassification`` (``pvt_v2.`` prefix; the ``classifier`` head
is dropped), ``PvtV2Model`` and ``PvtV2Backbone`` checkpoints such as ``OpenGVLab/pvt_v2_b0`` ...
``OpenGVLab/pvt_v2_b5`` and ``OpenGVLab/pvt_v2_b2_linear``.

The network: four stages, each an overlapping patch embedding (a ``patch_sizes[i]`` conv with
stride ``strides[i]``, padded by half its kernel, then a LayerNorm), ``depths[i]`` pre-norm
blocks, and the stage's LayerNorm, whose output feeds the next stage. A block's attention is
spatial-reduction attention: the queries come from every position, the keys and values from a
reduced grid (a ``sr_ratios[i]`` conv with that stride, then a LayerNorm; with
``linear_attention``, an adaptive average pool to 7x7, a 1x1 conv, a LayerNorm and GELU; none when
the ratio is 1). Its MLP puts a 3x3 depthwise conv between the two linear layers (after a ReLU with
``linear_attention``), before the activation.

Stages and stage norms (``stage_norm``): ``stage1`` ... ``stageN``, no stem.

* ``"hf"`` (default): exactly ``PvtV2Backbone``: every stage after its own trained LayerNorm.
* ``"none"``: every stage's last block output, before that norm.
* ``"final"``: the last stage after its norm (``norm4`` of the original, the classifier's final
  norm), the others raw.

Tokens are ``[B, H, W, C]`` rows; the convolutions see them as channels-last ``[B, C, H, W]``
views. Inference (``optimize_for_inference``): the linear layers run with their activation or
residual sum as one oneDNN kernel, the depthwise conv with the MLP's activation too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.pvt_v2 import PvtV2Settings
from bbx.nn.backbone import Backbone
from bbx.nn.keys import rename
from bbx.nn.layers import attention, conv_act, linear_act


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C]`` rows as ``[B, C, H, W]`` (a channels-last view when the rows are contiguous)."""
    return x.permute(0, 3, 1, 2)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as contiguous ``[B, H, W, C]`` rows (free for a channels-last tensor)."""
    return x.permute(0, 2, 3, 1).contiguous()


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``[B, C, H, W]`` -> normed ``[B, h, w, D]``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_rows(self.proj(x)))


class Attention(nn.Module):
    """Spatial-reduction (or linear) multi-head attention over ``[B, H, W, C]`` tokens."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, s: PvtV2Settings):
        super().__init__()
        self.heads = heads
        self.linear = s.linear_attention
        self.query = nn.Linear(dim, dim, bias=s.qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=s.qkv_bias)  # keys and values, stacked
        self.proj = nn.Linear(dim, dim)
        if self.linear:
            self.sr: nn.Conv2d | None = nn.Conv2d(dim, dim, 1)
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        else:
            self.sr = None
        self.norm = nn.LayerNorm(dim, eps=s.layer_norm_eps) if self.sr is not None else None
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w, c = x.shape
        heads, d = self.heads, c // self.heads
        q = linear_act(x, self.query, fused=self.fused).view(b, h * w, heads, d).transpose(1, 2)
        source = x
        if self.sr is not None:
            grid = _nchw(x)
            if self.linear:
                source = F.gelu(self.norm(_rows(self.sr(F.adaptive_avg_pool2d(grid, 7)))))
            else:
                source = self.norm(_rows(self.sr(grid)))
        kv = linear_act(source, self.kv, fused=self.fused)
        k, v = kv.view(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v).transpose(1, 2).reshape(b, h, w, c)
        return linear_act(out, self.proj, add=add, fused=self.fused)


class ConvMlp(nn.Module):
    """``fc2(act(dwconv3x3(fc1(x))))`` on ``[B, H, W, C]`` rows (a ReLU after fc1 with
    ``linear_attention``), with the residual sum folded in when ``add`` is given."""

    def __init__(self, dim: int, hidden: int, s: PvtV2Settings):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.first_act = "relu" if s.linear_attention else None
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act_name = s.hidden_act
        self.fc2 = nn.Linear(hidden, dim)
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        y = linear_act(x, self.fc1, self.first_act, fused=self.fused)
        y = _rows(conv_act(_nchw(y), self.dwconv, self.act_name, fused=self.fused))
        return linear_act(y, self.fc2, add=add, fused=self.fused)


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, on ``[B, H, W, C]`` tokens."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, s: PvtV2Settings):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.attn = Attention(dim, heads, sr_ratio, s)
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), add=x)
        return self.mlp(self.norm2(x), add=x)


class Stage(nn.Module):
    """Patch embedding, blocks; the stage's norm is applied by the backbone (it is a stage norm)."""

    def __init__(self, index: int, s: PvtV2Settings):
        super().__init__()
        cin = s.num_channels if index == 0 else s.hidden_sizes[index - 1]
        dim = s.hidden_sizes[index]
        self.embed = PatchEmbed(cin, dim, s.patch_sizes[index], s.strides[index], s.layer_norm_eps)
        heads, sr, ratio = s.num_attention_heads[index], s.sr_ratios[index], s.mlp_ratios[index]
        self.blocks = nn.Sequential(*[Block(dim, heads, sr, ratio, s) for _ in range(s.depths[index])])
        self.norm = nn.LayerNorm(dim, eps=s.layer_norm_eps)


class PvtV2(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 0]
    stage_module_offset = 0

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = PvtV2Settings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.stages = nn.ModuleList(Stage(i, s) for i in range(s.num_encoder_blocks))

    #: the convolutions see channels-last views of the token rows
    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                block.attn.fused = block.mlp.fused = fuse_kernels

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(raw, normed) tokens of each stage: the normed ones feed the next stage."""
        for stage in self.stages:
            raw = stage.blocks(stage.embed(x))
            normed = stage.norm(raw)
            yield raw, normed
            x = _nchw(normed)

    def stage_map(self, index: int, raw: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        last = index == len(self.stage_specs) - 1
        normed = self.stage_norm == "hf" or (self.stage_norm == "final" and last)
        return _nchw(raw[1] if normed else raw[0]).contiguous()


# checkpoint key (without the ``pvt_v2.`` prefix) -> bbx key, every rule in turn
_RULES = [
    (re.compile(r"^encoder\.layers\.(\d+)\.patch_embedding\.layer_norm\."), r"stages.\1.embed.norm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.patch_embedding\."), r"stages.\1.embed."),
    (re.compile(r"^encoder\.layers\.(\d+)\.layer_norm\."), r"stages.\1.norm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.blocks\."), r"stages.\1.blocks."),
    (re.compile(r"\.layer_norm_([12])\."), r".norm\1."),
    (re.compile(r"\.attention\.spatial_reduction\."), ".attn.sr."),
    (re.compile(r"\.attention\.layer_norm\."), ".attn.norm."),
    (re.compile(r"\.attention\.(query|proj)\."), r".attn.\1."),
    (re.compile(r"\.mlp\.dense([12])\."), r".mlp.fc\1."),
    (re.compile(r"\.mlp\.dwconv\.dwconv\."), ".mlp.dwconv."),
]
_KV = re.compile(r"^(.+)\.attention\.(key|value)\.(weight|bias)$")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' PVT v2 keys -> bbx's; each attention's key and value projections are stacked
    into one (as in the original PVT). The classification head is dropped; anything else
    unrecognised keeps its name, so the strict load reports it."""
    out: dict[str, torch.Tensor] = {}
    kv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in rename(state_dict, _RULES, drop=("classifier.",), strip=("pvt_v2.",)).items():
        m = _KV.match(key)
        if m:
            kv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (prefix, leaf), parts in kv.items():
        if len(parts) == 2:
            out[f"{prefix}.attn.kv.{leaf}"] = torch.cat([parts["key"], parts["value"]], dim=0)
        else:  # incomplete: leave the piece for the strict load to report
            for name, tensor in parts.items():
                out[f"{prefix}.attention.{name}.{leaf}"] = tensor
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> PvtV2:
    return PvtV2(config, stage_norm=stage_norm)
