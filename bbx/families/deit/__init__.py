"""DeiT with distillation (Touvron et al., "Training data-efficient image transformers &
distillation through attention", 2021), transformers layout (``model_type: deit``): what bbx
knows about it without torch. The network is in :mod:`bbx.families.deit.model`.

A distilled DeiT is a ViT with a second prefix token, the distillation token, after the class
token. (The DeiT checkpoints trained without distillation, facebook/deit-{tiny,small,base}-patch16-224,
are ViT checkpoints, ``model_type: vit``.)

Stages, DINOv2's convention: ``stem`` is the token embeddings and ``stageK`` the output of block
K, each map the patch tokens only (class and distillation tokens dropped) as
``[C, H // patch, W // patch]``; stride ``patch_size`` for every stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import IMAGENET_MEAN, IMAGENET_STD, CatalogRow, Family, PatchTransformerSettings

MODEL_TYPES = ("deit",)


@dataclass(frozen=True)
class DeitSettings(PatchTransformerSettings):
    """The architecture fields of a DeiT ``config.json``, with ``DeiTConfig``'s defaults."""

    model_type: str = "deit"
    qkv_bias: bool = True
    prefix_tokens = 2  # the class and distillation tokens

    def check(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        super().check()

    @property
    def class_token(self) -> bool:
        return True

    @property
    def embedding_dim(self) -> int:
        """The normed class token (``DeiTModel``'s ``last_hidden_state[:, 0]``)."""
        return self.hidden_size

    def parameter_count(self) -> int:
        return super().parameter_count() + 2 * self.hidden_size  # the distillation token and its position


# --- catalog: facebook/deit-*-distilled-patch16-224 --------------------------------------------------
# Configs: DeiTConfig defaults with the sizes of transformers' convert_deit_timm_to_pytorch.py; the
# processor it saves: DeiTImageProcessor(size=int(256 / 224 * image_size), crop_size=image_size),
# i.e. resize to 256 x 256, centre crop 224, bicubic, ImageNet mean/std.
PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor",
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
    "resample": 3,
    "size": 256,
}
#: size -> (hidden_size, num_attention_heads, intermediate_size); 12 blocks each
_SIZES = {"tiny": (192, 3, 768), "small": (384, 6, 1536), "base": (768, 12, 3072)}


def _row(alias: str, repo_id: str, size: str) -> CatalogRow:
    hidden, heads, mlp = _SIZES[size]
    config = {
        "model_type": "deit",
        "architectures": ["DeiTForImageClassificationWithTeacher"],
        "attention_probs_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": hidden,
        "image_size": 224,
        "initializer_range": 0.02,
        "intermediate_size": mlp,
        "layer_norm_eps": 1e-12,
        "num_attention_heads": heads,
        "num_channels": 3,
        "num_hidden_layers": 12,
        "patch_size": 16,
        "qkv_bias": True,
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=f"DeiT-{size[0].upper()}/16 distilled (ImageNet-1k, with a distillation token)",
    )


FAMILY = Family(
    name="deit",
    title="DeiT",
    model_types=MODEL_TYPES,
    settings=DeitSettings,
    processor="DeiT",
    catalog=(
        _row("deit-tiny-distilled", "facebook/deit-tiny-distilled-patch16-224", "tiny"),
        _row("deit-small-distilled", "facebook/deit-small-distilled-patch16-224", "small"),
        _row("deit-base-distilled", "facebook/deit-base-distilled-patch16-224", "base"),
    ),
    stage_norms={
        "hf": "raw hidden states, as transformers' `output_hidden_states=True` (the final `layernorm` is on "
        "`last_hidden_state` only)",
        "none": "raw hidden states",
        "final": "the trained final `layernorm` on every stage",
    },
    tiny={
        "model_type": "deit",
        # as the public configs: transformers' auto classes pick the distilled model by it
        "architectures": ["DeiTForImageClassificationWithTeacher"],
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
    },
    notes="Distilled DeiT maps hold the patch tokens only (class and distillation tokens dropped), "
    "`[C, H/16, W/16]`; `stem` is the embedding output. `--pool cls` gives the class token (never the "
    "distillation token); `--embedding` the normed class token. Any input size of at least one patch works "
    "(positions resampled as transformers does).",
)
