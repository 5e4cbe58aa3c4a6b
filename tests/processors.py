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

from bbx import registry

#: the hub's preprocessor_config.json values, as bbx's registry embeds them
#: microsoft/swin-*: legacy ViTFeatureExtractor spelling, int size (a square for ViT)
SWIN = registry.lookup("swin-tiny").preprocessor_dict()
#: microsoft/resnet-*: ConvNext recipe, crop_pct 0.875, int size (a shortest edge)
RESNET = registry.lookup("resnet-50").preprocessor_dict()
#: facebook/convnext-*-384: at 384 the ConvNext recipe warps to a square, no crop
CONVNEXT_384 = {**RESNET, "size": 384}
#: facebook/dinov2-*: Bit recipe, resize shortest edge 256, crop 224
DINOV2 = registry.lookup("dinov2-small").preprocessor_dict()
KINDS = {"vit": SWIN, "convnext": RESNET, "convnext384": CONVNEXT_384, "bit": DINOV2}


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
