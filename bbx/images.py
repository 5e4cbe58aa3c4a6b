"""PLACEHOLDER (lead's stand-in until the images branch lands): decode + preprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bbx.preprocess import Preprocess


class ImageError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode(path: Path, *, exif: bool = True, draft=None) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:
        raise ImageError(f"not a readable image ({type(e).__name__})") from None


def prepare(image: Image.Image, pre: Preprocess) -> np.ndarray:
    size = pre.output_size
    assert size is not None
    return np.asarray(image.resize((size[1], size[0]), resample=pre.resample))


def load(path: Path, pre: Preprocess, *, exif: bool = True, fast_decode: bool = False) -> np.ndarray:
    return prepare(decode(path, exif=exif), pre)


def normalize(batch, pre: Preprocess, *, dtype=None, memory_format=None):
    import torch

    x = batch.permute(0, 3, 1, 2).float() * pre.rescale_factor
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
