"""SigLIP's image tower (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023),
transformers layout: what bbx knows about it without torch. Two ``model_type`` values:
``siglip`` (the whole two-tower model, as the public google/siglip-* repos hold it: bbx reads only
its ``vision_config`` and the image tower's weights) and ``siglip_vision_model`` (a
``SiglipVisionModel`` checkpoint). The network is in :mod:`bbx.families.siglip.model`.

There is no class token: every token is a patch, and the image embedding is an attention-pooling
head over all of them. Stages, DINOv2's convention: ``stem`` is the token embeddings and
``stageK`` the output of block K, each map every token as ``[C, H // patch, W // patch]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bbx.family import CatalogRow, Family, PatchTransformerSettings, limit

MODEL_TYPES = ("siglip", "siglip_vision_model")


def _is_two_tower(config: Mapping[str, Any]) -> bool:
    """A whole SigLIP config (``SiglipConfig``: vision and text configs nested)."""
    return config.get("model_type") == "siglip" and ("vision_config" in config or "text_config" in config)


def vision_tower(config: Mapping[str, Any]) -> dict[str, Any]:
    """The image tower's config inside a whole SigLIP ``config.json`` (absent:
    ``SiglipVisionConfig``'s defaults)."""
    inner = config.get("vision_config") or {}
    if not isinstance(inner, Mapping):
        raise ValueError(f"vision_config must be an object, got {inner!r}")
    return {**inner, "model_type": "siglip"}


def _tower_key(key: str) -> str | None:
    """A whole SigLIP checkpoint's image-tower keys; None (never read) for the text tower, the
    logit scale and bias, a classifier."""
    return key if key.startswith("vision_model.") else None


def unwrap(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, Callable[[str], str | None] | None]:
    if _is_two_tower(config):
        return vision_tower(config), "", _tower_key
    return config, "", None


@dataclass(frozen=True)
class SiglipSettings(PatchTransformerSettings):
    """The image tower's fields, with ``SiglipVisionConfig``'s defaults (base, patch 16, 224)."""

    model_type: str = "siglip_vision_model"
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = limit(1e-6, 0, 1)
    vision_use_head: bool = True
    prefix_tokens = 0  # no class token

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SiglipSettings:
        if _is_two_tower(config):
            config = vision_tower(config)
        return super().from_config(config)  # type: ignore[return-value]

    def check(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        super().check()

    @property
    def embedding_dim(self) -> int | None:
        """The attention-pooling head's output (``pooler_output``); None without the head."""
        return self.hidden_size if self.vision_use_head else None

    def parameter_count(self) -> int:
        d, h = self.hidden_size, self.intermediate_size
        # the attention-pooling head: probe, q, kv, projection, LayerNorm, MLP
        head = d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d) + 2 * d + (d * h + h + h * d + d)
        # ViT's layout without a class token (nor its position)
        return super().parameter_count() - 2 * d + (head if self.vision_use_head else 0)


# --- catalog: google/siglip-* ------------------------------------------------------------------------
# config.json: the whole SiglipConfig; bbx embeds its vision_config as the hub spells it (the base
# model's gives only the patch size: SiglipVisionConfig's defaults otherwise; so400m's gives its
# sizes) and leaves the text tower out. preprocessor_config.json: SiglipImageProcessor: resize to
# image_size x image_size (no crop), bicubic, mean/std 0.5.
def _preprocessor(size: int) -> dict[str, Any]:
    return {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": size, "width": size},
    }


def _row(alias: str, repo_id: str, vision: dict[str, Any], description: str) -> CatalogRow:
    config = {
        "model_type": "siglip",
        "architectures": ["SiglipModel"],
        "initializer_factor": 1.0,
        "vision_config": {"model_type": "siglip_vision_model", **vision},
    }
    size = vision.get("image_size", 224)
    return CatalogRow(
        alias=alias, repo_id=repo_id, config=config, preprocessor=_preprocessor(size), description=description
    )


FAMILY = Family(
    name="siglip",
    title="SigLIP",
    model_types=MODEL_TYPES,
    settings=SiglipSettings,
    processor="Siglip",
    catalog=(
        _row(
            "siglip-base-patch16-224",
            "google/siglip-base-patch16-224",
            {"patch_size": 16},
            "SigLIP ViT-B/16 image tower, 224 px",
        ),
        _row(
            "siglip-so400m-patch14-384",
            "google/siglip-so400m-patch14-384",
            {
                "hidden_size": 1152,
                "image_size": 384,
                "intermediate_size": 4304,
                "num_attention_heads": 16,
                "num_hidden_layers": 27,
                "patch_size": 14,
            },
            "SigLIP So400m/14 image tower, 384 px",
        ),
    ),
    stage_norms={
        "hf": "raw hidden states, as transformers' `output_hidden_states=True` (`post_layernorm` is on "
        "`last_hidden_state` only)",
        "none": "raw hidden states",
        "final": "the trained `post_layernorm` on every stage",
    },
    tiny={
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
    },
    notes="SigLIP's image tower only (the text tower of a whole SigLIP checkpoint is never read). There is no "
    "class token: maps hold every token, and `--pool cls` is refused (use `--pool avg`); `--embedding` is the "
    "attention-pooling head's output (`pooler_output`). Any input size of at least one patch works (positions "
    "resampled as transformers does).",
    unwrap=unwrap,
)
