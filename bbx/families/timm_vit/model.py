"""Vision Transformers in timm's layout: the network of timm's ``vit_*`` architectures.

Loads timm's keys (``patch_embed.proj``, ``cls_token``, ``reg_token``, ``pos_embed``,
``norm_pre``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}``, ``norm``; the heads ``fc_norm``, ``head`` and SigLIP's ``attn_pool`` are dropped).

The network, as timm's ``VisionTransformer``: a ``patch_size`` convolution cuts the image into
patch tokens (no bias with ``pre_norm``); the class token and ``reg_tokens`` registers join them
and the position embeddings are added (to the patches only with ``no_embed_class``: added first,
then the tokens join; else to the class token and patches after joining), resampled to the
input's grid when it differs from ``img_size``'s as timm's ``resample_abs_pos_embed`` does
(float32, bicubic, antialiased); ``pre_norm``: a LayerNorm; then ``depth`` pre-norm blocks
(:mod:`bbx.nn.transformer`) with optional layer scales (``init_values``) and a GELU-style or
packed SwiGLU MLP. Stage maps are the patch tokens of each block's output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.timm_vit import ACTS, TimmVitSettings
from bbx.nn.backbone import Backbone
from bbx.nn.transformer import Block


class TimmVit(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = TimmVitSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        d, p = s.embed_dim, s.patch_size
        self.patch_embed = nn.Conv2d(s.in_chans, d, kernel_size=p, stride=p, bias=not s.pre_norm)
        init = nn.init.trunc_normal_  # cheap on the meta device (randn * 0.02 is not)
        self.cls_token = nn.Parameter(init(torch.empty(1, 1, d), std=0.02)) if s.class_token else None
        self.reg_token = nn.Parameter(init(torch.empty(1, s.reg_tokens, d), std=0.02)) if s.reg_tokens else None
        gh, gw = s.grid
        length = gh * gw + (0 if s.no_embed_class else s.prefix_tokens)
        self.pos_embed = nn.Parameter(init(torch.empty(1, length, d), std=0.02))
        self.norm_pre = nn.LayerNorm(d, eps=s.norm_eps) if s.pre_norm else None
        block = {
            "dim": d,
            "heads": s.num_heads,
            "qkv_bias": s.qkv_bias,
            "hidden": s.mlp_hidden,
            "act": ACTS[s.act_layer],
            "eps": s.norm_eps,
            "layer_scale": s.init_values,
            "swiglu": s.mlp_layer == "swiglu_packed",
        }
        self.blocks = nn.ModuleList(Block(**block) for _ in range(s.depth))
        self.norm = nn.LayerNorm(d, eps=s.norm_eps) if s.has_norm else None
        self._apply_norm = stage_norm == "final" and self.norm is not None
        if stage_norm != "final" and self.norm is not None:
            self.optional_keys = {"norm.weight": 1.0, "norm.bias": 0.0}  # unused then

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        """The position embeddings for a ``gh`` x ``gw`` grid (timm's resample_abs_pos_embed)."""
        table = self.pos_embed
        if (gh, gw) == self.settings.grid:
            return table
        prefix = 0 if self.settings.no_embed_class else self.settings.prefix_tokens
        head, grid = table[:, :prefix], table[:, prefix:]
        og, ow = self.settings.grid
        square = grid.float().reshape(1, og, ow, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(square, size=(gh, gw), mode="bicubic", align_corners=False, antialias=True)
        resized = resized.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(table.dtype)
        return torch.cat([head, resized], dim=1) if prefix else resized

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for block in self.blocks:
            block.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n = x.shape[0]
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2)
        pos = self._positions(*grid)
        first = [t.expand(n, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.settings.no_embed_class:
            x = torch.cat([*first, patches + pos], dim=1)
        else:
            x = torch.cat([*first, patches], dim=1) + pos
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
            yield x, grid

    def stage_map(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        tokens, (gh, gw) = raw
        patches = tokens[:, self.settings.prefix_tokens :]
        if self._apply_norm:
            assert self.norm is not None
            patches = self.norm(patches)
        return patches.reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()


_RULES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed."),
    (re.compile(r"\.ls([12])\.gamma$"), r".scale\1"),
]
_HEADS = ("head.", "fc_norm.", "attn_pool.", "head_drop.")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """timm's ViT keys -> bbx's (the heads dropped); unrecognised keys keep their name for the
    strict load."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_HEADS):
            continue
        k = key
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        out[k] = value
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> TimmVit:
    return TimmVit(config, stage_norm=stage_norm)
