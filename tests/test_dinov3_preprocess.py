"""DINOv3's image processor (``DINOv3ViTImageProcessor``, transformers' torchvision backend only):
rescale, resize the float image with antialiasing, normalise. bbx's ``float_resize`` recipe gives
its pixel_values bit for bit.

The oracle needs torchvision, which does not import beside this environment's torch, so it runs
in another Python (tests/oracles/torchvision_pixels.py). tests/data/torchvision_pixels.npz holds
images and recipes with the SHA-256 of the real processor's answer (torch 2.14.1, torchvision
0.29.1, transformers 5.24), checked here without it; with ``BBX_TORCHVISION_PYTHON`` set to such a
Python (a command line), the processor also runs live on every size and pixel mode of
tests/test_images.py's files. ``python -m tests.test_dinov3_preprocess`` (with that variable)
rewrites the data file.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import bbx
from bbx import images, registry
from bbx.errors import ModelError, UsageError
from bbx.preprocess import Preprocess
from tests.cli import run
from tests.oracles.torchvision_pixels import digest
from tests.util import photo, tiny_checkpoint

DATA = Path(__file__).parent / "data" / "torchvision_pixels.npz"
ORACLE = Path(__file__).parent / "oracles" / "torchvision_pixels.py"
HUB = registry.lookup("dinov3-vits16").preprocessor_dict()

#: recipes: the hub's, and every switch the recipe has
RECIPES: list[dict[str, Any]] = [
    HUB,
    {**HUB, "size": {"height": 40, "width": 56}},  # not square
    {**HUB, "resample": 3, "size": {"height": 48, "width": 48}},  # bicubic
    {**HUB, "resample": 0, "size": {"height": 30, "width": 20}},  # nearest-exact
    {**HUB, "size": {"shortest_edge": 40}, "do_center_crop": True, "crop_size": {"height": 32, "width": 36}},
    {**HUB, "size": {"height": 30, "width": 25}, "do_center_crop": True, "crop_size": {"height": 33, "width": 29}},
    {**HUB, "size": {"height": 48, "width": 64}},  # the 64x48 input is not resized at all
    {**HUB, "do_normalize": False, "size": {"height": 24, "width": 24}},
    {"image_processor_type": "DINOv3ViTImageProcessor", "size": {"height": 36, "width": 36}},  # class defaults
]


def _images() -> list[np.ndarray]:
    """Small RGB images: down- and up-scaled, slivers, one at a recipe's own size, and the RGB of
    other pixel modes as bbx converts them."""
    sizes = [(13, 7), (3, 97), (61, 47), (120, 90), (64, 48), (1, 1)]
    out = [np.asarray(photo(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    for j, mode in enumerate(["L", "P", "CMYK", "1", "RGBA"]):
        im = photo(41 + 3 * j, 29 - j, seed=20 + j, mode="RGB" if mode == "RGBA" else mode)
        if mode == "RGBA":
            alpha = np.full((im.height, im.width), 255, np.uint8)
            alpha[: im.height // 3] = 0
            alpha[im.height // 3 : 2 * im.height // 3] = 128
            im = im.convert("RGBA")
            im.putalpha(Image.fromarray(alpha))
        out.append(np.asarray(images.to_rgb(im)))
    return out


def _bbx(pixels: np.ndarray, pre: Preprocess) -> torch.Tensor:
    x = images.prepare(Image.fromarray(pixels, "RGB"), pre)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    return images.normalize(torch.from_numpy(x[None]), pre)[0]


def _oracle_command() -> list[str] | None:
    spec = os.environ.get("BBX_TORCHVISION_PYTHON")
    return shlex.split(spec) if spec else None


def _run_oracle(tmp: Path, configs: list[dict[str, Any]], inputs: list[np.ndarray]) -> Any:
    command = _oracle_command()
    assert command is not None
    src, dst = tmp / "in.npz", tmp / "out.npz"
    np.savez(src, config=np.array(json.dumps(configs)), **{f"image_{i}": a for i, a in enumerate(inputs)})
    subprocess.run([*command, str(ORACLE), str(src), str(dst)], check=True, capture_output=True)
    return np.load(dst)


def test_pixels_equal_the_recorded_processor_outputs():
    data = np.load(DATA)
    configs = json.loads(str(data["config"]))
    count = sum(1 for k in data.files if k.startswith("image_"))
    assert configs == RECIPES and count == len(_images())
    for c, cfg in enumerate(configs):
        pre = Preprocess.from_config(cfg, "dinov3_vit")
        for i in range(count):
            got = _bbx(data[f"image_{i}"], pre)
            assert digest(got.numpy()) == str(data[f"digest_{c}_{i}"]), (c, i, cfg)


@pytest.mark.skipif(_oracle_command() is None, reason="BBX_TORCHVISION_PYTHON names no Python with torchvision")
def test_pixels_equal_the_live_processor_in_every_mode_and_size(tmp_path):
    from tests.test_images import MODES, SIZES  # the same sizes and pixel modes

    inputs = [np.asarray(photo(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]
    for i, (name, make, fmts) in enumerate(MODES):
        path = tmp_path / f"{name}.{'tif' if 'TIFF' in fmts else 'png'}"
        make(150 + 7 * i, 110 - 3 * i, 40 + i).save(path, "TIFF" if "TIFF" in fmts else "PNG")
        inputs.append(np.asarray(images.decode(path)))
    configs = [HUB, RECIPES[1], RECIPES[2], RECIPES[4]]
    want = _run_oracle(tmp_path, configs, inputs)
    for c, cfg in enumerate(configs):
        pre = Preprocess.from_config(cfg, "dinov3_vit")
        for i, pixels in enumerate(inputs):
            assert torch.equal(_bbx(pixels, pre), torch.from_numpy(want[f"pixels_{c}_{i}"])), (c, i)


def test_eight_bit_resizing_would_not_be_the_same():
    """The point of the float recipe: Pillow's 8-bit resize of the same image is visibly off."""
    data = np.load(DATA)
    pre = Preprocess.from_config(HUB, "dinov3_vit")
    eight_bit = Preprocess.from_config({**HUB, "image_processor_type": "ViTImageProcessor"}, "")
    pixels = data["image_3"]
    got = _bbx(pixels, pre)
    other = images.normalize(torch.from_numpy(images.prepare(Image.fromarray(pixels), eight_bit)[None]), eight_bit)[0]
    assert float((got - other).abs().max()) > 1e-3


