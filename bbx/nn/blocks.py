"""Convolutional blocks that more than one family builds: the channel LayerNorm, the patchify stem,
the norm-then-conv downsampling and the depthwise-conv block of ConvNeXt-style networks (ConvNeXt in
transformers' and timm's layouts, ConvNeXt V2, DINOv3's ConvNeXt). Attribute names are part of the
checkpoint-key contract of the families that use them (``conv``, ``norm``, ``dwconv``, ``mlp``,
``gamma``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bbx.nn.layers import Mlp, fold_scale_, in_row_slices


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


class DwConvBlock(nn.Module):
    """``x + gamma * mlp(norm(dwconv(x)))``, a ``kernel`` x ``kernel`` depthwise conv (7 in every
    public ConvNeXt) and the MLP (``fc2(act(fc1(.)))``, ``mlp_ratio`` wide) on ``[N, H, W, C]``
    rows. ``layer_scale`` None: no ``gamma`` at all (not even a parameter).

    Memory layout: on a channels-last input the depthwise-conv output permutes to ``[N, H, W, C]``
    as a free view, the LayerNorm and the two Linears work on contiguous rows, and the permute back
    is free too."""

    def __init__(
        self, dim: int, act: str, layer_scale: float | None, eps: float, kernel: int = 7, mlp_ratio: float = 4
    ):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act)
        # no layer scale (None): no gamma, not even a parameter; any value (0 too) makes one
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        rows = x.permute(0, 2, 3, 1)  # a free view when x is channels-last
        if self.mlp.fused:  # layer scale folded into fc2, residual sum in its kernel, rows in slices
            return in_row_slices(self._mlp, y, rows, width=self.mlp.fc1.out_features).permute(0, 3, 1, 2)
        y = self.mlp(self.norm(y))
        # residual sum with the layer scale in one pass (addcmul) rather than a product then a sum
        out = rows + y if self.gamma is None else torch.addcmul(rows, y, self.gamma)
        return out.permute(0, 3, 1, 2)

    def _mlp(self, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(y), add=rows)

    @torch.no_grad()
    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold the layer scale into fc2; ``kernels``: use the fused oneDNN
        kernels."""
        if self.gamma is not None:
            fold_scale_(self.mlp.fc2, self.gamma)
            self.gamma = None
        self.mlp.fused = kernels
