"""Swin Transformer V2 (Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution",
2022), transformers layout: what bbx knows about it without torch. The network is in
:mod:`bbx.families.swinv2.model`.

Stages, exactly as transformers' ``Swinv2Backbone``: ``stem`` (the patch embedding output, stride
``patch_size``) and ``stageK`` (stage K's last block before the patch merging that opens stage K+1,
stride ``patch_size * 2**(K-1)``, ``embed_dim * 2**(K-1)`` channels). Any input size works: the
token grid is padded to whole windows (ceil divisions below). Each stage's window and shift are
fixed by the config's ``image_size`` (a stage whose grid at that size fits in one window attends
over that grid, unshifted), whatever size the images have.
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
    map_shapes,
    window_stage_activations,
)

#: the hidden width of the continuous position bias MLP (fixed in transformers and the original code)
CPB_HIDDEN = 512


@dataclass(frozen=True)
class Swinv2Settings(Settings):
    """The architecture fields of a Swin V2 ``config.json``, with transformers' defaults."""

    square_fields = ("patch_size",)
    pair_fields = ("image_size",)

    image_size: tuple[int, int] = (224, 224)
    patch_size: int = limit(4, 1, 4096)
    num_channels: int = limit(3, 1, 64)
    embed_dim: int = limit(96, 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((2, 2, 6, 2), 1, 4096)
    num_heads: tuple[int, ...] = limit((3, 6, 12, 24), 1, 4096)
    window_size: int = limit(7, 1, 1024)
    #: per stage, the window the position-bias MLP was trained at (0: the stage's own window)
    pretrained_window_sizes: tuple[int, ...] = limit((0, 0, 0, 0), 0, 1024)
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
        if len(self.pretrained_window_sizes) < len(self.depths):
            raise ValueError(
                f"pretrained_window_sizes has {len(self.pretrained_window_sizes)} entries for {len(self.depths)} stages"
            )
        if 1 in self.pretrained_window_sizes[: len(self.depths)]:
            raise ValueError("a pretrained window size of 1 divides the position table by zero")
        if self.use_absolute_embeddings:
            # transformers' Swinv2Embeddings makes a table of num_patches + 1 rows and adds it to
            # num_patches tokens: no Swin V2 with absolute embeddings runs there (nor is one public)
            raise ValueError("use_absolute_embeddings is not supported (transformers cannot run it either)")
        if self.grid[0] >> (len(self.depths) - 1) < 1:
            raise ValueError(
                f"image_size {self.image_size[0]} gives stage {len(self.depths)} an empty grid, so no window size"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def dims(self) -> list[int]:
        """Channels of every stage."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid at the config's image size, which fixes every stage's window."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def windows(self) -> list[tuple[int, int]]:
        """(window, shift of the shifted blocks) of every stage, as transformers' Swinv2Layer
        derives them from the grid at the config's image size: a stage whose grid height fits in
        one window gets that height as its window and no shift. (transformers takes the height
        for both axes.)"""
        out = []
        for i in range(len(self.depths)):
            rows = self.grid[0] // 2**i
            window = min(rows, self.window_size)
            out.append((window, 0 if rows <= window else self.window_size // 2))
        return out

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.embed_dim, self.patch_size)]
        out += [StageInfo(f"stage{i + 1}", dim, self.patch_size * 2**i) for i, dim in enumerate(self.dims)]
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        p = self.patch_size
        h, w = -(-h // p), -(-w // p)  # the image is padded to whole patches
        sizes = [(h, w), (h, w)]
        for _ in range(len(self.depths) - 1):
            h, w = (h + 1) // 2, (w + 1) // 2  # an odd grid is padded before merging
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        e = self.embed_dim
        n = self.num_channels * e * self.patch_size**2 + e + 2 * e  # patch embedding and its norm
        for i, (d, heads, depth) in enumerate(zip(self.dims, self.num_heads, self.depths)):
            if i > 0:  # patch merging from half the width: 4 x -> 2 x (no bias), then a norm of 2 x
                half = d // 2
                n += 4 * half * d + 2 * d
            hidden = int(self.mlp_ratio * d)
            # logit scales, qkv, the output projection, the position-bias MLP (2 -> hidden -> heads)
            attention = heads + d * 3 * d + (3 * d if self.qkv_bias else 0) + d * d + d
            attention += 2 * CPB_HIDDEN + CPB_HIDDEN + CPB_HIDDEN * heads
            mlp = d * hidden + hidden + hidden * d + d
            n += depth * (attention + 2 * d + mlp + 2 * d)
        return n + 2 * self.dims[-1]  # the final norm (Swinv2Backbone has no stage norms)

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """Input, every stage map, the padded patch embedding, and the widest stage moment
        (attention with its position-bias MLP, MLP or merging; :func:`window_stage_activations`)."""
        h, w = image_size
        p = self.patch_size
        maps = sum(c * a * b for c, a, b in map_shapes(self, image_size))
        gh, gw = -(-h // p), -(-w // p)
        widest = self.num_channels * gh * gw * p * p + 2 * self.embed_dim * gh * gw
        for grid, d, heads, (window, _) in zip(
            self.map_sizes(image_size)[1:], self.dims, self.num_heads, self.windows()
        ):
            hidden = int(self.mlp_ratio * d)
            widest = max(widest, window_stage_activations(grid, d, heads, window, hidden, bias_hidden=CPB_HIDDEN))
        return self.num_channels * h * w + maps + widest


# --- catalog: microsoft/swinv2-* ----------------------------------------------------------------
# Architecture values as in transformers' convert_swinv2_timm_to_pytorch.py and the hub configs:
# T is 96 wide with depths 2/2/6/2, S 96 with 2/2/18/2 (both heads 3/6/12/24), B 128 wide with
# heads 4/8/16/32, L 192 with heads 6/12/24/48; the window and image size are in each name, and the
# fine-tuned large checkpoint keeps the window its position MLP was pre-trained at, per stage
# (pretrained_window_sizes 12/12/12/6). Other fields keep Swinv2Config's defaults. Preprocessing as
# the hub's preprocessor_config.json: ViTImageProcessor, resize to image_size x image_size,
# bicubic, ImageNet mean and std.
_SIZES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def _row(
    alias: str,
    repo_id: str,
    size: str,
    image_size: int,
    window: int,
    data: str,
    pretrained_windows: tuple[int, ...] = (0, 0, 0, 0),
) -> CatalogRow:
    embed_dim, depths, heads = _SIZES[size]
    config = {
        "model_type": "swinv2",
        "architectures": ["Swinv2ForImageClassification"],
        "image_size": image_size,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "pretrained_window_sizes": list(pretrained_windows),
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
        "drop_path_rate": 0.1,
        "encoder_stride": 32,
    }
    pre = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_processor_type": "ViTImageProcessor",
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": image_size, "width": image_size},
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=pre,
        description=f"Swin V2-{size[0].upper()} ({data}, {image_size}px, window {window})",
        extra_aliases=(repo_id.split("/")[1],),
    )


FAMILY = Family(
    name="swinv2",
    title="Swin V2",
    model_types=("swinv2",),
    settings=Swinv2Settings,
    processor="ViT",
    catalog=(
        _row("swinv2-tiny", "microsoft/swinv2-tiny-patch4-window8-256", "tiny", 256, 8, "ImageNet-1k"),
        _row("swinv2-small", "microsoft/swinv2-small-patch4-window16-256", "small", 256, 16, "ImageNet-1k"),
        _row("swinv2-base-22k", "microsoft/swinv2-base-patch4-window12-192-22k", "base", 192, 12, "ImageNet-22k"),
        _row(
            "swinv2-large-384",
            "microsoft/swinv2-large-patch4-window12to24-192to384-22kto1k-ft",
            "large",
            384,
            24,
            "ImageNet-22k, fine-tuned on ImageNet-1k at 384",
            (12, 12, 12, 6),
        ),
    ),
    stage_norms={
        "hf": "no stage norm (`Swinv2Backbone` applies none): the raw stage outputs",
        "none": "raw stage outputs",
        "final": "the checkpoint's trained final norm (`Swinv2Model.layernorm`) on the last stage, the others raw",
    },
    tiny={
        "model_type": "swinv2",
        "image_size": 64,
        "embed_dim": 16,
        "depths": [2, 2, 2, 2],
        "num_heads": [2, 2, 4, 4],
        "window_size": 4,
    },
    notes="Swin V2's windows are fixed by the checkpoint's own image size: at other sizes the token grid is "
    "padded to whole windows as transformers pads it, so `--image-size` takes any size.",
)
