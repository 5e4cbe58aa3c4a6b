"""What plain vision transformers share (Dosovitskiy et al., "An Image is Worth 16x16 Words",
2021, and the models built like it: ViT, DeiT, CLIP's and SigLIP's image towers and DINOv2 in
transformers' layout, timm's ViTs): the pre-norm encoder block with one fused q/k/v projection,
a GELU-style or SwiGLU MLP and optional layer scales, learned absolute position embeddings
resampled to the input's grid, and patch tokens laid out as maps.

The block is ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, optionally with per-channel layer
scales on both branches (DINOv2's and timm's ``x + scale * branch``). Frozen inference
(:meth:`Block.fuse`) folds the scales into the projection before them and runs each projection
with its residual sum as one oneDNN kernel (:func:`bbx.nn.layers.linear_act`). Parameter names:
``norm1``, ``attn.qkv``, ``attn.proj``, ``scale1``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``,
``scale2``; :func:`fuse_parts` concatenates the q/k/v tensors checkpoints store apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from bbx.nn.backbone import Backbone
from bbx.nn.layers import Mlp, attention, fold_quick_gelu_, fold_scale_, linear_act


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (q, k, v in that order)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
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
    """A pre-norm transformer block, ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, with an
    MLP of ``hidden`` units: GELU-style (``act``, :class:`bbx.nn.layers.Mlp`) or, with ``swiglu``,
    :class:`SwiGLU`; ``layer_scale``: the initial value of per-channel scales on both branches
    (``x + scale * branch``; None: no scales)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        hidden: int,
        eps: float,
        act: str = "gelu",
        qkv_bias: bool = True,
        layer_scale: float | None = None,
        swiglu: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp: Mlp | SwiGLU = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden, act)
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
        1) and QuickGELU's factor into the MLP's layers (one SiLU pass, :func:`fold_quick_gelu_`);
        ``kernels``: use the fused oneDNN kernels."""
        if self.scale1 is not None and self.scale2 is not None:
            for scale, linear in ((self.scale1, self.attn.proj), (self.scale2, self.mlp.fc2)):
                fold_scale_(linear, scale)
                scale.fill_(1.0)
        if isinstance(self.mlp, Mlp):
            fold_quick_gelu_(self.mlp)
        self.fused = self.mlp.fused = kernels


def resize_positions(
    table: torch.Tensor,
    grid: int | tuple[int, int],
    size: tuple[int, int],
    *,
    antialias: bool = False,
    upcast: bool = False,
) -> torch.Tensor:
    """Position embeddings of the patch tokens for a ``size`` = (rows, columns) grid, ``[1, rows *
    columns, C]``, from ``table`` (``[rows0 * columns0, C]`` or ``[1, rows0 * columns0, C]``, the
    trained ``grid`` = (rows0, columns0), or its side when square, in row-major order): the table as
    it is at its own grid, else resized with bicubic interpolation (``align_corners=False``)
    straight to ``size``, as transformers 5 (``interpolate_pos_encoding``) and timm
    (``resample_abs_pos_embed``) do: no scale factor, no offset; ``antialias`` as the model asks;
    ``upcast``: in float32, then cast back (DINOv2, timm), else in the table's dtype (ViT, CLIP,
    SigLIP). At the trained grid a resize would be an exact identity (transformers runs one for
    non-square inputs of that grid), so the table is returned as is."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    c = table.shape[-1]
    table = table.reshape(1, rows * cols, c)
    if tuple(size) == (rows, cols):
        return table
    trained = table.reshape(1, rows, cols, c).permute(0, 3, 1, 2)
    resized = F.interpolate(
        trained.float() if upcast else trained,
        size=tuple(size),
        mode="bicubic",
        align_corners=False,
        antialias=antialias,
    ).to(table.dtype)
    return resized.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], c)


