"""DINOv2 and DINOv2 with registers (Oquab et al., 2023; Darcet et al., "Vision Transformers Need
Registers", 2023), transformers layout: what bbx knows about them without torch. One family serves
both ``model_type`` values; the network is in :mod:`bbx.families.dinov2.model`.

Stages, as transformers' backbone defines them: ``stem`` is the embedding output and ``stageK``
the output of block K, each map the patch tokens only (class and register tokens dropped) as
``[C, H // patch, W // patch]``; stride ``patch_size`` for every stage.
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
    TimmCounterpart,
    limit,
)

MODEL_TYPES = ("dinov2", "dinov2_with_registers")


@dataclass(frozen=True)
class Dinov2Settings(Settings):
    """The architecture fields of a DINOv2 ``config.json``, with transformers' defaults
    (``Dinov2Config``; ``Dinov2WithRegistersConfig`` differs in ``patch_size`` 16 and 4 registers)."""

    square_fields = ("image_size", "patch_size")

    model_type: str = "dinov2"
    hidden_size: int = limit(768, 1, MAX_SIZE)
    num_hidden_layers: int = limit(12, 1, 4096)
    num_attention_heads: int = limit(12, 1, 4096)
    mlp_ratio: float = limit(4, 0.01, 64)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-6, 0, 1)
    image_size: int = limit(224, 1, MAX_SIZE)
    patch_size: int = limit(14, 1, 4096)
    num_channels: int = limit(3, 1, 64)
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    use_swiglu_ffn: bool = False
    num_register_tokens: int = limit(0, 0, 4096)
    apply_layernorm: bool = True
    #: transformers' backbone returns token sequences (class token first) when false, as task models
    #: nesting it ask (Depth Anything, DPT); bbx's maps are the patch tokens as [N, C, H, W] either way
    reshape_hidden_states: bool = True

    @classmethod
    def adjust(cls, config: Any, values: dict[str, Any]) -> dict[str, Any]:
        model_type = values.get("model_type", "dinov2")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if model_type == "dinov2_with_registers":
            values.setdefault("patch_size", 16)
            values.setdefault("num_register_tokens", 4)
        elif values.pop("num_register_tokens", 0):
            # transformers' Dinov2Model has no registers and would silently ignore them
            raise ValueError("model_type 'dinov2' has no register tokens; registers need 'dinov2_with_registers'")
        return values

    def check(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        """Side of the position-embedding grid the checkpoint was trained with."""
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        if self.use_swiglu_ffn:
            # two thirds of the MLP width (SwiGLU has two input projections), rounded up to 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: the class token and the registers."""
        return 1 + self.num_register_tokens

    @property
    def class_token(self) -> bool:
        return True

    @property
    def embedding_dim(self) -> int:
        """The normed class token (``Dinov2Model``'s ``pooler_output``)."""
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
        d, hidden = self.hidden_size, self.mlp_hidden
        n = self.num_channels * d * self.patch_size**2 + d  # patch embedding
        n += d + self.num_register_tokens * d + (1 + self.grid**2) * d  # class token, registers, positions
        attention = d * 3 * d + (3 * d if self.qkv_bias else 0) + d * d + d
        if self.use_swiglu_ffn:
            mlp = d * 2 * hidden + 2 * hidden + hidden * d + d
        else:
            mlp = d * hidden + hidden + hidden * d + d
        n += self.num_hidden_layers * (2 * d + attention + d + 2 * d + mlp + d)  # norms, layer scales
        return n + 2 * d  # the final norm

    def _tokens(self, image_size: tuple[int, int]) -> tuple[int, int]:
        gh, gw = image_size[0] // self.patch_size, image_size[1] // self.patch_size
        return gh * gw, self.prefix_tokens + gh * gw

    def activation_count(self, image_size: tuple[int, int]) -> int:
        h, w = image_size
        d = self.hidden_size
        patches, t = self._tokens(image_size)
        maps = (self.num_hidden_layers + 1) * d * patches
        # attention: input, norm, q/k/v and their per-head copies, output and its copy; the MLP:
        # input, norm, the hidden layer (SwiGLU: both halves, then their product), output
        hidden = (3 if self.use_swiglu_ffn else 1) * self.mlp_hidden
        widest = max(10 * d * t, (3 * d + hidden) * t, 3 * d * t)
        return self.num_channels * h * w + maps + widest

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        """One image's attention scores and their softmax (the bfloat16 CPU kernel computes a few
        images at a time; the fused kernels none), and the position table resampled to the grid."""
        patches, t = self._tokens(image_size)
        return 2 * self.num_attention_heads * t * t + (self.grid**2 + patches) * self.hidden_size


