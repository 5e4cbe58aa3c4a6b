"""ConvNeXt in timm's layout: the network of timm's ``convnext_*`` architectures.

Loads timm's keys (``stem.0`` / ``stem.1``, ``stages.<i>.downsample.{0,1}``,
``stages.<i>.blocks.<j>.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}``; the head ``head.*`` is
dropped). The blocks are bbx's ConvNeXt blocks (:mod:`bbx.nn.blocks`), the same arithmetic as
timm's: a patchify stem (conv, channel LayerNorm), then per stage a downsampling (channel
LayerNorm, 2x2 stride-2 conv; not in the first stage) and blocks ``x + gamma * mlp(norm(dwconv(x)))``
with exact GELU. timm's small models (``conv_mlp``) run their MLP as 1x1 convs on ``[N, C, H, W]``
with a channel LayerNorm: the same numbers as linear layers on ``[N, H, W, C]`` rows, so their
weights load into the same block (reshaped). LayerNorm eps ``norm_eps`` (1e-6 by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.timm_convnext import TimmConvNextSettings
from bbx.nn.backbone import Backbone
from bbx.nn.blocks import DwConvBlock, NormDownsample, PatchifyStem


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, downsample: bool, s: TimmConvNextSettings):
        super().__init__()
        self.down = NormDownsample(cin, cout, eps=s.eps) if downsample else nn.Identity()
        blocks = [DwConvBlock(cout, "gelu", s.ls_init_value, s.eps, s.kernel_sizes, s.mlp_ratio) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class TimmConvNext(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = TimmConvNextSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.stem = PatchifyStem(s.in_chans, s.dims[0], s.patch_size, eps=s.eps)
        cins = [s.dims[0], *s.dims[:-1]]
        self.stages = nn.ModuleList(
            Stage(cin, cout, depth, i > 0, s) for i, (cin, cout, depth) in enumerate(zip(cins, s.dims, s.depths))
        )

    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                block.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        return raw.contiguous()


_RULES = [
    (re.compile(r"^stem\.0\."), "stem.conv."),
    (re.compile(r"^stem\.1\."), "stem.norm."),
    (re.compile(r"^stages\.(\d+)\.downsample\.0\."), r"stages.\1.down.norm."),
    (re.compile(r"^stages\.(\d+)\.downsample\.1\."), r"stages.\1.down.conv."),
    (re.compile(r"\.conv_dw\."), ".dwconv."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """timm's ConvNeXt keys -> bbx's. The head (``head.norm``, ``head.fc``) is dropped; the 1x1
    conv MLPs' weights become linear ones. Unrecognised keys keep their name for the strict load."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "norm_pre.")):
            continue
        k = key
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        if re.search(r"\.mlp\.fc[12]\.weight$", k) and value.dim() == 4:
            value = value.flatten(1)
        out[k] = value
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> TimmConvNext:
    return TimmConvNext(config, stage_norm=stage_norm)
