"""ViT: a plain vision transformer over 16 x 16 patches, transformers layout (``ViTModel``).

Paper: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale" (2021). Loads ``ViTModel`` checkpoints (google/vit-*-in21k, facebook/dino-*) and
``ViTForImageClassification`` ones (prefix ``vit.``; the classifier dropped), and the pooler of
either (a tanh head on the class token, not part of any stage).

The network: a ``patch_size`` x ``patch_size`` convolution cuts the image into patch tokens; a
class token joins them in front; learned position embeddings (a square grid of ``image_size //
patch_size`` a side, plus one for the class token) are added, resampled to the input's grid when
it differs (``resize_positions``: bicubic, no antialiasing, in the table's dtype, exactly
transformers' ``interpolate_pos_encoding``); then ``num_hidden_layers`` pre-norm blocks
(``layernorm_before`` -> attention -> residual, ``layernorm_after`` -> GELU MLP -> residual) and
the final ``layernorm``.

Stages: ``stem`` is the embedding output (the input of block 1) and ``stageK`` the output of
block K, the maps holding the patch tokens as ``[N, C, H // patch, W // patch]`` (a size that is
not a multiple of the patch loses its remainder, as the convolution does). Stage norms:
transformers has no ViT backbone class; ``hf`` and ``none`` are the raw hidden states, exactly
``ViTModel(..., output_hidden_states=True).hidden_states`` (whose last entry is before the final
norm), and ``final`` applies the trained final ``layernorm`` to every stage. The class token of a
stage (``--pool cls``) follows the same rule; the image embedding (``--embedding``) is the normed
class token of the last block, ``last_hidden_state[:, 0]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.vit import VitSettings
from bbx.nn.keys import rename
from bbx.nn.transformer import TokenBackbone, fuse_parts, resize_positions


class Vit(TokenBackbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = VitSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        dim, p = s.hidden_size, s.patch_size
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1 + s.grid * s.grid, dim), std=0.02))
        self.encoder(s, qkv_bias=s.qkv_bias)

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n = x.shape[0]
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2) + resize_positions(self.pos_embed[:, 1:], self.settings.grid, grid)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1), patches], dim=1)
        yield from self.run_blocks(x, grid)


# Checkpoint key -> bbx key (after the head model's ``vit.`` prefix is removed); the hub's names
# and transformers 5's in-memory ones (``layers.N``, ``q_proj``, ``o_proj``, ``mlp.fc1``).
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\.projection\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^embeddings\.cls_token$"), "cls_token"),
    (re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.attention\.(?:output\.dense|o_proj)\."), ".attn.proj."),
    (re.compile(r"\.layernorm_before\."), ".norm1."),
    (re.compile(r"\.layernorm_after\."), ".norm2."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"(blocks\.\d+)\.output\.dense\."), r"\1.mlp.fc2."),
    (re.compile(r"^layernorm\."), "norm."),
]
#: the classifier head, the pooler (a head on the class token) and the masked-image-modeling parts
_DROP = ("classifier.", "pooler.", "vit.pooler.", "decoder.", "embeddings.mask_token", "vit.embeddings.mask_token")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' ViT keys -> bbx's: heads, pooler and mask token dropped, q/k/v fused."""
    origin: dict[str, str] = {}
    state = rename(state_dict, _RULES, drop=_DROP, strip=("vit.",), origin=origin)
    return fuse_parts(state, origin=origin)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Vit:
    return Vit(config, stage_norm=stage_norm)
