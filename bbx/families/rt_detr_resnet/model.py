"""RT-DETR's ResNet-vd, transformers layout (``RTDetrResNetBackbone``).

Loads the weights of ``RTDetrResNetBackbone`` as RT-DETR checkpoints nest it (under
``model.backbone.model.``; the format seam strips that prefix): ``embedder.embedder.{0,1,2}``
(the three stem convolutions) and ``encoder.stages.<i>.layers.<j>`` with ``layer.<k>`` (the block's
convolutions) and ``shortcut`` (a 1x1 projection) or ``shortcut.1`` (the projection after a 2x2
average pool). RT-DETR freezes its BatchNorms (``RTDetrFrozenBatchNorm2d``: the same statistics
and affine, eps 1e-5, applied as a scale and shift): in eval a plain BatchNorm computes the same.

Blocks, exactly as transformers builds them:

* bottleneck: 1x1 (stride 2 here when ``downsample_in_bottleneck``), 3x3 (else stride 2 here),
  1x1; the shortcut of a downsampling block is ``AvgPool2d(2, 2, ceil_mode=True)`` and then, when the
  width changes, a 1x1 conv with BatchNorm; of another block, a 1x1 projection when the width or
  stride changes;
* basic (RT-DETR's R18/R34): two 3x3; the first block of every stage has a shortcut
  (``should_apply_shortcut``): average pool + 1x1 when the width changes, else a 1x1 of the block's
  stride; the other blocks none.

Convolutions inside blocks use ReLU; the stem and the activation after each residual sum use
``hidden_act``. For frozen inference the BatchNorms fold into the convolutions and the fused
oneDNN kernels run (``bbx.nn.conv.ConvNormAct``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.rt_detr_resnet import RTDetrResNetSettings
from bbx.nn.backbone import Backbone
from bbx.nn.conv import ConvNormAct
from bbx.nn.keys import rename
from bbx.nn.layers import activation, conv_act


def _pooled(cin: int, cout: int, project: bool) -> nn.Sequential:
    """A downsampling shortcut: 2x2 average pool (ceil mode), then a 1x1 projection or nothing."""
    proj = ConvNormAct(cin, cout, 1, act=None) if project else nn.Identity()
    return nn.Sequential(nn.AvgPool2d(2, 2, 0, ceil_mode=True), proj)


class Block(nn.Module):
    """A residual block: ``act(convs(x) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, stride: int, s: RTDetrResNetSettings, *, first: bool):
        super().__init__()
        shortcut: nn.Module = nn.Identity()
        if s.layer_type == "basic":
            convs = [ConvNormAct(cin, cout, 3, stride, act="relu"), ConvNormAct(cout, cout, 3, act=None)]
            if first:  # transformers' should_apply_shortcut
                shortcut = _pooled(cin, cout, True) if cin != cout else ConvNormAct(cin, cout, 1, stride, act=None)
        else:
            mid = cout // 4
            a, b = (stride, 1) if s.downsample_in_bottleneck else (1, stride)
            convs = [
                ConvNormAct(cin, mid, 1, a, act="relu"),
                ConvNormAct(mid, mid, 3, b, act="relu"),
                ConvNormAct(mid, cout, 1, act=None),
            ]
            project = cin != cout or stride != 1
            if stride == 2:
                shortcut = _pooled(cin, cout, project)
            elif project:
                shortcut = ConvNormAct(cin, cout, 1, stride, act=None)
        self.convs = nn.Sequential(*convs)
        self.shortcut = shortcut
        self.act = activation(s.hidden_act)
        self.act_name = s.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *head, last = self.convs
        y = x
        for conv in head:
            y = conv(y)
        shortcut = self.shortcut(x)
        if last.fused:  # the last conv, the residual sum and the activation in one kernel
            return conv_act(y, last.conv, self.act_name, add=shortcut, fused=True)
        return self.act(last(y, add=shortcut))


class RTDetrResNet(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = RTDetrResNetSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        e, act = s.embedding_size, s.hidden_act
        self.stem = nn.Sequential(
            ConvNormAct(s.num_channels, e // 2, 3, 2, act=act),
            ConvNormAct(e // 2, e // 2, 3, 1, act=act),
            ConvNormAct(e // 2, e, 3, 1, act=act),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        cin = e
        for cout, depth, stride in zip(s.hidden_sizes, s.depths, s.first_strides()):
            blocks = [Block(cin, cout, stride, s, first=True)]
            blocks += [Block(cout, cout, 1, s, first=False) for _ in range(depth - 1)]
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
        x = self.pool(self.stem(x))
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x


# applied in order, each where it matches
_RULES = [
    (re.compile(r"^embedder\.embedder\.(\d+)\."), r"stem.\1."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.layer\.(\d+)\."), r".convs.\1."),
    (re.compile(r"\.convolution\."), ".conv."),
    (re.compile(r"\.normalization\."), ".bn."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' RTDetrResNet keys -> bbx's; anything unrecognised keeps its name, so the
    strict load reports it."""
    return rename(state_dict, _RULES)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> RTDetrResNet:
    return RTDetrResNet(config, stage_norm=stage_norm)
