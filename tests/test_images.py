"""Decoding image files and preparing them: pixel parity with transformers' image processors
(load -> stack -> normalize against the processor's pixel_values), every pixel mode, EXIF
orientation, animated files, bad files, reduced-size JPEG decoding, threads."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_transforms import convert_to_rgb as hf_convert_to_rgb
from transformers.image_transforms import normalize as hf_normalize
from transformers.image_transforms import rescale as hf_rescale
from transformers.image_utils import ChannelDimension

from bbx import images
from bbx.images import ImageError
from bbx.preprocess import Preprocess
from tests.processors import KINDS, SHORT_EDGE_CROP, SQUASH, hf_pixels, hf_processor
from tests.util import photo

TOL = 1e-6
SUFFIX = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}

# ---------------------------------------------------------------------------------------------
# the files: many sizes and formats, then every pixel mode


SIZES = [  # (width, height)
    (13, 7),
    (7, 13),
    (1, 1),
    (3, 97),
    (100, 100),
    (224, 224),
    (225, 223),
    (256, 256),
    (384, 384),
    (300, 200),
    (200, 300),
    (333, 517),
    (1000, 150),
    (150, 1000),
    (640, 480),
]


def _deep_reference(path: Path) -> np.ndarray:
    """The 8-bit grey bbx documents for 16-bit, 32-bit and float files, computed independently."""
    with Image.open(path) as im:
        v = np.asarray(im).astype(np.float64)
        mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and v.min() >= 0 and v.max() <= 65535):
        grey = np.round(v * 255 / 65535)  # never a tie: v / 257 is not k + 0.5 for an integer v
    elif mode == "F" and v.min() >= 0 and v.max() <= 1:
        grey = np.floor(v * 255 + 0.5)
    else:
        grey = np.floor((v - v.min()) / (v.max() - v.min()) * 255 + 0.5)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)


def _with_transparency(img: Image.Image, value) -> Image.Image:
    img.info["transparency"] = value
    return img


def _palette_with_transparency(w: int, h: int, seed: int) -> Image.Image:
    p = photo(w, h, seed).quantize(64)
    return _with_transparency(p, int(np.asarray(p)[h // 2, w // 2]))


def _deep(w: int, h: int, seed: int, mode: str) -> Image.Image:
    grey = np.asarray(photo(w, h, seed, mode="L")).astype(np.float64)
    if mode == "I;16":
        return Image.fromarray((grey * 257 + np.arange(w) % 200).astype(np.uint16))
    if mode == "I;16B":
        data = (grey * 250 + 17).astype(">u2")
        return Image.frombuffer("I;16B", (w, h), data.tobytes(), "raw", "I;16B", 0, 1)
    if mode == "I":
        return Image.fromarray((grey * 1000 - 70000).astype(np.int32))  # outside 0..65535: stretched
    if mode == "I16-as-I":
        return Image.fromarray((grey * 200).astype(np.int32))  # inside 0..65535: read as 16-bit
    if mode == "F01":
        return Image.fromarray((grey / 255).astype(np.float32))
    return Image.fromarray((grey * 3.7 - 100).astype(np.float32))  # "F" outside [0, 1]: stretched


# (name, image maker(w, h, seed), formats); deep modes are compared with _deep_reference
MODES = [
    ("L", lambda w, h, s: photo(w, h, s, mode="L"), ["JPEG", "PNG", "TIFF"]),
    ("LA", lambda w, h, s: _alpha(photo(w, h, s, mode="L"), "LA"), ["PNG", "TIFF"]),
    ("P", lambda w, h, s: photo(w, h, s).quantize(64), ["PNG", "GIF", "BMP", "TIFF"]),
    ("P-transparency", _palette_with_transparency, ["PNG", "GIF"]),
    ("RGBA", lambda w, h, s: _alpha(photo(w, h, s), "RGBA"), ["PNG", "WEBP", "TIFF"]),
    ("RGB-tRNS", lambda w, h, s: _with_transparency(photo(w, h, s), (0, 0, 0)), ["PNG"]),
    ("L-tRNS", lambda w, h, s: _with_transparency(photo(w, h, s, mode="L"), 0), ["PNG"]),
    ("CMYK", lambda w, h, s: photo(w, h, s, mode="CMYK"), ["JPEG", "TIFF"]),
    ("1", lambda w, h, s: photo(w, h, s, mode="1"), ["PNG", "BMP", "TIFF", "GIF"]),
    ("I;16", lambda w, h, s: _deep(w, h, s, "I;16"), ["PNG", "TIFF"]),
    ("I;16B", lambda w, h, s: _deep(w, h, s, "I;16B"), ["TIFF"]),
    ("I", lambda w, h, s: _deep(w, h, s, "I"), ["TIFF"]),
    ("I-16bit-range", lambda w, h, s: _deep(w, h, s, "I16-as-I"), ["TIFF"]),
    ("F-0-1", lambda w, h, s: _deep(w, h, s, "F01"), ["TIFF"]),
    ("F", lambda w, h, s: _deep(w, h, s, "F"), ["TIFF"]),
]
DEEP = {"I;16", "I;16B", "I", "I-16bit-range", "F-0-1", "F"}


def _alpha(img: Image.Image, mode: str) -> Image.Image:
    """``img`` with an alpha band: opaque, half and fully transparent regions."""
    w, h = img.size
    a = np.full((h, w), 255, np.uint8)
    a[: h // 3] = 0
    a[h // 3 : 2 * h // 3, : w // 2] = 128
    out = img.convert(mode)
    out.putalpha(Image.fromarray(a))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[tuple[Path, np.ndarray]]:
    """(file, the RGB image transformers would be given) for every size/format and mode/format."""
    root = tmp_path_factory.mktemp("images")
    formats = list(SUFFIX)
    out = []
    cases = [(f"{w}x{h}", lambda w, h, s: photo(w, h, s), [formats[i % 6]], (w, h)) for i, (w, h) in enumerate(SIZES)]
    cases += [("every-format", lambda w, h, s: photo(w, h, s), formats, (300, 200))]
    cases += [(name, make, fmts, (150 + 7 * i, 110 - 3 * i)) for i, (name, make, fmts) in enumerate(MODES)]
    for seed, (name, make, fmts, (w, h)) in enumerate(cases):
        for fmt in fmts:
            path = root / f"{name}-{fmt}.{SUFFIX[fmt]}"
            make(w, h, seed).save(path, fmt)
            if name in DEEP:
                ref = _deep_reference(path)
            else:
                with Image.open(path) as im:
                    ref = hf_convert_to_rgb(im, return_numpy=True)
            out.append((path, ref))
    return out


def test_files_hold_the_modes_they_claim(files):
    by_name = {p.name: p for p, _ in files}
    for name, want in [
        ("LA-PNG.png", "LA"),
        ("P-transparency-PNG.png", "P"),
        ("RGBA-TIFF.tif", "RGBA"),
        ("CMYK-JPEG.jpg", "CMYK"),
        ("1-PNG.png", "1"),
        ("I;16-PNG.png", "I;16"),
        ("I;16B-TIFF.tif", "I;16B"),
        ("I-TIFF.tif", "I"),
        ("F-TIFF.tif", "F"),
    ]:
        with Image.open(by_name[name]) as im:
            assert im.mode == want, name
    with Image.open(by_name["P-transparency-GIF.gif"]) as im:
        assert im.info.get("transparency") is not None


@pytest.mark.parametrize("kind", list(KINDS))
def test_batches_match_transformers(tmp_path, files, kind):
    """load -> stack -> normalize equals the processor's pixel_values, for every file."""
    proc = hf_processor(tmp_path, KINDS[kind])
    pre = Preprocess.from_config(KINDS[kind], "")
    batch = torch.from_numpy(np.stack([images.load(path, pre) for path, _ in files]))
    got = images.normalize(batch, pre)
    want = hf_pixels(proc, [ref for _, ref in files])
    assert got.shape == want.shape == (len(files), 3, *pre.output_size)
    assert got.dtype == torch.float32
    for (path, _), g, w in zip(files, got, want):
        assert float((g - w).abs().max()) <= TOL, path.name
    assert torch.equal(got, want)  # bit for bit, in fact


