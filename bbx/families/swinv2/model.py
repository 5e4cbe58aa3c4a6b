"""Swin Transformer V2 (Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution",
2022), transformers layout.

Loads the weights of ``Swinv2ForImageClassification`` (keys under ``swinv2.``, plus a
``classifier`` head that is dropped), ``Swinv2Model`` (bare keys, with the final ``layernorm``),
``Swinv2Backbone`` (bare ``embeddings``/``encoder`` keys, no final norm) and
``Swinv2ForMaskedImageModeling`` (SimMIM: the decoder and mask token are dropped) checkpoints such as
``microsoft/swinv2-tiny-patch4-window8-256``.

The network: a patch embedding (a ``patch_size`` convolution with that stride, then a LayerNorm),
then stages of blocks that attend within windows, every second block on windows cyclically shifted
by half a window (a mask keeps tokens that the shift brought together from opposite borders apart).
What V2 changes from Swin:

* **residual post-norm**: ``x = x + norm1(attn(x))``, ``x = x + norm2(mlp(x))``;
* **cosine attention**: the scores are cosine similarities of queries and keys times a learnt
  per-head scale ``exp(min(logit_scale, log 100))``; the key projection has no bias;
* **log-spaced continuous position bias**: an MLP (2 -> 512, ReLU, 512 -> heads) maps each relative
  offset ``(dy, dx)`` of a window, divided by ``pretrained_window - 1`` (the window the MLP was
  trained at; else the stage's own window - 1), times 8, as ``sign(t) log2(1 + |t|) / 3``, to a bias
  ``16 sigmoid(.)`` per head;
* **patch merging** reduces 4C -> 2C before its LayerNorm (Swin: after).

Each stage's window and shift come from the config's ``image_size`` (see
:meth:`Swinv2Settings.windows`), never from the images. Like transformers, the token grid of a
block is zero-padded on the right and bottom to whole windows, and an odd grid by one row/column
before merging, so any input size works. transformers adds the shifted-window mask (-100) to the
scores twice; bbx adds it twice as well, since with a large learnt scale the cosine scores span
more than 100.

Stages, exactly as ``Swinv2Backbone``: ``stem`` (the patch embedding output, after its norm) and
``stageK`` (stage K's last block, before the merging that opens stage K+1).

Stage norms (``stage_norm``):

* ``"hf"`` (default) and ``"none"``: the raw stage outputs; ``Swinv2Backbone`` applies no norm.
* ``"final"``: the checkpoint's trained final ``layernorm`` (``Swinv2Model.layernorm``, whose output
  is ``last_hidden_state``) on the last stage; the others raw. A checkpoint without it
  (``Swinv2Backbone``) is refused in this mode with the missing keys named.

Inference (``optimize_for_inference``): each block's attention bias (position bias and, in shifted
blocks, the mask) is computed once per padded grid size, the MLP runs in fused oneDNN kernels over
row slices that stay in cache, and so do the query/key/value and output projections.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.swinv2 import CPB_HIDDEN, Swinv2Settings
from bbx.nn.backbone import Backbone
from bbx.nn.layers import Mlp, in_row_slices, linear_act
from bbx.nn.windows import relative_position_index, shifted_window_mask, window_order

# transformers builds these norms with nn.LayerNorm's default eps, not config.layer_norm_eps: the
# patch embedding's and patch merging's.
_DEFAULT_EPS = 1e-5
#: the largest attention scale exp(logit_scale) may reach
_MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
#: F.normalize's floor on a norm (a zero key, from a padded token, stays zero)
_NORM_EPS = 1e-12


def relative_coords_table(window: int, pretrained: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The log-spaced relative coordinates ``[(2w-1)**2, 2]`` the position-bias MLP reads, row
    ``dy * (2w-1) + dx`` for the offset ``(dy, dx)``, with transformers' arithmetic (fp32)."""
    offsets = torch.arange(-(window - 1), window, dtype=torch.int64, device=device).float()
    table = torch.stack(torch.meshgrid([offsets, offsets], indexing="ij")).permute(1, 2, 0).contiguous()
    if pretrained > 0:
        table /= pretrained - 1
    elif window > 1:
        table /= window - 1
    table *= 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
    return table.view(-1, 2)


