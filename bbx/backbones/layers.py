"""Pieces that more than one family uses: activations named as in checkpoint configs."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bbx.errors import ModelError


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _TanhGELU(nn.Module):
    """The tanh approximation of GELU written out, as configs call ``gelu_new``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _GELU(nn.Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": _GELU,
    "gelu_pytorch_tanh": lambda: _GELU("tanh"),
    "gelu_new": _TanhGELU,
    "quick_gelu": _QuickGELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "linear": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """The activation a config's ``hidden_act`` names, with the same numerics as transformers'."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ModelError(
            f"unsupported activation {name!r} in config; supported: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None
