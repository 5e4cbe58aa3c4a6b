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

from bbx.families.timm_vit import ACTS, TimmVitSettings
from bbx.nn.backbone import Backbone
from bbx.nn.transformer import Block, patch_map, resize_positions


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
            # unused by the stages then (TimmBackbone checkpoints lack it); NaN marks it absent (no embedding)
            self.optional_keys = {"norm.weight": float("nan"), "norm.bias": float("nan")}

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        """The position embeddings for a ``gh`` x ``gw`` grid (timm's resample_abs_pos_embed)."""
        table = self.pos_embed
        if (gh, gw) == self.settings.grid:
            return table
        prefix = 0 if self.settings.no_embed_class else self.settings.prefix_tokens
        head, grid = table[:, :prefix], table[:, prefix:]
        resized = resize_positions(grid, self.settings.grid, (gh, gw), antialias=True, upcast=True)
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
        patches = raw[0][:, self.settings.prefix_tokens :]
        if self._apply_norm:
            assert self.norm is not None
            patches = self.norm(patches)
        return patch_map(patches, raw[1])

    def stage_class_token(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        cls = raw[0][:, 0]  # the registers follow it
        if self._apply_norm:
            assert self.norm is not None
            cls = self.norm(cls)
        return cls.contiguous()

    @property
    def has_embedding(self) -> bool:
        """Whether the model pools its class token (``global_pool='token'``) and the checkpoint has
        the final norm before it (a ``TimmBackbone``'s, timm's ``features_only`` model's, lacks it)."""
        if self.settings.embedding_dim is None:
            return False
        w = self.norm.weight if self.norm is not None else None
        return w is None or w.is_meta or not bool(torch.isnan(w.detach()[:1]).any())

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        """timm's pre-logits features, ``forward_head(forward_features(x), pre_logits=True)``, for
        class-token pooling: the class token of the last block under the final norm."""
        if not self.has_embedding:
            raise ValueError("this checkpoint has no final norm (a features-only one), so no image embedding")
        cls = raw_last[0][:, 0]
        return (self.norm(cls) if self.norm is not None else cls).contiguous()


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
