"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", 2021), transformers layout.

Loads the weights of ``SwinForImageClassification`` (keys under ``swin.``, plus a ``classifier``
head that is dropped), ``SwinModel`` (bare keys, with the final ``layernorm``),
``SwinBackbone.save_pretrained`` (bare ``embeddings``/``encoder`` keys, ``hidden_states_norms.*``
and, from transformers 5 on, ``swin.layernorm``) and ``SwinForMaskedImageModeling`` (SimMIM; the
decoder and mask token are dropped) checkpoints such as ``microsoft/swin-tiny-patch4-window7-224``.

The network: a patch embedding (a ``patch_size`` convolution with stride ``patch_size``, then a
LayerNorm, plus absolute position embeddings when ``use_absolute_embeddings``), then stages of
blocks that attend within ``window_size`` x ``window_size`` windows, every second block on windows
cyclically shifted by ``window_size // 2`` (with a mask keeping tokens that the shift brought
together from opposite borders apart). Each stage after the first starts with a patch merging
(2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C).

Stages and what they report, exactly as transformers' ``SwinBackbone``:

* ``stem``: the patch embedding output (after its norm and position embeddings), stride
  ``patch_size``;
* ``stageK``: the output of stage K's last block *before* the patch merging that opens stage K+1,
  stride ``patch_size * 2**(K-1)``, ``embed_dim * 2**(K-1)`` channels.

Like ``SwinBackbone`` (which runs the encoder with ``always_partition=True``), windows keep their
size and shifted blocks keep their shift at every input size: the token grid is zero-padded on the
right and bottom to a multiple of the window (after the block's first norm), the input image to a
multiple of the patch size, and an odd grid by one row/column before patch merging. Any input size
works; :meth:`Swin.map_sizes` is that arithmetic (ceil divisions).

Stage norms (``stage_norm``):

* ``"hf"`` (default): transformers' backbone LayerNorm ``hidden_states_norms.<stage>`` on every
  reported stage, the stem included (eps 1e-5). Checkpoints that do not have them (classification
  and base-model layouts, or a backbone saved for other stages) get them as transformers creates
  them: weight 1, bias 0. Saved backbone norms load.
* ``"none"``: the raw stage outputs.
* ``"final"``: the checkpoint's trained final ``layernorm`` (``SwinModel.layernorm``, whose output
  is ``last_hidden_state``) on the last stage, which is the only stage whose width it fits; the
  other stages are raw. A checkpoint without that norm is refused with the missing keys named.

