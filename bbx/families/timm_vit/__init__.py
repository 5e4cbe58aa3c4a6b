"""Vision Transformers in timm's layout (Dosovitskiy et al., "An Image is Worth 16x16 Words",
2021): timm's ``vit_*`` architectures, among them the AugReg, DINOv2 (with registers: Darcet et
al. 2023), CLIP and SigLIP weights timm serves, what bbx knows about them without torch. The
network is in :mod:`bbx.families.timm_vit.model`.

Stages as timm's ``feature_info``: ``blocks.0`` ... ``blocks.N-1``, each the patch tokens of that
block's output as ``[C, H // patch, W // patch]`` (class and register tokens dropped), stride
``patch_size``. No stage norm by default (timm's ``features_only`` adds none); ``final``: the
trained final norm on every stage, as ``forward_intermediates(norm=True)`` (none for models that
pool with ``fc_norm``). Any input of at least one patch works: the position embeddings are
resampled to the input's grid as timm resamples them (bicubic, antialiased, in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import (
    INCEPTION,
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
    token_activations,
    token_workspace,
)

#: timm's act_layer names -> bbx's activation names
ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "silu": "silu"}
POOLS = ("", "token", "avg", "avgmax", "max", "map")


@dataclass(frozen=True)
class TimmVitSettings(Settings):
    """timm's ``VisionTransformer`` arguments bbx implements (its defaults), for one architecture."""

    pair_fields = ("img_size",)

    architecture: str = ""
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = limit(16, 1, 4096)
    in_chans: int = limit(3, 1, 64)
    embed_dim: int = limit(768, 1, MAX_SIZE)
    depth: int = limit(12, 1, 4096)
    num_heads: int = limit(12, 1, 4096)
    mlp_ratio: float = limit(4.0, 0.01, 64)
    qkv_bias: bool = True
    init_values: float | None = None  # layer scale: none when None
    class_token: bool = True
    reg_tokens: int = limit(0, 0, 4096)
    no_embed_class: bool = False  # position embeddings for the patches only (added before the tokens join)
    pre_norm: bool = False  # a LayerNorm before the blocks (CLIP); the patch embedding then has no bias
    global_pool: str = "token"
    fc_norm: bool | None = None
    final_norm: bool = True
    act_layer: str = "gelu"
    mlp_layer: str = "mlp"  # "mlp" | "swiglu_packed" (DINOv2 giant)
    norm_eps: float = limit(1e-6, 0, 1)

    def check(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.act_layer not in ACTS:
            raise ValueError(f"act_layer must be one of {', '.join(ACTS)}, got {self.act_layer!r}")
        if self.mlp_layer not in ("mlp", "swiglu_packed"):
            raise ValueError(f"mlp_layer must be mlp or swiglu_packed, got {self.mlp_layer!r}")
        if self.global_pool not in POOLS:
            raise ValueError(f"global_pool must be one of {', '.join(map(repr, POOLS))}, got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool 'token' needs the class token")
        if min(self.img_size) < self.patch_size:
            raise ValueError(f"img_size {list(self.img_size)} is smaller than patch_size {self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid the position embeddings were trained for."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def use_fc_norm(self) -> bool:
        """Whether timm normalises the pooled features (``fc_norm``) instead of the tokens."""
        return self.global_pool in ("avg", "avgmax", "max") if self.fc_norm is None else bool(self.fc_norm)

    @property
    def has_norm(self) -> bool:
        """Whether the model has its final norm (timm: not when it pools with ``fc_norm``)."""
        return self.final_norm and not self.use_fc_norm

    # ``class_token`` (a field: whether the model has one) is also what ``--pool cls`` asks
    @property
    def embedding_dim(self) -> int | None:
        """timm's pre-logits features for class-token pooling (``global_pool='token'``): the class
        token under the final norm. Models that pool otherwise (SigLIP's attention pool, averages
        under ``fc_norm``) have heads bbx does not load: no embedding."""
        return self.embed_dim if self.global_pool == "token" and not self.use_fc_norm else None

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        return hidden // 2 if self.mlp_layer == "swiglu_packed" else hidden

    def stages(self) -> list[StageInfo]:
        return [StageInfo(f"blocks.{i}", self.embed_dim, self.patch_size) for i in range(self.depth)]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"input must be at least {p}x{p} (the patch size)")
        return [(h // p, w // p)] * self.depth

    def parameter_count(self) -> int:
        d, h, p = self.embed_dim, self.mlp_hidden, self.patch_size
        gh, gw = self.grid
        if self.mlp_layer == "swiglu_packed":  # fc1 computes gate and up together
            mlp = d * 2 * h + 2 * h + h * d + d
        else:
            mlp = d * h + h + h * d + d
        block = 4 * d + 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d + mlp
        block += 2 * d if self.init_values is not None else 0
        n = self.depth * block + self.in_chans * d * p * p + (0 if self.pre_norm else d)
        n += (int(self.class_token) + self.reg_tokens) * d
        n += (gh * gw + (0 if self.no_embed_class else self.prefix_tokens)) * d
        n += 2 * d if self.pre_norm else 0
        return n + (2 * d if self.has_norm else 0)

    def activation_count(self, image_size: tuple[int, int]) -> int:
        hidden = 3 * self.mlp_hidden if self.mlp_layer == "swiglu_packed" else self.mlp_hidden
        return token_activations(
            image_size,
            channels=self.in_chans,
            patch=self.patch_size,
            dim=self.embed_dim,
            layers=self.depth,
            hidden=hidden,
            prefix=self.prefix_tokens,
        )

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        gh, gw = self.grid
        return token_workspace(
            image_size,
            patch=self.patch_size,
            dim=self.embed_dim,
            heads=self.num_heads,
            prefix=self.prefix_tokens,
            table=gh * gw,
        )


# timm 1.0.31's vision_transformer.py: each architecture's model_args (norm_layer's eps as
# norm_eps, SwiGLUPacked as "swiglu_packed", nn.SiLU as "silu") and its default pretrained tag's
# pretrained_cfg; timm builds the fixed-size ones for the input_size there. Left out: variants
# with other blocks or norms (xp, rpn, parallel, RoPE, NaFlex, ...), and architectures whose
# weights live under another name on the hub (the quickgelu CLIPs).
ARCHITECTURES = (
    TimmArch(
        "vit_tiny_patch16_224",
        {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3},
        "augreg_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_tiny_patch16_384",
        {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3},
        "augreg_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch32_224",
        {"patch_size": 32, "embed_dim": 384, "depth": 12, "num_heads": 6},
        "augreg_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch32_384",
        {"patch_size": 32, "embed_dim": 384, "depth": 12, "num_heads": 6},
        "augreg_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch16_224",
        {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
        "augreg_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch16_384",
        {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
        "augreg_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch8_224",
        {"patch_size": 8, "embed_dim": 384, "depth": 12, "num_heads": 6},
        "dino",
        timm_data(224, 0.9, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_224",
        {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12},
        "augreg_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_384",
        {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12},
        "augreg_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_224",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
        "augreg2_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_384",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
        "augreg_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch8_224",
        {"patch_size": 8, "embed_dim": 768, "depth": 12, "num_heads": 12},
        "augreg2_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch32_224",
        {"patch_size": 32, "embed_dim": 1024, "depth": 24, "num_heads": 16},
        "orig_in21k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch32_384",
        {"patch_size": 32, "embed_dim": 1024, "depth": 24, "num_heads": 16},
        "orig_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch16_224",
        {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
        "augreg_in21k_ft_in1k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch16_384",
        {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
        "augreg_in21k_ft_in1k",
        timm_data(384, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_huge_patch14_224",
        {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16},
        "orig_in21k",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_xsmall_patch16_clip_224",
        {"embed_dim": 256, "depth": 10, "num_heads": 4, "pre_norm": True, "norm_eps": 1e-05},
        "tinyclip_yfcc15m",
        timm_data(224, 0.9, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_medium_patch32_clip_224",
        {"patch_size": 32, "embed_dim": 512, "depth": 12, "num_heads": 8, "pre_norm": True, "norm_eps": 1e-05},
        "tinyclip_laion400m",
        timm_data(224, 0.9, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_medium_patch16_clip_224",
        {"embed_dim": 512, "depth": 12, "num_heads": 8, "pre_norm": True, "norm_eps": 1e-05},
        "tinyclip_yfcc15m",
        timm_data(224, 0.9, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_betwixt_patch32_clip_224",
        {"patch_size": 32, "embed_dim": 640, "depth": 12, "num_heads": 10, "pre_norm": True, "norm_eps": 1e-05},
        "tinyclip_laion400m",
        timm_data(224, 0.9, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_clip_224",
        {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(224, 0.9, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_clip_256",
        {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12, "pre_norm": True, "norm_eps": 1e-05},
        "datacompxl",
        timm_data(256, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_clip_384",
        {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(384, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_clip_448",
        {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(448, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_clip_224",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(224, 0.95, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_clip_384",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(384, 1.0, crop_mode="squash", mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_plus_clip_240",
        {"patch_size": 16, "embed_dim": 896, "depth": 12, "num_heads": 14, "pre_norm": True, "norm_eps": 1e-05},
        "laion400m_e32",
        timm_data(240, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch14_clip_224",
        {"patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(224, 1.0, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch14_clip_336",
        {"patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(336, 1.0, crop_mode="squash", mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_huge_patch14_clip_224",
        {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(224, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_huge_patch14_clip_336",
        {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16, "pre_norm": True, "norm_eps": 1e-05},
        "laion2b_ft_in12k_in1k",
        timm_data(336, 1.0, crop_mode="squash", mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_huge_patch14_clip_378",
        {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16, "pre_norm": True, "norm_eps": 1e-05},
        "dfn5b",
        timm_data(378, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_giant_patch14_clip_224",
        {
            "patch_size": 14,
            "embed_dim": 1408,
            "mlp_ratio": 4.363636363636363,
            "depth": 40,
            "num_heads": 16,
            "pre_norm": True,
            "norm_eps": 1e-05,
        },
        "laion2b",
        timm_data(224, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_gigantic_patch14_clip_224",
        {
            "patch_size": 14,
            "embed_dim": 1664,
            "mlp_ratio": 4.923076923076923,
            "depth": 48,
            "num_heads": 16,
            "pre_norm": True,
            "norm_eps": 1e-05,
        },
        "laion2b",
        timm_data(224, 1.0, mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_gigantic_patch14_clip_378",
        {
            "patch_size": 14,
            "embed_dim": 1664,
            "mlp_ratio": 4.923076923076923,
            "depth": 48,
            "num_heads": 16,
            "pre_norm": True,
            "norm_eps": 1e-05,
        },
        "metaclip2_worldwide",
        timm_data(378, 1.0, crop_mode="squash", mean=OPENAI_MEAN, std=OPENAI_STD, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch14_dinov2",
        {"patch_size": 14, "embed_dim": 384, "depth": 12, "num_heads": 6, "init_values": 1e-05},
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch14_dinov2",
        {"patch_size": 14, "embed_dim": 768, "depth": 12, "num_heads": 12, "init_values": 1e-05},
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch14_dinov2",
        {"patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16, "init_values": 1e-05},
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_giant_patch14_dinov2",
        {
            "patch_size": 14,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-05,
            "mlp_ratio": 5.33334,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
        },
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_small_patch14_reg4_dinov2",
        {
            "patch_size": 14,
            "embed_dim": 384,
            "depth": 12,
            "num_heads": 6,
            "init_values": 1e-05,
            "reg_tokens": 4,
            "no_embed_class": True,
        },
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch14_reg4_dinov2",
        {
            "patch_size": 14,
            "embed_dim": 768,
            "depth": 12,
            "num_heads": 12,
            "init_values": 1e-05,
            "reg_tokens": 4,
            "no_embed_class": True,
        },
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch14_reg4_dinov2",
        {
            "patch_size": 14,
            "embed_dim": 1024,
            "depth": 24,
            "num_heads": 16,
            "init_values": 1e-05,
            "reg_tokens": 4,
            "no_embed_class": True,
        },
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_giant_patch14_reg4_dinov2",
        {
            "patch_size": 14,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-05,
            "mlp_ratio": 5.33334,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
            "reg_tokens": 4,
            "no_embed_class": True,
        },
        "lvd142m",
        timm_data(518, 1.0, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch32_siglip_256",
        {
            "patch_size": 32,
            "embed_dim": 768,
            "depth": 12,
            "num_heads": 12,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(256, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_siglip_224",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "class_token": False, "global_pool": "map"},
        "v2_webli",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_siglip_256",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "class_token": False, "global_pool": "map"},
        "v2_webli",
        timm_data(256, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_siglip_384",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "class_token": False, "global_pool": "map"},
        "v2_webli",
        timm_data(384, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_base_patch16_siglip_512",
        {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "class_token": False, "global_pool": "map"},
        "v2_webli",
        timm_data(512, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch16_siglip_256",
        {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16, "class_token": False, "global_pool": "map"},
        "v2_webli",
        timm_data(256, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch16_siglip_384",
        {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16, "class_token": False, "global_pool": "map"},
        "v2_webli",
        timm_data(384, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_large_patch16_siglip_512",
        {
            "patch_size": 16,
            "embed_dim": 1024,
            "depth": 24,
            "num_heads": 16,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(512, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_so400m_patch14_siglip_224",
        {
            "patch_size": 14,
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "class_token": False,
            "global_pool": "map",
        },
        "v2_webli",
        timm_data(224, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_so400m_patch14_siglip_378",
        {
            "patch_size": 14,
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "class_token": False,
            "global_pool": "map",
        },
        "v2_webli",
        timm_data(378, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_so400m_patch14_siglip_384",
        {
            "patch_size": 14,
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "class_token": False,
            "global_pool": "map",
        },
        "webli",
        timm_data(384, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_so400m_patch16_siglip_256",
        {
            "patch_size": 16,
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(256, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_so400m_patch16_siglip_384",
        {
            "patch_size": 16,
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(384, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_so400m_patch16_siglip_512",
        {
            "patch_size": 16,
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(512, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_giantopt_patch16_siglip_256",
        {
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 16,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(256, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
    TimmArch(
        "vit_giantopt_patch16_siglip_384",
        {
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 16,
            "class_token": False,
            "global_pool": "map",
            "act_layer": "gelu_tanh",
        },
        "v2_webli",
        timm_data(384, 0.9, mean=INCEPTION, std=INCEPTION, fixed_input_size=True),
    ),
)

FAMILY = Family(
    name="timm_vit",
    title="ViT (timm)",
    model_types=("timm_vit",),
    settings=TimmVitSettings,
    processor="timm",
    stage_norms={
        "hf": "raw block outputs (timm's feature maps: no norm)",
        "none": "raw block outputs",
        "final": "the trained final norm on every stage, as timm's `forward_intermediates(norm=True)` (none "
        "for models that pool with `fc_norm`)",
    },
    tiny={
        "architecture": "vit_small_patch16_224",
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 2,
        "img_size": [64, 64],
    },
    notes="timm's `vit_*` (`timm:vit_base_patch16_224`, `timm:vit_small_patch14_reg4_dinov2`, "
    "`timm:vit_base_patch16_clip_224`, ...): stages `blocks.0`..`blocks.N-1`, the patch tokens as "
    "`[C, H/patch, W/patch]`; position embeddings resampled to the input.",
    timm=TimmLayout(
        patterns=("vit_*",), architectures=ARCHITECTURES, accepts=TimmLayout.accepts + ("dynamic_img_size",)
    ),
)
