"""Public checkpoints' preprocessor configs and transformers' image processors as the oracle.

transformers 5 picks its torchvision-based processors when torchvision is installed and its PIL
ones otherwise; bbx reproduces the PIL ones, so the oracle is always the ``...Pil`` class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bbx.family import IMAGENET_MEAN, IMAGENET_STD

# Public checkpoints' preprocessor_config.json values, one per recipe (named by what it does, not
# by a family: several families share each).
_IMAGENET = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
#: legacy ViTFeatureExtractor spelling, int size (a square for ViT): resize to 224 x 224
SQUASH = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "resample": 3,
    "size": 224,
    **_IMAGENET,
}
#: the ConvNext recipe, crop_pct 0.875, int size (a shortest edge): short side 256, crop 224
CROP_PCT = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "resample": 3,
    "size": 224,
    **_IMAGENET,
}
#: the ConvNext recipe at 384: warps to a square, no crop
WARP_384 = {**CROP_PCT, "size": 384}
#: the Bit recipe: resize the shortest edge to 256, crop 224
SHORT_EDGE_CROP = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_processor_type": "BitImageProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
    **_IMAGENET,
}
KINDS = {"squash": SQUASH, "crop_pct": CROP_PCT, "warp_384": WARP_384, "short_edge_crop": SHORT_EDGE_CROP}


def hf_processor(folder: Path, pre: dict[str, Any], model_type: str | None = None) -> Any:
    """``AutoImageProcessor.from_pretrained`` on a local folder holding ``pre`` (and a
    ``config.json`` naming ``model_type``, for files that name no processor class)."""
    from transformers import AutoImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    if model_type is not None:
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    proc = AutoImageProcessor.from_pretrained(str(folder))
    assert type(proc).__name__.endswith("Pil"), type(proc)  # the PIL backend, as bbx
    return proc


def hf_pixels(proc: Any, images: list[Image.Image | np.ndarray], **kwargs: Any) -> torch.Tensor:
    """The processor's float32 ``pixel_values`` for RGB images."""
    images = [Image.fromarray(i) if isinstance(i, np.ndarray) else i for i in images]
    assert all(i.mode == "RGB" for i in images)
    return proc(images, return_tensors="pt", **kwargs)["pixel_values"]


def mode_images(width: int = 300, height: int = 200, seed: int = 1) -> dict[str, Image.Image]:
    """A photo in every 8-bit pixel mode a decoder hands over (transparent ones with varying alpha
    and a transparent palette entry), to compare with a processor that converts to RGB itself."""
    from tests.util import photo

    base = photo(width, height, seed=seed)
    rgba = np.asarray(base.convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, width)[None].astype(np.uint8)
    transparent = Image.fromarray(rgba, "RGBA")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 3
    return {
        "RGB": base,
        "L": base.convert("L"),
        "LA": transparent.convert("LA"),
        "RGBA": transparent,
        "P": palette,
        "P-transparency": palette_t,
        "CMYK": base.convert("CMYK"),
        "1": base.convert("1"),
    }


def assert_same_pixels(
    folder: Path, pre: dict[str, Any], model_type: str | None = None, sizes: tuple[tuple[int, int], ...] = ()
) -> None:
    """bbx's preprocessing of ``pre`` gives AutoImageProcessor's (PIL backend) ``pixel_values`` bit
    for bit, on photos of ``sizes`` ((width, height); default: portraits, landscapes, a square,
    small and extreme aspect ratios) and (for processors that convert to RGB themselves) in every
    8-bit pixel mode."""
    from bbx import images
    from bbx.preprocess import Preprocess
    from tests.util import photo

    proc = hf_processor(folder, pre, model_type)
    recipe = Preprocess.from_config(pre, model_type or "")
    default = ((300, 451), (640, 427), (97, 61), (37, 53), (300, 200), (224, 224), (640, 97), (500, 333))
    shots = [photo(w, h, seed=i) for i, (w, h) in enumerate(sizes or default)]
    if getattr(proc, "do_convert_rgb", False):
        shots += list(mode_images().values())
    for img in shots:
        want = proc([img], return_tensors="pt")["pixel_values"]
        got = images.normalize(torch.from_numpy(images.prepare(img, recipe))[None], recipe)
        assert got.shape == want.shape, (img.mode, img.size, tuple(got.shape), tuple(want.shape))
        assert torch.equal(got, want), (img.mode, img.size, float((got - want).abs().max()))
