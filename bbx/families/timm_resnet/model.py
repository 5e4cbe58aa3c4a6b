"""ResNet in timm's layout: the network of timm's ``resnet*`` architectures.

Loads timm's own keys (a timm hub repo: ``conv1``, ``bn1``, ``layer1.0.conv1``, ... and the
``fc`` head, which is dropped), whatever wraps them (the format seam strips TimmBackbone's
``_backbone.``; a task model that carries a timm ResNet passes its own prefix the same way).

The network, as timm's ``ResNet``: a stem (a 7x7 stride-2 conv, or for ``deep`` / ``deep_tiered``
three 3x3 convs, the first with stride 2), BatchNorm and ReLU (``act1``, the first stage), a 3x3
stride-2 max-pool, then four stages of basic blocks (two 3x3 convs) or bottlenecks (1x1, 3x3
with the stride, 1x1 expanding 4x; ``cardinality`` groups of ``base_width``), each summed with a
shortcut that projects when the shape changes: a strided 1x1 conv and BatchNorm, or with
``avg_down`` a 2x2 average pool (``ceil_mode``, padding not counted) before an unstrided 1x1 conv.
BatchNorm eps 1e-5. Inference rewrites: every BatchNorm folded into its conv, fused oneDNN
kernels, channels-last.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.timm_resnet import TimmResNetSettings
from bbx.nn.backbone import Backbone
from bbx.nn.conv import ConvNormAct, fold_all
from bbx.nn.keys import rename


class Shortcut(nn.Module):
    """The projection of a block's input when its shape changes (timm's ``downsample``)."""

    def __init__(self, cin: int, cout: int, stride: int, avg_down: bool):
        super().__init__()
        if avg_down and stride > 1:
            self.pool: nn.Module = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        else:
            self.pool = nn.Identity()
        self.proj = ConvNormAct(cin, cout, 1, 1 if avg_down else stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class Block(nn.Module):
    """``relu(convs(x) + shortcut(x))``."""

    def __init__(self, cin: int, planes: int, stride: int, s: TimmResNetSettings):
        super().__init__()
        cout = planes * s.expansion
        if s.block == "basic":
            convs = [ConvNormAct(cin, planes, 3, stride), ConvNormAct(planes, cout, 3)]
        else:
            width = s.bottleneck_width(planes)
            convs = [
                ConvNormAct(cin, width, 1),
                ConvNormAct(width, width, 3, stride, groups=s.cardinality),
                ConvNormAct(width, cout, 1),
            ]
        self.convs = nn.ModuleList(convs)
        self.shortcut = Shortcut(cin, cout, stride, s.avg_down) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *first, last = self.convs
        y = x
        for conv in first:
            y = conv(y)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return last(y, add=shortcut)  # the residual sum before the last ReLU, one kernel once fused


class Stem(nn.Module):
    """A 7x7 stride-2 conv, or three 3x3 convs (the deep stems); then BatchNorm and ReLU."""

    def __init__(self, s: TimmResNetSettings):
        super().__init__()
        if "deep" in s.stem_type:
            a, b = s.stem_widths()
            self.convs = nn.ModuleList(
                [ConvNormAct(s.in_chans, a, 3, 2), ConvNormAct(a, b, 3), ConvNormAct(b, s.stem_out, 3)]
            )
        else:
            self.convs = nn.ModuleList([ConvNormAct(s.in_chans, s.stem_out, 7, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return x


class TimmResNet(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = TimmResNetSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.stem = Stem(s)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        cin = s.stem_out
        for i, (planes, depth) in enumerate(zip(s.channels, s.layers)):
            stride = 1 if i == 0 else 2
            blocks = [Block(cin, planes, stride, s)]
            cin = planes * s.expansion
            blocks += [Block(cin, planes, 1, s) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        fold_all(self, fuse_kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x)
        yield x
        x = self.pool(x)
        for stage in self.stages:
            x = stage(x)
            yield x


# timm key -> bbx key, every rule in turn
_RULES = [
    # the stem: conv1 (7x7) + bn1, or the deep stem's conv1.{0,1,3,4,6} + bn1
    (re.compile(r"^conv1\.weight$"), "stem.convs.0.conv.weight"),
    (re.compile(r"^conv1\.0\."), "stem.convs.0.conv."),
    (re.compile(r"^conv1\.1\."), "stem.convs.0.bn."),
    (re.compile(r"^conv1\.3\."), "stem.convs.1.conv."),
    (re.compile(r"^conv1\.4\."), "stem.convs.1.bn."),
    (re.compile(r"^conv1\.6\."), "stem.convs.2.conv."),
    (re.compile(r"^layer(\d)\.(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.{m[2]}."),
    (re.compile(r"\.conv(\d)\."), lambda m: f".convs.{int(m[1]) - 1}.conv."),
    (re.compile(r"\.bn(\d)\."), lambda m: f".convs.{int(m[1]) - 1}.bn."),
    # the shortcut: downsample.{0,1} (conv, bn), or with avg_down .{1,2} after the pool
    (re.compile(r"\.downsample\.0\.weight$"), ".shortcut.proj.conv.weight"),
    (re.compile(r"\.downsample\.1\.(bias|running_mean|running_var|num_batches_tracked)$"), r".shortcut.proj.bn.\1"),
    (re.compile(r"\.downsample\.2\."), ".shortcut.proj.bn."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """timm's ResNet keys -> bbx's. The ``fc`` head is dropped; unrecognised keys keep their name,
    so the strict load reports them."""
    s = TimmResNetSettings.from_config(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        k = key
        if k.startswith("bn1."):  # the stem's last norm: after conv1, or after the deep stem's third conv
            k = f"stem.convs.{2 if 'deep' in s.stem_type else 0}.bn." + k[len("bn1.") :]
        elif ".downsample.1." in k and k.endswith(".weight"):
            # downsample.1 is the BatchNorm (1-d weight) of a conv shortcut, or avg_down's conv
            k = k.replace(".downsample.1.", ".shortcut.proj.bn." if value.dim() == 1 else ".shortcut.proj.conv.")
        out[k] = value
    return rename(out, _RULES)  # type: ignore[arg-type]  (re.sub takes a function as well)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> TimmResNet:
    return TimmResNet(config, stage_norm=stage_norm)
