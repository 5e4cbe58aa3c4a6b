"""RegNet (Radosavovic et al., "Designing Network Design Spaces", 2020), transformers layout.

Loads the weights of ``RegNetForImageClassification`` (``regnet.`` prefix; the ``classifier`` head
is dropped) and ``RegNetModel`` checkpoints such as ``facebook/regnet-y-040``,
``facebook/regnet-x-040`` and the SEER ``facebook/regnet-y-320-seer-in1k``.

The network: a stem (3x3 conv, stride 2, BatchNorm, ``hidden_act``), then stages of X or Y blocks.
An X block is ResNet's bottleneck without the width reduction: 1x1 conv, grouped 3x3 conv (the
block's stride; ``max(1, width // groups_width)`` groups), 1x1 conv, each with BatchNorm, the
first two with ``hidden_act``; then the residual sum (a 1x1 strided conv + BatchNorm when the shape
changes) and ``hidden_act``. A Y block adds a squeeze-excitation after the grouped conv (global
average, 1x1 conv to ``round(block input width / 4)`` channels, ReLU, 1x1 conv back, sigmoid, a
per-channel product). The first block of each stage strides by 2 (the first stage's only with
``downsample_in_first_stage``, true for every public checkpoint).

Stages: ``stem`` (stride 2) and ``stage1`` ... ``stageN``: ``RegNetModel``'s hidden states
(transformers has no RegNet backbone class), with no stage norm in any mode.

Inference (``optimize_for_inference``): every BatchNorm is folded into its conv, then conv +
activation (+ the residual sum for a block's last conv) run as one oneDNN kernel; the network runs
channels-last.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.regnet import RegNetSettings, se_width
from bbx.nn.backbone import Backbone
from bbx.nn.conv import ConvNormAct
from bbx.nn.keys import rename
from bbx.nn.layers import activation, conv_act


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean(x)))))``, the means over each channel's map."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Block(nn.Module):
    """An X block (Y: with squeeze-excitation): ``act(conv3(se(conv2(conv1(x)))) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, stride: int, s: RegNetSettings):
        super().__init__()
        act = s.hidden_act
        self.conv1 = ConvNormAct(cin, cout, 1, act=act)
        self.conv2 = ConvNormAct(cout, cout, 3, stride, act=act, groups=s.groups(cout))
        self.se = SqueezeExcite(cout, se_width(cin)) if s.layer_type == "y" else None
        self.conv3 = ConvNormAct(cout, cout, 1, act=None)
        projects = cin != cout or stride != 1
        self.shortcut = ConvNormAct(cin, cout, 1, stride, act=None) if projects else None
        self.act = activation(act)
        self.act_name = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.se is not None:
            y = self.se(y)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        if self.conv3.fused:  # the last conv, the residual sum and the activation in one kernel
            return conv_act(y, self.conv3.conv, self.act_name, add=shortcut, fused=True)
        return self.act(self.conv3(y, add=shortcut))


class RegNet(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = RegNetSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.stem = ConvNormAct(s.num_channels, s.embedding_size, 3, 2, act=s.hidden_act)
        stages = []
        cin = s.embedding_size
        for cout, depth, first_stride in zip(s.hidden_sizes, s.depths, s.first_strides()):
            blocks = [Block(cin, cout, first_stride, s)] + [Block(cout, cout, 1, s) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)

    #: convolutions run faster in channels-last memory format on CPU (oneDNN) and GPU (tensor cores)
    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, ConvNormAct):
                m.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x)
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x


# checkpoint key (without the ``regnet.`` prefix) -> bbx key, every rule in turn
_COMMON = [
    (re.compile(r"^embedder\.embedder\."), "stem."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.layer\.0\."), ".conv1."),
    (re.compile(r"\.layer\.1\."), ".conv2."),
]
_X = [(re.compile(r"\.layer\.2\."), ".conv3.")]
_Y = [
    (re.compile(r"\.layer\.2\.attention\.0\."), ".se.fc1."),
    (re.compile(r"\.layer\.2\.attention\.2\."), ".se.fc2."),
    (re.compile(r"\.layer\.3\."), ".conv3."),
]
_LEAVES = [
    (re.compile(r"\.convolution\."), ".conv."),
    (re.compile(r"\.normalization\."), ".bn."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' RegNet keys -> bbx's (the block's layer numbering depends on ``layer_type``:
    a Y block's squeeze-excitation is its third layer). The classification head is dropped;
    anything else unrecognised keeps its name, so the strict load reports it."""
    blocks = _Y if RegNetSettings.from_config(config).layer_type == "y" else _X
    return rename(state_dict, [*_COMMON, *blocks, *_LEAVES], drop=("classifier.",), strip=("regnet.",))


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> RegNet:
    return RegNet(config, stage_norm=stage_norm)
