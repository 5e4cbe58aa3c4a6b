"""Convolutional blocks more than one family builds: conv -> BatchNorm -> activation, with the
BatchNorm folded into the conv for frozen inference and the fused oneDNN kernel after that."""

from __future__ import annotations

import torch
from torch import nn

from bbx.nn.layers import activation, conv_act


class ConvNormAct(nn.Module):
    """Conv (no bias, 'same' padding ``kernel // 2``, optionally grouped) -> BatchNorm -> optional
    activation. Parameters are ``conv.weight`` and ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, act: str | None = "relu", *, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = activation(act) if act is not None else nn.Identity()
        self.act_name = act
        self.fused = False  # conv + activation (+ residual) in one oneDNN kernel, once BN is folded

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """``act(bn(conv(x)))``; with ``add`` (the last conv of a block, which has no activation of
        its own): ``bn(conv(x)) + add``."""
        if self.fused:
            return conv_act(x, self.conv, self.act_name, add=add, fused=True)
        y = self.act(self.bn(self.conv(x)))
        return y if add is None else y + add

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold the (frozen) BatchNorm into the conv's weight and a bias: one pass over the
        activations instead of two. Exact up to fp32 rounding (relative error ~1e-7)."""
        if isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            groups=conv.groups,
            bias=True,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()

    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold the BatchNorm; ``kernels``: run the fused oneDNN kernel."""
        self.fold_batchnorm()
        self.fused = kernels