# --- blocks -----------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> normed patch tokens ``[B, h, w, D]`` (padded to whole patches)."""

    def __init__(self, s: Swinv2Settings):
        super().__init__()
        self.patch = s.patch_size
        self.proj = nn.Conv2d(s.num_channels, s.embed_dim, s.patch_size, stride=s.patch_size)
        self.norm = nn.LayerNorm(s.embed_dim, eps=_DEFAULT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -x.shape[2] % self.patch, -x.shape[3] % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class CosineWindowAttention(nn.Module):
    """Multi-head cosine attention within each window, with the continuous position bias."""

    def __init__(self, dim: int, heads: int, window: int, pretrained_window: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.window = window
        self.pretrained_window = pretrained_window
        # query, key and value projections, stacked; the key's bias is zero (transformers has none)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.cpb = nn.Sequential(nn.Linear(2, CPB_HIDDEN), nn.ReLU(), nn.Linear(CPB_HIDDEN, heads, bias=False))
        # computed on the CPU even when the model is built on the meta device (see Swinv2.__init__)
        self.register_buffer("coords", relative_coords_table(window, pretrained_window, "cpu"), persistent=False)
        self.register_buffer("index", relative_position_index(window, "cpu"), persistent=False)
        self.fused = False  # qkv and proj in oneDNN kernels (frozen CPU inference)

    def init_computed_buffers(self, device: torch.device) -> None:
        self.coords = relative_coords_table(self.window, self.pretrained_window, device)
        self.index = relative_position_index(self.window, device)

    def attention_bias(self, mask: torch.Tensor | None) -> torch.Tensor:
        """The additive attention bias: the position bias ``[1, h, N, N]``, or with the
        shifted-window mask ``[1, nW * h, N, N]`` (windows x heads as heads, shared over the batch)."""
        n = self.window**2
        table = self.cpb(self.coords.to(self.cpb[0].weight.dtype))  # (2w-1)^2, h
        bias = 16 * torch.sigmoid(table[self.index].view(n, n, self.heads).permute(2, 0, 1))  # h, N, N
        if mask is None:
            return bias.unsqueeze(0)
        # transformers adds the mask twice (Swinv2SelfAttention.forward)
        mask = mask.to(bias.dtype).unsqueeze(1)
        return (bias.unsqueeze(0) + mask + mask).reshape(1, -1, n, n)

    def forward(self, windows: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """``windows``: ``[B, nW, N, C]`` tokens of each window; ``attn_bias`` from
        :meth:`attention_bias`."""
        b, nw, n, c = windows.shape
        h = self.heads
        d = c // h
        qkv = linear_act(windows, self.qkv, fused=self.fused)
        q, k, v = qkv.view(b, nw, n, 3, h, d).permute(3, 0, 1, 4, 2, 5).unbind(0)  # each B, nW, h, N, d
        # cosine similarity times the scale: unit queries and keys (as F.normalize: x / max(|x|,
        # 1e-12)), the scale folded into the queries' factor; one pass each
        scale = torch.clamp(self.logit_scale, max=_MAX_LOGIT_SCALE).exp()  # h, 1, 1
        q = q * (scale / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(_NORM_EPS)).to(q.dtype)
        k = k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        if attn_bias.shape[1] == h:  # one bias for every window: windows x batch is the batch
            q, k, v = (t.reshape(b * nw, h, n, d) for t in (q, k, v))
        else:  # a bias per window: windows x heads are the heads, shared over the batch
            q, k, v = (t.reshape(b, nw * h, n, d) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype), scale=1.0)
        out = out.view(b, nw, h, n, d).transpose(2, 3).reshape(b, nw, n, c)
        return linear_act(out, self.proj, fused=self.fused)


class Swinv2Block(nn.Module):
    """Post-norm (shifted-)window cosine attention and MLP, each residual. Tokens are ``[B, H, W, C]``."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, pretrained_window: int, s: Swinv2Settings):
        super().__init__()
        self.window = window
        self.shift = shift
        self.attn = CosineWindowAttention(dim, heads, window, pretrained_window, s.qkv_bias)
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.mlp = Mlp(dim, int(s.mlp_ratio * dim), s.hidden_act)
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        #: attention biases per padded grid size, once the weights are frozen (optimize_for_inference)
        self.bias_cache: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width, c = x.shape
        w, shift = self.window, self.shift
        pad_h, pad_w = -height % w, -width % w
        y = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        hp, wp = height + pad_h, width + pad_w
        order, inverse = window_order(hp, wp, w, shift, y.device)
        windows = y.reshape(b, hp * wp, c).index_select(1, order).view(b, -1, w * w, c)
        y = self.attn(windows, self._bias(hp, wp, x))
        y = y.reshape(b, hp * wp, c).index_select(1, inverse).view(b, hp, wp, c)
        if pad_h or pad_w:
            y = y[:, :height, :width]
        x = x + self.norm1(y)
        if self.mlp.fused:
            return in_row_slices(self._mlp, x, width=self.mlp.fc1.out_features)
        return self._mlp(x)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.mlp(x))

    def _bias(self, hp: int, wp: int, x: torch.Tensor) -> torch.Tensor:
        def compute() -> torch.Tensor:
            mask = None
            if self.shift:
                mask = shifted_window_mask(hp, wp, self.window, self.shift, device=x.device, dtype=torch.float32)
            return self.attn.attention_bias(mask)

        if self.bias_cache is None:  # weights may still change: compute every time
            return compute()
        key = (hp, wp, x.device, self.attn.cpb[0].weight.dtype)
        if key not in self.bias_cache:
            self.bias_cache[key] = compute()
        return self.bias_cache[key]


class PatchMerging(nn.Module):
    """Each 2x2 neighbourhood -> one token of twice the width (an odd grid is zero-padded),
    reduced and then normed."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=_DEFAULT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # channel order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x))


class Swinv2Stage(nn.Module):
    """Patch merging (all stages but the first), then ``depth`` blocks alternating plain and
    shifted windows (when the stage shifts at all)."""

    def __init__(
        self, dim: int, depth: int, heads: int, window: int, shift: int, pretrained: int, s: Swinv2Settings, *, merge
    ):
        super().__init__()
        self.merge = PatchMerging(dim // 2) if merge else nn.Identity()
        self.blocks = nn.ModuleList(
            Swinv2Block(dim, heads, window, 0 if j % 2 == 0 else shift, pretrained, s) for j in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        for block in self.blocks:
            x = block(x)
        return x


# --- the backbone -----------------------------------------------------------------------------


class Swinv2(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = Swinv2Settings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = PatchEmbed(s)
        # the tables are computed on the CPU even when the model is built on the meta device (meta
        # tensors would route meshgrid through torch's decompositions) and moved with the model
        self.stages = nn.ModuleList(
            Swinv2Stage(dim, depth, heads, window, shift, pretrained, s, merge=i > 0)
            for i, (dim, depth, heads, (window, shift), pretrained) in enumerate(
                zip(s.dims, s.depths, s.num_heads, s.windows(), s.pretrained_window_sizes)
            )
        )
        self.final_norm = nn.LayerNorm(s.dims[-1], eps=s.layer_norm_eps)
        if stage_norm != "final":  # unused then: a Swinv2Backbone checkpoint (which lacks it) loads
            self.optional_keys = {"final_norm.weight": 1.0, "final_norm.bias": 0.0}

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage norm 'final' needs the checkpoint's trained final norm (layernorm.weight and "
                "layernorm.bias of Swinv2Model), which this checkpoint does not have; use stage norm hf or none"
            )
        return ""

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        """Frozen weights: each block's attention bias is computed once per input size instead of
        at every call; the MLPs run in the fused kernels."""
        for stage in self.stages:
            for block in stage.blocks:
                block.bias_cache = {}
                block.mlp.fused = fuse_kernels
                block.attn.fused = fuse_kernels

    def init_computed_buffers(self) -> None:
        device = self.patch_embed.proj.weight.device
        for stage in self.stages:
            for block in stage.blocks:
                block.attn.init_computed_buffers(device)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.patch_embed(x)
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw)
        return raw.permute(0, 3, 1, 2).contiguous()


# --- checkpoint keys --------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_MERGE_KEY = re.compile(r"^encoder\.layers\.(\d+)\.downsample\.(.+)$")
_BLOCK_PARTS = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "attention.self.logit_scale": "attn.logit_scale",
    "attention.self.continuous_position_bias_mlp.": "attn.cpb.",
}
_QKV_PARTS = {"attention.self.query.": 0, "attention.self.key.": 1, "attention.self.value.": 2}
_QKV_NAMES = ("query", "key", "value")
#: tables transformers computes (non-persistent in transformers 5; older files may hold them)
_COMPUTED = ("attention.self.relative_coords_table", "attention.self.relative_position_index")
_TOP_PARTS = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.norm.": "patch_embed.norm.",
    "layernorm.": "final_norm.",
}
_HEADS = ("classifier.", "decoder.")  # classification head; SimMIM's reconstruction decoder


def _rename(name: str, parts: Mapping[str, str]) -> str | None:
    for old, new in parts.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' Swin V2 keys -> bbx's. Heads (classifier, SimMIM decoder and mask token) and
    computed tables are dropped; each block's query/key/value projections are stacked into one
    (with a zero key bias when the query and value have biases). Anything else unrecognised keeps
    its name, so the strict load reports it."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith(_HEADS):
            continue
        k = key.removeprefix("swinv2.")
        if k == "embeddings.mask_token":
            continue
        block = _BLOCK_KEY.match(k)
        merge = _MERGE_KEY.match(k)
        if block:
            stage, index, rest = block.groups()
            if rest in _COMPUTED:
                continue
            prefix = f"stages.{stage}.blocks.{index}.attn"
            slot = next((i for part, i in _QKV_PARTS.items() if rest.startswith(part)), None)
            if slot is not None:
                leaf = rest.rsplit(".", 1)[-1]
                qkv.setdefault((prefix, leaf), {})[slot] = value
                continue
            renamed = _rename(rest, _BLOCK_PARTS)
            if renamed is not None:
                k = f"stages.{stage}.blocks.{index}.{renamed}"
        elif merge:
            # transformers' stage i ends with the merging; in bbx it opens stage i + 1
            stage, rest = merge.groups()
            k = f"stages.{int(stage) + 1}.merge.{rest}"
        else:
            k = _rename(k, _TOP_PARTS) or k
        out[k] = value
    for (prefix, leaf), parts in qkv.items():
        if leaf == "bias" and set(parts) == {0, 2}:  # the key projection has no bias
            parts[1] = torch.zeros_like(parts[0])
        if len(parts) == 3:
            out[f"{prefix}.qkv.{leaf}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:  # incomplete: leave the pieces for the strict load to report
            for slot, tensor in parts.items():
                out[f"{prefix}.{_QKV_NAMES[slot]}.{leaf}"] = tensor
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Swinv2:
    return Swinv2(config, stage_norm=stage_norm)
