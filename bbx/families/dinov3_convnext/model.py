"""DINOv3's ConvNeXt students, transformers layout.

Paper: Siméoni et al., "DINOv3" (2025), which distils its ViT-7B into ConvNeXt networks (Liu et
al., "A ConvNet for the 2020s", 2022) of the usual four sizes.

Loads ``DINOv3ConvNextModel`` / ``DINOv3ConvNextBackbone`` checkpoints (the public
``facebook/dinov3-convnext-*-pretrain-lvd1689m`` repos): their stages are ``stages.N.*`` on the hub
and ``model.stages.N.*`` in transformers 5's memory; both are read.

The network: ``len(hidden_sizes)`` stages, each a downsampling layer then ``depths[K]`` ConvNeXt
blocks. The first stage's downsampling is the patchify stem (a 4x4 conv with stride 4, then a
channel LayerNorm), the others a channel LayerNorm then a 2x2 conv with stride 2. A block is a 7x7
depthwise conv, a LayerNorm, an inverted bottleneck (Linear C -> 4C, activation, Linear 4C -> C), a
per-channel layer scale and the residual sum. Unlike transformers' ConvNeXt, every LayerNorm takes
the config's ``layer_norm_eps``, and the layer scale is always a parameter.

Stages, exactly as ``DINOv3ConvNextBackbone``: ``stem`` is the input itself (the normalised
pixels), ``stageK`` the output of stage K. Stage norms: the backbone class applies none (``"hf"``
and ``"none"`` are the raw maps); ``"final"`` applies the trained final LayerNorm
(``DINOv3ConvNextModel.layer_norm``) over the channels at every position of the last stage's map,
the others raw. The image embedding is the model's ``pooler_output``: that norm over the average
of the last map (not the average of the ``final`` map: the norm is not linear); it needs the final
norm, which ``DINOv3ConvNextBackbone`` checkpoints lack.

The network runs in channels-last memory format; returned maps are contiguous ``[N, C, H, W]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bbx.families.dinov3_convnext import Dinov3ConvNextSettings
from bbx.nn.backbone import Backbone
from bbx.nn.blocks import ChannelNorm, DwConvBlock
from bbx.nn.keys import rename


class Stage(nn.Module):
    """The downsampling layer (``conv, norm`` for the first stage, ``norm, conv`` after), then
    ``depth`` blocks."""

    def __init__(self, cin: int, cout: int, depth: int, first: bool, s: Dinov3ConvNextSettings):
        super().__init__()
        eps = s.layer_norm_eps
        if first:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=4, stride=4), ChannelNorm(cout, eps=eps))
        else:
            self.down = nn.Sequential(ChannelNorm(cin, eps=eps), nn.Conv2d(cin, cout, kernel_size=2, stride=2))
        scale = float(s.layer_scale_init_value)
        self.blocks = nn.Sequential(*[DwConvBlock(cout, s.hidden_act, scale, eps) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class Dinov3ConvNext(Backbone):
    stage_modules = "stages"  # stage k is the output of stages[k - 1]
    #: the network runs channels-last; weights too, for the convs
    prefers_channels_last = True

    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = Dinov3ConvNextSettings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        stages, cin = [], s.num_channels
        for i, (cout, depth) in enumerate(zip(s.hidden_sizes, s.depths)):
            stages.append(Stage(cin, cout, depth, i == 0, s))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.final_norm = nn.LayerNorm(s.hidden_sizes[-1], eps=s.layer_norm_eps)
        if stage_norm != "final":
            # DINOv3ConvNextBackbone checkpoints have no final norm; NaN marks it absent (no embedding)
            self.optional_keys = {"final_norm.weight": float("nan"), "final_norm.bias": float("nan")}

    @property
    def has_embedding(self) -> bool:
        """Whether the checkpoint has the final norm the embedding needs."""
        w = self.final_norm.weight
        return w.is_meta or not bool(torch.isnan(w.detach()[:1]).any())

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                block.fuse(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        yield x
        x = x.contiguous(memory_format=torch.channels_last)
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return raw.contiguous()

    def embedding(self, raw_last: torch.Tensor) -> torch.Tensor:
        if not self.has_embedding:
            raise ValueError("this checkpoint has no final norm (a DINOv3ConvNextBackbone's), so no image embedding")
        # the average over positions, as AdaptiveAvgPool2d(1) computes it, then the norm
        pooled = raw_last.mean(dim=(2, 3))
        return self.final_norm(pooled).contiguous()

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage_norm 'final' needs the checkpoint's final LayerNorm (DINOv3ConvNextModel's layer_norm.weight "
                "and layer_norm.bias), which this checkpoint lacks; use stage_norm 'hf' or 'none'"
            )
        return ""


# checkpoint key (without a leading "model.") -> bbx key; the first pattern that matches wins
_LAYER = r"^stages\.(\d+)\.layers\.(\d+)\."
_RULES = [
    (re.compile(r"^stages\.(\d+)\.downsample_layers\.(\d)\."), r"stages.\1.down.\2."),
    (re.compile(_LAYER + r"depthwise_conv\."), r"stages.\1.blocks.\2.dwconv."),
    (re.compile(_LAYER + r"layer_norm\."), r"stages.\1.blocks.\2.norm."),
    (re.compile(_LAYER + r"pointwise_conv([12])\."), r"stages.\1.blocks.\2.mlp.fc\3."),
    (re.compile(_LAYER + r"gamma$"), r"stages.\1.blocks.\2.gamma"),
    (re.compile(r"^layer_norm\."), "final_norm."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' DINOv3 ConvNeXt keys (the hub's and transformers 5's ``model.``-prefixed
    ones) -> bbx's. Anything unrecognised keeps its name, so the strict load reports it."""
    return rename(state_dict, _RULES, strip=("model.",), first_match=True)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> Dinov3ConvNext:
    return Dinov3ConvNext(config, stage_norm=stage_norm)
