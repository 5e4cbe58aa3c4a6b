"""EfficientNet in timm's layout (``efficientnet_b*``, ``tf_efficientnet_b*``).

Loads timm's keys (``conv_stem``, ``bn1``, ``blocks.<stage>.<block>.*``; the head ``conv_head``,
``bn2`` and ``classifier`` are dropped).

The network, as timm's ``EfficientNet``: a 3x3 stride-2 stem conv with BatchNorm and SiLU, then
seven stages of blocks. A depthwise-separable block (the first stage) is a depthwise conv,
BatchNorm + SiLU, squeeze-excite, a 1x1 conv and BatchNorm; an inverted residual block is a 1x1
expansion with BatchNorm + SiLU, a depthwise conv (the stage's kernel and stride) with BatchNorm +
SiLU, squeeze-excite, a 1x1 projection and BatchNorm. A block whose stride is 1 and whose widths
match adds its input. Squeeze-excite: the spatial mean, a 1x1 conv down (with bias), SiLU, a 1x1
conv up, sigmoid, times the input. The ``tf_`` ports pad TensorFlow's way ('SAME': computed from
the input, the odd pixel after) where the stride is 2, and use BatchNorm eps 1e-3. Inference
rewrites: BatchNorm folded into the convs, channels-last.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.efficientnet import BlockSpec, EfficientNetSettings
from bbx.nn.backbone import Backbone
from bbx.nn.conv import ConvNormAct, fold_all


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class Block(nn.Module):
    def __init__(self, b: BlockSpec, s: EfficientNetSettings):
        super().__init__()
        same = s.pad_type == "same"
        eps = s.bn_eps
        self.expand = ConvNormAct(b.cin, b.mid, 1, act="silu", eps=eps) if b.kind == "ir" else None
        self.dw = ConvNormAct(b.mid, b.mid, b.kernel, b.stride, groups=b.mid, act="silu", eps=eps, same=same)
        self.se = SqueezeExcite(b.mid, b.se)
        self.project = ConvNormAct(b.mid, b.cout, 1, act=None, eps=eps)
        self.skip = b.skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.se(self.dw(y))
        return self.project(y, add=x if self.skip else None)


class EfficientNet(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = EfficientNetSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.stem = ConvNormAct(s.in_chans, s.stem, 3, 2, act="silu", eps=s.bn_eps, same=s.pad_type == "same")
        self.blocks = nn.ModuleList(nn.Sequential(*(Block(b, s) for b in stage)) for stage in s.block_stages())
        self.features = s.feature_stages()

    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        fold_all(self, fuse_kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x)
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self.features:
                yield x


_RULES = [
    (re.compile(r"^conv_stem\."), "stem.conv."),
    (re.compile(r"^bn1\."), "stem.bn."),
    (re.compile(r"^blocks\.(\d+)\.(\d+)\.conv_pw\."), r"blocks.\1.\2.PW."),
    (re.compile(r"^blocks\.(\d+)\.(\d+)\.conv_dw\."), r"blocks.\1.\2.dw.conv."),
    (re.compile(r"^blocks\.(\d+)\.(\d+)\.conv_pwl\."), r"blocks.\1.\2.project.conv."),
    (re.compile(r"^blocks\.(\d+)\.(\d+)\.se\.conv_reduce\."), r"blocks.\1.\2.se.reduce."),
    (re.compile(r"^blocks\.(\d+)\.(\d+)\.se\.conv_expand\."), r"blocks.\1.\2.se.expand."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """timm's EfficientNet keys -> bbx's. The head (conv_head, bn2, classifier) is dropped; in a
    depthwise-separable block ``conv_pw`` / ``bn2`` are the projection, in an inverted residual
    ``conv_pw`` / ``bn1`` the expansion. Unrecognised keys keep their name for the strict load."""
    s = EfficientNetSettings.from_config(config)
    kinds = {(i, j): b.kind for i, stage in enumerate(s.block_stages()) for j, b in enumerate(stage)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("conv_head.", "bn2.", "classifier.")):
            continue
        k = key
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        m = re.match(r"^blocks\.(\d+)\.(\d+)\.(PW|bn[123])\.(.+)$", k)
        if m:
            kind = kinds.get((int(m[1]), int(m[2])))
            part = {
                "ds": {"PW": "project.conv", "bn1": "dw.bn", "bn2": "project.bn"},
                "ir": {"PW": "expand.conv", "bn1": "expand.bn", "bn2": "dw.bn", "bn3": "project.bn"},
            }.get(kind or "", {}).get(m[3])
            if part is not None:
                k = f"blocks.{m[1]}.{m[2]}.{part}.{m[4]}"
        out[k] = value
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> EfficientNet:
    return EfficientNet(config, stage_norm=stage_norm)
