"""EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", 2019) in timm's layout: timm's ``efficientnet_b*`` and ``tf_efficientnet_b*`` / ``_l2``
(the TensorFlow ports: BatchNorm eps 1e-3, TensorFlow's 'SAME' padding), what bbx knows about
them without torch. The network is in :mod:`bbx.families.efficientnet.model`.

The B0 block table, scaled: ``channel_multiplier`` widens every stage (timm's ``round_channels``:
to a multiple of 8, never more than 10% down), ``depth_multiplier`` deepens it
(``ceil(repeats * multiplier)``). Stages as timm's ``feature_info``: ``blocks.0`` (stride 2),
``blocks.1`` (4), ``blocks.2`` (8), ``blocks.4`` (16), ``blocks.6`` (32): the outputs of the
block stages after which the resolution halves, and of the last. The head (``conv_head``, ``bn2``)
is never run: timm's ``forward_intermediates`` has no norm for the stages either, so every
``stage_norm`` mode gives the same maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bbx.family import INCEPTION, Family, Settings, StageInfo, TimmArch, TimmLayout, limit, timm_data

#: EfficientNet-B0's stages (timm's arch_def): block type (ds: depthwise separable, ir: inverted
#: residual), repeats, kernel, stride, expansion, output channels; squeeze-excite ratio 0.25 in all
B0 = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
SE_RATIO = 0.25


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: the nearest multiple of ``divisor``, at least ``divisor``, and
    not more than ``1 - round_limit`` below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * v else new


@dataclass(frozen=True)
class BlockSpec:
    kind: str  # "ds" | "ir"
    cin: int
    cout: int
    kernel: int
    stride: int
    mid: int  # the expanded width (ds: cin)
    se: int  # squeeze-excite reduced width

    @property
    def skip(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


@dataclass(frozen=True)
class EfficientNetSettings(Settings):
    """timm's ``_gen_efficientnet`` arguments bbx implements, for one architecture."""

    architecture: str = ""
    channel_multiplier: float = limit(1.0, 0.05, 64)
    depth_multiplier: float = limit(1.0, 0.05, 64)
    bn_eps: float = limit(1e-5, 0, 1)
    pad_type: str = ""  # "" (symmetric) | "same" (TensorFlow's, the tf_ ports)
    in_chans: int = limit(3, 1, 64)
    stem_size: int = limit(32, 1, 1 << 16)

    def check(self) -> None:
        if self.pad_type not in ("", "same"):
            raise ValueError(f"pad_type must be '' or 'same', got {self.pad_type!r}")

    def round(self, channels: int) -> int:
        return make_divisible(channels * self.channel_multiplier)

    @property
    def stem(self) -> int:
        return self.round(self.stem_size)

    def block_stages(self) -> list[list[BlockSpec]]:
        """Every block, stage by stage, with its widths (timm's EfficientNetBuilder)."""
        out = []
        cin = self.stem
        for kind, repeats, kernel, stride, exp, chs in B0:
            cout = self.round(chs)
            blocks = []
            for i in range(int(math.ceil(repeats * self.depth_multiplier))):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(BlockSpec(kind, cin, cout, kernel, s, cin, round(cin * SE_RATIO)))
                else:
                    mid = make_divisible(cin * exp)
                    blocks.append(BlockSpec(kind, cin, cout, kernel, s, mid, round(mid * (SE_RATIO / exp))))
                cin = cout
            out.append(blocks)
        return out

    def feature_stages(self) -> list[int]:
        """The block stages whose outputs are timm's feature levels: those followed by a stride-2
        stage, and the last."""
        strides = [stride for _, _, _, stride, _, _ in B0]
        return [i for i in range(len(B0)) if i == len(B0) - 1 or strides[i + 1] > 1]

    def stages(self) -> list[StageInfo]:
        stride, out = 2, []
        blocks = self.block_stages()
        for i, (_, _, _, s, _, _) in enumerate(B0):
            stride *= s
            if i in self.feature_stages():
                out.append(StageInfo(f"blocks.{i}", blocks[i][-1].cout, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        h, w = (h + 1) // 2, (w + 1) // 2  # every stride-2 step, symmetric or 'SAME': ceil(n / 2)
        sizes = []
        for i, (_, _, _, s, _, _) in enumerate(B0):
            if s == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
            if i in self.feature_stages():
                sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        bn = lambda c: 4 * c + 1  # noqa: E731  (BatchNorm's weight, bias, running statistics, batch count)
        n = self.in_chans * self.stem * 9 + bn(self.stem)
        for stage in self.block_stages():
            for b in stage:
                if b.kind == "ir":  # the 1x1 expansion
                    n += b.cin * b.mid + bn(b.mid)
                n += b.mid * b.kernel**2 + bn(b.mid)  # depthwise
                n += b.mid * b.se + b.se + b.se * b.mid + b.mid  # squeeze-excite: two biased 1x1 convs
                n += b.mid * b.cout + bn(b.cout)  # the projection
        return n

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """The default (input, stage maps, four times the largest) plus the widest block: an
        inverted residual holds its input, the expanded map, the depthwise output and its
        projection at once."""
        h, w = (image_size[0] + 1) // 2, (image_size[1] + 1) // 2  # after the stem
        widest = 0
        for stage in self.block_stages():
            for b in stage:
                ho, wo = (h + 1) // 2 if b.stride == 2 else h, (w + 1) // 2 if b.stride == 2 else w
                widest = max(widest, (b.cin + b.mid) * h * w + (b.mid + b.cout) * ho * wo)
                h, w = ho, wo
        return super().activation_count(image_size) + widest


# timm 1.0.31's efficientnet.py: each entrypoint's channel and depth multipliers (tf_: bn_eps
# BN_EPS_TF_DEFAULT and pad_type 'same'), and its default pretrained tag's pretrained_cfg. B6-B8 of
# the PyTorch-trained line have no weights in timm and are left out.
ARCHITECTURES = (
    TimmArch("efficientnet_b0", {"channel_multiplier": 1.0, "depth_multiplier": 1.0}, "ra_in1k", timm_data(224, 0.875)),
    TimmArch(
        "efficientnet_b1",
        {"channel_multiplier": 1.0, "depth_multiplier": 1.1},
        "ra4_e3600_r240_in1k",
        timm_data(240, 0.9, mean=INCEPTION, std=INCEPTION),
    ),
    TimmArch("efficientnet_b2", {"channel_multiplier": 1.1, "depth_multiplier": 1.2}, "ra_in1k", timm_data(256, 0.875)),
    TimmArch(
        "efficientnet_b3", {"channel_multiplier": 1.2, "depth_multiplier": 1.4}, "ra2_in1k", timm_data(288, 0.875)
    ),
    TimmArch(
        "efficientnet_b4", {"channel_multiplier": 1.4, "depth_multiplier": 1.8}, "ra2_in1k", timm_data(320, 0.875)
    ),
    TimmArch(
        "efficientnet_b5",
        {"channel_multiplier": 1.6, "depth_multiplier": 2.2},
        "sw_in12k_ft_in1k",
        timm_data(448, 1.0, crop_mode="squash"),
    ),
    TimmArch(
        "tf_efficientnet_b0",
        {"channel_multiplier": 1.0, "depth_multiplier": 1.0, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "tf_efficientnet_b1",
        {"channel_multiplier": 1.0, "depth_multiplier": 1.1, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(240, 0.882),
    ),
    TimmArch(
        "tf_efficientnet_b2",
        {"channel_multiplier": 1.1, "depth_multiplier": 1.2, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(260, 0.89),
    ),
    TimmArch(
        "tf_efficientnet_b3",
        {"channel_multiplier": 1.2, "depth_multiplier": 1.4, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(300, 0.904),
    ),
    TimmArch(
        "tf_efficientnet_b4",
        {"channel_multiplier": 1.4, "depth_multiplier": 1.8, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(380, 0.922),
    ),
    TimmArch(
        "tf_efficientnet_b5",
        {"channel_multiplier": 1.6, "depth_multiplier": 2.2, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(456, 0.934),
    ),
    TimmArch(
        "tf_efficientnet_b6",
        {"channel_multiplier": 1.8, "depth_multiplier": 2.6, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(528, 0.942),
    ),
    TimmArch(
        "tf_efficientnet_b7",
        {"channel_multiplier": 2.0, "depth_multiplier": 3.1, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k",
        timm_data(600, 0.949),
    ),
    TimmArch(
        "tf_efficientnet_b8",
        {"channel_multiplier": 2.2, "depth_multiplier": 3.6, "bn_eps": 0.001, "pad_type": "same"},
        "ap_in1k",
        timm_data(672, 0.954, mean=INCEPTION, std=INCEPTION),
    ),
    TimmArch(
        "tf_efficientnet_l2",
        {"channel_multiplier": 4.3, "depth_multiplier": 5.3, "bn_eps": 0.001, "pad_type": "same"},
        "ns_jft_in1k_475",
        timm_data(475, 0.936),
    ),
)

FAMILY = Family(
    name="efficientnet",
    title="EfficientNet (timm)",
    model_types=("timm_efficientnet",),
    settings=EfficientNetSettings,
    processor="timm",
    stage_norms={
        "hf": "no stage norms (timm's feature maps): all three modes give the same maps",
        "none": "",
        "final": "",
    },
    tiny={"architecture": "efficientnet_b0", "channel_multiplier": 0.25, "depth_multiplier": 0.3},
    notes="timm's `efficientnet_b*` and `tf_efficientnet_b*` (`timm:efficientnet_b0`): stages `blocks.0`, "
    "`blocks.1`, `blocks.2`, `blocks.4`, `blocks.6` (strides 2 to 32), as timm's `feature_info`.",
    timm=TimmLayout(patterns=("efficientnet_*", "tf_efficientnet_*"), architectures=ARCHITECTURES),
)
