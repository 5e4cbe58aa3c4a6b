"""DeiT with distillation: a ViT with a class token and a distillation token, transformers layout
(``DeiTModel``).

Paper: Touvron et al., "Training data-efficient image transformers & distillation through
attention" (2021). Loads ``DeiTModel`` checkpoints and the classification models around it
(``DeiTForImageClassificationWithTeacher``, the public facebook/deit-*-distilled-patch16-224
repos, and ``DeiTForImageClassification``: prefix ``deit.``, heads dropped).

The network is ViT's (:mod:`bbx.nn.transformer` blocks: ``layernorm_before`` -> attention ->
residual, ``layernorm_after`` -> GELU MLP -> residual) with two prefix tokens, class then
distillation, each with its own learned position (the table has ``grid * grid + 2`` rows); the
patch part of the table is resampled to the input's grid as transformers'
``interpolate_pos_encoding`` does (bicubic, no antialiasing, in the table's dtype).

Stages: ``stem`` is the embedding output and ``stageK`` the output of block K; maps hold the
patch tokens only (both prefix tokens dropped). Stage norms: transformers has no DeiT backbone
class; ``hf`` and ``none`` are the raw hidden states (``output_hidden_states=True``), ``final``
applies the trained final ``layernorm`` to every stage. ``--pool cls`` reads token 0 (the class
token; the distillation token is token 1 and is never read out); the image embedding is the normed
class token of the last block.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.deit import DeitSettings
from bbx.nn.keys import rename
from bbx.nn.transformer import TokenBackbone, fuse_parts, resize_positions

PREFIX = 2  # the class token, then the distillation token


class Deit(TokenBackbone):
    prefix_tokens = PREFIX

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = DeitSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        dim, p = s.hidden_size, s.patch_size
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        self.dist_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, PREFIX + s.grid * s.grid, dim), std=0.02))
        self.encoder(s, qkv_bias=s.qkv_bias)

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n = x.shape[0]
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2)
        patches = patches + resize_positions(self.pos_embed[:, PREFIX:], self.settings.grid, grid)
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1) + self.pos_embed[:, :PREFIX]
        x = torch.cat([prefix.expand(n, -1, -1), patches], dim=1)
        yield from self.run_blocks(x, grid)


# Checkpoint key -> bbx key (after the head model's ``deit.`` prefix is removed); the hub's names
# and transformers 5's in-memory ones.
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\.projection\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^embeddings\.cls_token$"), "cls_token"),
    (re.compile(r"^embeddings\.distillation_token$"), "dist_token"),
    (re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.attention\.(?:output\.dense|o_proj)\."), ".attn.proj."),
    (re.compile(r"\.layernorm_before\."), ".norm1."),
    (re.compile(r"\.layernorm_after\."), ".norm2."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"(blocks\.\d+)\.output\.dense\."), r"\1.mlp.fc2."),
    (re.compile(r"^layernorm\."), "norm."),
]
#: classification heads, the pooler and the masked-image-modeling parts
_DROP = (
    "classifier.",
    "cls_classifier.",
    "distillation_classifier.",
    "pooler.",
    "deit.pooler.",
    "decoder.",
    "embeddings.mask_token",
    "deit.embeddings.mask_token",
)


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' DeiT keys -> bbx's: heads, pooler and mask token dropped, q/k/v fused."""
    origin: dict[str, str] = {}
    state = rename(state_dict, _RULES, drop=_DROP, strip=("deit.",), origin=origin)
    return fuse_parts(state, origin=origin)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Deit:
    return Deit(config, stage_norm=stage_norm)
