"""SigLIP's image tower: a ViT without a class token and with an attention-pooling head,
transformers layout (``SiglipVisionModel``, and the vision half of ``SiglipModel``).

Paper: Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (2023). Loads the image tower
from a whole ``SiglipModel`` checkpoint (the public google/siglip-* repos: the format seam hands
over only the ``vision_model.*`` tensors; the text tower is never read), from
``SiglipVisionModel`` checkpoints (with or without transformers 4's ``vision_model.`` prefix) and
from ``SiglipForImageClassification`` (the classifier dropped).

The network: a ``patch_size`` convolution cuts the image into patch tokens; learned positions
(``grid * grid``, no class token) are added, resampled to the input's grid as transformers'
``interpolate_pos_encoding`` does (bicubic, no antialiasing, in the table's dtype);
``num_hidden_layers`` pre-norm blocks (tanh-GELU MLP); ``post_layernorm``; and, with
``vision_use_head``, the attention-pooling head (``SiglipMultiheadAttentionPoolingHead``): a
learned probe token attends over every token (``nn.MultiheadAttention``'s packed in-projection,
kept here as a query and a key/value projection), then ``h + mlp(layernorm(h))``.

Stages: ``stem`` is the embedding output and ``stageK`` the output of block K; maps hold every
token. Stage norms: ``hf`` and ``none`` are the raw hidden states
(``SiglipVisionModel(..., output_hidden_states=True)``, whose last entry is before
``post_layernorm``); ``final`` applies ``post_layernorm`` to every stage. No class token
(``--pool cls`` is refused before loading); the image embedding is the pooling head's output over
the post-layernormed last block (``pooler_output``, what ``SiglipModel.get_image_features``
pools).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.siglip import SiglipSettings
from bbx.nn.keys import rename
from bbx.nn.layers import Mlp, attention, linear_act
from bbx.nn.transformer import TokenBackbone, fuse_parts, resize_positions


class AttentionPool(nn.Module):
    """A learned probe token attending over the tokens, then a residual MLP: ``[N, T, C] -> [N, C]``."""

    def __init__(self, dim: int, heads: int, hidden: int, act: str, eps: float):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, act)
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        d = c // self.heads
        q = linear_act(self.probe, self.q, fused=self.fused).view(1, 1, self.heads, d).transpose(1, 2)
        kv = linear_act(x, self.kv, fused=self.fused).view(n, t, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        q = q.expand(n, -1, -1, -1)
        y = attention(q, kv[0], kv[1]) if self.fused else F.scaled_dot_product_attention(q, kv[0], kv[1])
        h = linear_act(y.transpose(1, 2).reshape(n, 1, c), self.proj, fused=self.fused)
        return self.mlp(self.norm(h), add=h)[:, 0]


class Siglip(TokenBackbone):
    prefix_tokens = 0  # patches only: no class token

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = SiglipSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        dim, p = s.hidden_size, s.patch_size
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(s.grid * s.grid, dim), std=0.02))
        self.encoder(s)
        self.pool = (
            AttentionPool(dim, s.num_attention_heads, s.intermediate_size, s.hidden_act, s.layer_norm_eps)
            if s.vision_use_head
            else None
        )

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        super().optimize_for_inference(fuse_kernels=fuse_kernels)
        if self.pool is not None:
            self.pool.fused = self.pool.mlp.fused = fuse_kernels

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        x = patches.flatten(2).transpose(1, 2) + resize_positions(self.pos_embed, self.settings.grid, grid)
        yield from self.run_blocks(x, grid)

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        if self.pool is None:  # pragma: no cover - refused by the plan (SiglipSettings.embedding_dim)
            raise ValueError("this SigLIP tower has no pooling head (vision_use_head is false)")
        return self.pool(self.norm(raw_last[0]))


# Checkpoint key -> bbx key, after ``vision_model.`` is stripped.
_RULES = [
    (re.compile(r"^embeddings\.patch_embedding\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embedding\.weight$"), "pos_embed"),
    (re.compile(r"^encoder\.layers\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.self_attn\.out_proj\."), ".attn.proj."),
    (re.compile(r"\.layer_norm([12])\."), r".norm\1."),
    (re.compile(r"^post_layernorm\."), "norm."),
    (re.compile(r"^head\.attention\.out_proj\."), "pool.proj."),
    (re.compile(r"^head\.attention\.in_proj_(weight|bias)$"), r"pool.in_proj.\1"),
    (re.compile(r"^head\.layernorm\."), "pool.norm."),
    (re.compile(r"^head\.(probe|mlp\.)"), r"pool.\1"),
]
_DROP = ("classifier.", "vision_model.embeddings.position_ids", "embeddings.position_ids")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' SigLIP image-tower keys -> bbx's: q/k/v fused, the pooling head's packed
    in-projection split into its query and key/value parts, heads and buffers dropped."""
    origin: dict[str, str] = {}
    state = fuse_parts(rename(state_dict, _RULES, drop=_DROP, strip=("vision_model.",), origin=origin), origin=origin)
    for leaf in ("weight", "bias"):
        packed = state.pop(f"pool.in_proj.{leaf}", None)
        if packed is None:
            continue
        if packed.shape[0] % 3:  # not a packed q/k/v: left for the strict load to name
            state[origin.get(f"pool.in_proj.{leaf}", f"pool.in_proj.{leaf}")] = packed
            continue
        d = packed.shape[0] // 3
        state[f"pool.q.{leaf}"], state[f"pool.kv.{leaf}"] = packed[:d], packed[d:]
    return state


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Siglip:
    return Siglip(config, stage_norm=stage_norm)