def test_reading_the_recipe():
    pre = Preprocess.from_config(HUB, "dinov3_vit")
    assert pre.kind == "float_resize" and pre.float_pixels
    assert pre.output_size == (224, 224) and pre.resample == 2 and not pre.do_center_crop
    assert pre.describe()["kind"] == "float_resize"
    plain = Preprocess.from_config({"image_processor_type": "DINOv3ViTImageProcessor"}, "")
    fast = Preprocess.from_config({"image_processor_type": "DINOv3ViTImageProcessorFast"}, "")
    assert replace(fast, processor=plain.processor) == plain
    # a file naming no processor: DINOv3's for both DINOv3 families (transformers has none for the
    # ConvNeXt ones; their hub files name DINOv3ViTImageProcessorFast)
    for model_type in ("dinov3_vit", "dinov3_convnext"):
        assert Preprocess.from_config({}, model_type).kind == "float_resize"
    assert pre.with_image_size(320).output_size == (320, 320)


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({**HUB, "resample": 1}, "lanczos"),
        ({**HUB, "resample": 4}, "box"),
        ({**HUB, "do_rescale": False}, "do_rescale"),
    ],
)
def test_refuses_what_the_processor_cannot_do(cfg, words):
    with pytest.raises(ModelError, match=words):
        Preprocess.from_config(cfg, "dinov3_vit")


