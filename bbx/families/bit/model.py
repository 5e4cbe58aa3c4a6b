"""BiT (Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", 2020),
transformers layout.

Loads the weights of ``BitForImageClassification`` (keys under ``bit.``; the ``classifier`` head is
dropped), ``BitModel`` and ``BitBackbone`` (``bit.`` too) checkpoints such as ``google/bit-50``.

The network, a ResNet v2:

* every convolution is **weight-standardised**: before each call its kernel is normalised to zero
  mean and unit variance over each output channel's fan-in (eps 1e-8), as transformers does it
  (a batch-norm over the reshaped weight);
* norms are **GroupNorm** (``num_groups``, eps 1e-5), with the activation after them;
* ``layer_type`` "preactivation" (BiT proper) puts norm and activation *before* each conv (the
  shortcut projection of a stage's first block reads the pre-activated input); "bottleneck" (the
  ViT-hybrid backbone) is the classic post-activation block;
* **padding**: ``global_padding`` null pads each conv symmetrically by ``((stride - 1) + (k - 1)) //
  2`` and the stem zero-pads its conv output by one before an unpadded 3x3 stride-2 max-pool (timm's
  "fixed" stem); "SAME" pads as TensorFlow does, dynamically (from the input size) where the stride
  is 2, with no stem pad, and ``embedding_dynamic_padding`` pads the max-pool the same way;
* ``output_stride`` below 32 swaps the later strides for dilation (bottleneck blocks dilate their
  3x3 conv; pre-activation blocks, as in transformers, do not).

Stages, exactly as ``BitBackbone``: ``stem`` (after the max-pool) and ``stage1`` ... ``stageN``.

Stage norms (``stage_norm``): ``"hf"`` (default) and ``"none"`` give the raw stage outputs
(``BitBackbone`` applies no norm); ``"final"`` applies the trained final GroupNorm and activation
(``BitModel.norm``, pre-activation layout only) to the last stage, whose map then is ``BitModel``'s
``last_hidden_state``; the other stages are raw.

Inference (``optimize_for_inference``): the kernels are standardised once (the same arithmetic, so
the same numbers as standardising at every call) and each conv runs as one oneDNN kernel, the last
of a pre-activation block with its residual sum. BiT stays in the NCHW memory format: transformers'
own fp32 drifts from float64 by ~3e-5 at stage 4 (GroupNorm amplifies rounding through the depth),
and channels-last convolutions and GroupNorms would round differently again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.bit import BitSettings, make_div
from bbx.nn.backbone import Backbone
from bbx.nn.keys import rename
from bbx.nn.layers import activation, conv_act

#: eps of the weight standardisation (every conv of BiT in transformers)
WS_EPS = 1e-8
GN_EPS = 1e-5


def same_padding(x: torch.Tensor, kernel: int, stride: int, dilation: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's 'SAME' padding for a ``kernel`` / ``stride`` / ``dilation`` window, from the
    input's size (transformers' DynamicPad2d): the extra pixel of an odd total goes after."""

    def total(n: int) -> int:
        return max((math.ceil(n / stride) - 1) * stride + (kernel - 1) * dilation + 1 - n, 0)

    ph, pw = total(x.shape[-2]), total(x.shape[-1])
    if ph > 0 or pw > 0:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)
    return x


