"""Feature maps as pictures a person can look at (``bbx show``).

Two views of one stage for some images (one row per image, the input image on the left when it
is still on disk):

* ``pca``: the three principal components of the channel vectors, fitted over every position of
  every chosen image together (so colours mean the same thing in every row), shown as red, green
  and blue after a robust (1st..99th percentile) scaling: the usual way to look at DINOv2 features.
* ``grid``: the k channels with the highest variance as grayscale tiles, each channel scaled by
  its own percentiles over the chosen images.

Maps are upsampled with nearest-neighbour so every position stays visible as a block. numpy for
the math, Pillow for the pictures; nothing else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbx.errors import InputError, UsageError

MODES = ("pca", "grid")
GAP = 4  # pixels between the pictures of a row, and between rows
GRID_GAP = 2  # pixels between channel tiles
BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)  # where an input image is no longer on disk
FIT_POSITIONS = 200_000  # at most this many positions fit the PCA (all are projected)


@dataclass(frozen=True)
class Picture:
    image: Any  # PIL.Image.Image
    with_input: list[bool]  # per picture row: whether its input image is shown


def _fit(h: int, w: int, longest: int) -> tuple[int, int]:
    """(width, height) of an h x w map scaled so that its longer side is ``longest`` pixels."""
    scale = longest / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _robust01(values: Any) -> Any:
    """Scale to [0, 1] between the 1st and 99th percentiles (constant input -> 0.5)."""
    import numpy as np

    lo, hi = np.percentile(values, [1, 99])
    if not hi > lo:
        return np.full(values.shape, 0.5, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def pca_rgb(maps: Any) -> Any:
    """[k, C, H, W] maps -> [k, H, W, 3] uint8: the three main components as RGB, shared by all k."""
    import numpy as np

    k, c, h, w = maps.shape
    x = np.ascontiguousarray(maps.transpose(0, 2, 3, 1).reshape(-1, c), dtype=np.float64)
    step = max(1, len(x) // FIT_POSITIONS)
    fit = x[::step]
    mean = fit.mean(axis=0)
    centred = fit - mean
    cov = centred.T @ centred / max(1, len(fit) - 1)
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors[:, ::-1][:, : min(3, c)]
    # an eigenvector's sign is arbitrary: fix it so the largest loading is positive (stable colours)
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
    top = top * np.where(signs == 0, 1.0, signs)
    proj = (x - mean) @ top
    if proj.shape[1] < 3:
        proj = np.concatenate([proj, np.zeros((len(proj), 3 - proj.shape[1]))], axis=1)
    rgb = np.stack([_robust01(proj[:, j]) for j in range(3)], axis=1)
    return (rgb.reshape(k, h, w, 3) * 255 + 0.5).astype(np.uint8)


def top_channels(maps: Any, count: int) -> list[int]:
    """The ``count`` channels of highest variance over the chosen maps, in channel order."""
    import numpy as np

    var = maps.var(axis=(0, 2, 3))
    chosen = np.argsort(-var, kind="stable")[: min(count, len(var))]
    return sorted(int(c) for c in chosen)


def grid_tiles(maps: Any, channels: Sequence[int], longest: int) -> list[Any]:
    """One grayscale grid of the given channels per map, fitted in ``longest`` pixels."""
    import numpy as np
    from PIL import Image

    k, _, h, w = maps.shape
    n = len(channels)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell = max(1, (longest - (cols - 1) * GRID_GAP) // cols)
    cw, ch = _fit(h, w, cell)
    scaled = {c: (_robust01(maps[:, c]) * 255 + 0.5).astype(np.uint8) for c in channels}
    blocks = []
    for i in range(k):
        block = Image.new("RGB", (cols * cw + (cols - 1) * GRID_GAP, rows * ch + (rows - 1) * GRID_GAP), BACKGROUND)
        for j, c in enumerate(channels):
            tile = Image.fromarray(scaled[c][i]).resize((cw, ch), Image.Resampling.NEAREST)
            block.paste(tile.convert("RGB"), ((j % cols) * (cw + GRID_GAP), (j // cols) * (ch + GRID_GAP)))
        blocks.append(block)
    return blocks


def find_input(stored: str, cwd: str | None) -> Path | None:
    """The input image of a row, if it is still on disk (relative paths: from here, or from the
    folder the extraction ran in)."""
    p = Path(stored)
    candidates = [p] if p.is_absolute() else [p, *([Path(cwd) / p] if cwd else [])]
    for c in candidates:
        if c.is_file():
            return c
    return None


def input_tile(path: Path | None, size: tuple[int, int], *, exif: bool = True) -> Any:
    """The input image as extraction saw it (same decoding: orientation, transparency on white,
    high bit depths rescaled), centre-cropped to the map's aspect and resized to ``size``; None
    if it cannot be read."""
    if path is None:
        return None
    from PIL import Image, ImageOps

    from bbx.images import ImageError, decode

    try:
        im = decode(path, exif=exif)
    except (ImageError, OSError):
        return None
    return ImageOps.fit(im, size, Image.Resampling.BICUBIC)


def compose(rows: Sequence[Sequence[Any]]) -> Any:
    """Pictures in a table: one list per row, columns aligned, GAP pixels apart."""
    from PIL import Image

    ncols = max(len(r) for r in rows)
    widths = [max(r[j].width for r in rows if j < len(r)) for j in range(ncols)]
    heights = [max(p.height for p in r) for r in rows]
    canvas = Image.new("RGB", (sum(widths) + GAP * (ncols - 1), sum(heights) + GAP * (len(rows) - 1)), BACKGROUND)
    y = 0
    for r, h in zip(rows, heights):
        x = 0
        for j, p in enumerate(r):
            canvas.paste(p, (x, y + (h - p.height) // 2))
            x += widths[j] + GAP
        y += h + GAP
    return canvas


def render(
    maps: Any,
    inputs: Sequence[str],
    *,
    mode: str = "pca",
    size: int = 256,
    channels: int = 16,
    cwd: str | None = None,
    exif: bool = True,
    show_inputs: bool = True,
) -> Picture:
    """The picture of ``maps`` ([k, C, H, W] float32, row i from input ``inputs[i]``)."""
    import numpy as np
    from PIL import Image

    if mode not in MODES:
        raise UsageError(f"--mode must be pca or grid, got {mode!r}")
    if size < 8:
        raise UsageError(f"--size must be at least 8 pixels, got {size}")
    if channels < 1:
        raise UsageError(f"--channels must be at least 1, got {channels}")
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    k, _, h, w = maps.shape
    tw, th = _fit(h, w, size)
    if mode == "pca":
        rgb = pca_rgb(maps)
        views = [Image.fromarray(rgb[i]).resize((tw, th), Image.Resampling.NEAREST) for i in range(k)]
    else:
        views = grid_tiles(maps, top_channels(maps, channels), size)
    found = [find_input(p, cwd) if show_inputs else None for p in inputs]
    tiles = [input_tile(p, (tw, th), exif=exif) for p in found]
    table: list[list[Any]] = []
    for view, tile in zip(views, tiles):
        row = [view]
        if any(t is not None for t in tiles):
            row.insert(0, tile if tile is not None else Image.new("RGB", (tw, th), MISSING))
        table.append(row)
    return Picture(compose(table), [t is not None for t in tiles])


#: how much of the map shows over the photo with --overlay
OVERLAY_ALPHA = 0.6


def render_overlay(
    maps: Any,
    inputs: Sequence[str],
    sources: tuple[Any, Any],
    *,
    size: int = 256,
    cwd: str | None = None,
    exif: bool = True,
) -> Picture:
    """Each row's PCA map drawn over its whole photo, on the region it came from (``sources``:
    the rows' recorded image sizes and boxes, :meth:`bbx.formats.Output.read_sources`): a crop
    lands inside the photo, a pad reaches past its edges, a squash covers it all. The photo is
    scaled so its longer side (or the box's, when that is larger) is ``size`` pixels; where the
    photo is gone, the map alone is drawn where it would lie."""
    import numpy as np
    from PIL import Image

    if size < 8:
        raise UsageError(f"--size must be at least 8 pixels, got {size}")
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    rgb = pca_rgb(maps)
    sizes, boxes = sources
    rows: list[list[Any]] = []
    shown: list[bool] = []
    for i, stored in enumerate(inputs):
        (ih, iw), (top, left, bottom, right) = sizes[i], boxes[i]
        if ih < 1 or not np.isfinite(boxes[i]).all():
            raise InputError(f"row {i} ({stored}) has no recorded source: it was extracted before bbx recorded them")
        # the canvas spans the photo and the box
        y0, x0 = min(0.0, top), min(0.0, left)
        y1, x1 = max(float(ih), bottom), max(float(iw), right)
        scale = size / max(y1 - y0, x1 - x0)
        canvas = Image.new("RGB", (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))), BACKGROUND)
        path = find_input(stored, cwd)
        photo = None
        if path is not None:
            from bbx.images import ImageError, decode

            try:
                photo = decode(path, exif=exif)
            except (ImageError, OSError):
                photo = None
        if photo is not None:
            pw, ph = max(1, round(iw * scale)), max(1, round(ih * scale))
            canvas.paste(photo.resize((pw, ph), Image.Resampling.BICUBIC), (round(-x0 * scale), round(-y0 * scale)))
        bw, bh = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))
        where = (round((left - x0) * scale), round((top - y0) * scale))
        view = Image.fromarray(rgb[i]).resize((bw, bh), Image.Resampling.NEAREST)
        under = canvas.crop((where[0], where[1], where[0] + bw, where[1] + bh))
        alpha = OVERLAY_ALPHA if photo is not None else 1.0
        canvas.paste(Image.blend(under, view, alpha), where)
        rows.append([canvas])
        shown.append(photo is not None)
    return Picture(compose(rows), shown)


def save(image: Any, path: Path, *, overwrite: bool = False) -> None:
    """Write the picture; the format comes from the suffix (.png, .jpg, .webp, ...). An existing
    file is replaced only with ``overwrite`` (and never half: the picture is written aside, then
    moved into place)."""
    from PIL import Image

    ext = path.suffix.lower()
    if ext not in Image.registered_extensions():
        Image.init()
    if ext not in Image.registered_extensions():
        raise UsageError(f"-o {path}: cannot tell the picture format from {path.name!r} (use .png, .jpg or .webp)")
    if not path.parent.is_dir():
        raise InputError(f"-o {path}: no such folder {path.parent}")
    if not overwrite and os.path.lexists(path):
        raise exists(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        image.save(tmp, format=Image.registered_extensions()[ext])
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except FileExistsError:
        raise exists(path) from None
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def exists(path: Path) -> InputError:
    return InputError(f"{path} exists: pass --overwrite to replace it, or choose another -o")


def _place_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless something appeared there meanwhile (FileExistsError): a
    hard link fails on an existing name; where links are not supported, check, then rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