def patch_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``[N, rows * columns, C]`` (row-major) as a contiguous map ``[N, C, rows, columns]``."""
    n, _, c = tokens.shape
    return tokens.reshape(n, grid[0], grid[1], c).permute(0, 3, 1, 2).contiguous()


#: q/k/v projections stored apart, as hub checkpoints and transformers 5's in-memory modules name
#: them, once a family's renames brought the block prefix to ``blocks.N.``
_QKV = re.compile(
    r"^(?P<block>.*blocks\.\d+)\.(?:attention\.attention\.(?P<a>query|key|value)|attention\.(?P<b>q|k|v)_proj"
    r"|self_attn\.(?P<c>q|k|v)_proj)\.(?P<leaf>weight|bias)$"
)
_PART = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}

#: key -> (the fused tensor's key, this part's index, how many parts), or None for a key to keep
Split = Callable[[str], "tuple[str, int, int] | None"]


def qkv_part(key: str) -> tuple[str, int, int] | None:
    """Where a separate q/k/v tensor goes in ``blocks.N.attn.qkv`` (q, k, v in that order)."""
    m = _QKV.match(key)
    if m is None:
        return None
    return f"{m['block']}.attn.qkv.{m['leaf']}", _PART[m["a"] or m["b"] or m["c"]], 3


def fuse_parts(
    state: Mapping[str, Any], split: Split = qkv_part, *, origin: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``state`` with the tensors ``split`` places concatenated along dim 0 into their fused keys
    (by default each block's q/k/v into ``blocks.N.attn.qkv``). A set with parts missing is kept
    under the parts' names in the checkpoint (``origin``: key -> checkpoint key, from
    :func:`bbx.nn.keys.rename`), so that the strict load names them."""
    out: dict[str, Any] = {}
    groups: dict[str, tuple[int, dict[int, tuple[str, Any]]]] = {}
    for key, value in state.items():
        where = split(key)
        if where is None:
            out[key] = value
            continue
        fused, part, parts = where
        groups.setdefault(fused, (parts, {}))[1][part] = (key, value)
    for fused, (parts, got) in groups.items():
        if sorted(got) == list(range(parts)):
            out[fused] = torch.cat([got[i][1] for i in range(parts)], dim=0)
        else:
            out.update({(origin or {}).get(k, k): v for k, v in got.values()})
    return out


class TokenBackbone(Backbone):
    """What transformers-layout plain ViTs (ViT, DeiT, CLIP's and SigLIP's towers) share around
    their encoder: ``blocks`` of :class:`Block` (:meth:`encoder`), stage 0 the embedded tokens and
    stage k the output of ``blocks[k - 1]``, each stage's tokens ``[prefix tokens, patches]`` with the
    class token first, and ``norm`` the final LayerNorm, applied to the maps with stage norm
    ``final`` (transformers' backbones leave them raw) and to the class token of the embedding."""

    stage_modules = "blocks"  # stage k is the output of blocks[k - 1]
    #: tokens before the patches (the class token first); 0: patches only
    prefix_tokens: ClassVar[int] = 1

    def encoder(self, settings: Any, *, qkv_bias: bool = True) -> None:
        """``blocks`` and ``norm`` from the plain-transformer fields of ``settings``."""
        s = settings
        self.blocks = nn.ModuleList(
            Block(
                s.hidden_size,
                s.num_attention_heads,
                hidden=s.intermediate_size,
                act=s.hidden_act,
                eps=s.layer_norm_eps,
                qkv_bias=qkv_bias,
            )
            for _ in range(s.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self._apply_norm = self.stage_norm == "final"

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for block in self.blocks:
            block.fuse(kernels=fuse_kernels)

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int]) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        """The stages from the embedded tokens ``x`` on a patch ``grid``."""
        yield x, grid
        for block in self.blocks:
            x = block(x)
            yield x, grid

    def stage_map(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        patches = raw[0][:, self.prefix_tokens :]
        if self._apply_norm:
            patches = self.norm(patches)  # per token: the same as normalising all tokens, then slicing
        return patch_map(patches, raw[1])

    def stage_class_token(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        if not self.prefix_tokens:
            return super().stage_class_token(index, raw)  # patches only: none to give
        cls = raw[0][:, 0]
        return self.norm(cls) if self._apply_norm else cls

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        if not self.prefix_tokens:
            return super().embedding(raw_last)
        return self.norm(raw_last[0][:, 0])