def test_uint8_pixels_equal_the_processors(tmp_path, files):
    """Without rescale and normalisation the processor returns its resized uint8 values as floats."""
    proc = hf_processor(tmp_path, SHORT_EDGE_CROP)
    pre = Preprocess.from_config(SHORT_EDGE_CROP, "")
    got = np.stack([images.load(path, pre) for path, _ in files[:8]])
    want = hf_pixels(proc, [ref for _, ref in files[:8]], do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2).astype(np.float32), want.numpy())


# ---------------------------------------------------------------------------------------------
# pixel modes


def test_transparency_becomes_white():
    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgb = np.asarray(images.to_rgb(rgba))
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[1, 1].tolist() == [255, 255, 255]
    grey = _with_transparency(Image.fromarray(np.array([[0, 65535]], np.uint16)), 0)
    assert np.asarray(images.to_rgb(grey)).tolist() == [[[255, 255, 255], [255, 255, 255]]]


def test_deep_images_are_rescaled_not_clamped():
    def grey(img):
        out = np.asarray(images.to_rgb(img))
        assert img.mode != "RGB" and out.shape[-1] == 3 and (out == out[..., :1]).all()
        return out[..., 0].tolist()

    v16 = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    assert grey(Image.fromarray(v16)) == [[0, 0, 1, 1, 128, 255]]
    assert Image.fromarray(v16).convert("L").getpixel((5, 0)) == 255  # what Pillow gives 257: clamped
    assert Image.fromarray(v16).convert("L").getpixel((3, 0)) == 255
    big = Image.frombuffer("I;16B", (3, 1), np.array([0, 257, 65535], ">u2").tobytes(), "raw", "I;16B", 0, 1)
    assert grey(big) == [[0, 1, 255]]
    assert grey(Image.fromarray(np.array([[0, 65535, 257]], np.int32))) == [[0, 255, 1]]  # I in 0..65535
    assert grey(Image.fromarray(np.array([[-10, 0, 10]], np.int32))) == [[0, 128, 255]]  # I: min..max
    assert grey(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))) == [[0, 128, 255]]  # F in [0, 1]
    assert grey(Image.fromarray(np.array([[-2.0, 0.0, 2.0, np.nan]], np.float32))) == [[0, 128, 255, 0]]
    assert grey(Image.fromarray(np.array([[np.inf, -np.inf, 0.25]], np.float32))) == [[255, 0, 64]]
    assert grey(Image.fromarray(np.array([[7.0, 7.0]], np.float32))) == [[0, 0]]  # no range to stretch


