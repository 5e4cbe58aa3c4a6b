"""Preprocess reads preprocessor_config.json as transformers 5 does, and its sizes and crops are
transformers' to the pixel (the oracle: the PIL-backend processors AutoImageProcessor picks)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers.image_transforms import center_crop as hf_center_crop
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import ChannelDimension

from bbx import images
from bbx.errors import ModelError
from bbx.family import IMAGENET_MEAN, IMAGENET_STD
from bbx.preprocess import Preprocess
from tests.processors import (
    CROP_PCT,
    KINDS,
    SHORT_EDGE_CROP,
    SQUASH,
    WARP_384,
    hf_pixels,
    hf_processor,
)
from tests.util import photo

IMAGENET = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
VIT = "ViTImageProcessor"
CONVNEXT = "ConvNextImageProcessor"
BIT = "BitImageProcessor"

# (id, preprocessor_config.json, model_type of config.json or None)
CONFIGS = [
    ("swin", SQUASH, None),
    ("vit-dict", {"image_processor_type": VIT, "size": {"height": 224, "width": 224}, "resample": 3, **IMAGENET}, None),
    ("vit-defaults", {"feature_extractor_type": "ViTFeatureExtractor"}, None),
    ("vit-fast-name-list-size", {"image_processor_type": "ViTImageProcessorFast", "size": [200, 160]}, None),
    ("vit-pil-name", {"image_processor_type": "ViTImageProcessorPil", "size": 96, "resample": 1}, None),
    ("vit-shortest-edge", {"image_processor_type": VIT, "size": {"shortest_edge": 120}}, None),
    (
        "vit-not-square-crop",
        {
            "image_processor_type": VIT,
            "size": 224,
            "default_to_square": False,
            "do_center_crop": True,
            "crop_size": 200,
        },
        None,
    ),
    ("vit-nulls", {"image_processor_type": VIT, "do_rescale": None, "do_center_crop": None, "size": 64}, None),
    (
        "bit-null-switches",
        {"image_processor_type": BIT, "do_normalize": None, "default_to_square": None, "size": 90},
        None,
    ),
    ("vit-nearest", {"image_processor_type": VIT, "resample": 0, "size": 64}, None),
    ("vit-box", {"image_processor_type": VIT, "resample": 4, "size": 64}, None),
    ("vit-hamming", {"image_processor_type": VIT, "resample": 5, "size": 64}, None),
    (
        "vit-scalar-mean",
        {"image_processor_type": VIT, "image_mean": 0.5, "image_std": 0.25, "rescale_factor": 0.5 / 255},
        None,
    ),
    ("deit-defaults", {"image_processor_type": "DeiTImageProcessor"}, None),
    ("resnet", CROP_PCT, None),
    ("convnext-dict", {"image_processor_type": CONVNEXT, "size": {"shortest_edge": 224}, "crop_pct": 0.875}, None),
    ("convnext-384", WARP_384, None),
    ("convnext-defaults", {"image_processor_type": CONVNEXT}, None),
    ("convnext-crop-pct-1", {"feature_extractor_type": "ConvNextFeatureExtractor", "size": 160, "crop_pct": 1.0}, None),
    ("convnext-383", {"image_processor_type": CONVNEXT, "size": 383, "crop_pct": 0.95, "resample": 2}, None),
    (
        "convnext-extra-crop",
        {
            "image_processor_type": CONVNEXT,
            "size": {"shortest_edge": 224},
            "do_center_crop": True,
            "crop_size": {"height": 200, "width": 180},
        },
        None,
    ),
    ("convnext-no-resize", {"image_processor_type": CONVNEXT, "do_resize": False}, None),
    ("dinov2", SHORT_EDGE_CROP, None),
    ("bit-legacy-ints", {"image_processor_type": BIT, "size": 256, "crop_size": 224, **IMAGENET}, None),
    ("bit-defaults", {"image_processor_type": BIT}, None),
    ("bit-fast-name", {"image_processor_type": "BitImageProcessorFast", "size": {"shortest_edge": 100}}, None),
    (
        "bit-crop-larger-than-resize",
        {"image_processor_type": BIT, "size": {"shortest_edge": 100}, "crop_size": {"height": 131, "width": 120}},
        None,
    ),
    (
        "bit-longest-edge",
        {"image_processor_type": BIT, "size": {"shortest_edge": 200, "longest_edge": 260}, "do_center_crop": False},
        None,
    ),
    ("bit-no-resize", {"image_processor_type": BIT, "do_resize": False, "crop_size": 150}, None),
    ("bit-no-normalize", {"image_processor_type": BIT, "do_normalize": False}, None),
    ("bit-crop-null", {"image_processor_type": BIT, "do_center_crop": None}, None),
    (
        "pvt-hub",
        {"image_processor_type": "PvtImageProcessor", "size": {"height": 224, "width": 224}, "resample": 2, **IMAGENET},
        None,
    ),
    ("pvt-defaults", {"image_processor_type": "PvtImageProcessor"}, None),
    ("pvt-int-size", {"image_processor_type": "PvtImageProcessorPil", "size": 200}, None),
    ("model-type-pvt-v2", {}, "pvt_v2"),
    ("model-type-regnet", {}, "regnet"),
    ("model-type-focalnet", {}, "focalnet"),
    ("model-type-resnet", {}, "resnet"),
    ("model-type-swin", {}, "swin"),
    ("model-type-dinov2", {}, "dinov2"),
    ("model-type-convnext", {"size": 224, "crop_pct": 0.9, **IMAGENET}, "convnext"),
]
_HF_KIND = {
    "ViTImageProcessorPil": "resize",
    "DeiTImageProcessorPil": "resize",
    "ConvNextImageProcessorPil": "crop_pct",
    "BitImageProcessorPil": "resize",
    "PvtImageProcessorPil": "resize",
}
SIZES = [(37, 53), (300, 200), (224, 224), (13, 7), (640, 97)]  # (width, height)


def _size(sd) -> dict[str, int]:
    return {k: v for k, v in dict(sd).items() if v is not None}


@pytest.mark.parametrize("cfg,model_type", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_reads_configs_and_preprocesses_as_transformers(tmp_path, cfg, model_type):
    proc = hf_processor(tmp_path, cfg, model_type)
    pre = Preprocess.from_config(cfg, model_type or "")

    assert pre.kind == _HF_KIND[type(proc).__name__]
    assert pre.do_resize == bool(proc.do_resize)
    assert dict(pre.size) == _size(proc.size)
    assert pre.resample == int(proc.resample)
    assert pre.do_center_crop == bool(proc.do_center_crop)
    if pre.do_center_crop:
        assert pre.crop_size == (proc.crop_size.height, proc.crop_size.width)
    assert pre.do_rescale == bool(proc.do_rescale)
    assert pre.rescale_factor == proc.rescale_factor
    assert pre.do_normalize == bool(proc.do_normalize)
    assert pre.mean == tuple(np.broadcast_to(proc.image_mean, 3).tolist())
    assert pre.std == tuple(np.broadcast_to(proc.image_std, 3).tolist())
    if pre.kind == "crop_pct":
        assert pre.crop_pct == proc.crop_pct
    json.dumps(pre.describe())

    # and the same pixels, image by image (some recipes' output size follows the image)
    for i, (w, h) in enumerate(SIZES):
        img = photo(w, h, seed=i)
        want = hf_pixels(proc, [img])
        got = images.normalize(torch.from_numpy(images.prepare(img, pre))[None], pre)
        assert got.shape == want.shape, (w, h)
        assert torch.equal(got, want), (w, h, float((got - want).abs().max()))
        if pre.output_size is not None:
            assert tuple(got.shape[2:]) == pre.output_size


LEGACY_PAIRS = [
    (
        "swin",
        SQUASH,
        {**SQUASH, "feature_extractor_type": None, "image_processor_type": VIT, "size": {"height": 224, "width": 224}},
    ),
    ("vit-fast", SQUASH, {**SQUASH, "feature_extractor_type": "ViTImageProcessorFast"}),
    (
        "resnet",
        CROP_PCT,
        {**CROP_PCT, "feature_extractor_type": None, "image_processor_type": CONVNEXT, "size": {"shortest_edge": 224}},
    ),
    ("convnext-pil", WARP_384, {**WARP_384, "feature_extractor_type": "ConvNextImageProcessorPil"}),
    ("dinov2", {**SHORT_EDGE_CROP, "size": 256, "crop_size": 224}, SHORT_EDGE_CROP),
    ("dinov2-by-model-type", {**SHORT_EDGE_CROP, "image_processor_type": None}, SHORT_EDGE_CROP),
]


@pytest.mark.parametrize("old,new", [p[1:] for p in LEGACY_PAIRS], ids=[p[0] for p in LEGACY_PAIRS])
def test_legacy_spellings_mean_the_same(old, new):
    a = Preprocess.from_config(old, "dinov2")
    b = Preprocess.from_config(new, "dinov2")
    assert replace(a, processor="") == replace(b, processor="")


@pytest.mark.parametrize(
    "cfg,model_type,words",
    [
        ({"image_processor_type": "DonutImageProcessor"}, "dinov2", "DonutImageProcessor"),
        ({}, "vit_mae", "names no image processor"),
        ({"image_processor_type": VIT, "size": {"max_height": 10, "max_width": 10}}, "", "unsupported size"),
        ({"image_processor_type": VIT, "size": {"height": 10}}, "", "unsupported size"),
        ({"image_processor_type": CONVNEXT, "size": {"height": 224, "width": 224}}, "", "shortest_edge"),
        ({"image_processor_type": VIT, "do_center_crop": True}, "", "crop_size is missing"),
        ({"image_processor_type": BIT, "crop_size": {"shortest_edge": 3}}, "", "crop_size needs height and width"),
        ({"image_processor_type": VIT, "resample": 7}, "", "resample"),
        ({"image_processor_type": VIT, "image_mean": [0.5, 0.5]}, "", "image_mean"),
        ({"image_processor_type": VIT, "image_std": "x"}, "", "image_std"),
        ({"image_processor_type": VIT, "size": 0}, "", "positive"),
        ({"image_processor_type": VIT, "size": True}, "", "size"),
        ({"image_processor_type": VIT, "size": [1, 2, 3]}, "", "size"),
        ({"image_processor_type": VIT, "do_pad": True}, "", "do_pad"),
        ({"image_processor_type": CONVNEXT, "crop_pct": 0}, "", "crop_pct"),
        ({"image_processor_type": CONVNEXT, "crop_pct": "0.9"}, "", "crop_pct"),
        ({"image_processor_type": VIT, "rescale_factor": [1]}, "", "rescale_factor"),
        ({"image_processor_type": VIT, "image_std": 0}, "", "image_std must be finite and non-zero"),
        ({"image_processor_type": VIT, "image_std": [0.2, 0.0, 0.2]}, "", "non-zero"),
        ({"image_processor_type": VIT, "image_mean": [0.5, float("nan"), 0.5]}, "", "finite"),
    ],
)
def test_refuses_what_it_cannot_reproduce(cfg, model_type, words):
    with pytest.raises(ModelError) as e:
        Preprocess.from_config(cfg, model_type)
    assert words in e.value.message
    assert "\n" not in e.value.message


def test_resize_sizes_match_transformers():
    dims = [1, 2, 3, 7, 13, 100, 149, 150, 223, 224, 225, 255, 256, 257, 333, 1000, 4097]
    for edge in (1, 7, 200, 224, 256, 383, 384, 518):
        short = Preprocess.from_config({"image_processor_type": BIT, "size": edge}, "")
        cnx = Preprocess.from_config({"image_processor_type": CONVNEXT, "size": edge, "crop_pct": 0.875}, "")
        capped = Preprocess.from_config(
            {"image_processor_type": BIT, "size": {"shortest_edge": edge, "longest_edge": 2 * edge + 1}}, ""
        )
        for h in dims:
            for w in dims:
                img = np.broadcast_to(np.uint8(0), (3, h, w))  # only its shape is read
                kw = {"default_to_square": False, "input_data_format": ChannelDimension.FIRST}
                assert short.resize_size(h, w) == get_resize_output_image_size(img, size=edge, **kw)
                want = (edge, edge) if edge >= 384 else get_resize_output_image_size(img, size=int(edge / 0.875), **kw)
                assert cnx.resize_size(h, w) == tuple(want)
                assert capped.resize_size(h, w) == get_size_with_aspect_ratio((h, w), edge, 2 * edge + 1)


def test_center_crop_matches_transformers():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (5, 8), (8, 5), (224, 224), (225, 301), (7, 100)]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for ch, cw in [(1, 1), (4, 4), (5, 8), (6, 3), (224, 224), (9, 2), (2, 9), (300, 301)]:
            want = hf_center_crop(pixels.transpose(2, 0, 1), (ch, cw), input_data_format=ChannelDimension.FIRST)
            got = images.center_crop(pixels, (ch, cw))
            assert got.shape == (ch, cw, 3)
            np.testing.assert_array_equal(got, want.transpose(1, 2, 0), err_msg=f"{(h, w)} -> {(ch, cw)}")


def test_output_and_decode_sizes():
    def pre(cfg):
        return Preprocess.from_config(cfg, "")

    assert pre(SQUASH).output_size == (224, 224) and pre(SQUASH).min_decode_size() == (224, 224)
    assert pre(CROP_PCT).output_size == (224, 224) and pre(CROP_PCT).min_decode_size() == (256, 256)
    assert pre(WARP_384).output_size == (384, 384) and pre(WARP_384).min_decode_size() == (384, 384)
    assert pre(SHORT_EDGE_CROP).output_size == (224, 224) and pre(SHORT_EDGE_CROP).min_decode_size() == (256, 256)
    vit = pre({"image_processor_type": VIT, "size": [200, 160]})
    assert vit.output_size == (200, 160) and vit.min_decode_size() == (160, 200)  # (width, height)
    assert pre({"image_processor_type": VIT, "size": {"shortest_edge": 120}}).output_size is None
    assert pre({"image_processor_type": BIT, "do_resize": False}).min_decode_size() is None
    assert pre({"image_processor_type": BIT, "do_resize": False, "do_center_crop": False}).output_size is None


# kind, n, the processor's size arguments for an n x n output (written out, not derived from bbx)
IMAGE_SIZE_CASES = [
    ("squash", 160, {"size": {"height": 160, "width": 160}}),
    ("squash", 448, {"size": {"height": 448, "width": 448}}),
    ("crop_pct", 160, {"size": {"shortest_edge": 160}}),
    ("crop_pct", 448, {"size": {"shortest_edge": 448}}),
    ("warp_384", 288, {"size": {"shortest_edge": 288}}),  # below 384: the crop_pct rule again
    ("short_edge_crop", 448, {"size": {"shortest_edge": 512}, "crop_size": {"height": 448, "width": 448}}),
    ("short_edge_crop", 112, {"size": {"shortest_edge": 128}, "crop_size": {"height": 112, "width": 112}}),
]


@pytest.mark.parametrize("kind,n,kwargs", IMAGE_SIZE_CASES, ids=[f"{c[0]}-{c[1]}" for c in IMAGE_SIZE_CASES])
def test_with_image_size_matches_processor_size_arguments(tmp_path, kind, n, kwargs):
    proc = hf_processor(tmp_path, KINDS[kind])
    pre = Preprocess.from_config(KINDS[kind], "").with_image_size(n)
    assert pre.output_size == (n, n)
    imgs = [photo(333, 517, seed=1), photo(700, 90, seed=2)]
    want = hf_pixels(proc, imgs, **kwargs)
    got = images.normalize(torch.from_numpy(np.stack([images.prepare(i, pre) for i in imgs])), pre)
    assert got.shape == want.shape == (2, 3, n, n)
    assert float((got - want).abs().max()) <= 1e-6


def test_with_image_size_keeps_shortest_edge_recipes_and_refuses_nonsense():
    pre = Preprocess.from_config({"image_processor_type": VIT, "size": {"shortest_edge": 120}}, "")
    assert dict(pre.with_image_size(200).size) == {"shortest_edge": 200}
    with pytest.raises(ValueError):
        pre.with_image_size(0)


# --- input geometry: HxW sizes, --resize squash|pad, where each input came from -----------------

# kind, (h, w), the processor's own arguments for that output (written out, not derived from bbx)
HXW_CASES = [
    ("squash", (300, 200), {"size": {"height": 300, "width": 200}}),
    ("short_edge_crop", (448, 672), {"size": {"shortest_edge": 768}, "crop_size": {"height": 448, "width": 672}}),
    ("short_edge_crop", (224, 160), {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 160}}),
]


@pytest.mark.parametrize("kind,size,kwargs", HXW_CASES, ids=[f"{c[0]}-{c[1][0]}x{c[1][1]}" for c in HXW_CASES])
def test_non_square_image_sizes_match_the_processor(tmp_path, kind, size, kwargs):
    proc = hf_processor(tmp_path, KINDS[kind])
    pre = Preprocess.from_config(KINDS[kind], "").with_image_size(size)
    assert pre.output_size == size
    imgs = [photo(333, 517, seed=1), photo(700, 90, seed=2)]
    want = hf_pixels(proc, imgs, **kwargs)
    got = images.normalize(torch.from_numpy(np.stack([images.prepare(i, pre) for i in imgs])), pre)
    assert got.shape == want.shape == (2, 3, *size)
    assert float((got - want).abs().max()) <= 1e-6


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_squash_is_the_plain_resize_of_the_whole_image(tmp_path, kind):
    """--resize squash: every recipe becomes transformers' plain resize to the input size (its
    filter kept), the whole image in, the aspect ratio given up."""
    squash = hf_processor(tmp_path / "vit", {**SQUASH, "resample": KINDS[kind].get("resample", 3)})
    pre = Preprocess.from_config(KINDS[kind], "").with_resize("squash").with_image_size((192, 256))
    imgs = [photo(333, 517, seed=3), photo(700, 90, seed=4)]
    want = hf_pixels(squash, imgs, size={"height": 192, "width": 256})
    got = images.normalize(torch.from_numpy(np.stack([images.prepare(i, pre) for i in imgs])), pre)
    assert float((got - want).abs().max()) <= 1e-6


def test_pad_fits_the_whole_image_inside_and_pads_with_black(tmp_path):

    vit = hf_processor(tmp_path, SQUASH)
    pre = Preprocess.from_config(CROP_PCT, "").with_resize("pad").with_image_size((200, 300))
    for w, h in ((400, 100), (90, 700), (300, 200)):
        im = photo(w, h, seed=w)
        got = images.prepare(im, pre)
        assert got.shape == (200, 300, 3)
        fh, fw = pre_size = images_fit = __import__("bbx.preprocess", fromlist=["fit_inside"]).fit_inside(
            h, w, (200, 300)
        )
        assert (fh == 200 or fw == 300) and pre_size == images_fit
        top, left = (200 - fh) // 2, (300 - fw) // 2
        inner = hf_pixels(vit, [im], size={"height": fh, "width": fw}, do_normalize=False, do_rescale=False)[0]
        assert np.array_equal(got[top : top + fh, left : left + fw], inner.permute(1, 2, 0).round().byte().numpy())
        outside = np.ones((200, 300), bool)
        outside[top : top + fh, left : left + fw] = False
        assert (got[outside] == 0).all()


def _gradient(w: int, h: int):
    """R and G grow with x and y: a pixel's colour says where on the image it came from."""
    from PIL import Image

    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("mode", ["crop", "squash", "pad"])
