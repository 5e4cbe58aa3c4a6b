"""DINOv2 and DINOv2 with registers: plain ViTs trained without labels, transformers layout.

Papers: Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision" (2023), and
Darcet et al., "Vision Transformers Need Registers" (2023), which adds a few learned "register"
tokens next to the class token.

Loads the weights of ``Dinov2Model`` / ``Dinov2WithRegistersModel`` checkpoints (the public
``facebook/dinov2-{small,base,large,giant}`` and ``facebook/dinov2-with-registers-*`` repos), of the
``*Backbone`` classes (same keys) and of ``*ForImageClassification`` (prefix ``dinov2.`` or
``dinov2_with_registers.``; the head is dropped). One module serves both ``model_type`` values:
registers are simply ``num_register_tokens`` extra tokens (0 for ``dinov2``).

The network: a ``patch_size`` x ``patch_size`` convolution cuts the image into patch tokens; a
class token (and the registers) join them; learned position embeddings (a square grid of
``image_size // patch_size`` a side, plus one for the class token) are added, resampled to the
input's grid when it differs; then ``num_hidden_layers`` pre-norm blocks, each
``x + scale1 * attention(norm1(x))`` and ``x + scale2 * mlp(norm2(x))`` with per-channel layer
scales, the MLP being GELU (``hidden_act``) or, with ``use_swiglu_ffn`` (the giant), SwiGLU.

Stages, as transformers' backbone defines them: ``stem`` is the embedding output (patch
embeddings + position embeddings, the input of block 1) and ``stageK`` the output of block K.
Each map keeps the patch tokens only (class and register tokens dropped), laid out as
``[N, C, H // patch, W // patch]`` (a size that is not a multiple of the patch size loses its
remainder, as the convolution does). Stride = ``patch_size`` for every stage.

Stage norms: transformers applies the model's final layernorm (trained as the norm of the last
block's output) to every selected stage when ``apply_layernorm`` is true, as in all public
configs; ``stem`` included. ``stage_norm="hf"`` does exactly that (and no norm when
``apply_layernorm`` is false), ``"none"`` never normalises (the raw hidden states), and
``"final"`` always applies the final layernorm: for DINOv2 with ``apply_layernorm`` true it is the
same as ``"hf"``. ``reshape_hidden_states=false`` (token sequences instead of maps) is refused:
bbx always returns ``[N, C, H, W]`` maps.

Position-embedding resampling follows the installed transformers (5.x) exactly: the patch part
of the table is resized in float32 with bicubic interpolation (``align_corners=False``) straight
to the target grid (no scale factor, no offset), antialiased for the registers variant only, then
cast back to the parameters' dtype. At the checkpoint's own grid the table is used as is
(transformers resamples it to the same size for non-square inputs, which is an exact identity).

Inference only: no dropout, no drop-path, no mask token (dropped from checkpoints; it only serves
masked pretraining). Attention uses ``scaled_dot_product_attention`` with one fused q/k/v
projection; the SwiGLU gate and up projections stay fused as in the checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.dinov2 import Dinov2Settings
from bbx.nn.backbone import Backbone
from bbx.nn.transformer import Block, fuse_parts, patch_map, resize_positions


class Dinov2(Backbone):
    stage_modules = "blocks"  # stage k is the output of blocks[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = Dinov2Settings.from_config(config)
        dim, p = s.hidden_size, s.patch_size
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p)
        # trunc_normal_ rather than randn * 0.02: on the meta device the latter pulls in torch's
        # decompositions (~1 s); random weights only matter for --no-pretrained anyway
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        if s.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, s.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1 + s.grid * s.grid, dim), std=0.02))
        block = {
            "dim": s.hidden_size,
            "heads": s.num_attention_heads,
            "qkv_bias": s.qkv_bias,
            "hidden": s.mlp_hidden,
            "act": s.hidden_act,
            "eps": s.layer_norm_eps,
            "layer_scale": float(s.layerscale_value),
            "swiglu": s.use_swiglu_ffn,
        }
        self.blocks = nn.ModuleList(Block(**block) for _ in range(s.num_hidden_layers))
        self.norm = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self._apply_norm = stage_norm == "final" or (stage_norm == "hf" and s.apply_layernorm)
        self._antialias = s.model_type == "dinov2_with_registers"

    def _patch_positions(self, gh: int, gw: int) -> torch.Tensor:
        """Position embeddings of the patch tokens for a ``gh`` x ``gw`` grid: ``[1, gh * gw, C]``."""
        return resize_positions(
            self.pos_embed[:, 1:], self.settings.grid, (gh, gw), antialias=self._antialias, upcast=True
        )

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for block in self.blocks:
            block.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n = x.shape[0]
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2) + self._patch_positions(*grid)
        first = [(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)]
        if self.register_tokens is not None:
            first.append(self.register_tokens.expand(n, -1, -1))
        x = torch.cat([*first, patches], dim=1)
        yield x, grid
        for block in self.blocks:
            x = block(x)
            yield x, grid

    def _patches(self, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        return raw[0][:, self.settings.prefix_tokens :]

    def stage_map(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        patches = self._patches(raw)
        if self._apply_norm:
            patches = self.norm(patches)  # per token: the same as normalising all tokens, then slicing
        return patch_map(patches, raw[1])

    def stage_class_token(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        cls = raw[0][:, 0]  # the registers follow it
        return self.norm(cls) if self._apply_norm else cls

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        """The normed class token: ``Dinov2Model``'s ``pooler_output``."""
        return self.norm(raw_last[0][:, 0])


