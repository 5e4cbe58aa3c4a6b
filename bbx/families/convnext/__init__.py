"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", 2022), transformers layout: what bbx knows
about it without torch. The network is in :mod:`bbx.families.convnext.model`.

Stages: ``stem`` (the patchify embedding after its LayerNorm, stride ``patch_size``) and
``stage1`` ... ``stageN`` (each after its blocks, N = ``num_stages``), the tensors transformers'
ConvNextBackbone returns. Extra ``depths`` / ``hidden_sizes`` entries past ``num_stages`` are
ignored, as transformers never builds those stages either. Any input of at least
``patch_size * 2 ** (N - 1)`` pixels a side works; every conv is unpadded with kernel = stride, so
sizes are floored at each step.
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


@dataclass(frozen=True)
class ConvNextSettings(Settings):
    """The architecture fields of a ConvNeXt ``config.json``, with transformers' defaults."""

    square_fields = ("patch_size", "image_size")

    num_channels: int = limit(3, 1, 64)
    patch_size: int = limit(4, 1, 4096)
    num_stages: int = limit(4, 1, 12)
    hidden_sizes: tuple[int, ...] = limit((96, 192, 384, 768), 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((3, 3, 9, 3), 0, 4096)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-12, 0, 1)
    layer_scale_init_value: float = 1e-6
    drop_path_rate: float = 0.0  # training only; read so that a config round-trips, never used
    image_size: int = limit(224, 1, MAX_SIZE)

    def check(self) -> None:
        if self.num_stages > min(len(self.hidden_sizes), len(self.depths)):
            raise ValueError(
                f"num_stages {self.num_stages} needs at least that many hidden_sizes ({len(self.hidden_sizes)}) "
                f"and depths ({len(self.depths)})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def widths(self) -> tuple[int, ...]:
        return self.hidden_sizes[: self.num_stages]

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.widths[0], self.patch_size)]
        stride = self.patch_size
        for i, cout in enumerate(self.widths):
            # transformers downsamples every stage but the first
            stride *= 2 if i > 0 else 1
            out.append(StageInfo(f"stage{i + 1}", cout, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        need = p * 2 ** (self.num_stages - 1)
        if h < need or w < need:
            raise ValueError(f"input {h}x{w} is too small: ConvNeXt needs at least {need}x{need}")
        # valid (unpadded) convs whose kernel equals their stride: floor division
        h, w = h // p, w // p
        sizes = [(h, w), (h, w)]
        for _ in range(self.num_stages - 1):
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        w0 = self.widths[0]
        n = self.num_channels * w0 * self.patch_size**2 + w0 + 2 * w0  # patchify conv and its norm
        scale = 1 if self.layer_scale_init_value > 0 else 0
        cin = w0
        for i, (d, depth) in enumerate(zip(self.widths, self.depths)):
            if i > 0:  # a channel norm, then a 2x2 conv
                n += 2 * cin + cin * d * 4 + d
            # depthwise 7x7, norm, MLP d -> 4d -> d, layer scale
            n += depth * (49 * d + d + 2 * d + d * 4 * d + 4 * d + 4 * d * d + d + scale * d)
            cin = d
        n += sum(2 * st.channels for st in self.stages())  # transformers' backbone norms
        return n + 2 * self.widths[-1]  # the final norm

    def activation_count(self, image_size: tuple[int, int]) -> int:
        h, w = image_size
        sizes = self.map_sizes(image_size)
        maps = sum(st.channels * a * b for st, (a, b) in zip(self.stages(), sizes))
        widest = 2 * self.widths[0] * sizes[0][0] * sizes[0][1]  # the patchify conv and its norm
        cin, (ph, pw) = self.widths[0], sizes[0]
        for i, (d, (a, b)) in enumerate(zip(self.widths, sizes[1:])):
            if i > 0:  # downsampling: its input, its norm, its output
                widest = max(widest, 2 * cin * ph * pw + d * a * b)
            # a block: its input, the depthwise conv, the norm, the MLP's 4d hidden and its output
            widest = max(widest, 8 * d * a * b)
            cin, (ph, pw) = d, (a, b)
        return self.num_channels * h * w + 2 * maps + widest  # maps: raw, and through their norms


# --- catalog: facebook/convnext-* (converted from the original repository; every hub config keeps
# ConvNextConfig's defaults but for depths / hidden_sizes; preprocessing as ResNet's, with size 384
# for the 384 checkpoints, which ConvNextFeatureExtractor resizes without a crop) ------------------
_SIZES = {
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768], "T"),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768], "S"),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024], "B"),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536], "L"),
    "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048], "XL"),
}
_DATA = {"": "ImageNet-1k", "-22k": "ImageNet-22k", "-22k-1k": "ImageNet-22k, fine-tuned on ImageNet-1k"}


