"""The catalog: which architectures bbx implements and which public checkpoints it knows by name.

Data only, no torch. Two tables:

* ``FAMILIES`` maps a ``config.json`` ``model_type`` to the module implementing it: adding an
  architecture is one file in ``bbx/backbones/`` plus one line here.
* ``CHECKPOINTS`` has one row per public checkpoint: its short alias, hub repo, architecture config
  and preprocessing config (the architecture fields of the hub's ``config.json`` and the hub's
  ``preprocessor_config.json``, embedded so that ``inspect``, ``--dry-run`` and
  ``--no-pretrained`` work without any download).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

from bbx.errors import ModelError

#: model_type -> module in bbx.backbones (one registration line per family)
FAMILIES: Mapping[str, str] = MappingProxyType(
    {
        "resnet": "resnet",
        "swin": "swin",
        "convnext": "convnext",
        "dinov2": "dinov2",
        "dinov2_with_registers": "dinov2",
    }
)


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def check_supported(model_type: str | None, where: str = "") -> str:
    """``model_type`` if bbx implements it; ModelError listing the supported ones otherwise."""
    if model_type not in FAMILIES:
        missing = "no model_type" if where else "config.json has no model_type"  # where names the file
        what = missing if model_type is None else f"unsupported model_type {model_type!r}"
        at = f" ({where})" if where else ""
        raise ModelError(f"{what}{at}; bbx supports: {', '.join(supported_model_types())}")
    return model_type


def family(model_type: str | None) -> ModuleType:
    """The module implementing ``model_type`` (imported on first use: it imports torch)."""
    return importlib.import_module(f"bbx.backbones.{FAMILIES[check_supported(model_type)]}")


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One public checkpoint bbx knows by a short alias."""

    alias: str
    repo_id: str
    config: Mapping[str, Any]
    preprocessor: Mapping[str, Any]
    stage_names: tuple[str, ...]
    description: str = ""
    extra_aliases: tuple[str, ...] = field(default=())

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    def config_dict(self) -> dict[str, Any]:
        """A fresh, mutable copy of the embedded ``config.json``."""
        return _deep_copy(self.config)

    def preprocessor_dict(self) -> dict[str, Any]:
        return _deep_copy(self.preprocessor)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# --- ResNet: microsoft/resnet-* (converted from timm; ConvNeXt-style preprocessing) --------------
_RESNET_PRE = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "resample": 3,
    "size": 224,
}


def _resnet(depth: int, depths: list[int], layer_type: str) -> Checkpoint:
    sizes = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    config = {
        "model_type": "resnet",
        "architectures": ["ResNetForImageClassification"],
        "num_channels": 3,
        "embedding_size": 64,
        "hidden_sizes": sizes,
        "depths": depths,
        "layer_type": layer_type,
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
    }
    return Checkpoint(
        alias=f"resnet-{depth}",
        repo_id=f"microsoft/resnet-{depth}",
        config=_frozen(config),
        preprocessor=_frozen(_RESNET_PRE),
        stage_names=("stem", "stage1", "stage2", "stage3", "stage4"),
        description=f"ResNet-{depth} (ImageNet-1k)",
        extra_aliases=(f"resnet{depth}",),
    )