def test_prepare_accepts_any_mode():
    pre = Preprocess.from_config(SQUASH, "")
    img = _alpha(photo(50, 40), "RGBA")
    want = images.prepare(images.to_rgb(img), pre)
    np.testing.assert_array_equal(images.prepare(img, pre), want)


# ---------------------------------------------------------------------------------------------
# EXIF orientation, animation


def _upright(a: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF spec's words: how a stored image is turned to be seen upright."""
    mirror = a[:, ::-1]
    return {
        1: a,
        2: mirror,  # mirror horizontal
        3: a[::-1, ::-1],  # rotate 180
        4: a[::-1],  # mirror vertical
        5: np.rot90(mirror, 1),  # mirror horizontal, rotate 270 clockwise
        6: np.rot90(a, -1),  # rotate 90 clockwise
        7: np.rot90(mirror, -1),  # mirror horizontal, rotate 90 clockwise
        8: np.rot90(a, 1),  # rotate 270 clockwise
    }[orientation]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, orientation):
    img = photo(40, 30, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    img.save(path, exif=exif)
    raw = np.asarray(img)
    np.testing.assert_array_equal(np.asarray(images.decode(path)), _upright(raw, orientation))
    np.testing.assert_array_equal(np.asarray(images.decode(path, exif=False)), raw)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_formats(tmp_path, fmt):
    img = photo(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"o.{SUFFIX[fmt]}"
    if fmt == "TIFF":
        img.save(path, tiffinfo={0x0112: 6})
    else:
        img.save(path, exif=exif)
    raw = np.asarray(images.decode(path, exif=False))
    assert raw.shape == (30, 40, 3)
    np.testing.assert_array_equal(np.asarray(images.decode(path)), _upright(raw, 6))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "TIFF"])