@pytest.mark.parametrize("model_type", ["dinov3_vit", "dinov3_convnext"])
def test_extractor_takes_float_batches_and_equals_extract(tmp_path, photos, model_type):
    """Extractor.load gives the float32 pixels Extractor.run takes (a uint8 batch is refused), and
    what it computes is what bbx extract writes, to the bit (channels-last input for the ConvNeXt)."""
    folder = tiny_checkpoint(tmp_path / "ckpt", model_type, seed=3)
    _, paths = photos
    out = tmp_path / "f.h5"
    r = run("extract", "-m", folder, "--out-indices", "0,-1", "-b", "4", "-o", out, *map(str, paths))
    assert r.exit_code == 0, r.stderr
    ex = bbx.Extractor(str(folder), out_indices=[0, -1], device="cpu")
    pixels = ex.load(paths[0])
    assert pixels.dtype == np.float32 and pixels.shape == (224, 224, 3)
    with bbx.open(out) as f:
        for start in range(0, len(paths), 4):  # the same batches as the run
            maps = ex(paths[start : start + 4])
            again = ex.run(np.stack([ex.load(p) for p in paths[start : start + 4]]))
            for name in ex.stages:
                assert np.array_equal(maps[name].numpy(), f[name].raw[start : start + 4]), (name, start)
                assert torch.equal(maps[name], again[name])
    with pytest.raises(UsageError, match="float32"):
        ex.run(np.zeros((1, 224, 224, 3), np.uint8))


def _write_data() -> None:
    """Rewrite tests/data/torchvision_pixels.npz from the live oracle (BBX_TORCHVISION_PYTHON)."""
    import tempfile

    inputs = _images()
    with tempfile.TemporaryDirectory() as tmp:
        out = _run_oracle(Path(tmp), RECIPES, inputs)
        digests = {k: out[k] for k in out.files if k.startswith("digest_")}
        versions = out["versions"]
    DATA.parent.mkdir(exist_ok=True)
    np.savez_compressed(
        DATA,
        config=np.array(json.dumps(RECIPES)),
        versions=versions,
        **{f"image_{i}": a for i, a in enumerate(inputs)},
        **digests,
    )
    print(f"wrote {DATA} ({DATA.stat().st_size} bytes) from {versions}", file=sys.stderr)


if __name__ == "__main__":
    _write_data()


@pytest.mark.parametrize("mode", ["squash", "pad"])
def test_the_float_recipe_keeps_the_whole_image_under_resize_squash_and_pad(mode):
    """--resize squash / pad with DINOv3's float recipe: the input is the whole photo (squashed, or
    fitted inside and padded with 0), and the recorded box says where each pixel came from."""

    from bbx import images
    from tests.test_preprocess import _gradient

    pre = Preprocess.from_config({"image_processor_type": "DINOv3ViTImageProcessor"}, "")
    pre = pre.with_resize(mode).with_image_size((96, 128))
    for w, h in ((320, 240), (100, 300)):
        pixels = images.prepare(_gradient(w, h), pre) * 255  # rescaled floats back to 0..255
        assert pixels.shape == (96, 128, 3) and pixels.dtype == np.float32
        top, left, bottom, right = pre.geometry(h, w)
        for i, j in ((24, 40), (48, 64), (72, 90), (2, 2), (93, 125)):
            y = top + (i + 0.5) * (bottom - top) / 96
            x = left + (j + 0.5) * (right - left) / 128
            if 0 <= x < w and 0 <= y < h:
                assert abs(pixels[i, j, 0] - x / (w - 1) * 255) <= 4, (mode, w, h, i, j)
                assert abs(pixels[i, j, 1] - y / (h - 1) * 255) <= 4, (mode, w, h, i, j)
            else:
                assert mode == "pad" and pixels[i, j].max() == 0, (mode, w, h, i, j)
