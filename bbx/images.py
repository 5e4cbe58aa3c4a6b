"""Image files -> 8-bit RGB -> the uint8 pixels a checkpoint's processor would resize and crop.

Decoding (:func:`decode`) is Pillow's, restricted to the formats bbx lists (:data:`FORMATS`; never a
plugin that runs an external program, such as EPS):

* The first frame of an animated GIF, WebP or PNG, and the first page of a TIFF.
* The EXIF (or XMP) orientation is applied unless ``exif=False``.
* Every pixel mode becomes RGB the way transformers' ``convert_to_rgb`` does it: an image with an
  alpha band or a ``transparency`` entry (palette index, grey level or RGB colour) is composited
  onto white; the other 8-bit modes (1, L, P, CMYK, YCbCr, ...) go through Pillow's ``convert``.
* High-bit-depth and float images are rescaled to 8 bits, never clamped: ``I;16*`` maps
  0..65535 onto 0..255 (``round(v / 257)``); ``I`` (32-bit) does the same when all its values lie
  in 0..65535, and otherwise stretches its min..max onto 0..255; ``F`` maps 0..1 onto 0..255 when
  all its finite values lie in [0, 1], and otherwise stretches the min..max of its finite values
  (NaN -> 0, +inf -> 255, -inf -> 0). Rounding is half up.
* A file that cannot be read, is empty, is not an image in those formats, is truncated or corrupt,
  or has more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` raises :class:`ImageError` with a
  one-line reason; the pixels are fully decoded inside :func:`decode`, so nothing fails later.

:func:`prepare` then resizes and crops as transformers' PIL-backend processors do (same Pillow
resize, same sizes, same crop offsets), or for timm checkpoints as timm's eval transform does
(torchvision's resize and crop on the PIL image), giving the very same uint8 pixels, and :func:`normalize`
rescales and normalises a uint8 batch on its own device with the processor's float32 arithmetic.
For a ``float_resize`` recipe (DINOv3's torchvision-backend processor) :func:`prepare` rescales the
uint8 pixels to float32 and resizes and crops those, with torchvision's tensor arithmetic (torch's
own ``interpolate``, which torchvision calls), and :func:`normalize` normalises the float batch.

Everything here is safe to call from several threads at once.
"""

from __future__ import annotations

import functools
import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from bbx.preprocess import Preprocess

if TYPE_CHECKING:
    import torch

#: the Pillow formats bbx opens (by content, whatever the file's extension says)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"