def test_animated_and_multipage_files_give_their_first_frame(tmp_path, fmt):
    frames = [photo(60, 45, seed=s) for s in range(3)]
    path = tmp_path / f"anim.{SUFFIX[fmt]}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as im:
        assert getattr(im, "n_frames", 1) == 3
        first = hf_convert_to_rgb(im, return_numpy=True)
        im.seek(1)
        second = hf_convert_to_rgb(im, return_numpy=True)
    got = np.asarray(images.decode(path))
    np.testing.assert_array_equal(got, first)
    assert not np.array_equal(got, second)


# ---------------------------------------------------------------------------------------------
# files bbx cannot use


def _truncated(src: str, keep: float):
    def write(path: Path) -> None:
        full = path.with_suffix(".full")
        photo(200, 150).save(full, src)
        data = full.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return write


def _corrupt_jpeg(path: Path) -> None:
    photo(200, 150).save(path, "JPEG")
    data = bytearray(path.read_bytes())
    data[700:2500] = np.random.default_rng(0).integers(0, 256, 1800, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _corrupt_png(path: Path) -> None:
    photo(200, 150).save(path, "PNG")
    data = bytearray(path.read_bytes())
    data[18:20] = b"\x7f\x7f"  # IHDR's width: its checksum no longer holds
    path.write_bytes(bytes(data))


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"

BAD = [
    ("random-bytes", "x.jpg", lambda p: p.write_bytes(np.random.default_rng(1).bytes(3000)), "not an image"),
    ("corrupt-jpeg", "x.jpg", _corrupt_jpeg, "JPEG"),
    ("corrupt-png", "x.png", _corrupt_png, "corrupt PNG"),
    ("truncated-jpeg", "x.jpg", _truncated("JPEG", 0.5), "truncated JPEG"),
    ("truncated-png", "x.png", _truncated("PNG", 0.5), "truncated PNG"),
    ("png-header-only", "x.png", _truncated("PNG", 0.02), "PNG"),
    ("truncated-webp", "x.webp", _truncated("WEBP", 0.5), "WEBP"),
    ("truncated-gif", "x.gif", _truncated("GIF", 0.5), "GIF"),
    ("zero-bytes", "x.jpg", lambda p: p.write_bytes(b""), "empty file"),
    ("text-named-jpg", "x.jpg", lambda p: p.write_text("a shopping list, not a photo\n"), "not an image"),
    ("eps-named-png", "x.png", lambda p: p.write_bytes(EPS), "unsupported image format EPS"),
    ("ico", "x.ico", lambda p: photo(32, 32).save(p, "ICO"), "unsupported image format ICO"),
    ("ppm-named-jpg", "x.jpg", lambda p: photo(32, 32).save(p, "PPM"), "not an image bbx reads"),
    ("missing", "x.jpg", lambda p: None, "file not found"),
    ("directory", "x.png", lambda p: p.mkdir(), "is a directory"),
]


@pytest.mark.parametrize("name,filename,write,words", BAD, ids=[b[0] for b in BAD])
def test_bad_files_raise_image_error(tmp_path, name, filename, write, words):
    path = tmp_path / filename
    write(path)
    pre = Preprocess.from_config(SHORT_EDGE_CROP, "")
    for call in (
        lambda: images.decode(path),
        lambda: images.load(path, pre),
        lambda: images.load(path, pre, fast_decode=True),
    ):
        with pytest.raises(ImageError) as e:
            call()
        assert words in e.value.reason, e.value.reason
        assert "\n" not in e.value.reason and str(e.value) == e.value.reason


def test_formats_outside_the_list_are_refused_even_when_pillow_reads_them(tmp_path):
    path = tmp_path / "x.jpg"
    photo(32, 32).save(path, "PPM")
    with Image.open(path) as im:
        assert im.format == "PPM"
    with pytest.raises(ImageError):
        images.decode(path)


@pytest.mark.parametrize("size", [(150, 100), (300, 300)], ids=["over-the-limit", "over-twice-the-limit"])
def test_decompression_bombs(tmp_path, monkeypatch, size):
    """Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: both are bombs to bbx,
    whatever the warning filters say, and bbx leaves the filters as they were."""
    path = tmp_path / "bomb.png"
    photo(*size).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    for action in ("default", "error", "ignore"):
        with warnings.catch_warnings(record=True):
            warnings.simplefilter(action)
            before = list(warnings.filters)
            with pytest.raises(ImageError) as e:
                images.decode(path)
            assert list(warnings.filters) == before
        assert "decompression bomb" in e.value.reason
        assert "10000" in e.value.reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", size[0] * size[1])
    assert images.decode(path).size == size  # at the limit is fine


def test_slivers_that_would_resize_past_the_pixel_limit_are_refused(tmp_path):
    pre = Preprocess.from_config(SHORT_EDGE_CROP, "")  # shortest edge 256: 1 x 1500 -> 256 x 384000
    photo(1, 1500).save(tmp_path / "sliver.png")
    with pytest.raises(ImageError, match="would make 256x384000 pixels"):
        images.load(tmp_path / "sliver.png", pre)
    photo(1, 300).save(tmp_path / "thin.png")
    assert images.load(tmp_path / "thin.png", pre).shape == (224, 224, 3)


def test_truncated_images_are_not_half_decoded(tmp_path):
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    _truncated("JPEG", 0.9)(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="truncated"):
        images.decode(tmp_path / "x.jpg")
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# ---------------------------------------------------------------------------------------------
# reduced-size JPEG decoding (opt-in)

FAST_SIZES = [(1600, 1200), (1200, 1600), (4000, 600), (500, 3000), (230, 230)]


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("large")
    paths = []
    for i, (w, h) in enumerate(FAST_SIZES):
        paths.append(root / f"{w}x{h}.jpg")
        photo(w, h, seed=i).save(paths[-1], quality=90)
    return paths


@pytest.mark.parametrize("kind", list(KINDS))
def test_fast_decode_only_when_asked_and_never_below_the_resize(large_jpegs, kind):
    pre = Preprocess.from_config(KINDS[kind], "")
    least = pre.min_decode_size()
    reduced = 0
    for path, (w, h) in zip(large_jpegs, FAST_SIZES):
        full = images.load(path, pre)
        np.testing.assert_array_equal(full, images.prepare(images.decode(path), pre))
        np.testing.assert_array_equal(full, images.load(path, pre, fast_decode=False))
        small = images.decode(path, draft=least)
        sw, sh = small.size
        assert sw >= min(least[0], w) and sh >= min(least[1], h)
        rh, rw = pre.resize_size(h, w)
        assert sh >= min(rh, h) and sw >= min(rw, w), (w, h, small.size)  # never upsampling more than needed
        fast = images.load(path, pre, fast_decode=True)
        assert fast.shape == full.shape
        if small.size != (w, h):
            reduced += 1
            assert not np.array_equal(fast, full)
        else:
            np.testing.assert_array_equal(fast, full)
    assert reduced >= 2


def test_fast_decode_follows_exif_orientation_and_leaves_other_formats_alone(tmp_path):
    pre = Preprocess.from_config(SQUASH, "")
    img = photo(1200, 300)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown as 300 wide, 1200 tall
    img.save(tmp_path / "r.jpg", exif=exif)
    small = images.decode(tmp_path / "r.jpg", draft=(224, 224))
    assert small.size == (300, 1200)  # 1/2 would make the displayed width 150 < 224
    # draft asks for (width, height) as displayed: a tall request fits the rotated image
    assert images.decode(tmp_path / "r.jpg", draft=(40, 300)).size == (75, 300)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        images.load(tmp_path / "p.png", pre, fast_decode=True), images.load(tmp_path / "p.png", pre)
    )