# --- Swin: microsoft/swin-* (converted from the official weights; ViT-style preprocessing) --------
# Architecture values as in transformers' convert_swin_timm_to_pytorch.py and the hub configs: T and S
# share width 96 and heads 3/6/12/24, B is 128 wide with heads 4/8/16/32, L 192 wide with heads
# 6/12/24/48; S, B and L have depths 2/2/18/2. The 384 checkpoints use 12x12 windows.
_SWIN_SIZES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def _swin(size: str, image_size: int, *, in22k: bool = False, extra: tuple[str, ...] = ()) -> Checkpoint:
    embed_dim, depths, heads = _SWIN_SIZES[size]
    window = 7 if image_size == 224 else 12
    config = {
        "model_type": "swin",
        "architectures": ["SwinForImageClassification"],
        "image_size": image_size,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
    }
    pre = {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": image_size,
    }
    alias = f"swin-{size}" + ("" if image_size == 224 else f"-{image_size}") + ("-in22k" if in22k else "")
    data = "ImageNet-22k" if in22k else "ImageNet-1k"
    return Checkpoint(
        alias=alias,
        repo_id=f"microsoft/swin-{size}-patch4-window{window}-{image_size}" + ("-in22k" if in22k else ""),
        config=_frozen(config),
        preprocessor=_frozen(pre),
        stage_names=("stem", "stage1", "stage2", "stage3", "stage4"),
        description=f"Swin-{size[0].upper()} ({data}, {image_size}px, window {window})",
        extra_aliases=extra,
    )


# --- ConvNeXt: facebook/convnext-* (converted from the original repository; every hub config
# keeps ConvNextConfig's defaults but for depths / hidden_sizes; preprocessing as ResNet's, with
# size 384 for the 384 checkpoints, which ConvNextFeatureExtractor resizes without a crop) -------
_CONVNEXT_SIZES = {
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768], "T"),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768], "S"),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024], "B"),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536], "L"),
    "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048], "XL"),
}
_CONVNEXT_DATA = {"": "ImageNet-1k", "-22k": "ImageNet-22k", "-22k-1k": "ImageNet-22k, fine-tuned on ImageNet-1k"}


def _convnext(alias: str, size: str, resolution: int, data: str = "") -> Checkpoint:
    depths, widths, short = _CONVNEXT_SIZES[size]
    config = {
        "model_type": "convnext",
        "architectures": ["ConvNextForImageClassification"],
        "num_channels": 3,
        "patch_size": 4,
        "num_stages": 4,
        "hidden_sizes": widths,
        "depths": depths,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "layer_scale_init_value": 1e-6,
        "drop_path_rate": 0.0,
        "image_size": resolution,
    }
    name = f"convnext-{size}-{resolution}{data}"
    return Checkpoint(
        alias=alias,
        repo_id=f"facebook/{name}",
        config=_frozen(config),
        preprocessor=_frozen({**_RESNET_PRE, "size": resolution}),
        stage_names=("stem", "stage1", "stage2", "stage3", "stage4"),
        description=f"ConvNeXt-{short} ({_CONVNEXT_DATA[data]}, {resolution})",
        extra_aliases=(name,),
    )


# --- DINOv2: facebook/dinov2-* and facebook/dinov2-with-registers-* (BitImageProcessor) ----------
# Confirmed against transformers' convert_dinov2_to_hf.py / convert_dinov2_with_registers_to_hf.py
# (image_size 518, patch_size 14, the widths/depths/heads, SwiGLU for the giant, 4 registers, the
# processor: shortest edge 256, bicubic, ImageNet mean/std, BitImageProcessor's 224 center crop)
# and against copies of the published small configs; the rest are Dinov2Config defaults, which the
# hub files spell out.
_DINOV2_PRE = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "BitImageProcessor",
    "image_std": IMAGENET_STD,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}
#: size -> (hidden_size, num_hidden_layers, num_attention_heads, ViT name)
_DINOV2_SIZES = {
    "small": (384, 12, 6, "ViT-S/14"),
    "base": (768, 12, 12, "ViT-B/14"),
    "large": (1024, 24, 16, "ViT-L/14"),
    "giant": (1536, 40, 24, "ViT-g/14"),
}


def _dinov2(size: str, registers: bool) -> Checkpoint:
    hidden, layers, heads, vit = _DINOV2_SIZES[size]
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
    return Checkpoint(
        alias=f"dinov2-{size}-reg" if registers else f"dinov2-{size}",
        repo_id=f"facebook/dinov2-with-registers-{size}" if registers else f"facebook/dinov2-{size}",
        config=_frozen(config),
        preprocessor=_frozen(_DINOV2_PRE),
        stage_names=("stem", *(f"stage{i}" for i in range(1, layers + 1))),
        description=f"DINOv2 {vit}" + (" with 4 registers" if registers else "") + " (self-supervised, LVD-142M)",
        extra_aliases=(f"dinov2-with-registers-{size}",) if registers else (),
    )


