"""ConvNeXt in timm's layout (Liu et al., "A ConvNet for the 2020s", 2022): timm's
``convnext_*`` architectures (atto to xxlarge; the small ones with timm's 1x1-conv MLPs), what bbx
knows about them without torch. The network is in :mod:`bbx.families.timm_convnext.model`.

Stages as timm's ``feature_info``: ``stages.0`` ... ``stages.3`` (strides 4 to 32, no stem entry).
No stage norms: timm's features carry none, and its final norm (``head.norm``) sits after the
pooling, so ``forward_intermediates(norm=True)`` applies nothing (``norm_pre`` is the identity):
every ``stage_norm`` mode gives the same maps. Inputs of at least 32 pixels a side; sizes are
floored at every stride (unpadded convs whose kernel is their stride).
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import (
    MAX_SIZE,
    OPENAI_MEAN,
    OPENAI_STD,
    Family,
    Settings,
    StageInfo,
    TimmArch,
    TimmLayout,
    limit,
    timm_data,
)


@dataclass(frozen=True)
class TimmConvNextSettings(Settings):
    """timm's ``ConvNeXt`` arguments bbx implements (its defaults), for one architecture."""

    architecture: str = ""
    depths: tuple[int, ...] = limit((3, 3, 9, 3), 0, 4096)
    dims: tuple[int, ...] = limit((96, 192, 384, 768), 1, MAX_SIZE)
    in_chans: int = limit(3, 1, 64)
    patch_size: int = limit(4, 1, 4096)
    kernel_sizes: int = limit(7, 1, 63)
    mlp_ratio: float = limit(4.0, 0.01, 64)
    ls_init_value: float | None = 1e-6
    conv_mlp: bool = False  # the MLP as 1x1 convs (same numbers; timm's small models)
    norm_eps: float | None = None  # None: timm's LayerNorm default, 1e-6

    def check(self) -> None:
        if len(self.depths) != len(self.dims) or not self.dims or len(self.dims) > 12:
            raise ValueError("depths and dims must be non-empty and of the same length")
        if self.kernel_sizes % 2 == 0:
            raise ValueError(f"kernel_sizes must be odd, got {self.kernel_sizes}")

    @property
    def eps(self) -> float:
        return 1e-6 if self.norm_eps is None else self.norm_eps

    def stages(self) -> list[StageInfo]:
        return [StageInfo(f"stages.{i}", d, self.patch_size * 2**i) for i, d in enumerate(self.dims)]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        need = self.patch_size * 2 ** (len(self.dims) - 1)
        if h < need or w < need:
            raise ValueError(f"input {h}x{w} is too small: this ConvNeXt needs at least {need}x{need}")
        h, w = h // self.patch_size, w // self.patch_size
        sizes = [(h, w)]
        for _ in range(len(self.dims) - 1):
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        w0, k = self.dims[0], self.kernel_sizes
        n = self.in_chans * w0 * self.patch_size**2 + w0 + 2 * w0  # patchify conv and its norm
        scale = 0 if self.ls_init_value is None else 1
        cin = w0
        for i, (d, depth) in enumerate(zip(self.dims, self.depths)):
            if i > 0:  # a channel norm, then a 2x2 conv
                n += 2 * cin + cin * d * 4 + d
            h = int(self.mlp_ratio * d)
            # depthwise k x k, norm, MLP d -> h -> d, layer scale
            n += depth * (k * k * d + d + 2 * d + d * h + h + h * d + d + scale * d)
            cin = d
        return n


# timm 1.0.31's convnext.py: each architecture's model_args and its default pretrained tag's
# pretrained_cfg. Left out: the _ols / _rms / _hnf / zepto variants (other stems, norms and head order).
ARCHITECTURES = (
    TimmArch(
        "convnext_atto",
        {"depths": [2, 2, 6, 2], "dims": [40, 80, 160, 320], "conv_mlp": True},
        "d2_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "convnext_femto",
        {"depths": [2, 2, 6, 2], "dims": [48, 96, 192, 384], "conv_mlp": True},
        "d1_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "convnext_pico",
        {"depths": [2, 2, 6, 2], "dims": [64, 128, 256, 512], "conv_mlp": True},
        "d1_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "convnext_nano",
        {"depths": [2, 2, 8, 2], "dims": [80, 160, 320, 640], "conv_mlp": True},
        "in12k_ft_in1k",
        timm_data(224, 0.95),
    ),
    TimmArch(
        "convnext_tiny", {"depths": [3, 3, 9, 3], "dims": [96, 192, 384, 768]}, "in12k_ft_in1k", timm_data(224, 0.95)
    ),
    TimmArch(
        "convnext_small", {"depths": [3, 3, 27, 3], "dims": [96, 192, 384, 768]}, "in12k_ft_in1k", timm_data(224, 0.95)
    ),
    TimmArch(
        "convnext_base",
        {"depths": [3, 3, 27, 3], "dims": [128, 256, 512, 1024]},
        "fb_in22k_ft_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "convnext_large",
        {"depths": [3, 3, 27, 3], "dims": [192, 384, 768, 1536]},
        "fb_in22k_ft_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "convnext_xlarge",
        {"depths": [3, 3, 27, 3], "dims": [256, 512, 1024, 2048]},
        "fb_in22k_ft_in1k",
        timm_data(224, 0.875),
    ),
    TimmArch(
        "convnext_xxlarge",
        {"depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072], "norm_eps": 1e-05},
        "clip_laion2b_soup_ft_in1k",
        timm_data(256, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD),
    ),
)

FAMILY = Family(
    name="timm_convnext",
    title="ConvNeXt (timm)",
    model_types=("timm_convnext",),
    settings=TimmConvNextSettings,
    processor="timm",
    stage_norms={
        "hf": "no stage norms (timm's feature maps; its final norm is the head's, after pooling): all three "
        "modes give the same maps",
        "none": "",
        "final": "",
    },
    tiny={"architecture": "convnext_atto", "depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32]},
    notes="timm's `convnext_*` (`timm:convnext_tiny`): stages `stages.0`..`stages.3`, as timm's `feature_info`.",
    timm=TimmLayout(patterns=("convnext_*",), architectures=ARCHITECTURES),
)
