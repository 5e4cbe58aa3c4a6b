"""RT-DETR's ResNet-vd (He et al., "Bag of Tricks for Image Classification with Convolutional Neural
Networks", 2019, as Zhao et al.'s "DETRs Beat YOLOs on Real-time Object Detection", 2023, uses it),
transformers layout: what bbx knows about it without torch. The network is in
:mod:`bbx.families.rt_detr_resnet.model`.

ResNet-vd differs from ResNet in its stem (three 3x3 convolutions, the first with stride 2, then
the max-pool) and in its downsampling shortcuts (a 2x2 average pool, then a 1x1 convolution of
stride 1). transformers has it only as ``RTDetrResNetBackbone`` (``model_type`` ``rt_detr_resnet``),
nested in RT-DETR checkpoints.

Stages, as ``RTDetrResNetBackbone``: ``stem`` (after the max-pool, ``embedding_size`` channels,
stride 4) and ``stage1`` ... ``stageN``. No stage norms: every ``stage_norm`` mode gives the same
maps. Any input size works.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import ACTIVATIONS, MAX_SIZE, Family, Settings, StageInfo, limit


def halve(n: int) -> int:
    """A stride-2 op with 'same' padding (3x3/p1, 1x1/p0, max-pool 3/p1, average pool 2 with
    ``ceil_mode``): ceil(n / 2)."""
    return (n + 1) // 2


@dataclass(frozen=True)
class RTDetrResNetSettings(Settings):
    """The architecture fields of an ``rt_detr_resnet`` config, with transformers' defaults
    (``RTDetrResNetConfig``)."""

    num_channels: int = limit(3, 1, 64)
    embedding_size: int = limit(64, 2, MAX_SIZE)
    hidden_sizes: tuple[int, ...] = limit((256, 512, 1024, 2048), 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((3, 4, 6, 3), 1, 4096)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False

    def check(self) -> None:
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError("hidden_sizes and depths must be non-empty and of the same length")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.layer_type == "bottleneck" and min(self.hidden_sizes) < 4:
            raise ValueError("a bottleneck stage needs at least 4 channels (it reduces them by 4)")

    def first_strides(self) -> list[int]:
        """The stride of each stage's first block."""
        return [2 if (i > 0 or self.downsample_in_first_stage) else 1 for i in range(len(self.depths))]

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.embedding_size, 4)]
        stride = 4
        for i, (cout, first) in enumerate(zip(self.hidden_sizes, self.first_strides())):
            stride *= first
            out.append(StageInfo(f"stage{i + 1}", cout, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        h, w = halve(halve(h)), halve(halve(w))
        sizes = [(h, w)]
        for first in self.first_strides():
            if first == 2:
                h, w = halve(h), halve(w)
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        def conv(cin: int, cout: int, k: int) -> int:  # a bias-free conv and its BatchNorm (4 C + 1)
            return cin * cout * k * k + 4 * cout + 1

        e = self.embedding_size
        n = conv(self.num_channels, e // 2, 3) + conv(e // 2, e // 2, 3) + conv(e // 2, e, 3)
        cin = e
        for cout, depth, stride in zip(self.hidden_sizes, self.depths, self.first_strides()):
            for j in range(depth):
                c, st = (cin, stride) if j == 0 else (cout, 1)
                if self.layer_type == "basic":
                    n += conv(c, cout, 3) + conv(cout, cout, 3)
                    n += conv(c, cout, 1) if j == 0 else 0  # the first block's shortcut, always
                else:
                    mid = cout // 4
                    n += conv(c, mid, 1) + conv(mid, mid, 3) + conv(mid, cout, 1)
                    n += conv(c, cout, 1) if (c != cout or st != 1) else 0
            cin = cout
        return n


FAMILY = Family(
    name="rt_detr_resnet",
    title="RT-DETR ResNet-vd",
    model_types=("rt_detr_resnet",),
    settings=RTDetrResNetSettings,
    processor="ViT",
    # no public checkpoint holds this backbone alone: RT-DETR's do (bbx/tasks/rt_detr.py)
    catalog=(),
    stage_norms={
        "hf": "no stage norms: all three modes give the same maps",
        "none": "",
        "final": "",
    },
    tiny={
        "model_type": "rt_detr_resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 2, 1, 1],
        "layer_type": "bottleneck",
    },
    notes="RT-DETR ResNet-vd (`RTDetrResNetBackbone`, only inside RT-DETR checkpoints) has a stem of three 3x3 "
    "convolutions and a max-pool (`stem`, stride 4) and average-pool shortcuts where a stage downsamples; `stage1`.."
    "`stage4` as in ResNet. Any input size works.",
)
