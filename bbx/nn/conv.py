"""Convolution + BatchNorm + activation, the unit of the convolutional families (ResNet in
transformers' and timm's layouts, RegNet, EfficientNet, ...), with the BatchNorm folded into the
convolution for frozen inference."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bbx.nn.layers import activation, conv_act


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one axis (timm's ``Conv2dSame``): the output is
    ``ceil(size / stride)``, the padding split with the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvNormAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional activation (a bbx activation name).

    ``padding`` is symmetric (default ``dilation * (kernel // 2)``) unless ``same`` (TensorFlow's, computed from
    the input: timm's ``tf_`` networks with stride 2). Once :meth:`fold_batchnorm` has run, the
    BatchNorm lives in the conv's weight and bias, and with ``fused`` the conv, its activation and
    a residual sum run as one oneDNN kernel (:func:`bbx.nn.layers.conv_act`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        *,
        groups: int = 1,
        act: str | None = "relu",
        eps: float = 1e-5,
        padding: int | None = None,
        same: bool = False,
        dilation: int = 1,
    ):
        super().__init__()
        if same and dilation != 1:
            raise ValueError("'SAME' padding of a dilated conv is not implemented")
        # 'SAME' with stride 1 and an odd kernel is the symmetric padding (timm pads it statically)
        self.same = same and (stride > 1 or kernel % 2 == 0)
        pad = 0 if self.same else (dilation * (kernel // 2) if padding is None else padding)
        self.conv = nn.Conv2d(
            cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.act = activation(act) if act is not None else nn.Identity()
        self.act_name = act
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """``act(bn(conv(x)))``; with ``add`` (a block's last conv): ``act(bn(conv(x)) + add)``."""
        if self.same:
            k, s = self.conv.kernel_size[0], self.conv.stride[0]
            top, bottom = same_padding(x.shape[2], k, s)
            left, right = same_padding(x.shape[3], k, s)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        if self.fused:
            return conv_act(x, self.conv, self.act_name, add=add, fused=True)
        y = self.bn(self.conv(x))
        if add is not None:
            y = y + add
        return self.act(y)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold the frozen BatchNorm into the conv's weight and a bias (exact to fp32 rounding)."""
        if isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        # the conv keeps its module and takes new parameters (a fresh nn.Conv2d would run its
        # random initialisation first: ResNet-50's 53 convs, 0.1 s of every run's start-up)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        self.bn = nn.Identity()

    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold the BatchNorm; ``kernels``: run the fused oneDNN kernel."""
        self.fold_batchnorm()
        self.fused = kernels


def fold_all(module: nn.Module, *, fuse_kernels: bool) -> None:
    """Fold every :class:`ConvNormAct`'s BatchNorm under ``module``; ``fuse_kernels``: fused kernels."""
    for m in module.modules():
        if isinstance(m, ConvNormAct):
            m.fuse(kernels=fuse_kernels)
