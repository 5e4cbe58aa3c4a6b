"""The transformer blocks of the vision transformers (DINOv2 in transformers' layout, timm's ViTs):
multi-head self-attention with one fused q/k/v projection, the GELU-style or SwiGLU MLP, and the
pre-norm block with optional layer scales. Frozen inference folds the layer scales into the
projections before them and runs the linear layers as fused oneDNN kernels (residual sums inside).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bbx.nn.layers import Mlp, attention, fold_scale_, linear_act


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, fused: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output, plus ``add`` (the residual) when given."""
        n, t, c = x.shape
        qkv = linear_act(x, self.qkv, fused=fused)
        q, k, v = qkv.view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = (attention(q, k, v) if fused else F.scaled_dot_product_attention(q, k, v)).transpose(1, 2).reshape(n, t, c)
        return linear_act(y, self.proj, add=add, fused=fused)


class SwiGLU(nn.Module):
    """``fc2(silu(gate) * up)`` where ``fc1`` computes gate and up together (gate first)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = linear_act(x, self.fc1, fused=self.fused).chunk(2, dim=-1)
        return linear_act(F.silu(gate) * up, self.fc2, add=add, fused=self.fused)


class Block(nn.Module):
    """A pre-norm transformer block, ``x + scale1 * attn(norm1(x))`` then ``x + scale2 *
    mlp(norm2(x))``, with per-channel layer scales (``layer_scale``: their initial value; None:
    no scales, as a ViT without them) and a GELU-style (``act``) or SwiGLU MLP of ``hidden``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        qkv_bias: bool,
        hidden: int,
        act: str,
        eps: float,
        layer_scale: float | None,
        swiglu: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden, act)
        if layer_scale is None:
            self.scale1 = self.scale2 = None
        else:
            self.scale1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.scale2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:  # layer scales folded into proj / fc2; residual sums inside their kernels
            x = self.attn(self.norm1(x), fused=True, add=x)
            return self.mlp(self.norm2(x), add=x)
        if self.scale1 is None or self.scale2 is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        # x + branch * scale in one kernel
        x = torch.addcmul(x, self.attn(self.norm1(x)), self.scale1)
        return torch.addcmul(x, self.mlp(self.norm2(x)), self.scale2)

    @torch.no_grad()
    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold each layer scale into the projection before it (the scales become
        1); ``kernels``: use the fused oneDNN kernels."""
        if self.scale1 is not None and self.scale2 is not None:
            for scale, linear in ((self.scale1, self.attn.proj), (self.scale2, self.mlp.fc2)):
                fold_scale_(linear, scale)
                scale.fill_(1.0)
        self.fused = self.mlp.fused = kernels
