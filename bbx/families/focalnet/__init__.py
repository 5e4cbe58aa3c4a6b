"""FocalNet (Yang et al., "Focal Modulation Networks", 2022), transformers layout: what bbx knows
about it without torch. The network is in :mod:`bbx.families.focalnet.model`.

Stages, exactly as transformers' ``FocalNetBackbone``: ``stem`` (the patch embedding after its
LayerNorm, stride ``patch_size``; 4 with ``use_conv_embed``) and ``stageK``: stage K's output
*after* the patch-merging downsample that closes it (so ``embed_dim * 2**K`` channels at stride
``stem * 2**K``), the last stage, which has no downsample, at the width and stride of the one
before. Widths come from ``embed_dim``; the config's ``hidden_sizes`` is metadata transformers
reports as the backbone's channels, and is not used. Any input size works: the input is
zero-padded to whole patches and every odd grid by one row/column before a downsample.
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


def _conv(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class FocalNetSettings(Settings):
    """The architecture fields of a FocalNet ``config.json``, with transformers' defaults."""

    square_fields = ("patch_size",)
    pair_fields = ("image_size",)

    image_size: tuple[int, int] = (224, 224)  # recorded only: nothing in the network depends on it
    patch_size: int = limit(4, 1, 4096)
    num_channels: int = limit(3, 1, 64)
    embed_dim: int = limit(96, 1, MAX_SIZE)
    use_conv_embed: bool = False
    hidden_sizes: tuple[int, ...] = limit((192, 384, 768, 768), 1, MAX_SIZE)  # metadata (see the docstring)
    depths: tuple[int, ...] = limit((2, 2, 6, 2), 1, 4096)
    focal_levels: tuple[int, ...] = limit((2, 2, 2, 2), 0, 64)
    focal_windows: tuple[int, ...] = limit((3, 3, 3, 3), 1, 1023)
    hidden_act: str = "gelu"
    mlp_ratio: float = limit(4.0, 0.01, 64)
    hidden_dropout_prob: float = 0.0  # training only; read so that a config round-trips, never used
    drop_path_rate: float = 0.1  # training only
    use_layerscale: bool = False
    layerscale_value: float = 1e-4
    use_post_layernorm: bool = False
    use_post_layernorm_in_modulation: bool = False
    normalize_modulator: bool = False
    layer_norm_eps: float = limit(1e-5, 0, 1)

    def check(self) -> None:
        n = len(self.depths)
        if not n or n > 12:
            raise ValueError(f"depths must list 1 to 12 stages, got {n}")
        if self.dims[-1] > MAX_SIZE:
            raise ValueError(f"{n} stages of doubling width from {self.embed_dim} is too wide")
        if len(self.focal_levels) < n or len(self.focal_windows) < n:
            raise ValueError(f"focal_levels and focal_windows need an entry for each of the {n} stages")
        for w in self.focal_windows[:n]:
            if w % 2 == 0:
                raise ValueError(f"focal_windows must be odd (a 'same' depthwise conv), got {w}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def dims(self) -> list[int]:
        """The width of every stage's blocks."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    @property
    def stem_stride(self) -> int:
        return 4 if self.use_conv_embed else self.patch_size

    def stages(self) -> list[StageInfo]:
        dims, n, p = self.dims, len(self.depths), self.stem_stride
        out = [StageInfo("stem", self.embed_dim, p)]
        for i in range(n):
            k = min(i + 1, n - 1)  # stages but the last end with a downsample
            out.append(StageInfo(f"stage{i + 1}", dims[k], p * 2**k))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        def stem(n: int) -> int:
            padded = _pad_to(n, self.patch_size)
            return _conv(padded, 7, 4, 2) if self.use_conv_embed else padded // self.patch_size

        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        h, w = stem(h), stem(w)
        if h < 1 or w < 1:
            raise ValueError(f"input {image_size[0]}x{image_size[1]} is too small for the 7x7 stride-4 stem")
        sizes = [(h, w)]
        for i in range(len(self.depths)):
            if i < len(self.depths) - 1:  # downsample: pad to even, then halve (2x2/2 or 3x3/2 pad 1)
                h, w = _pad_to(h, 2) // 2, _pad_to(w, 2) // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        e = self.embed_dim
        # the embedding: a patchify (or 7x7) conv and its norm
        n = self.num_channels * e * (49 if self.use_conv_embed else self.patch_size**2) + e + 2 * e
        for i, (d, depth) in enumerate(zip(self.dims, self.depths)):
            levels, window = self.focal_levels[i], self.focal_windows[i]
            focal = sum((2 * k + window) ** 2 for k in range(levels)) * d  # depthwise, no bias
            mod = d * (2 * d + levels + 1) + (2 * d + levels + 1) + focal + 2 * (d * d + d)  # in, ctx, out
            mod += 2 * d if self.use_post_layernorm_in_modulation else 0
            hidden = int(self.mlp_ratio * d)
            mlp = d * hidden + hidden + hidden * d + d
            n += depth * (2 * d + mod + 2 * d + mlp + (2 * d if self.use_layerscale else 0))
            if i < len(self.depths) - 1:  # downsampling to twice the width: a conv and a norm
                n += d * 2 * d * (9 if self.use_conv_embed else 4) + 2 * d + 2 * 2 * d
        return n + 2 * self.dims[-1]  # the final norm

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """The default (input, stage maps, four times the largest) plus the widest block: the
        modulation (input, norm, the projection in, every focal level, context, modulator,
        output) or the MLP (input, norm, hidden layer, output)."""
        sizes = self.map_sizes(image_size)[1:]
        widest = 0
        for i, (d, (h, w)) in enumerate(zip(self.dims, sizes)):
            levels = self.focal_levels[i]
            modulation = (2 * d + (2 * d + levels + 1) + (levels + 1) * d + 3 * d) * h * w
            mlp = (3 * d + int(self.mlp_ratio * d)) * h * w
            widest = max(widest, modulation, mlp)
        return super().activation_count(image_size) + widest


# --- catalog: microsoft/focalnet-* ----------------------------------------------------------------
# Architectures as transformers' convert_focalnet_to_hf_format.py sets them (get_focalnet_config:
# tiny 96 wide with depths 2/2/6/2, small and base 96 and 128 wide with 2/2/18/2; focal levels 2,
# 3 for the "lrf" large-receptive-field models; windows 3). Every other field is FocalNetConfig's
# default, hidden_sizes included (the script never sets it, so the hub's is 192/384/768/768 even for
# the base; bbx takes the widths from embed_dim, as the network does). The preprocessing is the
# BitImageProcessor that script saves: shortest edge 256, bilinear, center crop 224, ImageNet mean/std.
PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(IMAGENET_MEAN),
    "image_processor_type": "BitImageProcessor",
    "image_std": list(IMAGENET_STD),
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256},
}


def _row(repo_id: str, embed_dim: int, depths: list[int], levels: int, description: str) -> CatalogRow:
    config = {
        "model_type": "focalnet",
        "architectures": ["FocalNetForImageClassification"],
        "image_size": 224,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": embed_dim,
        "use_conv_embed": False,
        "hidden_sizes": [192, 384, 768, 768],
        "depths": depths,
        "focal_levels": [levels] * 4,
        "focal_windows": [3, 3, 3, 3],
        "hidden_act": "gelu",
        "mlp_ratio": 4.0,
        "hidden_dropout_prob": 0.0,
        "drop_path_rate": 0.1,
        "use_layerscale": False,
        "layerscale_value": 1e-4,
        "use_post_layernorm": False,
        "use_post_layernorm_in_modulation": False,
        "normalize_modulator": False,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "encoder_stride": 32,
    }
    return CatalogRow(
        alias=repo_id.split("/")[1],
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=description,
    )


FAMILY = Family(
    name="focalnet",
    title="FocalNet",
    model_types=("focalnet",),
    settings=FocalNetSettings,
    processor="Bit",
    catalog=(
        _row("microsoft/focalnet-tiny", 96, [2, 2, 6, 2], 2, "FocalNet-T, small receptive field (ImageNet-1k)"),
        _row("microsoft/focalnet-small", 96, [2, 2, 18, 2], 2, "FocalNet-S, small receptive field (ImageNet-1k)"),
        _row("microsoft/focalnet-base", 128, [2, 2, 18, 2], 2, "FocalNet-B, small receptive field (ImageNet-1k)"),
        _row("microsoft/focalnet-tiny-lrf", 96, [2, 2, 6, 2], 3, "FocalNet-T, large receptive field (ImageNet-1k)"),
    ),
    stage_norms={
        "hf": "no stage norms: `FocalNetBackbone` returns the raw stage outputs (each but the last after its "
        "downsample and that downsample's LayerNorm)",
        "none": "the same maps as `hf`",
        "final": "the trained final norm (`FocalNetModel.layernorm`) on the last stage, the others raw",
    },
    tiny={
        "model_type": "focalnet",
        "embed_dim": 8,
        "depths": [1, 1, 2, 1],
        "focal_levels": [2, 2, 2, 2],
        "focal_windows": [3, 3, 3, 3],
    },
    notes="FocalNet's `stageK` is stage K's output after the downsample that closes it, as `FocalNetBackbone` "
    "returns it: stage1..stage3 have the next stage's width and stride, stage4 the same as stage3. Any input size "
    "works.",
)