# ---------------------------------------------------------------------------------------------
# threads


def test_decoding_in_threads_gives_the_same_pixels(files):
    pre = Preprocess.from_config(SHORT_EDGE_CROP, "")
    paths = [p for p, _ in files][::2] * 2
    want = [images.load(p, pre) for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: images.load(p, pre), paths))
    for p, a, b in zip(paths, got, want):
        np.testing.assert_array_equal(a, b, err_msg=str(p))


# ---------------------------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize("kind", ["squash", "short_edge_crop"])
def test_lookup_table_is_the_processors_arithmetic(kind):
    """Every value of every channel, through transformers' own rescale and normalize."""
    for cfg in (KINDS[kind], {**KINDS[kind], "rescale_factor": 0.0123}, {**KINDS[kind], "do_rescale": False}):
        pre = Preprocess.from_config(cfg, "")
        levels = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256))
        x = hf_rescale(levels, pre.rescale_factor) if pre.do_rescale else levels
        want = hf_normalize(x, pre.mean, pre.std, input_data_format=ChannelDimension.FIRST)
        np.testing.assert_array_equal(images.lookup_table(pre), want[:, 0, :])
    pre = Preprocess.from_config({**KINDS[kind], "do_normalize": False}, "")
    want = hf_rescale(np.arange(256, dtype=np.uint8), pre.rescale_factor)
    np.testing.assert_array_equal(images.lookup_table(pre), np.broadcast_to(want, (3, 256)))