CHECKPOINTS: tuple[Checkpoint, ...] = (
    _resnet(18, [2, 2, 2, 2], "basic"),
    _resnet(34, [3, 4, 6, 3], "basic"),
    _resnet(50, [3, 4, 6, 3], "bottleneck"),
    _resnet(101, [3, 4, 23, 3], "bottleneck"),
    _resnet(152, [3, 8, 36, 3], "bottleneck"),
    _swin("tiny", 224, extra=("swin-t",)),
    _swin("small", 224, extra=("swin-s",)),
    _swin("base", 224, extra=("swin-b",)),
    _swin("large", 224, extra=("swin-l",)),
    _swin("base", 384),
    _swin("large", 384),
    _swin("base", 224, in22k=True),
    _swin("base", 384, in22k=True),
    _swin("large", 224, in22k=True),
    _swin("large", 384, in22k=True),
    _convnext("convnext-tiny", "tiny", 224),
    _convnext("convnext-small", "small", 224),
    _convnext("convnext-base", "base", 224),
    _convnext("convnext-base-384", "base", 384),
    _convnext("convnext-large", "large", 224),
    _convnext("convnext-large-384", "large", 384),
    _convnext("convnext-base-22k", "base", 224, "-22k"),
    _convnext("convnext-large-22k", "large", 224, "-22k"),
    _convnext("convnext-xlarge-22k", "xlarge", 224, "-22k"),
    _convnext("convnext-base-22k-1k", "base", 224, "-22k-1k"),
    _convnext("convnext-base-384-22k-1k", "base", 384, "-22k-1k"),
    _convnext("convnext-large-22k-1k", "large", 224, "-22k-1k"),
    _convnext("convnext-large-384-22k-1k", "large", 384, "-22k-1k"),
    _convnext("convnext-xlarge-22k-1k", "xlarge", 224, "-22k-1k"),
    _convnext("convnext-xlarge-384-22k-1k", "xlarge", 384, "-22k-1k"),
    *(_dinov2(size, registers=False) for size in _DINOV2_SIZES),
    *(_dinov2(size, registers=True) for size in _DINOV2_SIZES),
)


def _alias_table(rows: tuple[Checkpoint, ...]) -> Mapping[str, Checkpoint]:
    table: dict[str, Checkpoint] = {}
    for row in rows:
        for name in (row.alias, *row.extra_aliases, row.repo_id):
            key = name.lower()
            if key in table and table[key] is not row:
                raise RuntimeError(f"registry: {name!r} names two checkpoints")
            table[key] = row
    return MappingProxyType(table)


ALIASES: Mapping[str, Checkpoint] = _alias_table(CHECKPOINTS)


def lookup(name: str) -> Checkpoint | None:
    """The row an alias (or an aliased hub repo id) names, case-insensitively; None if unknown."""
    return ALIASES.get(name.lower())


def default_preprocessor(model_type: str | None) -> dict[str, Any] | None:
    """The preprocessing of the first public checkpoint of ``model_type``: what a checkpoint
    folder without ``preprocessor_config.json`` gets."""
    for row in CHECKPOINTS:
        if row.model_type == model_type:
            return row.preprocessor_dict()
    return None


def suggestions(name: str, n: int = 3) -> list[str]:
    """The closest aliases to a name that is not one."""
    names = [row.alias for row in CHECKPOINTS]
    lowered = {a.lower(): a for a in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not close:
        close = [a for a in lowered if name.lower() in a or a in name.lower()][:n]
    return [lowered[c] for c in close]