def _row(alias: str, repo_id: str, size: str, resolution: int, data: str = "") -> CatalogRow:
    depths, widths, short = _SIZES[size]
    config = {
        "model_type": "convnext",
        "architectures": ["ConvNextForImageClassification"],
        "num_channels": 3,
        "patch_size": 4,
        "num_stages": 4,
        "hidden_sizes": widths,
        "depths": depths,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "layer_scale_init_value": 1e-6,
        "drop_path_rate": 0.0,
        "image_size": resolution,
    }
    pre = {
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "size": resolution,
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=pre,
        description=f"ConvNeXt-{short} ({_DATA[data]}, {resolution})",
        extra_aliases=(repo_id.split("/")[1],),
    )


def _timm_stage(name: str) -> str | None:
    """timm's stage ``stages.i`` of the same network -> this family's ``stage<i+1>``."""
    return f"stage{int(name[7:]) + 1}" if name.startswith("stages.") else None


FAMILY = Family(
    name="convnext",
    title="ConvNeXt",
    model_types=("convnext",),
    settings=ConvNextSettings,
    processor="ConvNext",
    catalog=(
        _row("convnext-tiny", "facebook/convnext-tiny-224", "tiny", 224),
        _row("convnext-small", "facebook/convnext-small-224", "small", 224),
        _row("convnext-base", "facebook/convnext-base-224", "base", 224),
        _row("convnext-base-384", "facebook/convnext-base-384", "base", 384),
        _row("convnext-large", "facebook/convnext-large-224", "large", 224),
        _row("convnext-large-384", "facebook/convnext-large-384", "large", 384),
        _row("convnext-base-22k", "facebook/convnext-base-224-22k", "base", 224, "-22k"),
        _row("convnext-large-22k", "facebook/convnext-large-224-22k", "large", 224, "-22k"),
        _row("convnext-xlarge-22k", "facebook/convnext-xlarge-224-22k", "xlarge", 224, "-22k"),
        _row("convnext-base-22k-1k", "facebook/convnext-base-224-22k-1k", "base", 224, "-22k-1k"),
        _row("convnext-base-384-22k-1k", "facebook/convnext-base-384-22k-1k", "base", 384, "-22k-1k"),
        _row("convnext-large-22k-1k", "facebook/convnext-large-224-22k-1k", "large", 224, "-22k-1k"),
        _row("convnext-large-384-22k-1k", "facebook/convnext-large-384-22k-1k", "large", 384, "-22k-1k"),
        _row("convnext-xlarge-22k-1k", "facebook/convnext-xlarge-224-22k-1k", "xlarge", 224, "-22k-1k"),
        _row("convnext-xlarge-384-22k-1k", "facebook/convnext-xlarge-384-22k-1k", "xlarge", 384, "-22k-1k"),
    ),
    stage_norms={
        "hf": "a channel LayerNorm (eps 1e-6) per stage, stem included: loaded from a `ConvNextBackbone` "
        "checkpoint, else created fresh (weight 1, bias 0)",
        "none": "raw stage outputs",
        "final": "the trained final norm (`ConvNextModel.layernorm`) over the channels of the last stage's map, "
        "the others raw",
    },
    tiny={
        "model_type": "convnext",
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 2, 1],
    },
    timm_counterpart=TimmCounterpart(patterns=("convnext_*",), stage_of=_timm_stage),
)
