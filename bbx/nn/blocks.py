"""Convolutional blocks that more than one family builds: the channel LayerNorm, the patchify stem
and the norm-then-conv downsampling of ConvNeXt-style networks (ConvNeXt, ConvNeXt V2). Attribute
names are part of the checkpoint-key contract of the families that use them (``conv``, ``norm``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an ``[N, C, H, W]`` map (permute, normalise the last
    dimension, permute back: the same arithmetic as transformers' channels-first LayerNorm).
    On a channels-last tensor both permutes are free views."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class PatchifyStem(nn.Module):
    """Patchify: a ``patch`` x ``patch`` conv with stride ``patch``, then a channel LayerNorm."""

    def __init__(self, cin: int, cout: int, patch: int, *, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=patch, stride=patch)
        self.norm = ChannelNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class NormDownsample(nn.Module):
    """Between stages: a channel LayerNorm, then a 2x2 conv with stride 2."""

    def __init__(self, cin: int, cout: int, *, eps: float):
        super().__init__()
        self.norm = ChannelNorm(cin, eps=eps)
        self.conv = nn.Conv2d(cin, cout, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))