def test_the_recorded_box_is_where_each_input_pixel_came_from(kind, mode):
    """The box Preprocess.geometry gives, mapped back onto the photo, finds for input pixels the
    colours the photo has there (a colour gradient encodes the position)."""
    pre = Preprocess.from_config(KINDS[kind], "").with_resize(mode)
    for w, h in ((320, 240), (200, 500)):
        im = _gradient(w, h)
        pixels = images.prepare(im, pre).astype(float)
        top, left, bottom, right = pre.geometry(h, w)
        ih, iw = pixels.shape[:2]
        for i, j in ((ih // 4, iw // 3), (ih // 2, iw // 2), (3 * ih // 4, 2 * iw // 3)):
            y = top + (i + 0.5) * (bottom - top) / ih
            x = left + (j + 0.5) * (right - left) / iw
            if 0 <= x < w and 0 <= y < h:
                assert abs(pixels[i, j, 0] - x / (w - 1) * 255) <= 3, (kind, mode, i, j)
                assert abs(pixels[i, j, 1] - y / (h - 1) * 255) <= 3, (kind, mode, i, j)
            else:  # a padded pixel
                assert pixels[i, j].max() == 0
    if mode == "squash":
        assert pre.geometry(240, 320) == (0.0, 0.0, 240.0, 320.0)


def test_reduced_size_decoding_keeps_the_box_on_the_full_image(tmp_path):
    from bbx.images import load_with_geometry

    path = tmp_path / "big.jpg"
    _gradient(1600, 1200).save(path, quality=95)
    pre = Preprocess.from_config(SHORT_EDGE_CROP, "")
    _, full = load_with_geometry(path, pre)
    _, fast = load_with_geometry(path, pre, fast_decode=True)
    assert full.source == fast.source == (1200, 1600)
    assert np.allclose(full.box, fast.box, atol=2.0)


def test_geometry_options_refuse_what_they_cannot_do():
    shortest = Preprocess.from_config({"image_processor_type": VIT, "size": {"shortest_edge": 120}}, "")
    with pytest.raises(ValueError, match="--resize squash or pad"):
        shortest.with_image_size((100, 200))
    with pytest.raises(ValueError, match="resize mode"):
        shortest.with_resize("stretch")


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("mode", ["crop", "squash", "pad"])
@pytest.mark.parametrize("size", [None, (160, 224)])
def test_the_recorded_box_of_timm_recipes_is_where_each_input_pixel_came_from(crop_mode, mode, size):
    """timm's eval transform (each crop mode), at its own size and at an HxW override, under every
    --resize mode: the box Preprocess.geometry gives finds the photo's colours (as above); a
    pixel outside the photo is the padding's colour."""
    from bbx.family import timm_data

    pre = Preprocess.from_config({"timm_data_config": timm_data(224, 0.875, crop_mode=crop_mode)}, "")
    pre = pre.with_resize(mode)
    if size is not None:
        pre = pre.with_image_size(size)
    fill = np.array(pre.pad_fill if mode == "crop" else (0, 0, 0), dtype=float)
    for w, h in ((320, 240), (200, 500), (150, 120)):
        im = _gradient(w, h)
        pixels = images.prepare(im, pre).astype(float)
        assert pixels.shape[:2] == (size or (224, 224))
        top, left, bottom, right = pre.geometry(h, w)
        ih, iw = pixels.shape[:2]
        for i, j in ((ih // 4, iw // 3), (ih // 2, iw // 2), (3 * ih // 4, 2 * iw // 3), (1, 1)):
            y = top + (i + 0.5) * (bottom - top) / ih
            x = left + (j + 0.5) * (right - left) / iw
            if 0 <= x < w and 0 <= y < h:
                assert abs(pixels[i, j, 0] - x / (w - 1) * 255) <= 4, (crop_mode, mode, w, h, i, j)
                assert abs(pixels[i, j, 1] - y / (h - 1) * 255) <= 4, (crop_mode, mode, w, h, i, j)
            else:
                assert np.abs(pixels[i, j] - fill).max() <= 1, (crop_mode, mode, w, h, i, j)