# Checkpoint key -> bbx key, applied in order where they match (after the head prefix is removed).
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\.projection\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^embeddings\.(cls_token|register_tokens)$"), r"\1"),
    (re.compile(r"^encoder\.layer\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.attention\.(?:output\.dense|o_proj)\."), ".attn.proj."),
    (re.compile(r"\.layer_scale([12])\.lambda1$"), r".scale\1"),
    (re.compile(r"\.mlp\.weights_in\."), ".mlp.fc1."),
    (re.compile(r"\.mlp\.(?:weights_out|down_proj)\."), ".mlp.fc2."),
    (re.compile(r"^layernorm\."), "norm."),
]
# Projections stored apart that bbx keeps fused: (pattern, fused name, part, number of parts).
# Both the hub's names and transformers 5's in-memory names are understood.
_FUSED = re.compile(
    r"^(?P<block>blocks\.\d+)\.(?:attention\.attention\.(?P<a>query|key|value)|attention\.(?P<b>q|k|v)_proj"
    r"|mlp\.(?P<m>gate|up)_proj)\.(?P<leaf>weight|bias)$"
)
_PART = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2, "gate": 0, "up": 1}
_HEAD_PREFIXES = ("dinov2.", "dinov2_with_registers.")
_UNUSED = ("embeddings.mask_token",)


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' DINOv2 keys -> bbx's. Drops the classification head and the mask token;
    concatenates q/k/v (and SwiGLU gate/up, when stored apart) into bbx's fused projections.
    Anything unrecognised, or a fused projection with parts missing, is kept under its own
    name, so the strict load reports it."""
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}  # bbx key -> the checkpoint's, for the parts of an incomplete set
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            continue
        k = key
        for prefix in _HEAD_PREFIXES:
            if k.startswith(prefix):
                k = k.removeprefix(prefix)
                break
        if k in _UNUSED:
            continue
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        renamed[k], origin[k] = value, key
    return fuse_parts(renamed, _fused_part, origin=origin)


def _fused_part(key: str) -> tuple[str, int, int] | None:
    """Where a q/k/v (or SwiGLU gate/up) tensor stored apart goes in bbx's fused projection."""
    m = _FUSED.match(key)
    if m is None:
        return None
    if m["m"] is None:
        return f"{m['block']}.attn.qkv.{m['leaf']}", _PART[m["a"] or m["b"]], 3
    return f"{m['block']}.mlp.fc1.{m['leaf']}", _PART[m["m"]], 2


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Dinov2:
    return Dinov2(config, stage_norm=stage_norm)
