"""RegNet (Radosavovic et al., "Designing Network Design Spaces", 2020; the SEER checkpoints: Goyal
et al., "Vision Models Are More Robust And Fair When Pretrained On Uncurated Images Without
Supervision", 2022), transformers layout: what bbx knows about it without torch. The network is in
:mod:`bbx.families.regnet.model`.

transformers has no RegNet backbone class; bbx's stages are ``RegNetModel``'s hidden states, named
as ResNet's: ``stem`` (the 3x3 stride-2 embedder, stride 2) and ``stage1`` ... ``stageN``. RegNet has
no stage norms, so every ``stage_norm`` mode gives the same maps. Any input size works (every conv is
padded: sizes are ceil-divided by each stride 2).
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
    limit,
)


def halve(n: int) -> int:
    """A stride-2 conv with 'same' padding (3x3/p1, 1x1/p0): ceil(n / 2)."""
    return (n + 1) // 2


def se_width(cin: int) -> int:
    """The squeeze-excitation bottleneck of a Y block whose input has ``cin`` channels, as
    transformers computes it (``int(round(cin / 4))``, Python's round: half to even)."""
    return int(round(cin / 4))


@dataclass(frozen=True)
class RegNetSettings(Settings):
    """The architecture fields of a RegNet ``config.json``, with transformers' defaults."""

    num_channels: int = limit(3, 1, 64)
    embedding_size: int = limit(32, 1, MAX_SIZE)
    hidden_sizes: tuple[int, ...] = limit((128, 192, 512, 1088), 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((2, 6, 12, 2), 1, 4096)
    groups_width: int = limit(64, 1, MAX_SIZE)
    layer_type: str = "y"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = True

    def check(self) -> None:
        if self.layer_type not in ("x", "y"):
            raise ValueError(f"layer_type must be 'x' or 'y', got {self.layer_type!r}")
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError("hidden_sizes and depths must be non-empty and of the same length")
        if len(self.depths) > 16:
            raise ValueError(f"{len(self.depths)} stages is more than any RegNet has (at most 16)")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        for width in self.hidden_sizes:
            groups = self.groups(width)
            if width % groups:
                raise ValueError(
                    f"a stage of width {width} cannot be split into {groups} groups of groups_width {self.groups_width}"
                )
        if self.layer_type == "y":
            for cin in (self.embedding_size, *self.hidden_sizes):
                if se_width(cin) < 1:
                    raise ValueError(f"a Y block's squeeze-excitation needs at least 3 input channels, got {cin}")

    def groups(self, width: int) -> int:
        """The groups of a stage's 3x3 conv (transformers: ``max(1, width // groups_width)``)."""
        return max(1, width // self.groups_width)

    def first_strides(self) -> list[int]:
        """The stride of each stage's first block."""
        return [2 if (i > 0 or self.downsample_in_first_stage) else 1 for i in range(len(self.depths))]

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.embedding_size, 2)]
        stride = 2
        for i, (cout, first) in enumerate(zip(self.hidden_sizes, self.first_strides())):
            stride *= first
            out.append(StageInfo(f"stage{i + 1}", cout, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        h, w = halve(h), halve(w)
        sizes = [(h, w)]
        for first in self.first_strides():
            if first == 2:
                h, w = halve(h), halve(w)
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        bn = lambda c: 4 * c + 1  # noqa: E731  (weight, bias, running mean and variance, the batch count)
        e = self.embedding_size
        n = self.num_channels * e * 9 + bn(e)  # the stem
        cin = e
        for cout, depth, stride in zip(self.hidden_sizes, self.depths, self.first_strides()):
            for j in range(depth):
                c_in = cin if j == 0 else cout
                n += c_in * cout + bn(cout)  # conv1, 1x1
                n += cout * (cout // self.groups(cout)) * 9 + bn(cout)  # conv2, 3x3 grouped
                n += cout * cout + bn(cout)  # conv3, 1x1
                if self.layer_type == "y":  # squeeze-excitation: two biased 1x1 convs
                    se = se_width(c_in)
                    n += cout * se + se + se * cout + cout
                if c_in != cout or (j == 0 and stride != 1):  # a projecting shortcut
                    n += c_in * cout + bn(cout)
            cin = cout
        return n


# --- catalog: facebook/regnet-* ------------------------------------------------------------------
# Architectures as in transformers' convert_regnet_to_pytorch.py (names_to_config; every other
# field is RegNetConfig's default: embedding_size 32, relu, downsample_in_first_stage true). The
# preprocessing is what that script pushed: facebook/convnext-base-224-22k-1k's
# ConvNextFeatureExtractor with size 224 (384 for the SEER checkpoints, which it warps to 384x384).


def _preprocessor(size: int) -> dict:
    return {
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "size": size,
    }


def _row(
    repo_id: str, depths: list[int], widths: list[int], groups_width: int, layer_type: str, description: str
) -> CatalogRow:
    config = {
        "model_type": "regnet",
        "architectures": ["RegNetForImageClassification"],
        "num_channels": 3,
        "embedding_size": 32,
        "hidden_sizes": widths,
        "depths": depths,
        "groups_width": groups_width,
        "layer_type": layer_type,
        "hidden_act": "relu",
        "downsample_in_first_stage": True,
    }
    size = 384 if "seer" in repo_id else 224
    return CatalogRow(
        alias=repo_id.split("/")[1],
        repo_id=repo_id,
        config=config,
        preprocessor=_preprocessor(size),
        description=description,
    )


FAMILY = Family(
    name="regnet",
    title="RegNet",
    model_types=("regnet",),
    settings=RegNetSettings,
    processor="ConvNext",
    catalog=(
        _row("facebook/regnet-y-040", [2, 6, 12, 2], [128, 192, 512, 1088], 64, "y", "RegNetY-4GF (ImageNet-1k)"),
        _row(
            "facebook/regnet-y-320-seer-in1k",
            [2, 5, 12, 1],
            [232, 696, 1392, 3712],
            232,
            "y",
            "RegNetY-32GF SEER (Instagram, fine-tuned on ImageNet-1k, 384)",
        ),
        _row("facebook/regnet-x-040", [2, 5, 14, 2], [80, 240, 560, 1360], 40, "x", "RegNetX-4GF (ImageNet-1k)"),
    ),
    stage_norms={
        "hf": "no stage norms (its maps are `RegNetModel`'s hidden states; transformers has no RegNet backbone "
        "class): all three modes give the same maps",
        "none": "",
        "final": "",
    },
    tiny={
        "model_type": "regnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 2, 1],
        "groups_width": 8,
        "layer_type": "y",
    },
    notes="RegNet has no transformers backbone class: its stages are `RegNetModel`'s hidden states, `stem` "
    "being the 3x3 stride-2 embedder (stride 2), then `stage1`..`stage4` (strides 4 to 32). Any input size works.",
)
