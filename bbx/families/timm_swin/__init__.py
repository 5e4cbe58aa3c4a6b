"""Swin Transformer in timm's layout (Liu et al., "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows", 2021): timm's ``swin_*`` architectures, what bbx knows about
them without torch. The network is in :mod:`bbx.families.timm_swin.model`.

Stages as timm's ``feature_info``: ``layers.0`` ... ``layers.3``, each stage's output (after its
blocks; timm merges patches at the start of the next stage), ``embed_dim * 2**i`` channels, stride
``patch_size * 2**i``; timm's ``features_only`` returns them NHWC, bbx ``[N, C, H, W]``. No stage
norms by default; ``final``: the trained final norm on the last stage, as
``forward_intermediates(norm=True)``. Sizes: the patch grid is floored, each merge rounds up. A
stage whose grid equals the window attends without a shift (timm's rule); one whose grid is
smaller than the window would make timm shrink the window and resample its position bias, which
bbx does not do: such input sizes are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import (
    MAX_SIZE,
    Family,
    Settings,
    StageInfo,
    TimmArch,
    TimmLayout,
    limit,
    timm_data,
    window_stage_activations,
    window_stage_parameters,
)


@dataclass(frozen=True)
class TimmSwinSettings(Settings):
    """timm's ``SwinTransformer`` arguments bbx implements (its defaults), for one architecture."""

    pair_fields = ("img_size",)

    architecture: str = ""
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = limit(4, 1, 4096)
    in_chans: int = limit(3, 1, 64)
    embed_dim: int = limit(96, 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((2, 2, 6, 2), 1, 4096)
    num_heads: tuple[int, ...] = limit((3, 6, 12, 24), 1, 4096)
    window_size: int = limit(7, 1, 1024)
    mlp_ratio: float = limit(4.0, 0.01, 64)
    qkv_bias: bool = True

    def check(self) -> None:
        if len(self.depths) != len(self.num_heads) or not self.depths or len(self.depths) > 12:
            raise ValueError("depths and num_heads must be non-empty and of the same length")
        for dim, heads in zip(self.dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"a stage of width {dim} cannot have {heads} attention heads")

    @property
    def dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def stages(self) -> list[StageInfo]:
        return [StageInfo(f"layers.{i}", d, self.patch_size * 2**i) for i, d in enumerate(self.dims)]

    def grids(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"input must be at least {p}x{p} (the patch size)")
        h, w = h // p, w // p
        out = [(h, w)]
        for _ in range(len(self.depths) - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
            out.append((h, w))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        grids = self.grids(image_size)
        for i, (h, w) in enumerate(grids):
            if min(h, w) < self.window_size:
                raise ValueError(
                    f"stage layers.{i} would be {h}x{w}, smaller than the {self.window_size}x{self.window_size} "
                    "window (timm shrinks the window and resamples its position bias there; bbx does not)"
                )
        return grids

    def parameter_count(self) -> int:
        n = window_stage_parameters(self, channels=self.in_chans)
        return n + 2 * self.dims[-1]  # the final norm

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """Input, every stage map, the patch embedding, and the widest stage moment (attention,
        MLP or merging; :func:`window_stage_activations`)."""
        h, w = image_size
        grids = self.map_sizes(image_size)
        maps = sum(d * a * b for d, (a, b) in zip(self.dims, grids))
        widest = self.in_chans * h * w + 2 * self.embed_dim * grids[0][0] * grids[0][1]
        for grid, d, heads in zip(grids, self.dims, self.num_heads):
            hidden = int(self.mlp_ratio * d)
            widest = max(widest, window_stage_activations(grid, d, heads, self.window_size, hidden))
        return self.in_chans * h * w + maps + widest


# timm 1.0.31's swin_transformer.py: each architecture's model_args and its default pretrained
# tag's pretrained_cfg (timm builds them for that input_size). Left out: swin_s3 (other windows).
ARCHITECTURES = (
    TimmArch(
        "swin_tiny_patch4_window7_224",
        {"patch_size": 4, "window_size": 7, "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24]},
        "ms_in1k",
        timm_data(224, 0.9, fixed_input_size=True),
    ),
    TimmArch(
        "swin_small_patch4_window7_224",
        {"patch_size": 4, "window_size": 7, "embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24]},
        "ms_in22k_ft_in1k",
        timm_data(224, 0.9, fixed_input_size=True),
    ),
    TimmArch(
        "swin_base_patch4_window7_224",
        {"patch_size": 4, "window_size": 7, "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
        "ms_in22k_ft_in1k",
        timm_data(224, 0.9, fixed_input_size=True),
    ),
    TimmArch(
        "swin_base_patch4_window12_384",
        {"patch_size": 4, "window_size": 12, "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
        "ms_in22k_ft_in1k",
        timm_data(384, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "swin_large_patch4_window7_224",
        {"patch_size": 4, "window_size": 7, "embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]},
        "ms_in22k_ft_in1k",
        timm_data(224, 0.9, fixed_input_size=True),
    ),
    TimmArch(
        "swin_large_patch4_window12_384",
        {"patch_size": 4, "window_size": 12, "embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]},
        "ms_in22k_ft_in1k",
        timm_data(384, 1.0, fixed_input_size=True),
    ),
)

FAMILY = Family(
    name="timm_swin",
    title="Swin (timm)",
    model_types=("timm_swin",),
    settings=TimmSwinSettings,
    processor="timm",
    stage_norms={
        "hf": "raw stage outputs (timm's feature maps: no norm)",
        "none": "raw stage outputs",
        "final": "the trained final norm on the last stage, as timm's `forward_intermediates(norm=True)`; the "
        "others raw",
    },
    tiny={
        "architecture": "swin_tiny_patch4_window7_224",
        "embed_dim": 16,
        "depths": [2, 2, 2, 2],
        "num_heads": [2, 2, 4, 4],
        "window_size": 2,
    },
    notes="timm's `swin_*` (`timm:swin_tiny_patch4_window7_224`): stages `layers.0`..`layers.3` as timm's "
    "`feature_info`, returned `[N, C, H, W]` (timm's are NHWC).",
    timm=TimmLayout(patterns=("swin_*",), architectures=ARCHITECTURES),
)