def test_normalize_layouts_dtypes_and_memory_formats():
    pre = Preprocess.from_config(SHORT_EDGE_CROP, "")
    nhwc = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8))
    table = torch.from_numpy(images.lookup_table(pre))
    want = torch.stack([table[c][nhwc[..., c].long()] for c in range(3)], dim=1)
    got = images.normalize(nhwc, pre)
    assert got.shape == (2, 3, 5, 7) and got.is_contiguous() and torch.equal(got, want)
    assert torch.equal(images.normalize(nhwc.permute(0, 3, 1, 2).contiguous(), pre), want)
    cl = images.normalize(nhwc, pre, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, want)
    cl = images.normalize(nhwc.permute(0, 3, 1, 2).contiguous(), pre, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, want)
    half = images.normalize(nhwc, pre, dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, want.half())
    assert torch.equal(images.normalize(nhwc, pre, dtype=torch.bfloat16), want.bfloat16())
    with pytest.raises(TypeError):
        images.normalize(nhwc.float(), pre)
    with pytest.raises(ValueError):
        images.normalize(nhwc[0], pre)
    with pytest.raises(ValueError):
        images.normalize(nhwc[..., :2], pre)


def test_image_error_is_one_line():
    e = ImageError("truncated JPEG\n(image file is truncated)")
    assert e.reason == "truncated JPEG (image file is truncated)" == str(e)


def test_listed_extensions_are_the_listed_formats(tmp_path):
    ext_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
    from bbx.inputs import IMAGE_EXTENSIONS

    for ext in sorted(IMAGE_EXTENSIONS):
        fmt = ext_format.get(ext, ext[1:].upper())
        assert fmt in images.FORMATS
        path = tmp_path / f"x{ext}"
        photo(8, 8).save(path)  # Pillow picks the format from the extension
        assert images.decode(path).size == (8, 8)
    assert os.path.exists(tmp_path / "x.webp")
