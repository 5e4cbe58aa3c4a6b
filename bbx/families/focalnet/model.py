"""FocalNet (Yang et al., "Focal Modulation Networks", 2022), transformers layout.

Loads the weights of ``FocalNetForImageClassification`` (``focalnet.`` prefix; the ``classifier``
head is dropped), ``FocalNetModel``, ``FocalNetBackbone`` and ``FocalNetForMaskedImageModeling``
(the decoder and mask token are dropped) checkpoints such as ``microsoft/focalnet-tiny``.

The network: a patch embedding (a ``patch_size`` conv with that stride, or with
``use_conv_embed`` a 7x7 stride-4 conv, then a LayerNorm), then stages of focal-modulation blocks;
every stage but the last ends with a downsample (a 2x2 stride-2 conv, or 3x3 with
``use_conv_embed``, then a LayerNorm) to twice the width. A block replaces attention by focal
modulation: a linear layer gives a query ``q``, a context ``z`` and ``L + 1`` gates (``L`` =
``focal_levels``); ``L`` depthwise convs with GELU (kernels ``focal_window + 2l``) aggregate ``z``
hierarchically, each level weighted by its gate, plus the GELU of the global average of the last
level times the last gate (divided by ``L + 1`` with ``normalize_modulator``); a 1x1 conv of that
sum modulates ``q`` by a product; an optional LayerNorm (``use_post_layernorm_in_modulation``) and
a linear projection follow. Blocks are pre-norm (``x + g1 * mod(norm1(x))``, ``x + g2 *
mlp(norm2(x))``) or, with ``use_post_layernorm``, post-norm (``x + g1 * norm1(mod(x))``, ``x + g2
* norm2(mlp(x))``); the layer scales ``g1``, ``g2`` exist with ``use_layerscale``.

Stages and stage norms, exactly as transformers' ``FocalNetBackbone`` (see the package
docstring): ``hf`` and ``none`` are the same raw maps (the backbone applies no norm);
``final`` is the trained ``FocalNetModel.layernorm`` on the last stage, the others raw.

Tokens are ``[B, H, W, C]`` rows throughout; convolutions see them as channels-last ``[B, C, H,
W]`` views. Inference (``optimize_for_inference``): the layer scales are folded into the
projection before them (pre-norm) or into the norm's affine (post-norm), linear + GELU and linear +
residual run as oneDNN kernels, the depthwise convs with their GELU too, and the MLP runs over
slices of rows that stay in cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.focalnet import FocalNetSettings
from bbx.nn.backbone import Backbone
from bbx.nn.keys import rename
from bbx.nn.layers import Mlp, conv_act, fold_scale_, in_row_slices, linear_act


class PatchEmbed(nn.Module):
    """``[B, C, H, W]`` -> normed ``[B, h, w, D]``: zero-pad to whole patches, a conv, a LayerNorm."""

    def __init__(self, cin: int, cout: int, patch: int, *, conv: tuple[int, int, int] | None, eps: float):
        super().__init__()
        self.patch = patch
        kernel, stride, padding = conv if conv is not None else (patch, patch, 0)
        self.proj = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -x.shape[2] % self.patch, -x.shape[3] % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Modulation(nn.Module):
    """Focal modulation of ``[B, H, W, C]`` tokens (see the module docstring)."""

    def __init__(self, dim: int, levels: int, window: int, s: FocalNetSettings):
        super().__init__()
        self.dim, self.levels = dim, levels
        self.normalize = s.normalize_modulator
        self.proj_in = nn.Linear(dim, 2 * dim + levels + 1)
        kernels = [2 * k + window for k in range(levels)]
        self.focal = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False) for k in kernels)
        self.proj_ctx = nn.Linear(dim, dim)  # transformers' 1x1 conv, as the linear layer it is
        self.norm = nn.LayerNorm(dim, eps=s.layer_norm_eps) if s.use_post_layernorm_in_modulation else None
        self.proj_out = nn.Linear(dim, dim)
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """The modulation, plus ``add`` (the residual, once the layer scale is folded) if given."""
        c, levels = self.dim, self.levels
        y = linear_act(x, self.proj_in, fused=self.fused)
        q, gates = y[..., :c], y[..., 2 * c :]
        ctx = y[..., c : 2 * c].contiguous().permute(0, 3, 1, 2)  # channels-last [B, C, H, W]
        total: torch.Tensor | None = None
        for level, conv in enumerate(self.focal):
            ctx = conv_act(ctx, conv, "gelu", fused=self.fused)
            term = ctx.permute(0, 2, 3, 1) * gates[..., level : level + 1]
            total = term if total is None else total + term
        rows = ctx.permute(0, 2, 3, 1)
        pooled = F.gelu(rows.mean(1, keepdim=True).mean(2, keepdim=True))
        glob = pooled * gates[..., levels:]
        total = glob if total is None else total + glob
        if self.normalize:
            total = total / (levels + 1)
        out = q * linear_act(total, self.proj_ctx, fused=self.fused)
        if self.norm is not None:
            out = self.norm(out)
        return linear_act(out, self.proj_out, add=add, fused=self.fused)


class Block(nn.Module):
    """A focal-modulation block on ``[B, H, W, C]`` tokens, pre- or post-norm (module docstring)."""

    def __init__(self, dim: int, levels: int, window: int, s: FocalNetSettings):
        super().__init__()
        self.post_norm = s.use_post_layernorm
        self.norm1 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.modulation = Modulation(dim, levels, window, s)
        self.norm2 = nn.LayerNorm(dim, eps=s.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * s.mlp_ratio), s.hidden_act)
        if s.use_layerscale:
            self.gamma1: nn.Parameter | None = nn.Parameter(torch.full((dim,), float(s.layerscale_value)))
            self.gamma2: nn.Parameter | None = nn.Parameter(torch.full((dim,), float(s.layerscale_value)))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._modulate(x)
        if self.mlp.fused:
            return in_row_slices(self._mlp, x, width=self.mlp.fc1.out_features)
        return self._mlp(x)

    def _modulate(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            y = self.norm1(self.modulation(x))
            return x + y if self.gamma1 is None else torch.addcmul(x, y, self.gamma1)
        if self.gamma1 is None:  # no scale (or folded into proj_out): the residual joins its kernel
            return self.modulation(self.norm1(x), add=x)
        return torch.addcmul(x, self.modulation(self.norm1(x)), self.gamma1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            y = self.norm2(self.mlp(x))
            return x + y if self.gamma2 is None else torch.addcmul(x, y, self.gamma2)
        if self.gamma2 is None:
            return self.mlp(self.norm2(x), add=x)
        return torch.addcmul(x, self.mlp(self.norm2(x)), self.gamma2)

    @torch.no_grad()
    def fuse(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold the layer scales (into the projection before them when pre-norm,
        into the norm's weight and bias when post-norm); ``kernels``: the fused oneDNN kernels."""
        for gamma, proj, norm in (
            (self.gamma1, self.modulation.proj_out, self.norm1),
            (self.gamma2, self.mlp.fc2, self.norm2),
        ):
            if gamma is None:
                continue
            if self.post_norm:
                norm.weight.mul_(gamma)
                norm.bias.mul_(gamma)
            else:
                fold_scale_(proj, gamma)
        self.gamma1 = self.gamma2 = None
        self.modulation.fused = kernels
        self.mlp.fused = kernels


