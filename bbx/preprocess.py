"""What a checkpoint's ``preprocessor_config.json`` asks for, as one frozen value.

Three processor families cover the supported checkpoints, each reproduced as transformers'
image processors do it:

* ``vit``: resize to a fixed height x width (Swin; ``ViTImageProcessor`` / ``ViTFeatureExtractor``).
* ``convnext``: for a target below 384, resize the shortest edge to ``int(size / crop_pct)`` then
  center-crop ``size`` x ``size``; at 384 and above, resize straight to ``size`` x ``size``
  (ResNet, ConvNeXt; ``ConvNextImageProcessor`` / ``ConvNextFeatureExtractor``).
* ``bit``: resize the shortest edge to ``size``, then center-crop ``crop_size`` (DINOv2;
  ``BitImageProcessor``).

Then rescale (``* rescale_factor``) and normalise (``(x - mean) / std``). Resizing and cropping
happen on 8-bit pixels (as transformers' PIL path does), so bbx ships uint8 to the device and
normalises there. This module is the torch-free description; :mod:`bbx.images` does the pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bbx.errors import ModelError

KINDS = ("vit", "convnext", "bit")

#: processor class name (without FeatureExtractor/ImageProcessor[Fast|Pil] suffix) -> kind
_CLASS_KIND = {"ViT": "vit", "DeiT": "vit", "ConvNext": "convnext", "Bit": "bit"}
#: model_type -> kind used when the file names no class (transformers' AutoImageProcessor table)
_MODEL_KIND = {
    "resnet": "convnext",
    "convnext": "convnext",
    "swin": "vit",
    "dinov2": "bit",
    "dinov2_with_registers": "bit",
}

_STANDARD = [0.5, 0.5, 0.5]
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Class defaults where a file leaves a field out (transformers' processor class attributes).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {"resample": 2, "mean": _STANDARD, "std": _STANDARD, "size": {"height": 224, "width": 224}},
    "convnext": {"resample": 3, "mean": _STANDARD, "std": _STANDARD, "size": {"shortest_edge": 384}},
    "bit": {
        "resample": 3,
        "mean": _CLIP_MEAN,
        "std": _CLIP_STD,
        "size": {"shortest_edge": 224},
        "crop_size": {"height": 224, "width": 224},
    },
}

RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _class_kind(name: str | None) -> str | None:
    if not name:
        return None
    for suffix in ("FeatureExtractor", "ImageProcessorFast", "ImageProcessorPil", "ImageProcessor"):
        if name.endswith(suffix):
            return _CLASS_KIND.get(name[: -len(suffix)])
    return None


def _size_dict(value: Any, *, square: bool, what: str) -> dict[str, int]:
    """transformers' ``get_size_dict``: an int is a square (``square``) or a shortest edge."""
    if isinstance(value, bool):
        raise ModelError(f"preprocessor_config.json: {what} must be a size, got {value!r}")
    if isinstance(value, int):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, Mapping):
        d = {k: int(v) for k, v in value.items() if v is not None}
        if {"height", "width"} <= d.keys() or "shortest_edge" in d:
            return d
    raise ModelError(f"preprocessor_config.json: unsupported {what} {value!r}")


@dataclass(frozen=True)
class Preprocess:
    """A checkpoint's preprocessing, normalised."""

    kind: str
    processor: str  # the class the file names (or that transformers would pick), for the record
    do_resize: bool
    size: Mapping[str, int]  # {"height", "width"} or {"shortest_edge"}
    resample: int  # PIL filter number
    crop_pct: float | None  # convnext only
    do_center_crop: bool
    crop_size: tuple[int, int] | None  # (height, width)
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, pre: Mapping[str, Any] | None, model_type: str) -> Preprocess:
        pre = dict(pre or {})
        named = pre.get("image_processor_type") or pre.get("feature_extractor_type")
        kind = _class_kind(named) or _MODEL_KIND.get(model_type)
        if kind is None:
            raise ModelError(
                f"preprocessor_config.json names an unsupported processor {named!r}; "
                f"bbx reproduces ViT, ConvNext and Bit image processors"
            )
        defaults = _DEFAULTS[kind]
        size = _size_dict(pre.get("size", defaults["size"]), square=(kind == "vit"), what="size")
        if kind == "vit" and not {"height", "width"} <= size.keys():
            raise ModelError(f"preprocessor_config.json: a ViT processor needs height and width, got {size}")
        if kind in ("convnext", "bit") and "shortest_edge" not in size:
            raise ModelError(f"preprocessor_config.json: a {named or kind} processor needs shortest_edge, got {size}")
        do_center_crop = bool(pre.get("do_center_crop", kind == "bit"))
        crop = None
        if do_center_crop:
            c = _size_dict(pre.get("crop_size", defaults.get("crop_size", 224)), square=True, what="crop_size")
            if not {"height", "width"} <= c.keys():
                raise ModelError(f"preprocessor_config.json: crop_size needs height and width, got {c}")
            crop = (c["height"], c["width"])
        mean = pre.get("image_mean", defaults["mean"])
        std = pre.get("image_std", defaults["std"])
        mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
        std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3:
            raise ModelError("preprocessor_config.json: image_mean and image_std need 3 values (RGB)")
        resample = int(pre.get("resample", defaults["resample"]))
        if resample not in RESAMPLE_NAMES:
            raise ModelError(f"preprocessor_config.json: unknown resample filter {resample}")
        return cls(
            kind=kind,
            processor=named or f"{kind} (from model_type {model_type})",
            do_resize=bool(pre.get("do_resize", True)),
            size=dict(size),
            resample=resample,
            crop_pct=float(pre.get("crop_pct", 224 / 256)) if kind == "convnext" else None,
            do_center_crop=do_center_crop,
            crop_size=crop,
            do_rescale=bool(pre.get("do_rescale", True)),
            rescale_factor=float(pre.get("rescale_factor", 1 / 255)),
            do_normalize=bool(pre.get("do_normalize", True)),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every preprocessed image, or None when it depends on the image."""
        if self.do_center_crop and self.crop_size is not None:
            return self.crop_size
        if not self.do_resize:
            return None
        if self.kind == "convnext":
            s = self.size["shortest_edge"]
            return (s, s)
        if "height" in self.size:
            return (self.size["height"], self.size["width"])
        return None

    def with_image_size(self, n: int) -> Preprocess:
        """The same recipe producing ``n`` x ``n`` images (``--image-size``).

        vit: resize to n x n. convnext: target n with the same ``crop_pct`` rule. bit: crop n x n
        after resizing the shortest edge in the checkpoint's resize/crop ratio (256/224 for DINOv2:
        448 -> resize 512, crop 448).
        """
        if n < 1:
            raise ValueError("image size must be positive")
        if self.kind == "vit":
            return replace(self, do_resize=True, size={"height": n, "width": n})
        if self.kind == "convnext":
            return replace(self, do_resize=True, size={"shortest_edge": n})
        edge = self.size["shortest_edge"]
        crop_h = self.crop_size[0] if self.crop_size else edge
        return replace(
            self,
            do_resize=True,
            size={"shortest_edge": max(n, int(round(n * edge / crop_h)))},
            do_center_crop=True,
            crop_size=(n, n),
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the recipe (stored in outputs)."""
        return {
            "kind": self.kind,
            "processor": self.processor,
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": RESAMPLE_NAMES[self.resample],
            "crop_pct": self.crop_pct,
            "do_center_crop": self.do_center_crop,
            "crop_size": list(self.crop_size) if self.crop_size else None,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }
