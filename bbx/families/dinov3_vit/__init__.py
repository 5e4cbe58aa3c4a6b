"""DINOv3 vision transformers (Siméoni et al., "DINOv3", 2025), transformers layout: what bbx
knows about them without torch. The network is in :mod:`bbx.families.dinov3_vit.model`.

Stages, as transformers' ``DINOv3ViTBackbone`` defines them: ``stem`` is the embedding output (the
patch embeddings after the class and register tokens; DINOv3 has no position-embedding table, its
positions are 2-D rotary embeddings inside attention) and ``stageK`` the output of block K, each
map the patch tokens only as ``[C, H // patch, W // patch]``; stride ``patch_size`` for every
stage. Any input of at least one patch a side works: RoPE needs no resampling.
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
    limit,
    token_activations,
    token_workspace,
)


@dataclass(frozen=True)
class Dinov3VitSettings(Settings):
    """The architecture fields of a DINOv3 ViT ``config.json``, with transformers' defaults
    (``DINOv3ViTConfig``). ``pos_embed_shift`` / ``_jitter`` / ``_rescale`` and the dropout rates
    are training-time augmentations, read by nobody here."""

    square_fields = ("patch_size",)
    pair_fields = ("image_size",)

    patch_size: int = limit(16, 1, 4096)
    hidden_size: int = limit(384, 1, MAX_SIZE)
    intermediate_size: int = limit(1536, 1, MAX_SIZE)
    num_hidden_layers: int = limit(12, 1, 4096)
    num_attention_heads: int = limit(6, 1, 4096)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-5, 0, 1)
    rope_theta: float = limit(100.0, 1e-6, 1e12)
    image_size: tuple[int, int] = (224, 224)
    num_channels: int = limit(3, 1, 64)
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layerscale_value: float = 1.0
    use_gated_mlp: bool = False
    num_register_tokens: int = limit(0, 0, 4096)
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def check(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 4:
            # the rotary embedding gives a quarter of each head's channels to each of (y, x) x (cos, sin)
            raise ValueError(f"the head width {self.head_dim} must be a multiple of 4 for DINOv3's 2-D RoPE")
        if not self.reshape_hidden_states:
            raise ValueError("reshape_hidden_states=false (token sequences) is not supported: bbx returns [N, C, H, W]")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: the class token and the registers."""
        return 1 + self.num_register_tokens

    @property
    def class_token(self) -> bool:
        return True

    @property
    def embedding_dim(self) -> int:
        """The normed class token (``DINOv3ViTModel``'s ``pooler_output``)."""
        return self.hidden_size

    def stages(self) -> list[StageInfo]:
        names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        return [StageInfo(name, self.hidden_size, self.patch_size) for name in names]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"input must be at least {p}x{p} (the patch size)")
        return [(h // p, w // p)] * (self.num_hidden_layers + 1)

    def parameter_count(self) -> int:
        d, h, p = self.hidden_size, self.intermediate_size, self.patch_size
        qkv = 3 * d * d + (3 * d if self.query_bias or self.key_bias or self.value_bias else 0)
        proj = d * d + (d if self.proj_bias else 0)
        if self.use_gated_mlp:  # fc1 computes gate and up together
            mlp = 2 * d * h + h * d + ((2 * h + d) if self.mlp_bias else 0)
        else:
            mlp = d * h + h + h * d + d
        block = 4 * d + qkv + proj + mlp + 2 * d  # two LayerNorms, attention, MLP, two layer scales
        embed = self.num_channels * d * p * p + d + d + self.num_register_tokens * d  # patches, class, registers
        return self.num_hidden_layers * block + embed + 2 * d

    def activation_count(self, image_size: tuple[int, int]) -> int:
        hidden = (3 if self.use_gated_mlp else 1) * self.intermediate_size  # gated: both halves, then their product
        return token_activations(
            image_size,
            channels=self.num_channels,
            patch=self.patch_size,
            dim=self.hidden_size,
            layers=self.num_hidden_layers,
            hidden=hidden,
            prefix=self.prefix_tokens,
        )

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        """Scores (:func:`token_workspace`) and the rotary tables (sines and cosines per patch)."""
        patches = (image_size[0] // self.patch_size) * (image_size[1] // self.patch_size)
        ws = token_workspace(
            image_size,
            patch=self.patch_size,
            dim=self.hidden_size,
            heads=self.num_attention_heads,
            prefix=self.prefix_tokens,
            table=0,
        )
        return ws + 2 * patches * self.head_dim


# --- catalog: facebook/dinov3-vit{s,b,l}16-pretrain-lvd1689m ---------------------------------------
# Values from transformers' convert_dinov3_vit_to_hf.py (get_dinov3_config: widths, depths, heads,
# MLP widths, 4 registers, no gated MLP for S/B/L) over DINOv3ViTConfig's defaults, which the hub's
# config.json files spell out; the preprocessing is that script's get_image_processor(224) saved by
# DINOv3ViTImageProcessorFast: a 224 x 224 bilinear resize of the rescaled float image, ImageNet
# mean and std (the fields it leaves null take the class defaults).
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
    "image_mean": list(IMAGENET_MEAN),
    "image_processor_type": "DINOv3ViTImageProcessorFast",
    "image_std": list(IMAGENET_STD),
    "input_data_format": None,
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "return_tensors": None,
    "size": {"height": 224, "width": 224},
}
#: size -> (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, ViT name)
_SIZES = {
    "s": (384, 1536, 12, 6, "ViT-S/16"),
    "b": (768, 3072, 12, 12, "ViT-B/16"),
    "l": (1024, 4096, 24, 16, "ViT-L/16"),
}


def _row(alias: str, repo_id: str, size: str) -> CatalogRow:
    hidden, mlp, layers, heads, vit = _SIZES[size]
    config: dict[str, Any] = {
        "model_type": "dinov3_vit",
        "architectures": ["DINOv3ViTModel"],
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "image_size": 224,
        "initializer_range": 0.02,
        "intermediate_size": mlp,
        "key_bias": False,
        "layer_norm_eps": 1e-05,
        "layerscale_value": 1.0,
        "mlp_bias": True,
        "num_attention_heads": heads,
        "num_channels": 3,
        "num_hidden_layers": layers,
        "num_register_tokens": 4,
        "patch_size": 16,
        "pos_embed_jitter": None,
        "pos_embed_rescale": 2.0,
        "pos_embed_shift": None,
        "proj_bias": True,
        "query_bias": True,
        "rope_theta": 100.0,
        "use_gated_mlp": False,
        "value_bias": True,
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=f"DINOv3 {vit} with 4 registers (self-supervised, LVD-1689M)",
        extra_aliases=(repo_id.split("/")[1],),
    )


FAMILY = Family(
    name="dinov3_vit",
    title="DINOv3 ViT",
    model_types=("dinov3_vit",),
    settings=Dinov3VitSettings,
    processor="DINOv3ViT",
    catalog=(
        _row("dinov3-vits16", "facebook/dinov3-vits16-pretrain-lvd1689m", "s"),
        _row("dinov3-vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m", "b"),
        _row("dinov3-vitl16", "facebook/dinov3-vitl16-pretrain-lvd1689m", "l"),
    ),
    stage_norms={
        "hf": "the trained final layernorm on every stage when `apply_layernorm` (all public configs), else on the "
        "last stage only, as `DINOv3ViTBackbone`",
        "none": "raw layer outputs",
        "final": "the trained final layernorm on every stage",
    },
    tiny={
        "model_type": "dinov3_vit",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_register_tokens": 2,
    },
    notes="DINOv3 ViT maps hold the patch tokens only (class and register tokens dropped), `[C, H/16, W/16]`; "
    "`stem` is the embedding output. Positions are 2-D rotary embeddings, so any input of at least 16x16 works "
    "unchanged. `--pool cls` gives the class token of each stage, `--embedding` the normed class token "
    "(transformers' `pooler_output`). Preprocessing is DINOv3's own: rescale to 0-1, then an antialiased "
    "resize of the float image, then normalise.",
)