With ``use_absolute_embeddings``, the position embeddings are added as trained at the
checkpoint's grid; at any other grid they are resized bicubically first, as transformers does when
called with ``interpolate_pos_encoding=True`` (its backbone refuses such sizes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.errors import ModelError
from bbx.families.swin import SwinSettings
from bbx.nn.backbone import Backbone
from bbx.nn.layers import Mlp, in_row_slices
from bbx.nn.windows import PatchMerging, WindowAttention, relative_position_index, shifted_window_mask, window_order

# transformers builds these norms with nn.LayerNorm's default eps, not config.layer_norm_eps:
# the patch embedding's, patch merging's and the backbone's stage norms.
_DEFAULT_EPS = 1e-5


# --- blocks -----------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> normed patch tokens ``[B, h, w, D]`` (padded to whole patches)."""

    def __init__(self, s: SwinSettings):
        super().__init__()
        self.patch = s.patch_size
        self.proj = nn.Conv2d(s.num_channels, s.embed_dim, s.patch_size, stride=s.patch_size)
        self.norm = nn.LayerNorm(s.embed_dim, eps=_DEFAULT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -x.shape[2] % self.patch, -x.shape[3] % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each residual. Tokens are ``[B, H, W, C]``."""

    def __init__(self, dim: int, heads: int, shift: int, s: SwinSettings):
        super().__init__()
        self.window = s.window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.attn = WindowAttention(dim, heads, s.window_size, s.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.mlp = Mlp(dim, int(s.mlp_ratio * dim), s.hidden_act)
        #: attention biases per padded grid size, once the weights are frozen (optimize_for_inference)
        self.bias_cache: dict[tuple[int, int, torch.device], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, height, width, c = x.shape
        w, shift = self.window, self.shift
        y = self.norm1(x)
        pad_h, pad_w = -height % w, -width % w
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = height + pad_h, width + pad_w
        order, inverse = window_order(hp, wp, w, shift, y.device)
        windows = y.reshape(b, hp * wp, c).index_select(1, order).view(b, -1, w * w, c)
        y = self.attn(windows, self._bias(index, mask if shift else None, hp, wp))
        y = y.reshape(b, hp * wp, c).index_select(1, inverse).view(b, hp, wp, c)
        if pad_h or pad_w:
            y = y[:, :height, :width]
        x = x + y
        if self.mlp.fused:
            return in_row_slices(self._mlp, x, width=self.mlp.fc1.out_features)
        return self._mlp(x)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x), add=x)

    def _bias(self, index: torch.Tensor, mask: torch.Tensor | None, hp: int, wp: int) -> torch.Tensor:
        if self.bias_cache is None:  # weights may still change: compute every time
            return self.attn.attention_bias(index, mask)
        key = (hp, wp, index.device)
        if key not in self.bias_cache:
            self.bias_cache[key] = self.attn.attention_bias(index, mask)
        return self.bias_cache[key]


class SwinStage(nn.Module):
    """Patch merging (all stages but the first), then ``depth`` blocks alternating plain and
    shifted windows."""

    def __init__(self, dim: int, depth: int, heads: int, s: SwinSettings, *, merge: bool):
        super().__init__()
        self.window = s.window_size
        self.shift = s.window_size // 2
        self.merge = PatchMerging(dim // 2) if merge else nn.Identity()
        shifts = [0 if j % 2 == 0 else self.shift for j in range(depth)]
        self.blocks = nn.ModuleList(SwinBlock(dim, heads, shift, s) for shift in shifts)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        mask = None
        if self.shift and len(self.blocks) > 1:
            w = self.window
            hp, wp = x.shape[1] + (-x.shape[1] % w), x.shape[2] + (-x.shape[2] % w)
            mask = shifted_window_mask(hp, wp, w, self.shift, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, index, mask)
        return x


# --- the backbone -----------------------------------------------------------------------------


class Swin(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = SwinSettings.from_config(config)
        dims = s.dims
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = PatchEmbed(s)
        if s.use_absolute_embeddings:
            gh, gw = s.grid
            self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw, s.embed_dim))
        else:
            self.pos_embed = None
        self.stages = nn.ModuleList(
            SwinStage(dim, depth, heads, s, merge=i > 0)
            for i, (dim, depth, heads) in enumerate(zip(dims, s.depths, s.num_heads))
        )
        # Every stage has its backbone norm, whatever the selection (selections change after build).
        specs = self.stage_specs
        self.stage_norms = nn.ModuleDict({spec.name: nn.LayerNorm(spec.channels, eps=_DEFAULT_EPS) for spec in specs})
        self.final_norm = nn.LayerNorm(dims[-1], eps=s.layer_norm_eps)
        # computed on the CPU even when the model is built on the meta device (meta tensors would
        # route meshgrid through torch's decompositions: a second and more on first use)
        self.register_buffer("rel_index", relative_position_index(s.window_size, "cpu"), persistent=False)

        optional: dict[str, float] = {}
        norms = [f"stage_norms.{spec.name}" for spec in specs]
        if stage_norm != "final":
            norms.append("final_norm")  # unused then: a checkpoint without it loads
        for name in norms:
            optional[f"{name}.weight"] = 1.0
            optional[f"{name}.bias"] = 0.0
        self.optional_keys = optional

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage norm 'final' needs the checkpoint's trained final norm (layernorm.weight and "
                "layernorm.bias of SwinModel), which this checkpoint does not have; use stage norm hf or none"
            )
        return ""

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        """Frozen weights: each block's attention bias (relative positions plus the shifted-window
        mask) is computed once per input size instead of at every call."""
        for stage in self.stages:
            for block in stage.blocks:
                block.bias_cache = {}
                block.mlp.fused = fuse_kernels

    def init_computed_buffers(self) -> None:
        self.rel_index = relative_position_index(self.settings.window_size, self.patch_embed.proj.weight.device)

    def _position_embeddings(self, height: int, width: int) -> torch.Tensor:
        gh, gw = self.settings.grid
        table = self.pos_embed.view(1, gh, gw, -1)
        if (height, width) == (gh, gw):
            return table
        grid = table.permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).to(table.dtype)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self._position_embeddings(x.shape[1], x.shape[2])
        yield x
        for stage in self.stages:
            x = stage(x, self.rel_index)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "hf":
            raw = self.stage_norms[self.stage_specs[index].name](raw)
        elif self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw)
        return raw.permute(0, 3, 1, 2).contiguous()


# --- checkpoint keys --------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_MERGE_KEY = re.compile(r"^encoder\.layers\.(\d+)\.downsample\.(.+)$")
# block-relative names, in the hub's (transformers 4) spelling and transformers 5's in-memory one
_BLOCK_PARTS = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "attention.o_proj.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "mlp.fc1.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "mlp.fc2.": "mlp.fc2.",
    "attention.self.relative_position_bias_table": "attn.bias_table",
    "attention.relative_position_bias.relative_position_bias_table": "attn.bias_table",
}
_QKV_PARTS = {
    "attention.self.query.": 0,
    "attention.self.key.": 1,
    "attention.self.value.": 2,
    "attention.q_proj.": 0,
    "attention.k_proj.": 1,
    "attention.v_proj.": 2,
}
_QKV_NAMES = ("query", "key", "value")
_TOP_PARTS = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.norm.": "patch_embed.norm.",
    "embeddings.position_embeddings": "pos_embed",
    "hidden_states_norms.": "stage_norms.",
    "layernorm.": "final_norm.",
}
_HEADS = ("classifier.", "decoder.")  # classification head; SimMIM's reconstruction decoder


def _rename(name: str, parts: Mapping[str, str]) -> str | None:
    for old, new in parts.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' Swin keys -> bbx's. Heads (classifier, SimMIM decoder and mask token) are
    dropped; ``relative_position_index`` tables (saved by transformers 4) are checked against the
    config's window size and dropped; each block's query/key/value projections are stacked into
    one. Anything else unrecognised keeps its name, so the strict load reports it."""
    window = SwinSettings.from_config(config).window_size
    expected_index: torch.Tensor | None = None
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith(_HEADS):
            continue
        k = key.removeprefix("swin.")
        if k == "embeddings.mask_token":
            continue
        if k.endswith("relative_position_index"):
            if expected_index is None:
                expected_index = relative_position_index(window)
            if value.numel() != expected_index.numel() or not torch.equal(value.flatten().long(), expected_index):
                raise ModelError(f"{key} does not match window_size {window} of config.json")
            continue
        block = _BLOCK_KEY.match(k)
        merge = _MERGE_KEY.match(k)
        if block:
            stage, index, rest = block.groups()
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
        if len(parts) == 3:
            out[f"{prefix}.qkv.{leaf}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:  # incomplete: leave the pieces for the strict load to report
            for slot, tensor in parts.items():
                out[f"{prefix}.{_QKV_NAMES[slot]}.{leaf}"] = tensor
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Swin:
    return Swin(config, stage_norm=stage_norm)