class Stage(nn.Module):
    """``depth`` blocks, then (every stage but the last) the downsample to twice the width."""

    def __init__(self, index: int, s: FocalNetSettings):
        super().__init__()
        dim = s.dims[index]
        levels, window = s.focal_levels[index], s.focal_windows[index]
        self.blocks = nn.Sequential(*[Block(dim, levels, window, s) for _ in range(s.depths[index])])
        if index < len(s.depths) - 1:
            conv = (3, 2, 1) if s.use_conv_embed else None
            self.down: PatchEmbed | None = PatchEmbed(dim, 2 * dim, 2, conv=conv, eps=s.layer_norm_eps)
        else:
            self.down = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.down is not None:
            x = self.down(x.permute(0, 3, 1, 2))
        return x


class FocalNet(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = FocalNetSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        conv = (7, 4, 2) if s.use_conv_embed else None
        self.embed = PatchEmbed(s.num_channels, s.embed_dim, s.patch_size, conv=conv, eps=s.layer_norm_eps)
        self.stages = nn.ModuleList(Stage(i, s) for i in range(len(s.depths)))
        # FocalNetModel's final norm (used by stage_norm="final" only)
        self.final_norm = nn.LayerNorm(s.dims[-1], eps=s.layer_norm_eps)

    #: the convolutions see channels-last views of the token rows
    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                block.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.embed(x)
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw)
        return raw.permute(0, 3, 1, 2).contiguous()


# checkpoint key (without the ``focalnet.`` prefix) -> bbx key, every rule in turn
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\.projection\."), "embed.proj."),
    (re.compile(r"^embeddings\.norm\."), "embed.norm."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."), r"stages.\1.blocks.\2."),
    (re.compile(r"^encoder\.stages\.(\d+)\.downsample\.projection\."), r"stages.\1.down.proj."),
    (re.compile(r"^encoder\.stages\.(\d+)\.downsample\.norm\."), r"stages.\1.down.norm."),
    (re.compile(r"\.modulation\.projection_in\."), ".modulation.proj_in."),
    (re.compile(r"\.modulation\.projection_context\."), ".modulation.proj_ctx."),
    (re.compile(r"\.modulation\.projection_out\."), ".modulation.proj_out."),
    (re.compile(r"\.modulation\.focal_layers\.(\d+)\.0\."), r".modulation.focal.\1."),
    (re.compile(r"\.modulation\.layernorm\."), ".modulation.norm."),
    (re.compile(r"\.gamma_([12])$"), r".gamma\1"),
    (re.compile(r"^layernorm\."), "final_norm."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' FocalNet keys -> bbx's; each modulation's 1x1 context conv becomes the linear
    layer it is (its weight ``[C, C, 1, 1]`` -> ``[C, C]``). Heads (classifier, SimMIM decoder and
    mask token) are dropped; anything else unrecognised keeps its name, so the strict load reports it."""
    out = rename(state_dict, _RULES, drop=("classifier.", "decoder."), strip=("focalnet.",))
    out.pop("embeddings.mask_token", None)
    for key, value in out.items():
        if key.endswith(".modulation.proj_ctx.weight") and value.dim() == 4:
            out[key] = value.flatten(1)
    return out


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> FocalNet:
    return FocalNet(config, stage_norm=stage_norm)