class StdConv(nn.Conv2d):
    """A bias-free weight-standardised convolution with BiT's padding rules."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, *, same: bool):
        # transformers' get_padding_value: symmetric unless 'SAME' needs the input size
        dynamic = same and not (stride == 1 and (dilation * (kernel - 1)) % 2 == 0)
        padding = 0 if dynamic else ((stride - 1) + dilation * (kernel - 1)) // 2
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.dynamic = dynamic
        #: whether ``weight`` holds the standardised kernel already (frozen inference)
        self.standardized = False
        self.fused = False

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        if self.standardized:
            return w
        flat = F.batch_norm(w.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=WS_EPS)
        return flat.reshape_as(w)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return same_padding(x, self.kernel_size[0], self.stride[0], self.dilation[0]) if self.dynamic else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of an input already padded by :meth:`pad`."""
        return self._conv_forward(x, self.standardized_weight(), None)

    def run(self, x: torch.Tensor, act: str | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
        """``act(conv(pad(x)) [+ add])``: one oneDNN kernel once frozen and fused."""
        return conv_act(self.pad(x), self, act, add=add, fused=self.fused)

    @torch.no_grad()
    def freeze(self, *, kernels: bool) -> None:
        if not self.standardized:
            self.weight.copy_(self.standardized_weight())
            self.standardized = True
        self.fused = kernels


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, then the activation (or none)."""

    def __init__(self, groups: int, channels: int, act: str | None):
        super().__init__(groups, channels, eps=GN_EPS)
        self.act = activation(act) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class Downsample(nn.Module):
    """The shortcut projection of a stage's first block: a 1x1 conv (and, post-activation, a norm)."""

    def __init__(self, cin: int, cout: int, stride: int, s: BitSettings, *, preact: bool):
        super().__init__()
        self.conv = StdConv(cin, cout, 1, stride, same=s.global_padding == "SAME")
        self.norm = nn.Identity() if preact else GroupNormAct(s.num_groups, cout, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv.run(x))


class PreActBlock(nn.Module):
    """Pre-activation bottleneck: ``x' = act(norm1(x))``, ``conv3(act(norm3(conv2(act(norm2(conv1(x'))))))``
    plus the shortcut (``x``, or the projection of ``x'``); the stride is on the 3x3 conv."""

    def __init__(self, cin: int, cout: int, stride: int, s: BitSettings, *, first: bool):
        super().__init__()
        mid = make_div(cout * 0.25)
        same = s.global_padding == "SAME"
        act = s.hidden_act
        self.downsample = Downsample(cin, cout, stride, s, preact=True) if first else None
        self.norm1 = GroupNormAct(s.num_groups, cin, act)
        self.conv1 = StdConv(cin, mid, 1, same=same)
        self.norm2 = GroupNormAct(s.num_groups, mid, act)
        self.conv2 = StdConv(mid, mid, 3, stride, same=same)  # transformers gives it no dilation
        self.norm3 = GroupNormAct(s.num_groups, mid, act)
        self.conv3 = StdConv(mid, cout, 1, same=same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.norm1(x)
        shortcut = self.downsample(pre) if self.downsample is not None else x
        h = self.conv1.run(pre)
        h = self.conv2.run(self.norm2(h))
        return self.conv3.run(self.norm3(h), add=shortcut)


class BottleneckBlock(nn.Module):
    """Post-activation bottleneck (ResNet v1.5): ``act(norm3(conv3(...)) + shortcut)``."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, s: BitSettings, *, first: bool):
        super().__init__()
        mid = make_div(cout * 0.25)
        same = s.global_padding == "SAME"
        act = s.hidden_act
        self.downsample = Downsample(cin, cout, stride, s, preact=False) if first else None
        self.conv1 = StdConv(cin, mid, 1, same=same)
        self.norm1 = GroupNormAct(s.num_groups, mid, act)
        self.conv2 = StdConv(mid, mid, 3, stride, dilation, same=same)
        self.norm2 = GroupNormAct(s.num_groups, mid, act)
        self.conv3 = StdConv(mid, cout, 1, same=same)
        self.norm3 = GroupNormAct(s.num_groups, cout, None)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        h = self.norm1(self.conv1.run(x))
        h = self.norm2(self.conv2.run(h))
        h = self.norm3(self.conv3.run(h))
        return self.act(h + shortcut)


class Stem(nn.Module):
    """A 7x7 stride-2 conv, the stem pad (unless 'SAME'), a norm (post-activation layout only),
    and a 3x3 stride-2 max-pool (padded dynamically with zeros when ``embedding_dynamic_padding``)."""

    def __init__(self, s: BitSettings):
        super().__init__()
        same = s.global_padding == "SAME"
        self.conv = StdConv(s.num_channels, s.embedding_size, 7, 2, same=same)
        self.pad_output = not same
        self.norm = GroupNormAct(s.num_groups, s.embedding_size, s.hidden_act) if s.layer_type == "bottleneck" else None
        self.pool_padding = s.embedding_dynamic_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv.run(x)
        if self.pad_output:
            x = F.pad(x, (1, 1, 1, 1), value=0.0)
        if self.norm is not None:
            x = self.norm(x)
        if self.pool_padding:
            x = same_padding(x, 3, 2, 1)
        return F.max_pool2d(x, 3, 2)


class Bit(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = BitSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.stem = Stem(s)
        stages = []
        cin = s.embedding_size
        for cout, depth, (stride, dilation) in zip(s.widths, s.depths, s.strides_and_dilations()):
            blocks: list[nn.Module] = []
            # transformers' BitStage: the first block dilates by at most 2, the others by the stage's
            first_dilation = 1 if dilation in (1, 2) else 2
            for j in range(depth):
                step = stride if j == 0 else 1
                if s.layer_type == "preactivation":
                    blocks.append(PreActBlock(cin if j == 0 else cout, cout, step, s, first=j == 0))
                else:
                    d = first_dilation if j == 0 else dilation
                    blocks.append(BottleneckBlock(cin if j == 0 else cout, cout, step, d, s, first=j == 0))
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        # BitModel's final norm: GroupNorm + activation in the pre-activation layout, none otherwise
        if s.layer_type == "preactivation":
            self.final_norm: nn.Module | None = GroupNormAct(s.num_groups, s.hidden_sizes[-1], s.hidden_act)
            if stage_norm != "final":  # unused then: a checkpoint without it loads
                self.optional_keys = {"final_norm.weight": 1.0, "final_norm.bias": 0.0}
        else:
            self.final_norm = None

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage norm 'final' needs the checkpoint's trained final norm (BitModel's norm.weight and "
                "norm.bias), which this checkpoint lacks; use stage norm hf or none"
            )
        return ""

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, StdConv):
                m.freeze(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x)
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "final" and index == len(self.stage_specs) - 1 and self.final_norm is not None:
            raw = self.final_norm(raw)
        return raw.contiguous()


# applied in order, the first that matches
_RULES = [
    (re.compile(r"^embedder\.convolution\."), "stem.conv."),
    (re.compile(r"^embedder\.norm\."), "stem.norm."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"^norm\."), "final_norm."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' BiT keys -> bbx's. The classification head is dropped; anything else
    unrecognised is kept under its own name, so the strict load reports it."""
    return rename(state_dict, _RULES, drop=("classifier.",), strip=("bit.",), first_match=True)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Bit:
    return Bit(config, stage_norm=stage_norm)
