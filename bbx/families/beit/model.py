"""BEiT, transformers layout.

Paper: Bao et al., "BEiT: BERT Pre-Training of Image Transformers" (ICLR 2022): a ViT pretrained
by masked image modelling, whose attention adds a learned relative position bias (T5-style, one
table shared by all blocks or one per block) instead of, or beside, absolute position embeddings.

Loads ``BeitForMaskedImageModeling`` (the ``-pt22k`` repos), ``BeitForImageClassification`` (the
``-ft22k`` ones), ``BeitModel`` and ``BeitBackbone`` checkpoints, in the hub's names
(``encoder.layer.N.attention.attention.query``, ...) and in transformers 5's in-memory ones
(``layers.N.attention.q_proj``, ``shared_position_bias``, ...). Heads (the masked-image-modelling
``lm_head``, the classifier, the FPN and segmentation heads) are dropped.

The network: a ``patch_size`` convolution cuts the image into patch tokens, a class token goes
first, absolute position embeddings are added where the config has them; then
``num_hidden_layers`` pre-norm blocks, ``x + lambda_1 * attention(norm1(x))`` and
``x + lambda_2 * mlp(norm2(x))`` (layer scales where ``layer_scale_init_value`` > 0). Attention
scores get the relative position bias: the shared table's plus the block's own. A table covers
the ``(2 Wh - 1) x (2 Ww - 1)`` offsets of the checkpoint's grid plus three entries for the class
token (class to patch, patch to class, class to class); for another grid it is resampled as
transformers does (``BeitRelativePositionBias.forward``: bilinear, ``align_corners=False``, the
offsets read as a ``[2 Ww - 1, 2 Wh - 1]`` grid, exactly as there), then gathered by the grid's
relative position index. Absolute position embeddings are resampled bicubically
(``interpolate_pos_encoding``) whenever the input grid is not the checkpoint's or is not square.

Stages, as ``BeitBackbone`` defines them: ``stem`` is the embedding output and ``stageK`` the
output of block K, each map the patch tokens only, ``[N, C, H // patch, W // patch]``.

Stage norms: ``BeitBackbone`` applies none (``"hf"`` = ``"none"`` = the raw hidden states); bbx
leaves its optional FPN (``add_fpn``) out. ``"final"`` applies the checkpoint's final per-token
LayerNorm to every stage: ``BeitModel.layernorm`` (there when ``use_mean_pooling`` is false) or,
in a masked-image-modelling checkpoint with mean pooling, its head's ``layernorm`` (the
pretraining's final norm). The fine-tuned mean-pooling checkpoints have no per-token final norm
(theirs normalises the averaged patches) and ``"final"`` is refused for them. The class token
follows the stage's norm; the image embedding is ``BeitModel``'s ``pooler_output``: the pooler's
LayerNorm of the mean patch token (``use_mean_pooling``), else the normed class token.

Inference only: no dropout, no drop-path, no mask token. The q/k/v projections run as one fused
projection (BEiT's keys have no bias: a zero part of the fused bias, which is exact).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.beit import BeitSettings
from bbx.nn.backbone import Backbone
from bbx.nn.layers import Mlp, fold_scale_, linear_act


@functools.lru_cache(maxsize=16)
def relative_position_index(gh: int, gw: int) -> torch.Tensor:
    """``[T, T]`` (T = gh * gw + 1) indices into a bias table for a ``gh`` x ``gw`` grid, the class
    token first (transformers' ``generate_relative_position_index``)."""
    entries = (2 * gh - 1) * (2 * gw - 1) + 3
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    index = torch.zeros((gh * gw + 1,) * 2, dtype=rel.dtype)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = entries - 3  # class to patch
    index[0:, 0] = entries - 2  # patch to class
    index[0, 0] = entries - 1  # class to class
    return index


class RelativeBias(nn.Module):
    """A relative position bias table for the checkpoint's grid, and the ``[heads, T, T]`` bias it
    gives for any grid."""

    def __init__(self, grid: tuple[int, int], heads: int):
        super().__init__()
        self.grid = grid
        gh, gw = grid
        self.table = nn.Parameter(torch.zeros((2 * gh - 1) * (2 * gw - 1) + 3, heads))

    def forward(self, gh: int, gw: int) -> torch.Tensor:
        table = self.table
        if (gh, gw) != self.grid:
            old_h, old_w = 2 * self.grid[0] - 1, 2 * self.grid[1] - 1
            new_h, new_w = 2 * gh - 1, 2 * gw - 1
            sub = table[: old_h * old_w].reshape(1, old_w, old_h, -1).permute(0, 3, 1, 2)  # as transformers
            sub = F.interpolate(sub, size=(new_h, new_w), mode="bilinear")
            table = torch.cat([sub.permute(0, 2, 3, 1).reshape(new_h * new_w, -1), table[old_h * old_w :]])
        index = relative_position_index(gh, gw).to(table.device)
        t = gh * gw + 1
        return table[index.view(-1)].view(t, t, -1).permute(2, 0, 1).contiguous()


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection and an additive score bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5  # passed as transformers passes it
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, *, fused: bool = False, add: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, t, c = x.shape
        qkv = linear_act(x, self.qkv, fused=fused)
        q, k, v = qkv.view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if bias is not None:
            bias = bias.to(q.dtype)[None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        y = y.transpose(1, 2).reshape(n, t, c)
        return linear_act(y, self.proj, add=add, fused=fused)


class Block(nn.Module):
    """A pre-norm transformer block with (optional) layer scales and its own bias table (optional)."""

    def __init__(self, s: BeitSettings):
        super().__init__()
        dim = s.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.attn = Attention(dim, s.num_attention_heads)
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.mlp = Mlp(dim, s.intermediate_size, s.hidden_act)
        scale = float(s.layer_scale_init_value)
        self.scale1 = nn.Parameter(torch.full((dim,), scale)) if scale > 0 else None
        self.scale2 = nn.Parameter(torch.full((dim,), scale)) if scale > 0 else None
        self.bias = RelativeBias(s.grid, s.num_attention_heads) if s.use_relative_position_bias else None
        self.fused = False

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.fused:  # layer scales folded into proj / fc2; residual sums inside their kernels
            x = self.attn(self.norm1(x), bias, fused=True, add=x)
            return self.mlp(self.norm2(x), add=x)
        a = self.attn(self.norm1(x), bias)
        x = x + (a if self.scale1 is None else self.scale1 * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.scale2 is None else self.scale2 * m)

    @torch.no_grad()
    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold each layer scale into the projection before it (the scales go);
        ``kernels``: use the fused oneDNN kernels."""
        for name, linear in (("scale1", self.attn.proj), ("scale2", self.mlp.fc2)):
            scale = getattr(self, name)
            if scale is not None:
                fold_scale_(linear, scale)
                setattr(self, name, None)
        self.fused = self.mlp.fused = kernels


class Beit(Backbone):
    stage_modules = "blocks"  # stage k is the output of blocks[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = BeitSettings.from_config(config)
        dim, p = s.hidden_size, s.patch_size
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = nn.Conv2d(s.num_channels, dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        gh, gw = s.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw + 1, dim)) if s.use_absolute_position_embeddings else None
        self.shared_bias = RelativeBias(s.grid, s.num_attention_heads) if s.use_shared_relative_position_bias else None
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.num_hidden_layers))
        # the per-token final norm ("final") and the pooler's norm (the embedding); a checkpoint has
        # one, the other or neither: NaN marks one absent
        self.final_norm = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.pool_norm = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        optional = {"pool_norm.weight": float("nan"), "pool_norm.bias": float("nan")}
        if stage_norm != "final":
            optional |= {"final_norm.weight": float("nan"), "final_norm.bias": float("nan")}
        self.optional_keys = optional
        self._final = stage_norm == "final"
        self._biases: dict[tuple[int, int, torch.device, torch.dtype], list[torch.Tensor | None]] | None = None

    @staticmethod
    def _loaded(norm: nn.LayerNorm) -> bool:
        w = norm.weight
        return w.is_meta or not bool(torch.isnan(w.detach()[:1]).any())

    @property
    def has_embedding(self) -> bool:
        """Whether the checkpoint has the norm its pooled output needs."""
        return self._loaded(self.pool_norm if self.settings.use_mean_pooling else self.final_norm)

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for block in self.blocks:
            block.fuse(kernels=fuse_kernels)
        self._biases = {}  # frozen weights: the biases of a grid are computed once

    def _block_biases(self, gh: int, gw: int, device: torch.device) -> list[torch.Tensor | None]:
        """Each block's attention bias (the shared table's plus its own) for a ``gh`` x ``gw`` grid."""
        dtype = self.cls_token.dtype
        key = (gh, gw, device, dtype)
        if self._biases is not None and key in self._biases:
            return self._biases[key]
        shared = self.shared_bias(gh, gw) if self.shared_bias is not None else None
        out: list[torch.Tensor | None] = []
        for block in self.blocks:
            own = block.bias(gh, gw) if block.bias is not None else None
            if own is not None and shared is not None:
                out.append(own + shared)  # transformers' order: the block's bias plus the shared one
            else:
                out.append(own if own is not None else shared)
        if self._biases is not None:
            self._biases[key] = out
        return out

    def _positions(self, gh: int, gw: int, height: int, width: int) -> torch.Tensor:
        """The absolute position embeddings for the input (transformers' ``interpolate_pos_encoding``:
        the table as is for its own square grid, else its patch part resized bicubically)."""
        table = self.pos_embed
        assert table is not None
        n = table.shape[1] - 1
        if gh * gw == n and height == width:
            return table
        side = int(n**0.5)
        patch = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat((table[:, :1], patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)), dim=1)

    def iter_stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        n, _, height, width = x.shape
        patches = self.patch_embed(x)
        gh, gw = patches.shape[2], patches.shape[3]
        x = torch.cat([self.cls_token.expand(n, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        if self.pos_embed is not None:
            x = x + self._positions(gh, gw, height, width)
        yield x, (gh, gw)
        biases = self._block_biases(gh, gw, x.device)
        for block, bias in zip(self.blocks, biases):
            x = block(x, bias)
            yield x, (gh, gw)

    def stage_map(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        tokens, (gh, gw) = raw
        patches = tokens[:, 1:]
        if self._final:
            patches = self.final_norm(patches)
        return patches.reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()

    def stage_class_token(self, index: int, raw: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        cls = raw[0][:, 0]
        return (self.final_norm(cls) if self._final else cls).contiguous()

    def embedding(self, raw_last: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        if not self.has_embedding:
            raise ValueError("this checkpoint has no pooler norm (no pooled output) to give an image embedding")
        tokens = raw_last[0]
        if self.settings.use_mean_pooling:
            return self.pool_norm(tokens[:, 1:].mean(1)).contiguous()
        return self.final_norm(tokens[:, 0]).contiguous()

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self._final and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage_norm 'final' needs a final per-token LayerNorm (BeitModel's layernorm, or a masked-image-"
                "modelling head's), which this checkpoint lacks (a mean-pooling classifier normalises only the "
                "averaged patches); use stage_norm 'hf' or 'none'"
            )
        return ""


# Checkpoint key (the model's own part, "beit." removed) -> bbx key, every matching rule in turn.
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\.projection\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^embeddings\.cls_token$"), "cls_token"),
    (
        re.compile(r"^(?:encoder\.relative_position_bias|shared_position_bias)\.relative_position_bias_table$"),
        "shared_bias.table",
    ),
    (re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.(?:attention\.attention\.)?relative_position_bias\.relative_position_bias_table$"), ".bias.table"),
    (re.compile(r"\.attention\.(?:output\.dense|o_proj)\."), ".attn.proj."),
    (re.compile(r"\.(?:intermediate\.dense|mlp\.fc1)\."), ".mlp.fc1."),
    (re.compile(r"\.(?:output\.dense|mlp\.fc2)\."), ".mlp.fc2."),
    (re.compile(r"\.layernorm_before\."), ".norm1."),
    (re.compile(r"\.layernorm_after\."), ".norm2."),
    (re.compile(r"\.lambda_([12])$"), r".scale\1"),
    (re.compile(r"^pooler\.layernorm\."), "pool_norm."),
]
_QKV = re.compile(
    r"^(?P<block>blocks\.\d+)\.attention\.(?:attention\.(?P<a>query|key|value)|(?P<b>q|k|v)_proj)\.(?P<leaf>weight|bias)$"
)
_PART = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_HEADS = ("lm_head.", "classifier.", "fpn", "decode_head.", "auxiliary_head.")


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' BEiT keys -> bbx's. Heads and the mask token are dropped, and so are the
    ``relative_position_index`` buffers older checkpoints carry (bbx computes them). The model's
    own final ``layernorm`` is the final norm; a masked-image-modelling head's ``layernorm`` (a key
    outside the ``beit.`` part) is the final norm only when the model has none (mean pooling).
    q/k/v are concatenated into the fused projection, the key's missing bias a zero part. Anything
    unrecognised, or a q/k/v set with parts missing, keeps its own name, so the strict load
    reports it."""
    wrapped = any(k.startswith("beit.embeddings.") or k.startswith("beit.layers.") for k in state_dict)
    out: dict[str, torch.Tensor] = {}
    head_norm: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[int, tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_index") or key.endswith("mask_token"):
            continue
        inner = key.removeprefix("beit.")
        if inner.startswith(_HEADS) and inner == key:
            continue
        if key.startswith("layernorm.") and wrapped:  # the masked-image-modelling head's norm
            head_norm[key.removeprefix("layernorm.")] = value
            continue
        k = inner
        if k.startswith("layernorm."):
            k = "final_norm." + k.removeprefix("layernorm.")
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        m = _QKV.match(k)
        if m is None:
            out[k] = value
            continue
        parts.setdefault((m["block"], m["leaf"]), {})[_PART[m["a"] or m["b"]]] = (key, value)
    for (block, leaf), got in parts.items():
        if leaf == "bias" and 1 not in got and 0 in got:
            got[1] = ("", torch.zeros_like(got[0][1]))  # BEiT's keys have no bias
        if sorted(got) == [0, 1, 2]:
            out[f"{block}.attn.qkv.{leaf}"] = torch.cat([got[i][1] for i in range(3)], dim=0)
        else:
            out.update({k: v for k, v in got.values() if k})
    if not any(k.startswith("final_norm.") for k in out):
        out.update({f"final_norm.{leaf}": v for leaf, v in head_norm.items()})
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Beit:
    return Beit(config, stage_norm=stage_norm)
