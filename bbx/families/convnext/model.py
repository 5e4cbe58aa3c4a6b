"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", 2022), transformers layout.

Loads the weights of ``ConvNextForImageClassification`` (``convnext.`` prefix; the ``classifier``
head is dropped), ``ConvNextModel`` and ``ConvNextBackbone`` checkpoints such as
``facebook/convnext-tiny-224`` ... ``facebook/convnext-xlarge-224-22k-1k``.

The network: a patchify stem (``patch_size`` x ``patch_size`` conv with the same stride, then a
LayerNorm over channels), then ``num_stages`` stages. Every stage but the first opens with a
downsampling layer (channel LayerNorm, then a 2x2 stride-2 conv). A block is a 7x7 depthwise conv,
a LayerNorm, an inverted bottleneck (Linear C -> 4C, activation, Linear 4C -> C), an optional
per-channel layer scale, and the residual sum. All internal LayerNorms use eps 1e-6 (fixed, as in
transformers); the config's ``layer_norm_eps`` only reaches the final norm. ``drop_path_rate`` is a
training setting and is ignored (inference has no stochastic depth and no dropout).

Stages: ``stem`` (the embedding after its LayerNorm, stride ``patch_size``) and ``stage1`` ...
``stageN`` (each after its blocks, N = ``num_stages``), the tensors transformers' ConvNextBackbone
returns. Extra ``depths`` / ``hidden_sizes`` entries past ``num_stages`` are ignored, as transformers
never builds those stages either. Any input of at least ``patch_size * 2 ** (N - 1)`` pixels a side
works; every conv is unpadded with kernel = stride, so sizes are floored at each step.

Stage norms (``stage_norm``):

* ``"hf"`` (default): as ConvNextBackbone, a channel LayerNorm (eps 1e-6) on every selected stage,
  the stem included. Checkpoints saved from ConvNextBackbone carry these norms
  (``hidden_states_norms.<stage>``) and they load; the classification / base-model checkpoints (all
  public ones) lack them and transformers creates them fresh, weight 1 and bias 0, which bbx fills
  in the same way.
* ``"none"``: the raw stage outputs, as ConvNextModel's ``hidden_states``.
* ``"final"``: the checkpoint's own trained final LayerNorm (ConvNextModel's ``layernorm``, eps
  ``layer_norm_eps``) applied over the channels at every position of the *last* stage's map; the
  other stages stay raw. ConvNextModel applies that norm to the spatially averaged last map (its
  ``pooler_output``); bbx keeps the map, so averaging bbx's ``final`` map is not the same as the
  pooler output (the norm is not linear). Checkpoints without that norm (ConvNextBackbone) are
  refused in this mode.

Memory layout: the network runs in channels-last memory format. A block then permutes its
depthwise-conv output to ``[N, H, W, C]`` as a free view, the LayerNorm and the two Linears work on
contiguous rows, and the permute back is free too. Returned maps are contiguous ``[N, C, H, W]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bbx.families.convnext import ConvNextSettings
from bbx.nn.backbone import Backbone
from bbx.nn.blocks import ChannelNorm, DwConvBlock, NormDownsample, PatchifyStem
from bbx.nn.keys import rename

#: eps of every LayerNorm transformers builds with a fixed value (stem, downsampling, blocks and
#: ConvNextBackbone's stage norms); only the final norm takes ``layer_norm_eps`` from the config.
INNER_EPS = 1e-6


def Block(dim: int, s: ConvNextSettings) -> DwConvBlock:
    """A ConvNeXt block: depthwise conv, LayerNorm (eps 1e-6), MLP, layer scale (none when the
    config says 0), residual."""
    scale = float(s.layer_scale_init_value)
    return DwConvBlock(dim, s.hidden_act, scale if scale > 0 else None, INNER_EPS)


class Stage(nn.Module):
    """A downsampling layer (every stage but the first), then ``depth`` blocks."""

    def __init__(self, cin: int, cout: int, depth: int, downsample: bool, s: ConvNextSettings):
        super().__init__()
        self.down = NormDownsample(cin, cout, eps=INNER_EPS) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[Block(cout, s) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class ConvNext(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = ConvNextSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        widths = s.widths
        stages = []
        cin = widths[0]
        for i, (cout, depth) in enumerate(zip(widths, s.depths[: s.num_stages])):
            # transformers downsamples when the stride is 2 (every stage but the first) or the
            # width changes (never for the first stage, whose input is the stem's width)
            stages.append(Stage(cin, cout, depth, i > 0, s))
            cin = cout
        specs = self.stage_specs
        self.stem = PatchifyStem(s.num_channels, widths[0], s.patch_size, eps=INNER_EPS)
        self.stages = nn.ModuleList(stages)
        # ConvNextBackbone's per-stage norms, one per stage (only the selected ones are applied)
        self.stage_norms = nn.ModuleDict({spec.name: ChannelNorm(spec.channels, eps=INNER_EPS) for spec in specs})
        # ConvNextModel's final norm (used by stage_norm="final" only)
        self.final_norm = nn.LayerNorm(widths[-1], eps=s.layer_norm_eps)

        optional: dict[str, float] = {}
        for name in self.stage_norms:
            optional[f"stage_norms.{name}.weight"] = 1.0
            optional[f"stage_norms.{name}.bias"] = 0.0
        if stage_norm != "final":
            # unused in this mode: a checkpoint without it (ConvNextBackbone) is fine
            optional["final_norm.weight"] = 1.0
            optional["final_norm.bias"] = 0.0
        self.optional_keys = optional

    #: the network runs channels-last (see the module docstring); weights too, for the convs
    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                block.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "hf":
            raw = self.stage_norms[self.stage_specs[index].name](raw)
        elif self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return raw.contiguous()

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage_norm 'final' needs the checkpoint's final LayerNorm (ConvNextModel's layernorm.weight "
                "and layernorm.bias), which this checkpoint lacks; use stage_norm 'hf' or 'none'"
            )
        return ""


# checkpoint key (without the ``convnext.`` prefix) -> bbx key; the first pattern that matches wins
_BLOCK = r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\."), "stem.conv."),
    (re.compile(r"^embeddings\.layernorm\."), "stem.norm."),
    (re.compile(r"^encoder\.stages\.(\d+)\.downsampling_layer\.0\."), r"stages.\1.down.norm."),
    (re.compile(r"^encoder\.stages\.(\d+)\.downsampling_layer\.1\."), r"stages.\1.down.conv."),
    (re.compile(_BLOCK + r"layernorm\."), r"stages.\1.blocks.\2.norm."),
    (re.compile(_BLOCK + r"pwconv([12])\."), r"stages.\1.blocks.\2.mlp.fc\3."),
    (re.compile(_BLOCK + r"layer_scale_parameter$"), r"stages.\1.blocks.\2.gamma"),
    (re.compile(_BLOCK + r"dwconv\."), r"stages.\1.blocks.\2.dwconv."),
    (re.compile(r"^hidden_states_norms\."), "stage_norms."),
    (re.compile(r"^layernorm\."), "final_norm."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' ConvNeXt keys -> bbx's. The classification head is dropped; anything else
    unrecognised is kept under its own name, so the strict load reports it."""
    return rename(state_dict, _RULES, drop=("classifier.",), strip=("convnext.",), first_match=True)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> ConvNext:
    return ConvNext(config, stage_norm=stage_norm)
