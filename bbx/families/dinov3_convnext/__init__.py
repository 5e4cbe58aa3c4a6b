"""DINOv3's ConvNeXt students (Siméoni et al., "DINOv3", 2025: ConvNeXt distilled from the DINOv3
ViT-7B), transformers layout: what bbx knows about them without torch. The network is in
:mod:`bbx.families.dinov3_convnext.model`.

Stages, exactly as transformers' ``DINOv3ConvNextBackbone``: ``stem`` is the input pixels
themselves (``num_channels`` channels, stride 1) and ``stageK`` stage K's output (``hidden_sizes[K-1]``
channels, stride ``4 * 2**(K-1)``). Any input of at least ``4 * 2**(N-1)`` pixels a side works; every
downsampling conv is unpadded with kernel = stride, so sizes are floored at each step.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Dinov3ConvNextSettings(Settings):
    """The architecture fields of a DINOv3 ConvNeXt ``config.json``, with transformers' defaults
    (``DINOv3ConvNextConfig``; ``drop_path_rate`` is training-only, read and never used)."""

    pair_fields = ("image_size",)

    num_channels: int = limit(3, 1, 64)
    hidden_sizes: tuple[int, ...] = limit((96, 192, 384, 768), 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((3, 3, 9, 3), 0, 4096)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-6, 0, 1)
    layer_scale_init_value: float = 1e-6
    drop_path_rate: float = 0.0
    image_size: tuple[int, int] = (224, 224)

    def check(self) -> None:
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            # transformers builds len(hidden_sizes) stages but names len(depths) of them
            raise ValueError(
                f"hidden_sizes ({len(self.hidden_sizes)}) and depths ({len(self.depths)}) must be non-empty lists "
                "of the same length"
            )
        if len(self.hidden_sizes) > 12:
            raise ValueError(f"{len(self.hidden_sizes)} stages is too many (at most 12)")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def embedding_dim(self) -> int:
        """The average over positions of the last stage under the final norm (``DINOv3ConvNextModel``'s
        ``pooler_output``); a checkpoint without the norm (a backbone's) is refused when its weights
        are read."""
        return self.hidden_sizes[-1]

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.num_channels, 1)]
        for i, width in enumerate(self.hidden_sizes):
            out.append(StageInfo(f"stage{i + 1}", width, 4 * 2**i))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        need = 4 * 2 ** (len(self.hidden_sizes) - 1)
        if h < need or w < need:
            raise ValueError(f"input {h}x{w} is too small: this ConvNeXt needs at least {need}x{need}")
        sizes = [(h, w)]
        h, w = h // 4, w // 4
        sizes.append((h, w))
        for _ in range(len(self.hidden_sizes) - 1):
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        n, cin = 0, self.num_channels
        for i, (d, depth) in enumerate(zip(self.hidden_sizes, self.depths)):
            # stage 1 opens with a 4x4 conv and a norm, the others with a norm and a 2x2 conv
            n += (cin * d * 16 + d + 2 * d) if i == 0 else (2 * cin + cin * d * 4 + d)
            # depthwise 7x7, norm, MLP d -> 4d -> d, layer scale (always a parameter)
            n += depth * (49 * d + d + 2 * d + d * 4 * d + 4 * d + 4 * d * d + d + d)
            cin = d
        return n + 2 * self.hidden_sizes[-1]  # the final norm


# --- catalog: facebook/dinov3-convnext-{tiny,small,base,large}-pretrain-lvd1689m --------------------
# Values from transformers' convert_dinov3_convnext_to_hf.py (get_dinov3_config: depths and widths
# over DINOv3ConvNextConfig's defaults, which the hub's config.json files spell out); the
# preprocessing is that script's get_image_processor(224), DINOv3ViTImageProcessorFast's file as
# in the ViT repos: a 224 x 224 bilinear resize of the rescaled float image, ImageNet mean and std.
PREPROCESSOR = {
    "crop_size": None,
    "data_format": "channels_first",
    "default_to_square": True,
    "device": None,
    "disable_grouping": None,
    "do_center_crop": None,
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DINOv3ViTImageProcessorFast",
    "image_std": [0.229, 0.224, 0.225],
    "input_data_format": None,
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "return_tensors": None,
    "size": {"height": 224, "width": 224},
}
_SIZES = {
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768], "T"),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768], "S"),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024], "B"),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536], "L"),
}


def _row(alias: str, repo_id: str, size: str) -> CatalogRow:
    depths, widths, short = _SIZES[size]
    config: dict[str, Any] = {
        "model_type": "dinov3_convnext",
        "architectures": ["DINOv3ConvNextModel"],
        "depths": depths,
        "drop_path_rate": 0.0,
        "hidden_act": "gelu",
        "hidden_sizes": widths,
        "image_size": 224,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-06,
        "layer_scale_init_value": 1e-06,
        "num_channels": 3,
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=f"DINOv3 ConvNeXt-{short} (distilled from DINOv3 ViT-7B, LVD-1689M)",
        extra_aliases=(repo_id.split("/")[1],),
    )


FAMILY = Family(
    name="dinov3_convnext",
    title="DINOv3 ConvNeXt",
    model_types=("dinov3_convnext",),
    settings=Dinov3ConvNextSettings,
    # transformers has no default processor for this model_type; the hub files name DINOv3's
    processor="DINOv3ViT",
    catalog=(
        _row("dinov3-convnext-tiny", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m", "tiny"),
        _row("dinov3-convnext-small", "facebook/dinov3-convnext-small-pretrain-lvd1689m", "small"),
        _row("dinov3-convnext-base", "facebook/dinov3-convnext-base-pretrain-lvd1689m", "base"),
        _row("dinov3-convnext-large", "facebook/dinov3-convnext-large-pretrain-lvd1689m", "large"),
    ),
    stage_norms={
        "hf": "raw stage outputs (`DINOv3ConvNextBackbone` applies no norm; `stem` is the input pixels)",
        "none": "raw stage outputs",
        "final": "the trained final norm (`DINOv3ConvNextModel.layer_norm`) over the channels of the last stage's "
        "map, the others raw",
    },
    tiny={
        "model_type": "dinov3_convnext",
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 2, 1],
    },
    notes="DINOv3 ConvNeXt's `stem` is the input itself (the normalised pixels, 3 channels, stride 1); `stage1` to "
    "`stage4` have strides 4 to 32. `--embedding` gives the model's own image embedding (transformers' "
    "`pooler_output`: the final norm of the averaged last map). Preprocessing as DINOv3's transformer checkpoints.",
)
