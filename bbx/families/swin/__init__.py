"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", 2021), transformers layout: what bbx knows about it without torch. The network is in
:mod:`bbx.families.swin.model`.

Stages, exactly as transformers' ``SwinBackbone``: ``stem`` (the patch embedding output, stride
``patch_size``) and ``stageK`` (stage K's last block before the patch merging that opens stage
K+1, stride ``patch_size * 2**(K-1)``, ``embed_dim * 2**(K-1)`` channels). Any input size works:
the token grid is padded to whole windows (ceil divisions below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    map_shapes,
    window_stage_parameters,
)


@dataclass(frozen=True)
class SwinSettings(Settings):
    """The architecture fields of a Swin ``config.json``, with transformers' defaults."""

    square_fields = ("patch_size",)
    pair_fields = ("image_size",)

    image_size: tuple[int, int] = (224, 224)
    patch_size: int = limit(4, 1, 4096)
    num_channels: int = limit(3, 1, 64)
    embed_dim: int = limit(96, 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((2, 2, 6, 2), 1, 4096)
    num_heads: tuple[int, ...] = limit((3, 6, 12, 24), 1, 4096)
    window_size: int = limit(7, 1, 1024)
    mlp_ratio: float = limit(4.0, 0.01, 64)
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    layer_norm_eps: float = limit(1e-5, 0, 1)

    def check(self) -> None:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError("depths and num_heads must be non-empty and of the same length")
        if len(self.depths) > 12 or self.dims[-1] > MAX_SIZE:
            raise ValueError(f"{len(self.depths)} stages of doubling width from {self.embed_dim} is too wide")
        for dim, heads in zip(self.dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"a stage of width {dim} cannot have {heads} attention heads")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def dims(self) -> list[int]:
        """Channels of every stage."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid at the checkpoint's image size (what position embeddings were trained on)."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.embed_dim, self.patch_size)]
        out += [StageInfo(f"stage{i + 1}", dim, self.patch_size * 2**i) for i, dim in enumerate(self.dims)]
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        p = self.patch_size
        h, w = -(-h // p), -(-w // p)
        sizes = [(h, w), (h, w)]
        for _ in range(len(self.depths) - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        n = window_stage_parameters(self, channels=self.num_channels)
        if self.use_absolute_embeddings:
            n += self.grid[0] * self.grid[1] * self.embed_dim
        n += sum(2 * st.channels for st in self.stages())  # transformers' backbone norms, one per stage
        return n + 2 * self.dims[-1]  # the final norm

    def _grids(self, image_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """Per stage: its token grid and that grid padded to whole windows."""
        w = self.window_size
        return [(h, x, -(-h // w) * w, -(-x // w) * w) for h, x in self.map_sizes(image_size)[1:]]

    def activation_count(self, image_size: tuple[int, int]) -> int:
        h, w = image_size
        p, win = self.patch_size, self.window_size
        maps = sum(c * a * b for c, a, b in (map_shapes(self, image_size)))
        gh, gw = -(-h // p), -(-w // p)
        widest = self.num_channels * gh * gw * p * p + 2 * self.embed_dim * gh * gw  # padded input, conv, norm
        for (a, b, ap, bp), d, heads in zip(self._grids(image_size), self.dims, self.num_heads):
            hidden = int(self.mlp_ratio * d)
            # attention: input, norm, padded copy, windows, q/k/v twice, output, projection, back in
            # place, and the scores with their softmax (one window's tokens against each other)
            attention = 2 * d * a * b + 8 * d * ap * bp + 2 * ap * bp * heads * win * win
            mlp = (3 * d + hidden) * a * b
            merge = 3 * 4 * (d // 2) * a * b  # the 2x2 gather, its norm, and the input before it
            widest = max(widest, attention, mlp, merge)
        return self.num_channels * h * w + 2 * maps + widest  # maps: raw, and through their norms

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        """The attention biases each block caches per input size (with the shifted-window mask:
        one bias per window) and the masks themselves."""
        n = 0
        win2 = self.window_size**2
        for (_, _, ap, bp), heads, depth in zip(self._grids(image_size), self.num_heads, self.depths):
            windows = (ap * bp) // win2
            plain, shifted = (depth + 1) // 2, depth // 2
            n += plain * heads * win2 * win2 + shifted * (windows * heads * win2 * win2) + windows * win2 * win2
        return n


# --- catalog: microsoft/swin-* (converted from the official weights; ViT-style preprocessing) ------
# Architecture values as in transformers' convert_swin_timm_to_pytorch.py and the hub configs: T and S
# share width 96 and heads 3/6/12/24, B is 128 wide with heads 4/8/16/32, L 192 wide with heads
# 6/12/24/48; S, B and L have depths 2/2/18/2. The 384 checkpoints use 12x12 windows.
_SIZES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def _row(alias: str, repo_id: str, size: str, image_size: int, *extra: str, in22k: bool = False) -> CatalogRow:
    embed_dim, depths, heads = _SIZES[size]
    window = 7 if image_size == 224 else 12
    config: dict[str, Any] = {
        "model_type": "swin",
        "architectures": ["SwinForImageClassification"],
        "image_size": image_size,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
    }
    pre = {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "size": image_size,
    }
    data = "ImageNet-22k" if in22k else "ImageNet-1k"
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=pre,
        description=f"Swin-{size[0].upper()} ({data}, {image_size}px, window {window})",
        extra_aliases=extra,
    )


def _timm_stage(name: str) -> str | None:
    """timm's stage ``layers.i`` of the same network -> this family's ``stage<i+1>``."""
    return f"stage{int(name[7:]) + 1}" if name.startswith("layers.") else None


FAMILY = Family(
    name="swin",
    title="Swin",
    model_types=("swin",),
    settings=SwinSettings,
    processor="ViT",
    catalog=(
        _row("swin-tiny", "microsoft/swin-tiny-patch4-window7-224", "tiny", 224, "swin-t"),
        _row("swin-small", "microsoft/swin-small-patch4-window7-224", "small", 224, "swin-s"),
        _row("swin-base", "microsoft/swin-base-patch4-window7-224", "base", 224, "swin-b"),
        _row("swin-large", "microsoft/swin-large-patch4-window7-224", "large", 224, "swin-l"),
        _row("swin-base-384", "microsoft/swin-base-patch4-window12-384", "base", 384),
        _row("swin-large-384", "microsoft/swin-large-patch4-window12-384", "large", 384),
        _row("swin-base-in22k", "microsoft/swin-base-patch4-window7-224-in22k", "base", 224, in22k=True),
        _row("swin-base-384-in22k", "microsoft/swin-base-patch4-window12-384-in22k", "base", 384, in22k=True),
        _row("swin-large-in22k", "microsoft/swin-large-patch4-window7-224-in22k", "large", 224, in22k=True),
        _row("swin-large-384-in22k", "microsoft/swin-large-patch4-window12-384-in22k", "large", 384, in22k=True),
    ),
    stage_norms={
        "hf": "a LayerNorm per stage, stem included: loaded from a `SwinBackbone` checkpoint, else created as "
        "transformers creates it (weight 1, bias 0, not from the checkpoint)",
        "none": "raw stage outputs",
        "final": "the checkpoint's trained final norm (`SwinModel.layernorm`) on the last stage, the others raw",
    },
    tiny={
        "model_type": "swin",
        "embed_dim": 16,
        "depths": [2, 2, 2, 2],
        "num_heads": [2, 2, 4, 4],
        "window_size": 7,
    },
    timm_counterpart=TimmCounterpart(patterns=("swin_*",), stage_of=_timm_stage),
)
