"""ResNet (He et al., "Deep Residual Learning for Image Recognition", 2015), transformers layout:
what bbx knows about it without torch. The network is in :mod:`bbx.families.resnet.model`.

Stages: ``stem`` (after the max-pool, stride 4) and ``stage1`` ... ``stageN``. ResNet has no stage
norms, so every ``stage_norm`` mode gives the same maps.
"""

from __future__ import annotations

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
    TimmCounterpart,
    limit,
)


def halve(n: int) -> int:
    """A stride-2 op with 'same' padding (7x7/p3, 3x3/p1, 1x1/p0, max-pool 3/p1): ceil(n / 2)."""
    return (n + 1) // 2


@dataclass(frozen=True)
class ResNetSettings(Settings):
    """The architecture fields of a ResNet ``config.json``, with transformers' defaults."""

    num_channels: int = limit(3, 1, 64)
    embedding_size: int = limit(64, 1, MAX_SIZE)
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
        if len(self.hidden_sizes) > 64:
            raise ValueError(f"{len(self.hidden_sizes)} stages: bbx builds ResNets of at most 64")
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

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """Every distinct kind of residual block, stage by stage: (input channels, output
        channels, stride, how many of them): each stage's first block, then its other ones."""
        out = []
        cin = self.embedding_size
        for cout, depth, first in zip(self.hidden_sizes, self.depths, self.first_strides()):
            out.append((cin, cout, first, 1))
            if depth > 1:
                out.append((cout, cout, 1, depth - 1))
            cin = cout
        return out

    def parameter_count(self) -> int:
        def conv_bn(cin: int, cout: int, k: int) -> int:  # conv weight, BatchNorm's 4 vectors and its counter
            return cin * cout * k * k + 4 * cout + 1

        n = conv_bn(self.num_channels, self.embedding_size, 7)
        for cin, cout, stride, count in self.blocks():
            if self.layer_type == "basic":
                block = conv_bn(cin, cout, 3) + conv_bn(cout, cout, 3)
            else:
                mid = cout // 4
                block = conv_bn(cin, mid, 1) + conv_bn(mid, mid, 3) + conv_bn(mid, cout, 1)
            if cin != cout or stride != 1:
                block += conv_bn(cin, cout, 1)  # the projection shortcut
            n += count * block
        return n

    def activation_count(self, image_size: tuple[int, int]) -> int:
        h, w = image_size
        sizes = self.map_sizes(image_size)
        maps = sum(st.channels * a * b for st, (a, b) in zip(self.stages(), sizes))
        stem = self.embedding_size * (halve(h) * halve(w) + sizes[0][0] * sizes[0][1])  # conv, then pool
        widest = stem
        grids = zip(self.blocks(), self._block_grids(sizes), self._block_grids(sizes, out=True))
        for (cin, cout, _, _), (hi, wi), (ho, wo) in grids:
            mid = cout if self.layer_type == "basic" else cout // 4
            inner = mid * hi * wi + mid * ho * wo if self.layer_type == "bottleneck" else mid * ho * wo
            # the block's input, its inner maps, the shortcut and the output
            widest = max(widest, cin * hi * wi + inner + 2 * cout * ho * wo)
        return self.num_channels * h * w + maps + widest

    def _block_grids(self, sizes: list[tuple[int, int]], *, out: bool = False) -> list[tuple[int, int]]:
        """The input (or output) grid of each entry of :meth:`blocks`."""
        grids = []
        for i, depth in enumerate(self.depths):
            before, after = sizes[i], sizes[i + 1]
            grids.append(after if out else before)
            if depth > 1:
                grids.append(after)
        return grids


# --- catalog: microsoft/resnet-* (converted from timm; ConvNeXt-style preprocessing) -----------------
PREPROCESSOR = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
    "resample": 3,
    "size": 224,
}


def _row(alias: str, repo_id: str, other: str, depths: list[int], layer_type: str) -> CatalogRow:
    sizes = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    config = {
        "model_type": "resnet",
        "architectures": ["ResNetForImageClassification"],
        "num_channels": 3,
        "embedding_size": 64,
        "hidden_sizes": sizes,
        "depths": depths,
        "layer_type": layer_type,
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=f"ResNet-{alias.split('-')[1]} (ImageNet-1k)",
        extra_aliases=(other,),
    )


def _timm_stage(name: str) -> str | None:
    """timm's ResNet stage -> transformers': ``layerK`` is ``stageK``; ``act1`` (before the max-pool)
    has no counterpart (transformers' ``stem`` is after it)."""
    return f"stage{name[len('layer') :]}" if name.startswith("layer") else None


FAMILY = Family(
    name="resnet",
    title="ResNet",
    model_types=("resnet",),
    settings=ResNetSettings,
    processor="ConvNext",
    catalog=(
        _row("resnet-18", "microsoft/resnet-18", "resnet18", [2, 2, 2, 2], "basic"),
        _row("resnet-34", "microsoft/resnet-34", "resnet34", [3, 4, 6, 3], "basic"),
        _row("resnet-50", "microsoft/resnet-50", "resnet50", [3, 4, 6, 3], "bottleneck"),
        _row("resnet-101", "microsoft/resnet-101", "resnet101", [3, 4, 23, 3], "bottleneck"),
        _row("resnet-152", "microsoft/resnet-152", "resnet152", [3, 8, 36, 3], "bottleneck"),
    ),
    stage_norms={
        "hf": "no stage norms: all three modes give the same maps",
        "none": "",
        "final": "",
    },
    tiny={
        "model_type": "resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
    },
    timm_counterpart=TimmCounterpart(patterns=("resnet*",), stage_of=_timm_stage),
)