# EXIF orientation -> the Pillow transpose that shows the image upright (1: as stored)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# the inverse turns: an upright image -> as stored
_STORED = {o: t for o, t in _UPRIGHT.items() if o not in (6, 8)} | {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
_ORIENTATION_TAG = 0x0112
# (format, offset, signature): to name what a file is when Pillow will not open it
_SIGNATURES = (
    ("JPEG", 0, b"\xff\xd8\xff"),
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"),
    ("GIF", 0, b"GIF8"),
    ("WEBP", 8, b"WEBP"),
    ("BMP", 0, b"BM"),
    ("TIFF", 0, b"II*\x00"),
    ("TIFF", 0, b"MM\x00*"),
    ("EPS", 0, b"%!PS"),
    ("EPS", 0, b"\xc5\xd0\xd3\xc6"),
    ("PDF", 0, b"%PDF"),
    ("PSD", 0, b"8BPS"),
    ("ICO", 0, b"\x00\x00\x01\x00"),
    ("HEIF", 4, b"ftypheic"),
    ("HEIF", 4, b"ftypmif1"),
    ("AVIF", 4, b"ftypavif"),
    ("JPEG 2000", 0, b"\x00\x00\x00\x0cjP  "),
    ("JPEG 2000", 0, b"\xff\x4f\xff\x51"),
    ("JPEG XL", 0, b"\xff\x0a"),
    ("JPEG XL", 0, b"\x00\x00\x00\x0cJXL "),
    ("OpenEXR", 0, b"\x76\x2f\x31\x01"),
    ("QOI", 0, b"qoif"),
    ("DDS", 0, b"DDS "),
    ("SVG", 0, b"<svg"),
)


#: what :func:`decode` reads: a file's path, or an image file's bytes (a webdataset member), or a
#: binary file object positioned at its start
Source = Union[str, Path, bytes, bytearray, memoryview, IO[bytes]]


class ImageError(Exception):
    """One file bbx cannot use: it is skipped and reported with :attr:`reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(self.reason)


# -- decoding -------------------------------------------------------------------------------------

_plugins_lock = threading.Lock()
_plugins_ready = False


def _ensure_plugins() -> None:
    """Register Pillow's plugins once, before threads race to do it inside ``Image.open``."""
    global _plugins_ready
    if not _plugins_ready:
        with _plugins_lock:
            if not _plugins_ready:
                Image.init()
                _plugins_ready = True


def decode(path: Source, *, exif: bool = True, draft: tuple[int, int] | None = None) -> Image.Image:
    """See :func:`decode_sized`; the image alone."""
    return decode_sized(path, exif=exif, draft=draft)[0]


def decode_sized(
    path: Source, *, exif: bool = True, draft: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """The first frame of an image file as an 8-bit RGB image (see the module docstring).
    ``path`` may also be the file's bytes or a binary file object (read from its position).

    ``draft`` = (width, height), in the displayed orientation: let a JPEG decoder skip detail,
    decoding at 1/2, 1/4 or 1/8 scale while staying at least that large. It changes pixels; other
    formats ignore it. Raises :class:`ImageError` for any file it cannot decode.
    """
    _ensure_plugins()
    if isinstance(path, (bytes, bytearray, memoryview)):
        path = io.BytesIO(path)
    elif isinstance(path, str):
        path = Path(path)
    try:
        im = Image.open(path, formats=FORMATS)
    except Exception as e:
        raise ImageError(_open_failure(path, e)) from e
    with im:
        kind = im.format or "image"
        try:
            _check_pixels(im)
            stored = _orientation(im)
            full = (im.height, im.width)  # as stored; turned with the image below
            if exif and stored in (5, 6, 7, 8):
                full = (full[1], full[0])
            if draft is not None:
                w, h = (draft[1], draft[0]) if exif and stored in (5, 6, 7, 8) else draft
                im.draft(None, (max(1, int(w)), max(1, int(h))))
            im.load()
            image: Image.Image = im
            left = _orientation(im)
            if stored != 1 and left == 1:
                # The decoder turned the image upright itself (Pillow does for TIFF): undo it
                # when the stored pixels are asked for.
                if not exif:
                    image = im.transpose(_STORED[stored])
            elif exif and left in _UPRIGHT:
                image = im.transpose(_UPRIGHT[left])
            return to_rgb(image), full
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(_decode_failure(kind, e)) from e


def _check_pixels(im: Image.Image) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"empty image ({w}x{h} pixels)")
    limit = Image.MAX_IMAGE_PIXELS
    # Pillow warns between the limit and twice the limit; bbx refuses from the limit on, and checks
    # it itself so that the decision does not depend on the process's warning filters.
    if limit is not None and w * h > limit:
        raise ImageError(f"decompression bomb ({w}x{h} pixels > limit of {limit})")


def _orientation(im: Image.Image) -> int:
    """The EXIF/XMP orientation, 1 (as stored) when absent or unreadable."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _head(source: Any, n: int = 64) -> bytes:
    """The first ``n`` bytes of a file (by path) or of a file object (its position kept)."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            return f.read(n)
    at = source.tell()
    try:
        source.seek(0)
        return source.read(n)
    finally:
        source.seek(at)


def _open_failure(path: Any, e: Exception) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb_reason(e)
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, Image.UnidentifiedImageError):
        try:
            head = _head(path)
        except OSError as err:
            return f"cannot read file ({err.strerror or err})"
        if not head:
            return "empty file (0 bytes)"
        known = _identify(head)
        if known in FORMATS:
            return f"corrupt {known} (unreadable header)"
        if known:
            return f"unsupported image format {known} (bbx reads {_FORMAT_NAMES})"
        if _looks_like_text(head):
            return "not an image (a text file)"
        return f"not an image bbx reads ({_FORMAT_NAMES}), or a damaged one"
    if isinstance(e, OSError) and e.errno is not None:
        return f"cannot read file ({e.strerror or _message(e)})"
    # a decoder giving up on the header
    try:
        known = _identify(_head(path))
    except OSError:
        known = None
    return _decode_failure(known or "image", e)


def _decode_failure(kind: str, e: Exception) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb_reason(e)
    if isinstance(e, MemoryError):
        return f"out of memory decoding this {kind}"
    message = _message(e)
    if "truncated" in message.lower() or isinstance(e, EOFError):
        return f"truncated {kind} ({message})"
    return f"corrupt {kind} ({message})"


