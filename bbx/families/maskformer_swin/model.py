"""MaskFormer's Swin, transformers layout (``MaskFormerSwinBackbone``).

Loads the weights of ``MaskFormerSwinBackbone`` (``model.embeddings`` / ``model.encoder`` /
``model.layernorm``, plus ``hidden_states_norms.<i>``) and of ``MaskFormerSwinModel`` (the same
without ``model.``), as a MaskFormer checkpoint nests them under
``model.pixel_level_module.encoder.`` (the format seam strips that prefix).

The network is the shifted-window network of :mod:`bbx.nn.windows` (patch embedding, stages of
window blocks with patch merging; windows keep their size at every input, the grid padded to whole
windows, exactly as ``MaskFormerSwinLayer`` pads). Stages and norms, as ``MaskFormerSwinBackbone``:

* ``stageK``: the output of stage K's last block before the patch merging that opens stage K+1;
  no ``stem``.
* ``"hf"`` (default): every stage through its own ``hidden_states_norms`` LayerNorm (eps 1e-5;
  trained in MaskFormer checkpoints; a bare ``MaskFormerSwinModel`` checkpoint has none, and gets
  them as transformers creates them: weight 1, bias 0); ``"none"``: raw; ``"final"``: the final
  ``layernorm`` (``MaskFormerSwinModel.layernorm``) on the last stage, the others raw.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bbx.families.maskformer_swin import MaskFormerSwinSettings
from bbx.nn.backbone import Backbone
from bbx.nn.windows import DEFAULT_EPS, PatchEmbed, prepare_stages, relative_position_index, remap_keys, window_stages


class MaskFormerSwin(Backbone):
    stage_modules = "stages"  # stage k (stage k+1 by name) is the output of stages[k]
    stage_module_offset = 0

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = MaskFormerSwinSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        self.patch_embed = PatchEmbed(s.num_channels, s.embed_dim, s.patch_size)
        self.stages = window_stages(s, s.dims, s.depths, s.num_heads)
        self.stage_norms = nn.ModuleList(nn.LayerNorm(dim, eps=DEFAULT_EPS) for dim in s.dims)
        self.final_norm = nn.LayerNorm(s.dims[-1], eps=s.layer_norm_eps)
        # computed on the CPU even when the model is built on the meta device
        self.register_buffer("rel_index", relative_position_index(s.window_size, "cpu"), persistent=False)
        # MaskFormerSwinBackbone creates its stage norms with weight 1, bias 0: a MaskFormerSwinModel
        # checkpoint (no backbone around it) lacks them, and loads as transformers loads it
        norms = [f"stage_norms.{i}" for i in range(len(s.dims))] + ([] if stage_norm == "final" else ["final_norm"])
        self.optional_keys = {f"{n}.{leaf}": fill for n in norms for leaf, fill in (("weight", 1.0), ("bias", 0.0))}

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        prepare_stages(self.stages, fuse_kernels=fuse_kernels)

    def init_computed_buffers(self) -> None:
        self.rel_index = relative_position_index(self.settings.window_size, self.patch_embed.proj.weight.device)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x, self.rel_index)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "hf":
            raw = self.stage_norms[index](raw)
        elif self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw)
        return raw.permute(0, 3, 1, 2).contiguous()


# --- checkpoint keys --------------------------------------------------------------------------

_NORM_KEY = re.compile(r"^hidden_states_norms\.(\d+)\.")
_TOP_PARTS = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.norm.": "patch_embed.norm.",
    "layernorm.": "final_norm.",
}


def _clean(key: str) -> str | None:
    return key.removeprefix("model.")


def _top(key: str) -> str:
    norm = _NORM_KEY.match(key)
    if norm:
        return f"stage_norms.{norm.group(1)}." + key[norm.end() :]
    for old, new in _TOP_PARTS.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' MaskFormerSwin keys -> bbx's: ``relative_position_index`` tables are checked
    against the window size and dropped, each block's query/key/value stacked into one.
    Anything else unrecognised keeps its name, so the strict load reports it."""
    window = MaskFormerSwinSettings.from_config(config).window_size
    return remap_keys(state_dict, window, clean=_clean, top=_top)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> MaskFormerSwin:
    return MaskFormerSwin(config, stage_norm=stage_norm)
