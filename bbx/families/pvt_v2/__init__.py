"""PVT v2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", 2022),
transformers layout: what bbx knows about it without torch. The network is in
:mod:`bbx.families.pvt_v2.model`.

Stages, exactly as transformers' ``PvtV2Backbone``: ``stage1`` ... ``stageN`` (no ``stem``), each
the output of an overlapping patch embedding and that stage's blocks, after the stage's own
LayerNorm, ``hidden_sizes[i]`` channels at stride ``strides[0] * ... * strides[i]``. Any input
size works that leaves every spatial-reduction conv at least one position (a stage with
``sr_ratios[i] > 1`` and no ``linear_attention`` needs a grid of at least ``sr_ratios[i]`` a side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bbx.family import (
    ACTIVATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_SIZE,
    CatalogRow,
    Family,
    Settings,
    StageInfo,
    limit,
)


def embed_size(n: int, kernel: int, stride: int) -> int:
    """A side after an overlapping patch embedding (a conv padded by ``kernel // 2``)."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class PvtV2Settings(Settings):
    """The architecture fields of a PVT v2 ``config.json``, with transformers' defaults."""

    # (image_size is not read: no position embeddings depend on it, and transformers allows a dict there)
    num_channels: int = limit(3, 1, 64)
    num_encoder_blocks: int = limit(4, 1, 12)
    depths: tuple[int, ...] = limit((2, 2, 2, 2), 1, 4096)
    sr_ratios: tuple[int, ...] = limit((8, 4, 2, 1), 1, 1024)
    hidden_sizes: tuple[int, ...] = limit((32, 64, 160, 256), 1, MAX_SIZE)
    patch_sizes: tuple[int, ...] = limit((7, 3, 3, 3), 1, 1024)
    strides: tuple[int, ...] = limit((4, 2, 2, 2), 1, 1024)
    num_attention_heads: tuple[int, ...] = limit((1, 2, 5, 8), 1, 4096)
    mlp_ratios: tuple[int, ...] = limit((8, 8, 4, 4), 1, 64)
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0  # training only; read so that a config round-trips, never used
    attention_probs_dropout_prob: float = 0.0  # training only
    drop_path_rate: float = 0.0  # training only
    layer_norm_eps: float = limit(1e-6, 0, 1)
    qkv_bias: bool = True
    linear_attention: bool = False

    def check(self) -> None:
        n = self.num_encoder_blocks
        lists = {
            "depths": self.depths,
            "sr_ratios": self.sr_ratios,
            "hidden_sizes": self.hidden_sizes,
            "patch_sizes": self.patch_sizes,
            "strides": self.strides,
            "num_attention_heads": self.num_attention_heads,
            "mlp_ratios": self.mlp_ratios,
        }
        if len(self.depths) != n:
            raise ValueError(f"depths names {len(self.depths)} stages but num_encoder_blocks is {n}")
        short = [name for name, values in lists.items() if len(values) < n]
        if short:
            raise ValueError(f"{', '.join(short)} must have an entry for each of the {n} stages")
        for width, heads in zip(self.hidden_sizes[:n], self.num_attention_heads[:n]):
            if width % heads:
                raise ValueError(f"a stage of width {width} cannot have {heads} attention heads")
        if math.prod(self.strides[:n]) > MAX_SIZE:
            raise ValueError(f"strides {list(self.strides[:n])} reduce by more than {MAX_SIZE}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    def stages(self) -> list[StageInfo]:
        out, stride = [], 1
        for i in range(self.num_encoder_blocks):
            stride *= self.strides[i]
            out.append(StageInfo(f"stage{i + 1}", self.hidden_sizes[i], stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        sizes = []
        for i in range(self.num_encoder_blocks):
            k, s, sr = self.patch_sizes[i], self.strides[i], self.sr_ratios[i]
            h, w = embed_size(h, k, s), embed_size(w, k, s)
            if h < 1 or w < 1:
                raise ValueError(f"input {image_size[0]}x{image_size[1]} is too small: stage {i + 1} has no positions")
            if sr > 1 and not self.linear_attention and (h < sr or w < sr):
                raise ValueError(
                    f"input {image_size[0]}x{image_size[1]} is too small: stage {i + 1}'s {h}x{w} grid is smaller "
                    f"than its spatial reduction {sr}"
                )
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        n, cin = 0, self.num_channels
        for i in range(self.num_encoder_blocks):
            d, sr = self.hidden_sizes[i], self.sr_ratios[i]
            hidden = int(d * self.mlp_ratios[i])
            n += cin * d * self.patch_sizes[i] ** 2 + d + 2 * d  # overlapping patch embedding, its norm
            attention = 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d  # query, keys+values, out
            if self.linear_attention:  # a 1x1 conv after the pooling, and a norm
                attention += d * d + d + 2 * d
            elif sr > 1:  # spatial reduction: an sr x sr conv, and a norm
                attention += d * d * sr * sr + d + 2 * d
            mlp = d * hidden + hidden + 9 * hidden + hidden + hidden * d + d  # fc1, 3x3 depthwise, fc2
            n += self.depths[i] * (2 * d + attention + 2 * d + mlp)
            n += 2 * d  # the stage's norm
            cin = d
        return n

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """The default (input, stage maps, four times the largest) plus the widest block: its MLP
        (input, the hidden layer before and after the depthwise conv and its activation, output)
        or its attention (queries, the reduced keys and values, the scores of every head)."""
        widest = 0
        for i, (h, w) in enumerate(self.map_sizes(image_size)):
            d, t = self.hidden_sizes[i], h * w
            hidden = int(d * self.mlp_ratios[i])
            sr = self.sr_ratios[i]
            if self.linear_attention:
                reduced = 49  # pooled to 7 x 7
            elif sr > 1:
                reduced = (h // sr) * (w // sr)
            else:
                reduced = t
            attention = 2 * d * t + 3 * d * reduced + self.num_attention_heads[i] * t * reduced
            widest = max(widest, t * (2 * d + 3 * hidden), attention)
        return super().activation_count(image_size) + widest


# --- catalog: OpenGVLab/pvt_v2_* ------------------------------------------------------------------
# Architectures as the original repository defines them (whai362/PVT, classification/pvt_v2.py:
# b0 32/64/160/256 wide, b1 to b5 64/128/320/512; heads 1/2/5/8, spatial reductions 8/4/2/1, MLP
# ratios 8/8/4/4 (b5: 4/4/4/4); b2-li is b2 with linear attention), in PvtV2Config's field names and
# with its defaults for the rest; the hub ids are those of transformers' convert_pvt_v2_to_pytorch.py.
# The preprocessing is the PvtImageProcessor that script saves (transformers 4's class: resize to
# 224x224, bilinear, ImageNet mean/std).
PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(IMAGENET_MEAN),
    "image_processor_type": "PvtImageProcessor",
    "image_std": list(IMAGENET_STD),
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}

_B0 = [32, 64, 160, 256]
_WIDE = [64, 128, 320, 512]


def _row(
    name: str, widths: list[int], depths: list[int], mlp_ratios: list[int], description: str, linear: bool = False
) -> CatalogRow:
    config = {
        "model_type": "pvt_v2",
        "architectures": ["PvtV2ForImageClassification"],
        "image_size": 224,
        "num_channels": 3,
        "num_encoder_blocks": 4,
        "depths": depths,
        "sr_ratios": [8, 4, 2, 1],
        "hidden_sizes": widths,
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "num_attention_heads": [1, 2, 5, 8],
        "mlp_ratios": mlp_ratios,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "drop_path_rate": 0.0,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "linear_attention": linear,
    }
    return CatalogRow(
        alias=name.replace("_", "-"),
        repo_id=f"OpenGVLab/{name}",
        config=config,
        preprocessor=PREPROCESSOR,
        description=description,
        extra_aliases=(name,),
    )


FAMILY = Family(
    name="pvt_v2",
    title="PVTv2",
    model_types=("pvt_v2",),
    settings=PvtV2Settings,
    processor="Pvt",
    catalog=(
        _row("pvt_v2_b0", _B0, [2, 2, 2, 2], [8, 8, 4, 4], "PVTv2-B0 (ImageNet-1k)"),
        _row("pvt_v2_b1", _WIDE, [2, 2, 2, 2], [8, 8, 4, 4], "PVTv2-B1 (ImageNet-1k)"),
        _row("pvt_v2_b2", _WIDE, [3, 4, 6, 3], [8, 8, 4, 4], "PVTv2-B2 (ImageNet-1k)"),
        _row("pvt_v2_b2_linear", _WIDE, [3, 4, 6, 3], [8, 8, 4, 4], "PVTv2-B2-Li, linear attention", linear=True),
        _row("pvt_v2_b3", _WIDE, [3, 4, 18, 3], [8, 8, 4, 4], "PVTv2-B3 (ImageNet-1k)"),
        _row("pvt_v2_b4", _WIDE, [3, 8, 27, 3], [8, 8, 4, 4], "PVTv2-B4 (ImageNet-1k)"),
        _row("pvt_v2_b5", _WIDE, [3, 6, 40, 3], [4, 4, 4, 4], "PVTv2-B5 (ImageNet-1k)"),
    ),
    stage_norms={
        "hf": "each stage's own trained LayerNorm (the one that feeds the next stage), as `PvtV2Backbone` "
        "returns every stage",
        "none": "the raw output of each stage's last block, before that norm",
        "final": "the last stage's norm (the classifier's final norm) on the last stage, the others raw",
    },
    tiny={
        "model_type": "pvt_v2",
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 2, 1],
        "num_attention_heads": [1, 2, 3, 4],
    },
    notes="PVTv2 has no `stem`: `stage1`..`stage4` (strides 4 to 32) are the stage outputs after each stage's "
    "LayerNorm, as `PvtV2Backbone` returns them. Any input size works whose every stage grid is at least as large as "
    "that stage's spatial reduction (8, 4, 2, 1): 29x29 and up for the public checkpoints, any size for b2-linear, "
    "whose linear attention pools to 7x7 instead.",
)
