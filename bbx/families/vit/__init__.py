"""ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", 2021), transformers layout (``model_type: vit``): what bbx knows about it without torch.
The same layout holds DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", 2021) and DeiT without distillation (Touvron et al., 2021); the network is in
:mod:`bbx.families.vit.model`.

Stages, DINOv2's convention: ``stem`` is the token embeddings (patches + positions, the input of
block 1) and ``stageK`` the output of block K, each map the patch tokens only (the class token
dropped) as ``[C, H // patch, W // patch]``; stride ``patch_size`` for every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bbx.family import IMAGENET_MEAN, IMAGENET_STD, CatalogRow, Family, PatchTransformerSettings

MODEL_TYPES = ("vit",)


@dataclass(frozen=True)
class VitSettings(PatchTransformerSettings):
    """The architecture fields of a ViT ``config.json``, with ``ViTConfig``'s defaults (the
    pooler's fields are not read: bbx has no pooler)."""

    model_type: str = "vit"
    qkv_bias: bool = True

    def check(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        super().check()

    @property
    def class_token(self) -> bool:
        return True

    @property
    def embedding_dim(self) -> int:
        """The normed class token (``ViTModel``'s ``last_hidden_state[:, 0]``)."""
        return self.hidden_size


# --- catalog ---------------------------------------------------------------------------------------
# Configs: ViTConfig defaults with the sizes transformers' conversion scripts set
# (convert_vit_timm_to_pytorch.py for google/vit-* and the DeiT models without distillation,
# convert_dino_to_pytorch.py for facebook/dino-*), as the hub's config.json files spell them out.
# Preprocessing: google/vit-*: ViTImageProcessor's squash to 224 x 224, bilinear, mean/std 0.5;
# facebook/dino-*: the same squash with ImageNet's mean/std; facebook/deit-* (DeiTFeatureExtractor):
# resize to 256 x 256, centre crop 224, bicubic, ImageNet mean/std.
_STANDARD = [0.5, 0.5, 0.5]
GOOGLE = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": _STANDARD,
    "image_processor_type": "ViTImageProcessor",
    "image_std": _STANDARD,
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}
DINO = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
    "resample": 2,
    "size": 224,
}
IMAGENET_CROP = {
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
#: size -> (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size)
_SIZES = {
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


def _row(
    alias: str, repo_id: str, size: str, patch: int, preprocessor: dict[str, Any], description: str, arch: str
) -> CatalogRow:
    hidden, layers, heads, mlp = _SIZES[size]
    config = {
        "model_type": "vit",
        "architectures": [arch],
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
        "num_hidden_layers": layers,
        "patch_size": patch,
        "qkv_bias": True,
    }
    return CatalogRow(alias=alias, repo_id=repo_id, config=config, preprocessor=preprocessor, description=description)


FAMILY = Family(
    name="vit",
    title="ViT",
    model_types=MODEL_TYPES,
    settings=VitSettings,
    processor="ViT",
    catalog=(
        _row(
            "vit-base-patch16",
            "google/vit-base-patch16-224",
            "base",
            16,
            GOOGLE,
            "ViT-B/16 (ImageNet-21k, fine-tuned on ImageNet-1k)",
            "ViTForImageClassification",
        ),
        _row(
            "vit-base-patch16-in21k",
            "google/vit-base-patch16-224-in21k",
            "base",
            16,
            GOOGLE,
            "ViT-B/16 (ImageNet-21k)",
            "ViTModel",
        ),
        _row(
            "vit-large-patch16",
            "google/vit-large-patch16-224",
            "large",
            16,
            GOOGLE,
            "ViT-L/16 (ImageNet-21k, fine-tuned on ImageNet-1k)",
            "ViTForImageClassification",
        ),
        _row("dino-vits16", "facebook/dino-vits16", "small", 16, DINO, "DINO ViT-S/16 (self-supervised)", "ViTModel"),
        _row("dino-vitb16", "facebook/dino-vitb16", "base", 16, DINO, "DINO ViT-B/16 (self-supervised)", "ViTModel"),
        _row("dino-vitb8", "facebook/dino-vitb8", "base", 8, DINO, "DINO ViT-B/8 (self-supervised)", "ViTModel"),
        _row(
            "deit-small",
            "facebook/deit-small-patch16-224",
            "small",
            16,
            IMAGENET_CROP,
            "DeiT-S/16 (ImageNet-1k; a ViT checkpoint, no distillation token)",
            "ViTForImageClassification",
        ),
        _row(
            "deit-base",
            "facebook/deit-base-patch16-224",
            "base",
            16,
            IMAGENET_CROP,
            "DeiT-B/16 (ImageNet-1k; a ViT checkpoint, no distillation token)",
            "ViTForImageClassification",
        ),
    ),
    stage_norms={
        "hf": "raw hidden states, as transformers' `output_hidden_states=True` (the final `layernorm` is on "
        "`last_hidden_state` only)",
        "none": "raw hidden states",
        "final": "the trained final `layernorm` on every stage",
    },
    tiny={
        "model_type": "vit",
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
    },
    notes="ViT maps hold the patch tokens only (the class token dropped), `[C, H/16, W/16]`; `stem` is the "
    "embedding output. DINO and the DeiT checkpoints without distillation are ViT checkpoints (`model_type` "
    "vit). Any input size of at least one patch works: the position embeddings are resampled as transformers "
    "resamples them (`interpolate_pos_encoding`). `--pool cls` gives the class token; `--embedding` the normed "
    "class token.",
)
