"""ResNet (He et al., "Deep Residual Learning for Image Recognition", 2015), transformers layout.

Loads the weights of ``ResNetModel`` / ``ResNetForImageClassification`` checkpoints such as
``microsoft/resnet-18`` ... ``microsoft/resnet-152``: a 7x7 stem with max-pool, then stages of
basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual blocks. Config switches honoured:
``layer_type``, ``depths``, ``hidden_sizes``, ``embedding_size``, ``hidden_act``,
``downsample_in_first_stage`` and ``downsample_in_bottleneck`` (stride on the first 1x1 instead
of the 3x3, the original v1 block).

Stages: ``stem`` (after the max-pool, stride 4) and ``stage1`` ... ``stageN``. ResNet has no
stage norms, so every ``stage_norm`` mode gives the same maps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.resnet import ResNetSettings
from bbx.nn.backbone import Backbone
from bbx.nn.conv import ConvNormAct
from bbx.nn.keys import rename
from bbx.nn.layers import activation, conv_act


class Block(nn.Module):
    """A residual block: ``act(convs(x) + shortcut(x))``; the shortcut projects when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int, s: ResNetSettings):
        super().__init__()
        act = s.hidden_act
        if s.layer_type == "basic":
            convs = [ConvNormAct(cin, cout, 3, stride, act="relu"), ConvNormAct(cout, cout, 3, act=None)]
        else:
            mid = cout // 4
            first, second = (stride, 1) if s.downsample_in_bottleneck else (1, stride)
            convs = [
                ConvNormAct(cin, mid, 1, first, act="relu"),
                ConvNormAct(mid, mid, 3, second, act="relu"),
                ConvNormAct(mid, cout, 1, act=None),
            ]
        self.convs = nn.Sequential(*convs)
        needs_projection = cin != cout or stride != 1
        self.shortcut = ConvNormAct(cin, cout, 1, stride, act=None) if needs_projection else nn.Identity()
        self.act = activation(act)
        self.act_name = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *first, last = self.convs
        y = x
        for conv in first:
            y = conv(y)
        shortcut = self.shortcut(x)
        if last.fused:  # the last conv, the residual sum and the activation in one kernel
            return conv_act(y, last.conv, self.act_name, add=shortcut, fused=True)
        return self.act(last(y, add=shortcut))


class ResNet(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = ResNetSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        stages = []
        cin = s.embedding_size
        for cout, depth, first_stride in zip(s.hidden_sizes, s.depths, s.first_strides()):
            blocks = [Block(cin, cout, first_stride, s)] + [Block(cout, cout, 1, s) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        # The stem's activation follows hidden_act; inside blocks transformers hard-codes ReLU for
        # the inner convs and uses hidden_act after the residual sum. We do the same.
        self.stem = ConvNormAct(s.num_channels, s.embedding_size, 7, 2, act=s.hidden_act)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stages = nn.ModuleList(stages)

    #: convolutions run faster in channels-last memory format on CPU (oneDNN) and GPU (tensor cores)
    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, ConvNormAct):
                m.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.pool(self.stem(x))
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x


# applied in order, each where it matches
_RULES = [
    (re.compile(r"^embedder\.embedder\."), "stem."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.layer\.(\d+)\."), r".convs.\1."),
    (re.compile(r"\.convolution\."), ".conv."),
    (re.compile(r"\.normalization\."), ".bn."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' ResNet keys -> bbx's. The classification head is dropped; anything else
    unrecognised is kept under its own name, so the strict load reports it."""
    return rename(state_dict, _RULES, drop=("classifier.",), strip=("resnet.",))


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> ResNet:
    return ResNet(config, stage_norm=stage_norm)
