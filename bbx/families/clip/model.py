"""CLIP's image tower: a ViT with a layernorm before the first block, transformers layout
(``CLIPVisionModel``, and the vision half of ``CLIPModel``).

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
(2021). Loads the image tower from a whole ``CLIPModel`` checkpoint (the public openai/clip-vit-*
repos: the format seam hands over only the ``vision_model.*`` and ``visual_projection.*``
tensors; the text tower is never read), from ``CLIPVisionModelWithProjection`` and
``CLIPVisionModel`` checkpoints (with or without transformers 4's ``vision_model.`` prefix), and
from ``CLIPForImageClassification`` (the classifier dropped).

The network: a bias-free ``patch_size`` convolution cuts the image into patch tokens; a learned
class embedding joins them in front; learned positions (``grid * grid + 1``) are added, the patch
part resampled to the input's grid as transformers' ``interpolate_pos_encoding`` does (bicubic, no
antialiasing, in the table's dtype); ``pre_layrnorm``; ``num_hidden_layers`` pre-norm blocks
(``layer_norm1`` -> attention -> residual, ``layer_norm2`` -> quick-GELU MLP -> residual);
``post_layernorm``, which transformers applies to the pooled class token only; and the visual
projection (``visual_projection``, no bias) where the checkpoint has one.

Stages: ``stem`` is the embedding output after ``pre_layrnorm`` (``hidden_states[0]``) and
``stageK`` the output of block K; maps hold the patch tokens only. Stage norms: ``hf`` and
``none`` are the raw hidden states, exactly ``CLIPVisionModel(..., output_hidden_states=True)``'s;
``final`` applies ``post_layernorm`` to every stage. ``--pool cls`` reads token 0 under the same
rule; the image embedding is ``post_layernorm`` of the last block's class token, projected: what
``CLIPModel.get_image_features`` returns (not L2-normalised); without a projection (a
``CLIPVisionModel``), the normed class token, its ``pooler_output``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.clip import ClipSettings
from bbx.nn.keys import rename
from bbx.nn.transformer import TokenBackbone, fuse_parts, resize_positions


class Clip(TokenBackbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = ClipSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        dim, p = s.hidden_size, s.patch_size
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(dim), std=0.02))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1 + s.grid * s.grid, dim), std=0.02))
        self.pre_norm = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.encoder(s)
        self.proj = nn.Linear(dim, s.projection_dim, bias=False) if s.has_projection else None

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n = x.shape[0]
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2) + resize_positions(self.pos_embed[1:], self.settings.grid, grid)
        cls = (self.class_embedding + self.pos_embed[0]).expand(n, 1, -1)
        yield from self.run_blocks(self.pre_norm(torch.cat([cls, patches], dim=1)), grid)

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        pooled = self.norm(raw_last[0][:, 0])
        return self.proj(pooled) if self.proj is not None else pooled


# Checkpoint key -> bbx key, after ``vision_model.`` is stripped (the hub's names are transformers
# 5's in-memory ones).
_RULES = [
    (re.compile(r"^embeddings\.patch_embedding\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embedding\.weight$"), "pos_embed"),
    (re.compile(r"^embeddings\.class_embedding$"), "class_embedding"),
    (re.compile(r"^pre_layrnorm\."), "pre_norm."),
    (re.compile(r"^encoder\.layers\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.self_attn\.out_proj\."), ".attn.proj."),
    (re.compile(r"\.layer_norm([12])\."), r".norm\1."),
    (re.compile(r"^post_layernorm\."), "norm."),
    (re.compile(r"^visual_projection\."), "proj."),
]
#: a classifier head, and the position ids buffer older checkpoints saved
_DROP = ("classifier.", "vision_model.embeddings.position_ids", "embeddings.position_ids")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' CLIP image-tower keys -> bbx's: q/k/v fused, heads and buffers dropped."""
    origin: dict[str, str] = {}
    state = rename(state_dict, _RULES, drop=_DROP, strip=("vision_model.",), origin=origin)
    return fuse_parts(state, origin=origin)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Clip:
    return Clip(config, stage_norm=stage_norm)
