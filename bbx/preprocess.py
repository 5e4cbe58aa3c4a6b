"""What a checkpoint's ``preprocessor_config.json`` asks for, as one frozen value.

bbx reproduces nine of transformers' image processors, read the way transformers 5 reads the file:
the class named by ``image_processor_type`` (else ``feature_extractor_type``, whose legacy
``...FeatureExtractor`` spelling means the same processor; ``Fast``/``Pil`` suffixes name the same
recipe), else the one transformers picks for the checkpoint's ``model_type``. A field the file
leaves out takes that class's default. A field set to ``null`` means what it means to transformers
5: a switch (``do_resize``, ``do_center_crop``, ``default_to_square``, ...) is off; a null size,
crop size, resample, mean, std, rescale factor or ``crop_pct`` (which transformers refuses or
cannot use) takes the class default.

* kind ``resize`` (``ViTImageProcessor``, ``DeiTImageProcessor``, ``BitImageProcessor``,
  ``CLIPImageProcessor``, ``SiglipImageProcessor``, ``PvtImageProcessor``, ``BeitImageProcessor``,
  whose ``do_reduce_labels`` only concerns segmentation maps) is the plain recipe: resize to
  ``size``, then (``do_center_crop``) center-crop ``crop_size``. ``size`` is ``{height, width}``
  (a fixed size), ``{shortest_edge}`` (keep the aspect ratio; the long edge is
  ``int(edge * long / short)``) or ``{shortest_edge, longest_edge}``.
* kind ``crop_pct`` (``ConvNextImageProcessor``): below 384, resize the shortest edge
  to ``int(edge / crop_pct)`` and center-crop ``edge`` x ``edge``; at 384 and above, resize
  straight to ``edge`` x ``edge``. Then the optional ``do_center_crop`` as above.

A legacy int ``size`` is a square for ViT/DeiT/Pvt and a shortest edge for ConvNext/Bit/CLIP/Siglip
(the classes' ``default_to_square``, which the file may override); an int ``crop_size`` is always a square. A
center crop larger than the image pads it with black, the extra row/column going after the image.

* kind ``timm`` (timm checkpoints: :func:`bbx.checkpoints.timm_data_config`'s
  ``timm_data_config``): timm's eval transform, ``resolve_data_config`` + ``create_transform``
  on a PIL image. With ``scale = floor(input_size / crop_pct)`` per side: ``center`` resizes the
  shorter side to ``scale`` (torchvision's ``Resize(int)``: long side ``int(scale * long / short)``;
  for a non-square input size, ``ResizeKeepRatio``: both sides ``round(side / ratio)`` by the
  smaller ratio), ``squash`` resizes to ``scale`` exactly, ``border`` scales the longer side to
  fit ``scale`` (both sides ``round(side / ratio)`` by the larger ratio); then a centre crop of
  ``input_size`` with torchvision's offsets (``round((H - h) / 2)``, half to even), padding an
  image smaller than the crop (black, or for ``border`` the mean colour ``round(255 * mean)``),
  ``(crop - side) // 2`` before it and the rest after.

Then rescale (``* rescale_factor``) and normalise (``(x - mean) / std``). Resizing and cropping
happen on 8-bit pixels, as in transformers' PIL backend, so bbx ships uint8 to the device and
normalises there.

* kind ``float_resize`` (``DINOv3ViTImageProcessor``, which transformers has in its torchvision
  backend only): rescale first, then resize the *float* image (torchvision's tensor resize:
  antialiased bilinear or bicubic, or nearest-exact), then the optional center crop (padding, where
  the crop is larger, puts the extra row/column after the image), then normalise. The resized
  values are not 8-bit, so these images reach the model as float32 rescaled pixels, built on the
  decoding threads, and are normalised on the device.

This module is the torch-free description; :mod:`bbx.images` does the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bbx.errors import ModelError
from bbx.family import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD

_STANDARD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class _ProcessorClass:
    """The class-level defaults of one transformers image processor."""

    kind: str
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: Mapping[str, int]
    default_to_square: bool
    do_center_crop: bool = False
    crop_size: Mapping[str, int] | None = None


#: processor class name without its FeatureExtractor / ImageProcessor[Fast|Pil] suffix -> defaults
_CLASSES: Mapping[str, _ProcessorClass] = {
    "ViT": _ProcessorClass("resize", 2, _STANDARD, _STANDARD, {"height": 224, "width": 224}, True),
    "DeiT": _ProcessorClass(
        "resize", 3, _STANDARD, _STANDARD, {"height": 256, "width": 256}, True, True, {"height": 224, "width": 224}
    ),
    "ConvNext": _ProcessorClass("crop_pct", 3, _STANDARD, _STANDARD, {"shortest_edge": 384}, False),
    "Bit": _ProcessorClass(
        "resize", 3, OPENAI_MEAN, OPENAI_STD, {"shortest_edge": 224}, False, True, {"height": 224, "width": 224}
    ),
    "CLIP": _ProcessorClass(
        "resize", 3, OPENAI_MEAN, OPENAI_STD, {"shortest_edge": 224}, False, True, {"height": 224, "width": 224}
    ),
    "Siglip": _ProcessorClass("resize", 3, _STANDARD, _STANDARD, {"height": 224, "width": 224}, False),
    # transformers 5's class defaults (bicubic; transformers 4's class said bilinear, which the hub's
    # files written by it spell out as resample 2)
    "Pvt": _ProcessorClass("resize", 3, IMAGENET_MEAN, IMAGENET_STD, {"height": 224, "width": 224}, True),
    "Beit": _ProcessorClass(
        "resize", 3, _STANDARD, _STANDARD, {"height": 224, "width": 224}, True, False, {"height": 224, "width": 224}
    ),
    # transformers' torchvision backend only: rescale, resize the float image, normalise
    "DINOv3ViT": _ProcessorClass("float_resize", 2, IMAGENET_MEAN, IMAGENET_STD, {"height": 224, "width": 224}, True),
}
#: the resample filters torchvision's tensor resize has (PIL number -> what it runs)
FLOAT_RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_DEFAULT_CROP_PCT = 224 / 256
_SUFFIXES = ("FeatureExtractor", "ImageProcessorFast", "ImageProcessorPil", "ImageProcessor")
#: the size dicts bbx can resize to (transformers accepts a few more, used by other processors)
_RESIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})

RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: timm's interpolation names (torchvision's InterpolationMode, which maps each onto this PIL filter)
_TIMM_INTERPOLATIONS = {name: number for number, name in RESAMPLE_NAMES.items()}
TIMM_CROP_MODES = ("center", "squash", "border")
#: the largest input side a timm config may ask for (its resize would be refused long before)
_TIMM_MAX_SIDE = 1 << 16


def _class_base(name: str) -> str | None:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in _CLASSES:
            return name[: -len(suffix)]
    return None


def _bad(message: str) -> ModelError:
    return ModelError(f"preprocessor_config.json: {message}")


def _size_dict(value: Any, *, square: bool, what: str) -> dict[str, int]:
    """A size as transformers' ``get_size_dict`` reads it: an int is a square (``square``) or a
    shortest edge, a pair is (height, width), a dict is taken as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple, Mapping)):
        raise _bad(f"{what} must be a size, got {value!r}")
    if isinstance(value, int):
        d = {"height": value, "width": value} if square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _bad(f"{what} must be [height, width], got {value!r}")
        d = {"height": value[0], "width": value[1]}
    else:
        d = {str(k): v for k, v in value.items() if v is not None}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _bad(f"{what} {k} must be a positive number of pixels, got {v!r}")
    return d


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) else value
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise _bad(f"{what} needs one finite number or 3 (RGB), got {value!r}")
    return out[0], out[1], out[2]


