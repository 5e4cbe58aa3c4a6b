"""CLIP's image tower (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", 2021), transformers layout: what bbx knows about it without torch. Two
``model_type`` values: ``clip`` (the whole two-tower model, as the public openai/clip-vit-* repos
hold it: bbx reads only its ``vision_config`` and the image tower's weights, never the text
tower's) and ``clip_vision_model`` (a ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection``
checkpoint). The network is in :mod:`bbx.families.clip.model`.

Stages, DINOv2's convention: ``stem`` is the token embeddings after ``pre_layrnorm`` (the input of
block 1, transformers' ``hidden_states[0]``) and ``stageK`` the output of block K, each map the
patch tokens only (the class token dropped) as ``[C, H // patch, W // patch]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bbx.family import CatalogRow, Family, PatchTransformerSettings, limit

MODEL_TYPES = ("clip", "clip_vision_model")
#: head models whose checkpoints have no visual projection
_NO_PROJECTION = ("CLIPVisionModel", "CLIPForImageClassification")


def _is_two_tower(config: Mapping[str, Any]) -> bool:
    """A whole CLIP config (``CLIPConfig``: vision and text configs nested), not a vision tower's."""
    return config.get("model_type") == "clip" and ("vision_config" in config or "text_config" in config)


def vision_tower(config: Mapping[str, Any]) -> dict[str, Any]:
    """The image tower's config inside a whole CLIP ``config.json``: its ``vision_config`` (absent:
    ``CLIPVisionConfig``'s defaults) with the model's ``projection_dim`` (``CLIPConfig`` default
    512; the visual projection is the model's, not the tower's) and ``architectures``."""
    inner = config.get("vision_config") or {}
    if not isinstance(inner, Mapping):
        raise ValueError(f"vision_config must be an object, got {inner!r}")
    out = dict(inner)
    out["model_type"] = "clip"
    out["projection_dim"] = config.get("projection_dim", 512)
    if "architectures" in config:
        out["architectures"] = config["architectures"]
    return out


def _tower_key(key: str) -> str | None:
    """A whole CLIP checkpoint's keys the image tower needs, as they are; None for the rest (the
    text tower, its projection, the logit scale, a classifier): never read."""
    return key if key.startswith(("vision_model.", "visual_projection.")) else None


def unwrap(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, Callable[[str], str | None] | None]:
    if _is_two_tower(config):
        return vision_tower(config), "", _tower_key
    return config, "", None


@dataclass(frozen=True)
class ClipSettings(PatchTransformerSettings):
    """The image tower's fields (``CLIPVisionConfig``'s defaults: ViT-B/32), plus the model's
    ``projection_dim`` and ``architectures`` (which say whether the checkpoint has the visual
    projection)."""

    model_type: str = "clip_vision_model"
    patch_size: int = limit(32, 1, 4096)
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = limit(1e-5, 0, 1)
    projection_dim: int = limit(512, 1, 1 << 20)
    architectures: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClipSettings:
        if _is_two_tower(config):
            config = vision_tower(config)
        return super().from_config(config)  # type: ignore[return-value]

    def check(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        super().check()

    @property
    def has_projection(self) -> bool:
        """Whether the checkpoint holds ``visual_projection``: a whole CLIP model or a
        ``CLIPVisionModelWithProjection`` does; a ``CLIPVisionModel`` or a classifier does not."""
        if self.model_type == "clip":
            return not (self.architectures and all(a in _NO_PROJECTION for a in self.architectures))
        return any(a.endswith("WithProjection") for a in self.architectures)

    @property
    def class_token(self) -> bool:
        return True

    @property
    def embedding_dim(self) -> int:
        """``get_image_features``: the post-layernormed class token, projected (not L2-normalised);
        without a projection, ``CLIPVisionModel``'s ``pooler_output``."""
        return self.projection_dim if self.has_projection else self.hidden_size

    def parameter_count(self) -> int:
        # ViT's layout with an unbiased patch convolution and a pre-norm (+ d), and the projection
        return (
            super().parameter_count()
            + self.hidden_size
            + (self.hidden_size * self.projection_dim if self.has_projection else 0)
        )


# --- catalog: openai/clip-vit-* ----------------------------------------------------------------------
# config.json: the whole CLIPConfig; bbx embeds its vision_config (the hub's values: quick_gelu,
# eps 1e-5, CLIPVisionConfig defaults otherwise) and projection_dim, and leaves the text tower out
# (bbx never reads it). preprocessor_config.json: CLIPImageProcessor: shortest edge to the input
# size, bicubic, centre crop, OpenAI's mean/std (the hub files spell both the legacy
# CLIPFeatureExtractor ints and the current dicts; they mean the same).
_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]


def _preprocessor(size: int) -> dict[str, Any]:
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": _MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": _STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    }


#: (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, projection_dim)
_SIZES = {"base": (768, 3072, 12, 12, 512), "large": (1024, 4096, 24, 16, 768)}


def _row(alias: str, repo_id: str, size: str, patch: int, image: int, description: str) -> CatalogRow:
    hidden, mlp, layers, heads, projection = _SIZES[size]
    vision = {
        "model_type": "clip_vision_model",
        "attention_dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": hidden,
        "image_size": image,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": mlp,
        "layer_norm_eps": 1e-5,
        "num_attention_heads": heads,
        "num_channels": 3,
        "num_hidden_layers": layers,
        "patch_size": patch,
        "projection_dim": projection,
    }
    config = {
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "projection_dim": projection,
        "vision_config": vision,
    }
    return CatalogRow(
        alias=alias, repo_id=repo_id, config=config, preprocessor=_preprocessor(image), description=description
    )


FAMILY = Family(
    name="clip",
    title="CLIP",
    model_types=MODEL_TYPES,
    settings=ClipSettings,
    processor="CLIP",
    catalog=(
        _row("clip-vit-base-patch32", "openai/clip-vit-base-patch32", "base", 32, 224, "CLIP ViT-B/32 image tower"),
        _row("clip-vit-base-patch16", "openai/clip-vit-base-patch16", "base", 16, 224, "CLIP ViT-B/16 image tower"),
        _row("clip-vit-large-patch14", "openai/clip-vit-large-patch14", "large", 14, 224, "CLIP ViT-L/14 image tower"),
        _row(
            "clip-vit-large-patch14-336",
            "openai/clip-vit-large-patch14-336",
            "large",
            14,
            336,
            "CLIP ViT-L/14 image tower at 336 px",
        ),
    ),
    stage_norms={
        "hf": "raw hidden states, as transformers' `output_hidden_states=True` (`stem` after `pre_layrnorm`; "
        "`post_layernorm` is on the pooled class token only)",
        "none": "raw hidden states",
        "final": "the trained `post_layernorm` on every stage",
    },
    tiny={
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
        "projection_dim": 24,
    },
    notes="CLIP's image tower only: from a whole CLIP checkpoint bbx reads the vision tower's config and "
    "weights (the text tower is never read). Maps hold the patch tokens (the class token dropped); `stem` is "
    "after `pre_layrnorm`. `--pool cls` gives the class token, `--embedding` the image embedding as "
    "`get_image_features` returns it (post-layernormed class token, projected, not L2-normalised). Any input "
    "size of at least one patch works (positions resampled as transformers does).",
    unwrap=unwrap,
)