# --- catalog: facebook/dinov2-* and facebook/dinov2-with-registers-* (BitImageProcessor) -----------
# Confirmed against transformers' convert_dinov2_to_hf.py / convert_dinov2_with_registers_to_hf.py
# (image_size 518, patch_size 14, the widths/depths/heads, SwiGLU for the giant, 4 registers, the
# processor: shortest edge 256, bicubic, ImageNet mean/std, BitImageProcessor's 224 center crop)
# and against copies of the published small configs; the rest are Dinov2Config defaults, which the
# hub files spell out.
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
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}
#: size -> (hidden_size, num_hidden_layers, num_attention_heads, ViT name)
_SIZES = {
    "small": (384, 12, 6, "ViT-S/14"),
    "base": (768, 12, 12, "ViT-B/14"),
    "large": (1024, 24, 16, "ViT-L/14"),
    "giant": (1536, 40, 24, "ViT-g/14"),
}


def _row(alias: str, repo_id: str, size: str, *extra: str) -> CatalogRow:
    registers = "with-registers" in repo_id
    hidden, layers, heads, arch = _SIZES[size]
    config: dict[str, Any] = {
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": 518,
        "patch_size": 14,
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": size == "giant",
    }
    if registers:
        config["num_register_tokens"] = 4
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=f"DINOv2 {arch}" + (" with 4 registers" if registers else "") + " (self-supervised, LVD-142M)",
        extra_aliases=extra,
    )


def _timm_stage(name: str) -> str | None:
    """timm's stage ``blocks.i`` of the same network -> this family's ``stage<i+1>``."""
    return f"stage{int(name[7:]) + 1}" if name.startswith("blocks.") else None


FAMILY = Family(
    name="dinov2",
    title="DINOv2",
    model_types=MODEL_TYPES,
    settings=Dinov2Settings,
    processor="Bit",
    catalog=(
        _row("dinov2-small", "facebook/dinov2-small", "small"),
        _row("dinov2-base", "facebook/dinov2-base", "base"),
        _row("dinov2-large", "facebook/dinov2-large", "large"),
        _row("dinov2-giant", "facebook/dinov2-giant", "giant"),
        _row("dinov2-small-reg", "facebook/dinov2-with-registers-small", "small", "dinov2-with-registers-small"),
        _row("dinov2-base-reg", "facebook/dinov2-with-registers-base", "base", "dinov2-with-registers-base"),
        _row("dinov2-large-reg", "facebook/dinov2-with-registers-large", "large", "dinov2-with-registers-large"),
        _row("dinov2-giant-reg", "facebook/dinov2-with-registers-giant", "giant", "dinov2-with-registers-giant"),
    ),
    stage_norms={
        "hf": "the trained final layernorm on every stage (transformers' `apply_layernorm`; none when it is false)",
        "none": "raw layer outputs",
        "final": "the trained final layernorm on every stage",
    },
    tiny={
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "image_size": 56,
    },
    notes="DINOv2 maps hold the patch tokens only (class and register tokens dropped), `[C, H/14, W/14]`; `stem` "
    "is the embedding output. Any input size of at least 14 works: the position embeddings are resampled as "
    "transformers resamples them. `--pool cls` gives the class token (never a register), under the same stage "
    "norm; `--embedding` the normed class token (`pooler_output`).",
    timm_counterpart=TimmCounterpart(patterns=("vit_*_dinov2",), stage_of=_timm_stage),
)
