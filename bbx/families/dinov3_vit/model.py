"""DINOv3 vision transformers, transformers layout.

Paper: Siméoni et al., "DINOv3" (2025). A plain pre-norm ViT trained without labels, whose
positions are 2-D rotary embeddings (RoPE) instead of a learned table, with a few register tokens
beside the class token (Darcet et al., "Vision Transformers Need Registers", 2023).

Loads ``DINOv3ViTModel`` / ``DINOv3ViTBackbone`` checkpoints (the public
``facebook/dinov3-vit*16-pretrain-*`` repos): their blocks are ``layer.N.*`` on the hub and
``model.layer.N.*`` in transformers 5's memory; both are read.

The network: a ``patch_size`` x ``patch_size`` convolution cuts the image into patch tokens; the
class token and ``num_register_tokens`` registers go before them (no position embedding is
added); then ``num_hidden_layers`` pre-norm blocks, ``x + scale1 * attention(norm1(x))`` and
``x + scale2 * mlp(norm2(x))`` with per-channel layer scales. The MLP is ``down(act(up(x)))`` or,
with ``use_gated_mlp`` (the "plus" and 7B models), ``down(act(gate(x)) * up(x))``. Attention
rotates the queries and keys of the patch tokens (never the class or register tokens) by angles
``2 pi * coord * inv_freq``, ``coord`` being the patch centre in [-1, 1] along y and x (for the
first and second quarter of each head's channels, repeated for the second half), so any grid
works as it is: nothing is resampled for other input sizes.

Stages, as transformers' backbone defines them: ``stem`` is the embedding output and ``stageK``
the output of block K, each map the patch tokens only, ``[N, C, H // patch, W // patch]``.

Stage norms: ``DINOv3ViTBackbone`` applies the final layernorm to every stage when
``apply_layernorm`` (all public configs) and, in any case, to the last stage (``stageN``, the
model's own ``last_hidden_state``). ``stage_norm="hf"`` does exactly that, ``"none"`` returns the
raw hidden states, ``"final"`` applies the final layernorm to every stage. The class token of a
stage (``--pool cls``) follows the same policy; the image embedding is the normed class token of
the last block, transformers' ``pooler_output``.

Inference only: no drop-path, no mask token (dropped from checkpoints), no training-time
coordinate augmentation. The q/k/v projections run as one fused projection (a bias the config
leaves out, DINOv3's key bias, is a zero part of the fused bias: adding zero is exact).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.dinov3_vit import Dinov3VitSettings
from bbx.nn.backbone import Backbone
from bbx.nn.layers import Mlp, activation, attention, fold_scale_, linear_act


@functools.lru_cache(maxsize=16)
def _rope(gh: int, gw: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[gh * gw, head_dim]`` of a ``gh`` x ``gw`` patch grid, in float32, with
    transformers' arithmetic (``DINOv3ViTRopePositionEmbedding`` in eval mode)."""
    inv_freq = 1 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=device)
    ys = torch.arange(0.5, gh, dtype=torch.float32, device=device) / gh
    xs = torch.arange(0.5, gw, dtype=torch.float32, device=device) / gw
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1, 2).tile(2)
    return torch.cos(angles), torch.sin(angles)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` (the halves swapped, the first negated)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention, one fused q/k/v projection, RoPE on the patch tokens."""

    def __init__(self, s: Dinov3VitSettings):
        super().__init__()
        dim = s.hidden_size
        self.heads = s.num_attention_heads
        self.prefix = s.prefix_tokens
        self.qkv = nn.Linear(dim, 3 * dim, bias=s.query_bias or s.key_bias or s.value_bias)
        self.proj = nn.Linear(dim, dim, bias=s.proj_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        *,
        fused: bool = False,
        add: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, t, c = x.shape
        qkv = linear_act(x, self.qkv, fused=fused)
        q, k, v = qkv.view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = rope
        p = self.prefix
        # rotate the patch tokens only; RoPE's float32 tables lift a bf16 q/k to float32 there (as
        # in transformers under autocast), and the attention then takes one dtype again
        q = torch.cat((q[:, :, :p], _rotate(q[:, :, p:], cos, sin).to(q.dtype)), dim=2)
        k = torch.cat((k[:, :, :p], _rotate(k[:, :, p:], cos, sin).to(k.dtype)), dim=2)
        y = (attention(q, k, v) if fused else F.scaled_dot_product_attention(q, k, v)).transpose(1, 2).reshape(n, t, c)
        return linear_act(y, self.proj, add=add, fused=fused)


class GatedMlp(nn.Module):
    """``fc2(act(gate) * up)``, ``fc1`` computing gate and up together (gate first)."""

    def __init__(self, dim: int, hidden: int, act: str, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = linear_act(x, self.fc1, fused=self.fused).chunk(2, dim=-1)
        return linear_act(self.act(gate) * up, self.fc2, add=add, fused=self.fused)


class Block(nn.Module):
    """A pre-norm transformer block with layer scale on both residual branches."""

    def __init__(self, s: Dinov3VitSettings):
        super().__init__()
        dim = s.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.attn = Attention(s)
        self.scale1 = nn.Parameter(torch.full((dim,), float(s.layerscale_value)))
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        if s.use_gated_mlp:
            self.mlp: nn.Module = GatedMlp(dim, s.intermediate_size, s.hidden_act, s.mlp_bias)
        else:
            self.mlp = Mlp(dim, s.intermediate_size, s.hidden_act)
        self.scale2 = nn.Parameter(torch.full((dim,), float(s.layerscale_value)))
        self.fused = False

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.fused:  # layer scales folded into proj / fc2; residual sums inside their kernels
            x = self.attn(self.norm1(x), rope, fused=True, add=x)
            return self.mlp(self.norm2(x), add=x)
        x = x + self.attn(self.norm1(x), rope) * self.scale1
        return x + self.mlp(self.norm2(x)) * self.scale2

    @torch.no_grad()
    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold each layer scale into the projection before it (the scales become
        1); ``kernels``: use the fused oneDNN kernels."""
        for scale, linear in ((self.scale1, self.attn.proj), (self.scale2, self.mlp.fc2)):
            fold_scale_(linear, scale)
            scale.fill_(1.0)
        self.fused = self.mlp.fused = kernels


class Dinov3Vit(Backbone):
    stage_modules = "blocks"  # stage k is the output of blocks[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = Dinov3VitSettings.from_config(config)
        dim, p = s.hidden_size, s.patch_size
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        if s.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, s.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.num_hidden_layers))
        self.norm = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        last = s.num_hidden_layers  # the index of the last stage, which transformers always normalises
        hf = stage_norm == "hf"
        every = stage_norm == "final"
        self._normed = {i for i in range(last + 1) if every or (hf and (s.apply_layernorm or i == last))}

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for block in self.blocks:
            block.fuse(kernels=fuse_kernels)

    def _rope(self, gh: int, gw: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        return _rope(gh, gw, s.head_dim, float(s.rope_theta), device)

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n = x.shape[0]
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        first = [self.cls_token.expand(n, -1, -1)]
        if self.register_tokens is not None:
            first.append(self.register_tokens.expand(n, -1, -1))
        x = torch.cat([*first, patches.flatten(2).transpose(1, 2)], dim=1)
        yield x, grid
        rope = self._rope(*grid, x.device)
        for block in self.blocks:
            x = block(x, rope)
            yield x, grid

    def stage_map(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        tokens, (gh, gw) = raw
        patches = tokens[:, self.settings.prefix_tokens :]
        if index in self._normed:
            patches = self.norm(patches)  # per token: the same as normalising all tokens, then slicing
        return patches.reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()

    def stage_class_token(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        cls = raw[0][:, 0]
        return (self.norm(cls) if index in self._normed else cls).contiguous()

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        return self.norm(raw_last[0][:, 0]).contiguous()


# Checkpoint key -> bbx key, applied in order where they match (after a leading "model." goes).
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\."), "patch_embed."),
    (re.compile(r"^embeddings\.(cls_token|register_tokens)$"), r"\1"),
    (re.compile(r"^layer\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.attention\.o_proj\."), ".attn.proj."),
    (re.compile(r"\.layer_scale([12])\.lambda1$"), r".scale\1"),
    (re.compile(r"\.mlp\.down_proj\."), ".mlp.fc2."),
]
# Projections stored apart that bbx keeps fused: attention q/k/v, the gated MLP's gate/up.
_PARTS = re.compile(
    r"^(?P<block>blocks\.\d+)\.(?:attention\.(?P<a>q|k|v)_proj|mlp\.(?P<m>gate|up)_proj)\.(?P<leaf>weight|bias)$"
)
_UNUSED = ("embeddings.mask_token", "rope_embeddings.inv_freq")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' DINOv3 ViT keys (the hub's ``layer.N`` and transformers 5's ``model.layer.N``)
    -> bbx's. Drops the mask token; concatenates q/k/v (and the gated MLP's gate/up) into bbx's fused
    projections. A bias the config leaves out of a fused projection that has others (DINOv3's key
    bias) is a zero part; the plain MLP's biases, when ``mlp_bias`` is false, are zeros too (adding
    zero is exact). Anything unrecognised, or a fused projection with parts missing, is kept under
    its own name, so the strict load reports it."""
    s = Dinov3VitSettings.from_config(config)
    out: dict[str, torch.Tensor] = {}
    # (fused name, leaf) -> part -> (checkpoint key, tensor)
    parts: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        k = key.removeprefix("model.")
        if k in _UNUSED or (k == "embeddings.register_tokens" and value.numel() == 0 and not s.num_register_tokens):
            continue  # transformers stores an empty register table when there are none
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        m = _PARTS.match(k)
        if m is None:
            out[k] = value
        elif m["a"] is not None:
            parts.setdefault((f"{m['block']}.attn.qkv", m["leaf"]), {})[m["a"]] = (key, value)
        elif s.use_gated_mlp:
            parts.setdefault((f"{m['block']}.mlp.fc1", m["leaf"]), {})[m["m"]] = (key, value)
        else:  # the plain MLP: its up projection is fc1 (a gate_proj here is unexpected)
            out[k if m["m"] == "gate" else f"{m['block']}.mlp.fc1.{m['leaf']}"] = value
    for (fused, leaf), got in parts.items():
        names, biased = (("q", "k", "v"), (s.query_bias, s.key_bias, s.value_bias))
        if fused.endswith(".fc1"):
            names, biased = ("gate", "up"), (s.mlp_bias, s.mlp_bias)
        if leaf == "bias":
            weights = parts.get((fused, "weight"), {})
            if not any(biased):  # the fused projection has no bias at all
                out.update(dict(got.values()))
                continue
            for name, has in zip(names, biased):
                if not has and name in weights:
                    if name in got:  # a bias the config says the model lacks: unexpected
                        out.setdefault(*got[name])
                    w = weights[name][1]
                    got[name] = ("", torch.zeros(w.shape[0], dtype=w.dtype))
        if all(n in got for n in names):
            out[f"{fused}.{leaf}"] = torch.cat([got[n][1] for n in names], dim=0)
        else:
            out.update({k: v for k, v in got.values() if k})
    if not s.mlp_bias and not s.use_gated_mlp:  # bbx's plain MLP always has biases
        for i in range(s.num_hidden_layers):
            for fc in ("fc1", "fc2"):
                w = out.get(f"blocks.{i}.mlp.{fc}.weight")
                if w is not None:
                    out.setdefault(f"blocks.{i}.mlp.{fc}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Dinov3Vit:
    return Dinov3Vit(config, stage_norm=stage_norm)
