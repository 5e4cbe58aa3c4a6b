"""BiT (Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", 2020), a
ResNet v2 with weight-standardised convolutions and GroupNorm, transformers layout: what bbx
knows about it without torch. The network is in :mod:`bbx.families.bit.model`.

Stages, exactly as transformers' ``BitBackbone``: ``stem`` (after the max-pool, stride 4) and
``stage1`` ... ``stageN`` (stride 4, 8, 16, 32 for four stages, until ``output_stride`` is reached;
past it the stages dilate instead of striding). Every stride-2 step maps ``n`` to ``ceil(n / 2)``,
so any input size works (but for one stem layout, which needs a few pixels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bbx.family import (
    ACTIVATIONS,
    MAX_SIZE,
    CatalogRow,
    Family,
    Settings,
    StageInfo,
    limit,
)

LAYER_TYPES = ("preactivation", "bottleneck")


def make_div(value: float, divisor: int = 8) -> int:
    """transformers' (and timm's) channel rounding: to a multiple of 8, at least 8, never below 90%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def halve(n: int) -> int:
    """A stride-2 step of BiT's (a padded 3x3 or 7x7 conv, a 1x1 conv, 'SAME' padding, or a
    zero-pad by one and a 3x3 max-pool): ceil(n / 2)."""
    return (n + 1) // 2


