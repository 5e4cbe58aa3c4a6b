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

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bbx.families.swin import SwinSettings
from bbx.nn.backbone import Backbone
from bbx.nn.windows import (
    DEFAULT_EPS,
    PatchEmbed,
    prepare_stages,
    relative_position_index,
    remap_keys,
    rename_prefix,
    window_stages,
)

# --- the backbone -----------------------------------------------------------------------------


class Swin(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = SwinSettings.from_config(config)
        dims = s.dims
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = PatchEmbed(s.num_channels, s.embed_dim, s.patch_size)
        if s.use_absolute_embeddings:
            gh, gw = s.grid
            self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw, s.embed_dim))
        else:
            self.pos_embed = None
        self.stages = window_stages(s, dims, s.depths, s.num_heads)
        # Every stage has its backbone norm, whatever the selection (selections change after build).
        specs = self.stage_specs
        self.stage_norms = nn.ModuleDict({spec.name: nn.LayerNorm(spec.channels, eps=DEFAULT_EPS) for spec in specs})
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
        prepare_stages(self.stages, fuse_kernels=fuse_kernels)

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

_TOP_PARTS = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.norm.": "patch_embed.norm.",
    "embeddings.position_embeddings": "pos_embed",
    "hidden_states_norms.": "stage_norms.",
    "layernorm.": "final_norm.",
}
_HEADS = ("classifier.", "decoder.")  # classification head; SimMIM's reconstruction decoder


def _clean(key: str) -> str | None:
    if key.startswith(_HEADS):
        return None
    k = key.removeprefix("swin.")
    return None if k == "embeddings.mask_token" else k


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' Swin keys -> bbx's. Heads (classifier, SimMIM decoder and mask token) are
    dropped; ``relative_position_index`` tables (saved by transformers 4) are checked against the
    config's window size and dropped; each block's query/key/value projections are stacked into
    one. Anything else unrecognised keeps its name, so the strict load reports it."""
    window = SwinSettings.from_config(config).window_size
    return remap_keys(state_dict, window, clean=_clean, top=lambda k: rename_prefix(k, _TOP_PARTS) or k)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Swin:
    return Swin(config, stage_norm=stage_norm)
