"""MaskFormer's Swin (Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic
Segmentation", 2021, on Liu et al.'s Swin Transformer), transformers layout: what bbx knows about it
without torch. The network is in :mod:`bbx.families.maskformer_swin.model`.

transformers keeps a copy of Swin for MaskFormer (``MaskFormerSwinBackbone``, ``model_type``
``maskformer-swin``): a MaskFormer checkpoint nests a ``swin`` backbone config, which
``MaskFormerPixelLevelModule`` converts to this one with ``out_features`` ``stage1..stage4``. It
differs from ``SwinBackbone`` in what it reports: no ``stem`` (the backbone refuses it), and every
stage normed by its own ``hidden_states_norms`` LayerNorm, which a MaskFormer checkpoint trains.

Stages: ``stageK``, the output of stage K's last block *before* the patch merging that opens stage
K+1, ``embed_dim * 2**(K-1)`` channels at stride ``patch_size * 2**(K-1)``. Windows keep their size
at every input (the token grid is padded to whole windows, as in ``SwinBackbone``), so any input
size works.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import ACTIVATIONS, MAX_SIZE, Family, Settings, StageInfo, limit, window_stage_parameters


@dataclass(frozen=True)
class MaskFormerSwinSettings(Settings):
    """The architecture fields of a ``maskformer-swin`` (or a MaskFormer's nested ``swin``)
    config, with transformers' defaults (``MaskFormerSwinConfig``)."""

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
        if self.use_absolute_embeddings:
            # MaskFormerSwinEmbeddings sizes its table for a class token it never has: transformers
            # itself cannot run such a config
            raise ValueError("use_absolute_embeddings is not supported (transformers' MaskFormerSwin cannot run it)")

    @property
    def dims(self) -> list[int]:
        """Channels of every stage."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def stages(self) -> list[StageInfo]:
        return [StageInfo(f"stage{i + 1}", dim, self.patch_size * 2**i) for i, dim in enumerate(self.dims)]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        if h < 1 or w < 1:
            raise ValueError("input must be at least 1x1")
        p = self.patch_size
        h, w = -(-h // p), -(-w // p)
        sizes = [(h, w)]
        for _ in range(len(self.depths) - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        n = window_stage_parameters(self, channels=self.num_channels)
        # every stage's hidden_states_norms LayerNorm, and the encoder's final norm
        return n + sum(2 * d for d in self.dims) + 2 * self.dims[-1]


FAMILY = Family(
    name="maskformer_swin",
    title="MaskFormer-Swin",
    model_types=("maskformer-swin",),
    settings=MaskFormerSwinSettings,
    processor="ViT",
    # no public checkpoint holds this backbone alone: MaskFormer's do (bbx/tasks/maskformer.py)
    catalog=(),
    nested={"maskformer": ("swin",)},  # MaskFormerPixelLevelModule's conversion of a nested swin config
    stage_norms={
        "hf": "each stage's `hidden_states_norms` LayerNorm, as `MaskFormerSwinBackbone` returns every stage "
        "(trained in MaskFormer checkpoints)",
        "none": "raw stage outputs",
        "final": "the trained final norm (`MaskFormerSwinModel.layernorm`) on the last stage, the others raw",
    },
    tiny={
        "model_type": "maskformer-swin",
        "embed_dim": 16,
        "depths": [2, 2, 2, 2],
        "num_heads": [2, 2, 4, 4],
        "window_size": 7,
    },
    notes="MaskFormer-Swin is the Swin that MaskFormer checkpoints carry (`MaskFormerSwinBackbone`): no `stem`, "
    "`stage1`..`stage4` (strides 4 to 32), each after its own `hidden_states_norms` LayerNorm. Any input size works: "
    "the token grid is padded to whole windows.",
)