@dataclass(frozen=True)
class BitSettings(Settings):
    """The architecture fields of a BiT ``config.json``, with transformers' defaults."""

    num_channels: int = limit(3, 1, 64)
    embedding_size: int = limit(64, 1, MAX_SIZE)
    hidden_sizes: tuple[int, ...] = limit((256, 512, 1024, 2048), 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((3, 4, 6, 3), 1, 4096)
    layer_type: str = "preactivation"
    hidden_act: str = "relu"
    #: None: symmetric padding k // 2 (timm's); "SAME": TensorFlow's, dynamic where the stride is 2
    global_padding: str | None = None
    num_groups: int = limit(32, 1, MAX_SIZE)
    drop_path_rate: float = 0.0  # training only; read so that a config round-trips, never used
    embedding_dynamic_padding: bool = False
    output_stride: int = limit(32, 1, MAX_SIZE)
    width_factor: int = limit(1, 1, 64)

    @classmethod
    def adjust(cls, config: Mapping[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        if isinstance(values.get("global_padding"), str):
            values["global_padding"] = values["global_padding"].upper()  # as BitConfig does
        return values

    def check(self) -> None:
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {', '.join(LAYER_TYPES)}, got {self.layer_type!r}")
        if self.global_padding not in (None, "SAME", "VALID"):
            raise ValueError(f"global_padding must be null, 'SAME' or 'VALID', got {self.global_padding!r}")
        if self.global_padding == "VALID":
            # unpadded 3x3 convs shrink the map that the residual is added to
            raise ValueError("global_padding 'VALID' cannot run (transformers cannot run it either)")
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError("hidden_sizes and depths must be non-empty and of the same length")
        if len(self.depths) > 12 or max(self.widths) > MAX_SIZE:
            raise ValueError(f"{len(self.depths)} stages up to {max(self.widths)} channels is too wide")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        for what, n in self.group_norm_widths():
            if n % self.num_groups:
                raise ValueError(f"{what} has {n} channels, which {self.num_groups} groups (num_groups) do not divide")
        if self.layer_type == "preactivation" and self.widths[-1] != self.hidden_sizes[-1]:
            raise ValueError(
                f"the last stage has {self.widths[-1]} channels (hidden_sizes[-1] {self.hidden_sizes[-1]} rounded "
                f"and times width_factor {self.width_factor}), but the final norm transformers builds has "
                f"{self.hidden_sizes[-1]}: it cannot run such a config"
            )

    @property
    def widths(self) -> list[int]:
        """Channels of every stage (transformers rounds them: ``make_div(hidden * width_factor)``)."""
        return [make_div(h * self.width_factor) for h in self.hidden_sizes]

    def group_norm_widths(self) -> list[tuple[str, int]]:
        """(what, channels) of every GroupNorm the network has."""
        out = []
        if self.layer_type == "bottleneck":
            out.append(("the stem", self.embedding_size))
        cin = self.embedding_size
        for i, cout in enumerate(self.widths):
            mid = make_div(cout * 0.25)
            stage = f"stage {i + 1}"
            if self.layer_type == "preactivation":
                out += [(f"{stage}'s input", cin), (f"{stage}'s bottleneck", mid)]
                if len(self.widths) == i + 1:
                    out.append(("the final norm", cout))
            else:
                out += [(f"{stage}'s bottleneck", mid), (f"{stage}'s output", cout)]
            cin = cout
        return out

    def strides_and_dilations(self) -> list[tuple[int, int]]:
        """(stride of the first block, dilation) of every stage, as transformers' BitEncoder derives
        them: stride 2 but for the first stage, dilating instead once ``output_stride`` is reached."""
        out = []
        current, dilation = 4, 1
        for i in range(len(self.depths)):
            stride = 1 if i == 0 else 2
            if current >= self.output_stride:
                dilation *= stride
                stride = 1
            out.append((stride, dilation))
            current *= stride
        return out

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.embedding_size, 4)]
        stride = 4
        for i, (cout, (step, _)) in enumerate(zip(self.widths, self.strides_and_dilations())):
            stride *= step
            out.append(StageInfo(f"stage{i + 1}", cout, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        h, w = halve(h), halve(w)  # the 7x7 stride-2 stem conv
        if self.global_padding == "SAME" and not self.embedding_dynamic_padding:
            # an unpadded 3x3 stride-2 max-pool
            if h < 3 or w < 3:
                raise ValueError(f"input {image_size[0]}x{image_size[1]} is too small: BiT's stem needs 5x5")
            h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        else:
            h, w = halve(h), halve(w)
        sizes = [(h, w)]
        for step, _ in self.strides_and_dilations():
            if step == 2:
                h, w = halve(h), halve(w)
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        e = self.embedding_size
        pre = self.layer_type == "preactivation"
        n = self.num_channels * e * 49 + (0 if pre else 2 * e)  # the stem's 7x7 conv (and its norm)
        cin = e
        for cout, depth in zip(self.widths, self.depths):
            mid = make_div(cout * 0.25)
            # the first block's projecting shortcut (normed after it in the bottleneck layout)
            n += cin * cout + (0 if pre else 2 * cout)
            for j in range(depth):
                c_in = cin if j == 0 else cout
                convs = c_in * mid + 9 * mid * mid + mid * cout  # weight-standardised, no biases
                norms = 2 * c_in + 4 * mid if pre else 4 * mid + 2 * cout  # GroupNorms
                n += convs + norms
            cin = cout
        return n + (2 * self.hidden_sizes[-1] if pre else 0)  # BitModel's final norm


# --- catalog: google/bit-50 ----------------------------------------------------------------------
# transformers' convert_bit_to_pytorch.py converts timm's resnetv2_50x1_bitm (BiT-M R50x1:
# ImageNet-21k pre-trained, ImageNet-1k fine-tuned) with BitConfig's defaults (a pre-activation
# ResNet-50, symmetric padding, the stem's zero-pad and unpadded max-pool as timm's 'fixed' stem),
# and a BitImageProcessor made from timm's eval transform of that model: resize the shortest edge
# to 448 (bilinear), center-crop 448 x 448, mean and std 0.5.
FAMILY = Family(
    name="bit",
    title="BiT",
    model_types=("bit",),
    settings=BitSettings,
    processor="Bit",
    catalog=(
        CatalogRow(
            alias="bit-50",
            repo_id="google/bit-50",
            config={
                "model_type": "bit",
                "architectures": ["BitForImageClassification"],
                "num_channels": 3,
                "embedding_size": 64,
                "hidden_sizes": [256, 512, 1024, 2048],
                "depths": [3, 4, 6, 3],
                "layer_type": "preactivation",
                "hidden_act": "relu",
                "global_padding": None,
                "num_groups": 32,
                "drop_path_rate": 0.0,
                "embedding_dynamic_padding": False,
                "output_stride": 32,
                "width_factor": 1,
            },
            preprocessor={
                "crop_size": {"height": 448, "width": 448},
                "do_center_crop": True,
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "BitImageProcessor",
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "rescale_factor": 0.00392156862745098,
                "size": {"shortest_edge": 448},
            },
            description="BiT-M R50x1 (ImageNet-21k, fine-tuned on ImageNet-1k, 448)",
            extra_aliases=("bit-m-r50x1",),
        ),
    ),
    stage_norms={
        "hf": "no stage norm (`BitBackbone` applies none): the raw stage outputs",
        "none": "raw stage outputs",
        "final": "the trained final GroupNorm and activation (`BitModel.norm`) on the last stage, the others raw "
        "(the bottleneck layout has no final norm: its last stage stays raw)",
    },
    tiny={
        "model_type": "bit",
        "embedding_size": 8,
        "hidden_sizes": [16, 32, 48, 64],
        "depths": [1, 1, 1, 1],
        "num_groups": 4,
    },
    notes="BiT's convolutions standardise their weights on every call in transformers; bbx standardises "
    "them once when it loads a model for extraction. Its fp32 maps differ from a float64 run of the same "
    "weights by about as much as transformers' own do (GroupNorm through a deep residual network amplifies rounding).",
)
