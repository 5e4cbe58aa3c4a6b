"""ResNet in timm's layout (He et al., "Deep Residual Learning for Image Recognition", 2015; the
``c``/``d``/``s``/``t`` stems of Bag of Tricks, He et al. 2019 and ResNet strikes back, Wightman
et al. 2021): timm's ``resnet*`` architectures, what bbx knows about them without torch. The
network is in :mod:`bbx.families.timm_resnet.model`.

Stages as timm's ``feature_info``: ``act1`` (the stem's output before the max-pool, stride 2),
``layer1`` ... ``layer4`` (strides 4 to 32). No stage norms: every ``stage_norm`` mode gives the
same maps (timm's ``forward_intermediates(norm=True)`` has none to apply). Any input of at
least 1 pixel a side works: every stride-2 step is ``ceil(n / 2)``. timm's ``output_stride``
(16 or 8; DETR-DC5 builds its ResNet with 16) swaps the later stages' strides for dilation, as
timm's ``make_blocks`` does: those stages keep the stride reached so far.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import MAX_SIZE, Family, Settings, StageInfo, TimmArch, TimmLayout, limit, timm_data


def halve(n: int) -> int:
    """A stride-2 step with 'same' padding (7x7/p3, 3x3/p1, 1x1/p0, max-pool 3/p1, avg-pool 2 with
    ceil_mode): ceil(n / 2)."""
    return (n + 1) // 2


@dataclass(frozen=True)
class TimmResNetSettings(Settings):
    """timm's ``ResNet`` arguments bbx implements (its defaults), for one architecture."""

    architecture: str = ""
    block: str = "bottleneck"  # timm's BasicBlock | Bottleneck
    layers: tuple[int, ...] = limit((3, 4, 6, 3), 1, 4096)
    channels: tuple[int, ...] = limit((64, 128, 256, 512), 1, MAX_SIZE)
    in_chans: int = limit(3, 1, 64)
    cardinality: int = limit(1, 1, 4096)
    base_width: int = limit(64, 1, MAX_SIZE)
    stem_width: int = limit(64, 1, MAX_SIZE)
    stem_type: str = ""  # "" (7x7) | "deep" (three 3x3) | "deep_tiered"
    avg_down: bool = False  # average-pool then 1x1 conv in the shortcut (the "d" variants)
    output_stride: int = 32  # 16 or 8: the later stages dilated instead of strided (timm's make_blocks)

    def check(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be basic or bottleneck, got {self.block!r}")
        if self.stem_type not in ("", "deep", "deep_tiered"):
            raise ValueError(f"stem_type must be '', 'deep' or 'deep_tiered', got {self.stem_type!r}")
        if len(self.layers) != len(self.channels):
            raise ValueError("layers and channels must have the same length")
        if self.block == "basic" and (self.cardinality != 1 or self.base_width != 64):
            raise ValueError("a basic block has no cardinality or base_width")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")

    def stage_plan(self) -> list[tuple[int, int, int]]:
        """(stride of the first block, dilation, the first block's dilation) of every stage, as
        timm's ``make_blocks`` derives them from ``output_stride``: once the network stride reaches
        it, a stage's stride 2 becomes a doubled dilation, its first block keeping the previous one."""
        out = []
        net, dilation, prev = 4, 1, 1
        for i in range(len(self.channels)):
            stride = 1 if i == 0 else 2
            if net >= self.output_stride:
                dilation, stride = dilation * stride, 1
            else:
                net *= stride
            out.append((stride, dilation, prev))
            prev = dilation
        return out

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def stem_out(self) -> int:
        """Channels after the stem: ``stem_width * 2`` for the deep stems, else 64 (timm's rule)."""
        return self.stem_width * 2 if "deep" in self.stem_type else 64

    def stem_widths(self) -> tuple[int, int]:
        """The two inner widths of a deep stem (``deep_tiered``: ``3 * (stem_width // 4)``, then
        ``stem_width``)."""
        if "tiered" in self.stem_type:
            return 3 * (self.stem_width // 4), self.stem_width
        return self.stem_width, self.stem_width

    def bottleneck_width(self, planes: int) -> int:
        return int(planes * (self.base_width / 64)) * self.cardinality

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("act1", self.stem_out, 2)]
        stride = 4
        for i, (planes, (step, _, _)) in enumerate(zip(self.channels, self.stage_plan())):
            stride *= step
            out.append(StageInfo(f"layer{i + 1}", planes * self.expansion, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        h, w = halve(h), halve(w)
        sizes = [(h, w)]
        h, w = halve(h), halve(w)  # the max-pool
        for step, _, _ in self.stage_plan():
            if step > 1:
                h, w = halve(h), halve(w)
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        def conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
            return cout * (cin // groups) * k * k + 4 * cout + 1  # no conv bias; BatchNorm's state

        if "deep" in self.stem_type:
            a, b = self.stem_widths()
            n = conv_bn(self.in_chans, a, 3) + conv_bn(a, b, 3) + conv_bn(b, self.stem_out, 3)
        else:
            n = conv_bn(self.in_chans, self.stem_out, 7)
        cin = self.stem_out
        for i, (planes, depth) in enumerate(zip(self.channels, self.layers)):
            cout = planes * self.expansion
            for j in range(depth):
                c_in = cin if j == 0 else cout
                if self.block == "bottleneck":
                    w = self.bottleneck_width(planes)
                    n += conv_bn(c_in, w, 1) + conv_bn(w, w, 3, self.cardinality) + conv_bn(w, cout, 1)
                else:
                    n += conv_bn(c_in, planes, 3) + conv_bn(planes, cout, 3)
                if j == 0 and (i > 0 or c_in != cout):  # the projecting shortcut
                    n += conv_bn(c_in, cout, 1)
            cin = cout
        return n


# timm 1.0.31's resnet.py: each architecture's model_args (BasicBlock -> "basic", Bottleneck ->
# "bottleneck") and its default pretrained tag's pretrained_cfg (the first tag in default_cfgs).
ARCHITECTURES = (
    TimmArch(
        "resnet10t",
        {"block": "basic", "layers": [1, 1, 1, 1], "stem_width": 32, "stem_type": "deep_tiered", "avg_down": True},
        "c3_in1k",
        timm_data(176, 0.875),
    ),
    TimmArch(
        "resnet14t",
        {"block": "bottleneck", "layers": [1, 1, 1, 1], "stem_width": 32, "stem_type": "deep_tiered", "avg_down": True},
        "c3_in1k",
        timm_data(176, 0.875),
    ),
    TimmArch("resnet18", {"block": "basic", "layers": [2, 2, 2, 2]}, "a1_in1k", timm_data(224, 0.95)),
    TimmArch(
        "resnet18d",
        {"block": "basic", "layers": [2, 2, 2, 2], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "ra2_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch("resnet26", {"block": "bottleneck", "layers": [2, 2, 2, 2]}, "bt_in1k", timm_data(224, 0.875)),
    TimmArch(
        "resnet26d",
        {"block": "bottleneck", "layers": [2, 2, 2, 2], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "bt_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "resnet26t",
        {"block": "bottleneck", "layers": [2, 2, 2, 2], "stem_width": 32, "stem_type": "deep_tiered", "avg_down": True},
        "ra2_in1k",
        timm_data(256, 0.94),
    ),
    TimmArch("resnet34", {"block": "basic", "layers": [3, 4, 6, 3]}, "a1_in1k", timm_data(224, 0.95)),
    TimmArch(
        "resnet34d",
        {"block": "basic", "layers": [3, 4, 6, 3], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "ra2_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch("resnet50", {"block": "bottleneck", "layers": [3, 4, 6, 3]}, "a1_in1k", timm_data(224, 0.95)),
    TimmArch(
        "resnet50c",
        {"block": "bottleneck", "layers": [3, 4, 6, 3], "stem_width": 32, "stem_type": "deep"},
        "gluon_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "resnet50d",
        {"block": "bottleneck", "layers": [3, 4, 6, 3], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "ra2_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "resnet50s",
        {"block": "bottleneck", "layers": [3, 4, 6, 3], "stem_width": 64, "stem_type": "deep"},
        "gluon_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch("resnet101", {"block": "bottleneck", "layers": [3, 4, 23, 3]}, "a1h_in1k", timm_data(224, 0.95)),
    TimmArch(
        "resnet101c",
        {"block": "bottleneck", "layers": [3, 4, 23, 3], "stem_width": 32, "stem_type": "deep"},
        "gluon_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "resnet101d",
        {"block": "bottleneck", "layers": [3, 4, 23, 3], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "ra2_in1k",
        timm_data(256, 0.95),
    ),
    TimmArch(
        "resnet101s",
        {"block": "bottleneck", "layers": [3, 4, 23, 3], "stem_width": 64, "stem_type": "deep"},
        "gluon_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch("resnet152", {"block": "bottleneck", "layers": [3, 8, 36, 3]}, "a1h_in1k", timm_data(224, 0.95)),
    TimmArch(
        "resnet152c",
        {"block": "bottleneck", "layers": [3, 8, 36, 3], "stem_width": 32, "stem_type": "deep"},
        "gluon_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "resnet152d",
        {"block": "bottleneck", "layers": [3, 8, 36, 3], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "ra2_in1k",
        timm_data(256, 0.95),
    ),
    TimmArch(
        "resnet152s",
        {"block": "bottleneck", "layers": [3, 8, 36, 3], "stem_width": 64, "stem_type": "deep"},
        "gluon_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "resnet200d",
        {"block": "bottleneck", "layers": [3, 24, 36, 3], "stem_width": 32, "stem_type": "deep", "avg_down": True},
        "ra2_in1k",
        timm_data(256, 0.95),
    ),
)

FAMILY = Family(
    name="timm_resnet",
    title="ResNet (timm)",
    model_types=("timm_resnet",),
    settings=TimmResNetSettings,
    processor="timm",
    stage_norms={
        "hf": "no stage norms (timm's feature maps): all three modes give the same maps",
        "none": "",
        "final": "",
    },
    tiny={
        "architecture": "resnet18",
        "block": "basic",
        "layers": [1, 1, 1, 1],
        "channels": [8, 16, 24, 32],
    },
    notes="timm's `resnet*` (the `timm/` hub repos, `timm:resnet50`): stages `act1` (stride 2, before the "
    "max-pool), `layer1`..`layer4`, as timm's `feature_info`.",
    timm=TimmLayout(patterns=("resnet*",), architectures=ARCHITECTURES),
)