def _nonzero(values: tuple[float, float, float], what: str) -> tuple[float, float, float]:
    """A divisor: every value finite and not 0 (a 0 std would give infinities, not pixels)."""
    if not all(math.isfinite(v) and v != 0 for v in values):
        raise _bad(f"{what} must be finite and non-zero, got {list(values)}")
    return values


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{what} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Preprocess:
    """A checkpoint's preprocessing, normalised."""

    kind: str  # "resize" (resize, then an optional crop) | "crop_pct" (ConvNext) | "float_resize" (DINOv3ViT)
    processor: str  # the class the file names (or that transformers would pick), for the record
    do_resize: bool
    size: Mapping[str, int]  # {"height", "width"}, {"shortest_edge"} or {"shortest_edge", "longest_edge"}
    resample: int  # PIL filter number
    crop_pct: float | None  # convnext only
    do_center_crop: bool
    crop_size: tuple[int, int] | None  # (height, width)
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: how the image becomes the model's input: "crop" (the checkpoint's own recipe, above), or a
    #: mode that keeps the whole image at ``target`` = (height, width): "squash" (resized to it,
    #: aspect ignored) or "pad" (resized to fit inside it, aspect kept, the rest black)
    resize_mode: str = "crop"
    target: tuple[int, int] | None = None
    crop_mode: str | None = None  # timm only: "center" | "squash" | "border"
    #: why the checkpoint's own processing gives every image its own size ("" when it does not):
    #: then a run needs an explicit size (``--image-size``), which :meth:`with_image_size` gives
    size_required: str = ""
    #: the multiple of which both sides must be (a task processor's ``ensure_multiple_of`` or
    #: padding divisor, a patch backbone's patch size inside a task model), 1 for any size
    multiple_of: int = 1

    @classmethod
    def from_checkpoint(cls, ck: Any) -> Preprocess:
        """The recipe of a :class:`bbx.checkpoints.Checkpoint` (a task checkpoint's, translated from
        its task processor by the format seam, or read from its ``preprocessor_config.json``)."""
        if getattr(ck, "recipe", None) is not None:
            return ck.recipe
        return cls.from_config(ck.preprocessor, ck.model_type, default=ck.family.processor)

    @classmethod
    def resize_to(
        cls,
        processor: str,
        size: tuple[int, int] | None,
        *,
        resample: int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        size_required: str = "",
        multiple_of: int = 1,
    ) -> Preprocess:
        """The plain recipe a task processor comes down to for a backbone: resize straight to
        ``size`` (height, width) with ``resample``, no crop, then rescale and normalise. ``size``
        None (with ``size_required`` saying why): the processor's output size depends on the image,
        and a run must give one (:meth:`with_image_size`)."""
        if size is None and not size_required:
            raise ValueError("a recipe without a size must say why (size_required)")
        if isinstance(resample, bool) or resample not in RESAMPLE_NAMES:
            raise _bad(f"unknown resample filter {resample!r}")
        h, w = size or (0, 0)
        return cls(
            kind="resize",
            processor=processor,
            do_resize=True,
            size={"height": h, "width": w},
            resample=resample,
            crop_pct=None,
            do_center_crop=False,
            crop_size=None,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            mean=mean,
            std=std,
            size_required="" if size is not None else size_required,
            multiple_of=multiple_of,
        )

    @classmethod
    def from_config(cls, pre: Mapping[str, Any] | None, model_type: str, *, default: str | None = None) -> Preprocess:
        """The recipe of a ``preprocessor_config.json`` (None: an empty one). ``default`` is the
        processor class (``"ViT"``, ``"ConvNext"``, ...) transformers picks for the checkpoint when the
        file names none; by default the one the family of ``model_type`` declares."""
        pre = dict(pre or {})
        if "timm_data_config" in pre:
            return cls._from_timm(pre["timm_data_config"])

        def get(key: str, default: Any) -> Any:
            value = pre.get(key)
            return default if value is None else value

        def flag(key: str, default: bool) -> bool:
            # transformers 5 keeps an explicit null: a switch set to null is off
            return bool(pre[key]) if key in pre else default

        named = pre.get("image_processor_type") or pre.get("feature_extractor_type")
        if named:
            base = _class_base(str(named))
            if base is None:
                raise _bad(f"names the processor {named!r}; bbx reproduces the {', '.join(_CLASSES)} image processors")
        else:
            base = default if default is not None else _family_processor(model_type)
            if base not in _CLASSES:
                raise _bad(f"names no image processor and model_type {model_type!r} has no default one")
        defaults = _CLASSES[base]
        kind = defaults.kind

        square = flag("default_to_square", defaults.default_to_square)
        size = _size_dict(get("size", defaults.size), square=square, what="size")
        do_resize = flag("do_resize", True)
        if kind == "crop_pct" and do_resize and "shortest_edge" not in size:
            raise _bad(f"a ConvNext processor resizes a shortest_edge, got size {size}")
        if set(size) not in _RESIZE_KEYS:
            raise _bad(f"unsupported size {size}; bbx resizes to height+width or a shortest_edge")

        do_center_crop = flag("do_center_crop", defaults.do_center_crop)
        crop = None
        if do_center_crop:
            raw = get("crop_size", defaults.crop_size)
            if raw is None:
                raise _bad("do_center_crop is set but crop_size is missing")
            c = _size_dict(raw, square=True, what="crop_size")
            if set(c) != {"height", "width"}:
                raise _bad(f"crop_size needs height and width, got {c}")
            crop = (c["height"], c["width"])

        if flag("do_pad", False):
            raise _bad("do_pad is not supported by bbx")
        resample = get("resample", defaults.resample)
        if isinstance(resample, bool) or not isinstance(resample, int) or resample not in RESAMPLE_NAMES:
            raise _bad(f"unknown resample filter {resample!r}")
        if kind == "float_resize" and not flag("do_rescale", True):
            # the processor would resize and normalise uint8 tensors, which torchvision refuses
            raise _bad(f"{base}ImageProcessor needs do_rescale (it resizes the rescaled float image)")
        if kind == "float_resize" and do_resize and resample not in FLOAT_RESAMPLE:
            raise _bad(
                f"resample {RESAMPLE_NAMES[resample]} has no float-image resize in {base}ImageProcessor's torchvision "
                "backend that bbx reproduces (nearest, bilinear or bicubic)"
            )
        crop_pct = None
        if kind == "crop_pct":
            crop_pct = _number(get("crop_pct", _DEFAULT_CROP_PCT), "crop_pct")
            if not crop_pct > 0:
                raise _bad(f"crop_pct must be positive, got {crop_pct}")
        return cls(
            kind=kind,
            processor=str(named) if named else f"{base}ImageProcessor (from model_type {model_type})",
            do_resize=do_resize,
            size=size,
            resample=resample,
            crop_pct=crop_pct,
            do_center_crop=do_center_crop,
            crop_size=crop,
            do_rescale=flag("do_rescale", True),
            rescale_factor=_number(get("rescale_factor", 1 / 255), "rescale_factor"),
            do_normalize=flag("do_normalize", True),
            mean=_triple(get("image_mean", defaults.mean), "image_mean"),
            std=_nonzero(_triple(get("image_std", defaults.std), "image_std"), "image_std"),
        )

    @property
    def float_pixels(self) -> bool:
        """Whether preprocessed images are float32 rescaled pixels (kind ``float_resize``) rather
        than uint8 ones; either way :func:`bbx.images.normalize` finishes them on the device."""
        return self.kind == "float_resize"

    @classmethod
    def _from_timm(cls, data: Any) -> Preprocess:
        """timm's resolved data config (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise _bad(f"timm_data_config must be an object, got {data!r}")
        size = data.get("input_size")
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _TIMM_MAX_SIDE for v in size)
        ):
            raise ModelError(f"pretrained_cfg input_size must be [channels, height, width] in pixels, got {size!r}")
        if size[0] != 3:
            raise ModelError(f"pretrained_cfg input_size has {size[0]} channels; bbx feeds RGB images (3)")
        interpolation = data.get("interpolation")
        if interpolation not in _TIMM_INTERPOLATIONS:
            raise ModelError(
                f"pretrained_cfg interpolation must be one of {', '.join(_TIMM_INTERPOLATIONS)}, got {interpolation!r}"
            )
        crop_mode = data.get("crop_mode")
        if crop_mode not in TIMM_CROP_MODES:
            raise ModelError(f"pretrained_cfg crop_mode must be one of {', '.join(TIMM_CROP_MODES)}, got {crop_mode!r}")
        crop_pct = data.get("crop_pct")
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0.01 <= crop_pct <= 100:
            raise ModelError(f"pretrained_cfg crop_pct must be a number between 0.01 and 100, got {crop_pct!r}")
        try:
            mean, std = _triple(data.get("mean"), "mean"), _triple(data.get("std"), "std")
        except ModelError as e:
            raise ModelError(str(e).replace("preprocessor_config.json", "pretrained_cfg")) from None
        h, w = size[1], size[2]
        return cls(
            kind="timm",
            processor="timm eval transform",
            do_resize=True,
            size={"height": h, "width": w},
            resample=_TIMM_INTERPOLATIONS[interpolation],
            crop_pct=float(crop_pct),
            do_center_crop=True,
            crop_size=(h, w),
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            mean=mean,
            std=std,
            crop_mode=crop_mode,
        )

    def _timm_scale(self) -> tuple[int, int]:
        """timm's ``scale_size``: ``floor(side / crop_pct)`` of the input size."""
        assert self.crop_pct is not None
        return (math.floor(self.size["height"] / self.crop_pct), math.floor(self.size["width"] / self.crop_pct))

    def _timm_resize(self, height: int, width: int) -> tuple[int, int]:
        sh, sw = self._timm_scale()
        if self.crop_mode == "squash":
            return (sh, sw)
        if self.crop_mode == "center" and sh == sw:
            return _shortest_edge_size(height, width, sh)
        # ResizeKeepRatio: the larger ratio (border, longest=1) or the smaller (center, longest=0)
        rh, rw = height / sh, width / sw
        ratio = max(rh, rw) if self.crop_mode == "border" else min(rh, rw)
        return (round(height / ratio), round(width / ratio))

    @property
    def pad_fill(self) -> tuple[int, int, int]:
        """The colour a crop larger than the image pads with: black, or timm's ``border`` mode's
        mean colour."""
        if self.crop_mode == "border":
            return (round(255 * self.mean[0]), round(255 * self.mean[1]), round(255 * self.mean[2]))
        return (0, 0, 0)

    # -- sizes -----------------------------------------------------------------------------------

    def resize_size(self, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) the resize step produces for a ``height`` x ``width`` image (for
        convnext below 384, the size before its own crop), or None when nothing is resized."""
        if self.resize_mode == "squash" and self.target is not None:
            return self.target
        if self.resize_mode == "pad" and self.target is not None:
            return fit_inside(height, width, self.target)
        if not self.do_resize:
            return None
        s = self.size
        if self.kind == "timm":
            return self._timm_resize(height, width)
        if self.kind == "crop_pct":
            edge = self._crop_pct_edge()
            return _shortest_edge_size(height, width, edge) if self.inner_crop else (edge, edge)
        if "height" in s:
            return (s["height"], s["width"])
        if "longest_edge" in s:
            return _capped_size(height, width, s["shortest_edge"], s["longest_edge"])
        return _shortest_edge_size(height, width, s["shortest_edge"])

    @property
    def inner_crop(self) -> tuple[int, int] | None:
        """ConvNeXt's processor below 384: after resizing the short side to ``edge / crop_pct``,
        it crops the central ``edge`` x ``edge`` itself (whatever ``do_center_crop`` says); else None."""
        if (
            self.resize_mode == "crop"
            and self.do_resize
            and self.kind == "crop_pct"
            and self.size["shortest_edge"] < 384
        ):
            edge = self.size["shortest_edge"]
            return (edge, edge)
        return None

    def _crop_pct_edge(self) -> int:
        """The edge ConvNeXt's processor resizes to: ``shortest_edge / crop_pct`` below 384 (the
        short side), else ``shortest_edge`` (both sides)."""
        edge = self.size["shortest_edge"]
        return int(edge / (self.crop_pct or _DEFAULT_CROP_PCT)) if edge < 384 else edge

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every preprocessed image, or None when it depends on the image."""
        if self.resize_mode != "crop":
            return self.target
        if self.size_required:
            return None
        if self.do_center_crop and self.crop_size is not None:
            return self.crop_size
        if not self.do_resize:
            return None
        if self.kind == "crop_pct":
            s = self.size["shortest_edge"]
            return (s, s)
        if "height" in self.size:
            return (self.size["height"], self.size["width"])
        return None

    def min_decode_size(self) -> tuple[int, int] | None:
        """(width, height) a decoded image must at least have so that reduced-size decoding
        (``--fast-decode``) still feeds the resize at least as many pixels as it produces, in the
        image's displayed orientation; None when nothing is resized (the image size then matters)."""
        if self.resize_mode != "crop" and self.target is not None:
            return (self.target[1], self.target[0])  # at least the target on both sides
        if not self.do_resize:
            return None
        if self.kind == "timm":
            edge = max(self._timm_scale())
            return (edge, edge)
        if self.kind == "crop_pct":
            edge = self._crop_pct_edge()
            return (edge, edge)
        if "height" in self.size:
            return (self.size["width"], self.size["height"])
        # A shortest edge e: a draft at least e x e keeps the short side >= e, and the long side
        # then is >= the resize's int(e * long / short) too. A longest_edge cap only lowers it.
        e = self.size["shortest_edge"]
        return (e, e)

    def with_image_size(self, size: int | tuple[int, int]) -> Preprocess:
        """The same recipe producing ``size`` images (``--image-size N`` or ``HxW``).

        convnext, square: target ``n`` with the same ``crop_pct`` rule (so warping from 384 up).
        With a center crop: crop ``H`` x ``W`` after a resize scaled in the checkpoint's resize/crop
        ratio (DINOv2's 256/224: 448 -> resize 512, crop 448; 448x672 -> shortest edge 768, crop
        448x672). Without one: resize to ``H`` x ``W`` (or a shortest edge ``n``, whose output size
        then follows the image). ConvNeXt's recipe at a non-square size is that of the center-crop
        recipes (short side to ``max(H, W) / crop_pct``, then the crop; a warp from 384 up):
        transformers' ConvNext processor has no non-square sizes.
        """
        h, w = (size, size) if isinstance(size, int) else size
        if h < 1 or w < 1:
            raise ValueError("image size must be positive")
        if self.resize_mode != "crop":
            return replace(self, target=(h, w), size_required="")
        if self.size_required:  # a task processor's varying size: resize straight to h x w
            return self.with_height_width(h, w)
        if self.kind == "timm":  # timm's input_size override: (3, h, w), crop_pct and mode kept
            return replace(self, size={"height": h, "width": w}, crop_size=(h, w))
        if self.kind == "crop_pct":
            if h == w:
                crop = (h, h) if self.do_center_crop else None
                return replace(self, do_resize=True, size={"shortest_edge": h}, crop_size=crop)
            if max(h, w) >= 384:
                return replace(self, kind="resize", do_resize=True, size={"height": h, "width": w}, crop_pct=None)
            edge = int(max(h, w) / (self.crop_pct or _DEFAULT_CROP_PCT))
            return replace(
                self, kind="resize", size={"shortest_edge": edge}, crop_pct=None, do_center_crop=True, crop_size=(h, w)
            )
        if not self.do_center_crop or self.crop_size is None:
            if "height" in self.size or not self.do_resize:
                return replace(self, do_resize=True, size={"height": h, "width": w})
            if h != w:
                raise ValueError(
                    "this recipe resizes the shortest edge without a crop, so it has no HxW size: "
                    "use --resize squash or pad for one"
                )
            return replace(self, size=_scaled(self.size, h / self.size["shortest_edge"], h))
        ch, cw = self.crop_size
        s = self.size
        if "height" in s:
            size_ = {"height": max(h, round(h * s["height"] / ch)), "width": max(w, round(w * s["width"] / cw))}
        else:
            edge = max(h, w, round(max(h, w) * s["shortest_edge"] / min(ch, cw)))
            size_ = _scaled(s, edge / s["shortest_edge"], edge)
        return replace(self, size=size_, crop_size=(h, w))

    def with_resize(self, mode: str) -> Preprocess:
        """The recipe with ``--resize``: ``crop`` (the checkpoint's own), ``squash`` or ``pad``
        (keep the whole image), at the recipe's own output size until :meth:`with_image_size`."""
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        if mode == "crop":
            return self
        return replace(self, resize_mode=mode, target=self.output_size or self.target)

    def geometry(self, height: int, width: int) -> tuple[float, float, float, float]:
        """Where the model's input lies on a ``height`` x ``width`` image (as decoded, upright):
        (top, left, bottom, right) in the image's pixels, the box the input covers once the
        resize is undone. A crop gives a box inside the image; a pad (or a crop larger than the
        resized image) one that reaches past it; a squash the whole image."""
        resized = self.resize_size(height, width) or (height, width)
        rh, rw = resized
        top = left = 0.0
        box_h, box_w = float(rh), float(rw)
        if self.resize_mode == "pad" and self.target is not None:
            th, tw = self.target
            top, left = float(-((th - rh) // 2)), float(-((tw - rw) // 2))
            box_h, box_w = float(th), float(tw)
        crops = [c for c in (self.inner_crop, self.crop_size if self.do_center_crop else None) if c]
        if self.resize_mode != "crop":
            crops = []
        for ch, cw in crops:
            dy = (box_h - ch) // 2 if ch <= box_h else -((ch - box_h + 1) // 2)
            dx = (box_w - cw) // 2 if cw <= box_w else -((cw - box_w + 1) // 2)
            top, left, box_h, box_w = top + dy, left + dx, float(ch), float(cw)
        sy, sx = height / rh, width / rw
        return (top * sy, left * sx, (top + box_h) * sy, (left + box_w) * sx)

    @property
    def resizes_to_fixed_size(self) -> bool:
        """Whether the recipe resizes every image straight to one size, with no crop (then any
        height x width can replace it: :meth:`with_height_width`)."""
        return self.kind == "resize" and self.do_resize and not self.do_center_crop and "height" in self.size

    def with_height_width(self, height: int, width: int) -> Preprocess:
        """The same recipe resizing every image straight to ``height`` x ``width`` (no crop):
        for recipes that resize to a fixed size or whose own size varies per image."""
        if height < 1 or width < 1:
            raise ValueError("image size must be positive")
        if not (self.size_required or self.resizes_to_fixed_size):
            raise ValueError("a height x width size needs a recipe that resizes to a fixed size, without a crop")
        return replace(self, do_resize=True, size={"height": height, "width": width}, size_required="")

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the recipe (stored in outputs)."""
        out: dict[str, Any] = {"crop_mode": self.crop_mode} if self.kind == "timm" else {}
        out |= {
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
            **(
                {"resize_mode": self.resize_mode, "target": list(self.target or ())}
                if self.resize_mode != "crop"
                else {}
            ),
        }
        if self.size_required:  # only when set: outputs written before these existed resume unchanged
            out["size_required"] = self.size_required
        if self.multiple_of > 1:
            out["multiple_of"] = self.multiple_of
        return out

    def explain(self) -> str:
        """The recipe in words (``bbx inspect``)."""
        filt = RESAMPLE_NAMES[self.resample]
        if self.resize_mode == "squash" and self.target:
            return f"resize to {self.target[0]}x{self.target[1]} ({filt}, the aspect ratio not kept)"
        if self.resize_mode == "pad" and self.target:
            return f"resize to fit inside {self.target[0]}x{self.target[1]} ({filt}), padded with black"
        steps = []
        if self.do_resize:
            s = self.size
            if self.kind == "crop_pct":
                edge = self._crop_pct_edge()
                steps.append(f"resize the shortest edge to {edge}" if self.inner_crop else f"resize to {edge}x{edge}")
            elif "height" in s:
                steps.append(f"resize to {s['height']}x{s['width']}")
            else:
                cap = f" (longest at most {s['longest_edge']})" if "longest_edge" in s else ""
                steps.append(f"resize the shortest edge to {s['shortest_edge']}{cap}")
            steps[-1] += f" ({filt})"
        for crop in (self.inner_crop, self.crop_size if self.do_center_crop else None):
            if crop:
                steps.append(f"center crop {crop[0]}x{crop[1]}")
        return ", then ".join(steps) if steps else "no resize"


RESIZE_MODES = ("crop", "squash", "pad")


def fit_inside(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The size of a ``height`` x ``width`` image scaled to fit inside ``target`` (height, width)
    with its aspect ratio: one side equals the target's, the other is rounded, at least 1."""
    th, tw = target
    scale = min(th / height, tw / width)
    return (min(th, max(1, round(height * scale))), min(tw, max(1, round(width * scale))))


def _family_processor(model_type: str) -> str | None:
    from bbx import registry

    return registry.family_of(model_type).processor if registry.is_supported(model_type) else None


def _scaled(size: Mapping[str, int], factor: float, edge: int) -> dict[str, int]:
    """A shortest-edge size with its edge set to ``edge`` and any longest_edge scaled alike."""
    out = {"shortest_edge": edge}
    if "longest_edge" in size:
        out["longest_edge"] = max(edge + 1, round(size["longest_edge"] * factor))
    return out


def _shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """Short side ``edge``, long side ``int(edge * long / short)`` (truncated, as transformers)."""
    if width <= height:
        return (int(edge * height / width), edge)
    return (edge, int(edge * width / height))


def _capped_size(height: int, width: int, edge: int, longest: int) -> tuple[int, int]:
    """Short side ``edge`` unless the long side would pass ``longest``; then the long side is
    ``longest`` (transformers' ``{shortest_edge, longest_edge}`` rule)."""
    short, long = min(height, width), max(height, width)
    exact = None
    if long / short * edge > longest:
        exact = longest * short / long
        edge = int(round(exact))
    if short == edge:
        return (height, width)
    other = int((exact if exact is not None else edge) * long / short)
    return (other, edge) if width < height else (edge, other)