def _bomb_reason(e: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    limit = Image.MAX_IMAGE_PIXELS
    if m:
        return f"decompression bomb ({m.group(1)} pixels > limit of {limit})"
    return f"decompression bomb (more than {limit} pixels)"


def _message(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _identify(head: bytes) -> str | None:
    """The format whose signature ``head`` starts with, among common ones (for the reason only)."""
    for name, offset, magic in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


# -- pixel modes ----------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image`` (any mode), as the module docstring says."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _deep_to_rgb(image)
    transparency = image.info.get("transparency")
    # "LAB" has a band named A that is not alpha.
    if ("A" in image.getbands() and mode != "LAB") or transparency is not None:
        try:
            rgba = image.convert("RGBA")
        except ValueError as e:
            raise ImageError(f"unsupported pixel mode {mode} ({e})") from e
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageError(f"unsupported pixel mode {mode} ({e})") from e


def _deep_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greys, rescaled (not clamped) to 8 bits."""
    values = np.asarray(image)
    grey = _float_to_uint8(values) if image.mode == "F" else _int_to_uint8(values)
    transparency = image.info.get("transparency")
    if isinstance(transparency, int) and not isinstance(transparency, bool) and image.mode != "F":
        grey[values == transparency] = 255  # a transparent grey level, composited onto white
    return Image.fromarray(grey, "L").convert("RGB")


def _int_to_uint8(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    if lo >= 0 and hi <= 65535:
        return ((v + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535), halves up
    span = hi - lo  # > 0 here: a single value cannot lie outside 0..65535 and be in it
    return (((v - lo) * 510 + span) // (2 * span)).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        scaled = v * 255.0
    elif hi > lo:
        scaled = (v - lo) * (255.0 / (hi - lo))
    else:  # one value outside [0, 1]: no range to stretch
        scaled = np.where(np.isfinite(v), 0.0, v)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


# -- resize and crop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where one model input came from: the image's size as decoded, upright (height, width), and
    the box (top, left, bottom, right), in that image's pixels, that the model input covers (past
    the image's edges where it was padded)."""

    source: tuple[int, int]
    box: tuple[float, float, float, float]


def prepare(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """``image`` resized and cropped as ``pre`` says: uint8 ``[H, W, 3]`` (C-contiguous, writable),
    or for a ``float_resize`` recipe float32 ``[H, W, 3]``, the rescaled pixels (not normalised).

    Raises :class:`ImageError` when the resize would exceed Pillow's pixel limit (an extreme aspect
    ratio under a shortest-edge recipe) rather than allocate it.
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    target = pre.resize_size(image.height, image.width)
    if target is not None:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and target[0] * target[1] > limit:
            # a sliver (say 1 x 2000) whose short side is scaled up to the recipe's edge
            raise ImageError(
                f"resizing {image.width}x{image.height} would make {target[1]}x{target[0]} pixels (> limit of {limit})"
            )
    if pre.float_pixels:
        return _prepare_float(np.asarray(image), pre, target)
    if target is not None:
        image = image.resize((target[1], target[0]), resample=Image.Resampling(pre.resample))
    pixels = np.asarray(image)
    if pre.resize_mode == "pad" and pre.target is not None:
        th, tw = pre.target
        canvas = np.zeros((th, tw, 3), dtype=np.uint8)
        top, left = (th - pixels.shape[0]) // 2, (tw - pixels.shape[1]) // 2
        canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        return canvas
    if pre.resize_mode != "crop":  # squash: the whole image, resized to the target; no crop
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    if pre.kind == "timm":
        assert pre.crop_size is not None
        pixels = center_crop_or_pad(pixels, pre.crop_size, pre.pad_fill)
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    if pre.inner_crop is not None:
        pixels = center_crop(pixels, pre.inner_crop)
    if pre.do_center_crop and pre.crop_size is not None:
        pixels = center_crop(pixels, pre.crop_size)
    return np.array(pixels, dtype=np.uint8, order="C", copy=True)


def _prepare_float(pixels: np.ndarray, pre: Preprocess, target: tuple[int, int] | None) -> np.ndarray:
    """The torchvision-backend recipe: the uint8 image as a ``[3, H, W]`` tensor (contiguous, as
    the processor lays it out), times ``rescale_factor`` in float32, resized by torch's
    ``interpolate`` as torchvision's tensor resize calls it (antialiased bilinear/bicubic,
    ``align_corners=False``; nearest-exact; skipped at the same size), center-cropped with
    torchvision's offsets; returned as float32 ``[H, W, 3]``."""
    import torch
    from torch.nn import functional as F

    from bbx.preprocess import FLOAT_RESAMPLE

    with torch.inference_mode():
        x = torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C")).permute(2, 0, 1).contiguous()
        x = x * pre.rescale_factor  # a float32 tensor, as the processor's rescale
        if target is not None and tuple(target) != tuple(x.shape[1:]):
            mode = FLOAT_RESAMPLE[pre.resample]
            smooth = mode != "nearest-exact"
            x = F.interpolate(
                x[None], size=list(target), mode=mode, align_corners=False if smooth else None, antialias=smooth
            )[0]
        if pre.resize_mode == "pad" and pre.target is not None:
            th, tw = pre.target
            canvas = torch.zeros((x.shape[0], th, tw), dtype=x.dtype)
            top, left = (th - x.shape[1]) // 2, (tw - x.shape[2]) // 2
            canvas[:, top : top + x.shape[1], left : left + x.shape[2]] = x
            x = canvas
        elif pre.resize_mode == "crop" and pre.do_center_crop and pre.crop_size is not None:
            x = _float_center_crop(x, pre.crop_size)
        return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def _float_center_crop(x: Any, size: tuple[int, int]) -> Any:
    """torchvision's center crop of a ``[C, H, W]`` tensor as transformers' torchvision backend
    calls it: zero padding where the crop is larger (the extra row/column after the image), then
    the offsets ``int((H - h) / 2)``."""
    import torch

    ch, cw = size
    h, w = x.shape[1:]
    if ch > h or cw > w:
        left, top = max(0, (cw - w) // 2), max(0, (ch - h) // 2)
        padded = torch.zeros((x.shape[0], max(h, ch), max(w, cw)), dtype=x.dtype)
        padded[:, top : top + h, left : left + w] = x
        x, (h, w) = padded, (max(h, ch), max(w, cw))
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[:, top : top + ch, left : left + cw]


def center_crop_or_pad(pixels: np.ndarray, size: tuple[int, int], fill: tuple[int, int, int]) -> np.ndarray:
    """torchvision's (and timm's) centre crop of ``size`` = (height, width): an image smaller than
    the crop is first padded with ``fill``, ``(crop - side) // 2`` before it and the rest after;
    then the offsets are ``round((side - crop) / 2)``, half to even (Python's round), where
    transformers floors them."""
    height, width = pixels.shape[:2]
    ch, cw = size
    if ch > height or cw > width:
        top, left = max(0, (ch - height) // 2), max(0, (cw - width) // 2)
        out = np.empty((max(ch, height), max(cw, width), *pixels.shape[2:]), dtype=pixels.dtype)
        out[...] = np.asarray(fill, dtype=pixels.dtype)
        out[top : top + height, left : left + width] = pixels
        pixels = out
        height, width = pixels.shape[:2]
    top, left = int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))
    return pixels[top : top + ch, left : left + cw]


def center_crop(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central ``size`` = (height, width) of ``[H, W, C]`` pixels. An odd excess loses its
    extra row/column at the bottom/right; a crop larger than the image pads it with zeros, the
    extra padding row/column at the top/left (transformers' offsets)."""
    height, width = pixels.shape[:2]
    ch, cw = size
    if ch <= height and cw <= width:
        top, left = (height - ch) // 2, (width - cw) // 2
        return pixels[top : top + ch, left : left + cw]
    out = np.zeros((ch, cw, *pixels.shape[2:]), dtype=pixels.dtype)
    (src_y, dst_y, n_y), (src_x, dst_x, n_x) = _span(height, ch), _span(width, cw)
    out[dst_y : dst_y + n_y, dst_x : dst_x + n_x] = pixels[src_y : src_y + n_y, src_x : src_x + n_x]
    return out


def _span(have: int, want: int) -> tuple[int, int, int]:
    """(source start, destination start, length) of a centred crop of one axis."""
    if want <= have:
        return (have - want) // 2, 0, want
    return 0, (want - have + 1) // 2, have


def load(path: Source, pre: Preprocess, *, exif: bool = True, fast_decode: bool = False) -> np.ndarray:
    """:func:`decode` then :func:`prepare` (``path``: a file, or its bytes or a file object);
    raises :class:`ImageError` for an image it cannot use.

    ``fast_decode``: decode JPEGs at reduced size (never below what the resize needs). It changes
    the pixels slightly, so it is off unless asked for.
    """
    return load_with_geometry(path, pre, exif=exif, fast_decode=fast_decode)[0]


def load_with_geometry(
    path: Source, pre: Preprocess, *, exif: bool = True, fast_decode: bool = False
) -> tuple[np.ndarray, Geometry]:
    """:func:`load`, with where the pixels came from on the full-size image."""
    draft = pre.min_decode_size() if fast_decode else None
    image, full = decode_sized(path, exif=exif, draft=draft)
    return prepare(image, pre), geometry_of(image, pre, full)


def geometry_of(image: Image.Image, pre: Preprocess, full: tuple[int, int] | None = None) -> Geometry:
    """The :class:`Geometry` of ``image`` under ``pre``; ``full``: the size of the image it was
    decoded from at reduced size, which the box is given in."""
    h, w = image.height, image.width
    top, left, bottom, right = pre.geometry(h, w)
    fh, fw = full or (h, w)
    sy, sx = fh / h, fw / w
    return Geometry((fh, fw), (top * sy, left * sx, bottom * sy, right * sx))


# -- normalisation --------------------------------------------------------------------------------


def normalize(
    batch: torch.Tensor,
    pre: Preprocess,
    *,
    dtype: torch.dtype | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (or ``[N, 3, H, W]``) on any device -> ``[N, 3, H, W]`` floats.

    The processor's numbers bit for bit: each channel's 256 possible outputs are computed once, on
    the CPU, in the processor's own arithmetic (float64 rescale rounded to float32, then float32
    ``(x - mean) / std``), and the batch looks its pixels up on its own device. ``dtype`` defaults
    to float32. ``memory_format=torch.channels_last`` is free for a channels-last (NHWC) batch. A
    batch whose dims 1 and 3 are both 3 is read as NHWC (bbx's layout).

    A ``float_resize`` recipe's batch is float32 (the rescaled, resized pixels :func:`prepare`
    gives): it is normalised as torchvision does it, ``(x - mean) / std`` in float32 (IEEE
    subtraction and division, the same on every device).
    """
    import torch

    if batch.dim() != 4 or 3 not in (batch.shape[1], batch.shape[3]):
        raise ValueError(f"normalize takes [N, H, W, 3] or [N, 3, H, W], got {list(batch.shape)}")
    nhwc = batch.shape[3] == 3
    channels_last = memory_format == torch.channels_last
    if memory_format not in (None, torch.contiguous_format, torch.channels_last):
        raise ValueError(f"normalize returns contiguous or channels_last tensors, not {memory_format}")
    if pre.float_pixels:
        if batch.dtype != torch.float32:
            raise TypeError(f"normalize takes a float32 batch for a {pre.kind} recipe, got {batch.dtype}")
        x = batch.permute(0, 3, 1, 2) if nhwc else batch
        if pre.do_normalize:
            mean = torch.tensor(pre.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
            std = torch.tensor(pre.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return x if dtype in (None, torch.float32) else x.to(dtype)
    if batch.dtype != torch.uint8:
        raise TypeError(f"normalize takes a uint8 batch, got {batch.dtype}")
    table = _table(
        pre.do_rescale, pre.rescale_factor, pre.do_normalize, pre.mean, pre.std, batch.device, dtype or torch.float32
    )
    # Lay the uint8 pixels out in the output's memory order first (cheap: one byte each), then
    # look every pixel up in its channel's 256 entries: index = value + 256 * channel.
    if channels_last:
        pixels = (batch if nhwc else batch.permute(0, 2, 3, 1)).contiguous()  # [N, H, W, 3]
        offsets = torch.arange(0, 768, 256, dtype=torch.int32, device=batch.device)
    else:
        pixels = (batch.permute(0, 3, 1, 2) if nhwc else batch).contiguous()  # [N, 3, H, W]
        offsets = torch.arange(0, 768, 256, dtype=torch.int32, device=batch.device).view(3, 1, 1)
    index = pixels.to(torch.int32).add_(offsets)
    out = table.index_select(0, index.view(-1)).view(pixels.shape)
    return out.permute(0, 3, 1, 2) if channels_last else out


def lookup_table(pre: Preprocess) -> np.ndarray:
    """float32 ``[3, 256]``: what the processor makes of each 8-bit value in each channel."""
    return _numpy_table(pre.do_rescale, pre.rescale_factor, pre.do_normalize, pre.mean, pre.std)


def _numpy_table(
    do_rescale: bool, factor: float, do_normalize: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    levels = np.arange(256, dtype=np.uint8)
    x = (levels.astype(np.float64) * factor).astype(np.float32) if do_rescale else levels.astype(np.float32)
    x = np.broadcast_to(x, (3, 256))
    if do_normalize:
        m = np.asarray(mean, dtype=np.float32)[:, None]
        s = np.asarray(std, dtype=np.float32)[:, None]
        x = (x - m) / s
    return np.ascontiguousarray(x, dtype=np.float32)


@functools.lru_cache(maxsize=32)
def _table(
    do_rescale: bool,
    factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: Any,
    dtype: Any,
) -> torch.Tensor:
    import torch

    flat = _numpy_table(do_rescale, factor, do_normalize, mean, std).reshape(-1)
    return torch.from_numpy(flat).to(dtype=dtype).to(device)
