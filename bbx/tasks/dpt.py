"""DPT (Ranftl et al., "Vision Transformers for Dense Prediction", 2021) heads on a nested backbone,
as DINOv2's depth checkpoints use them (Oquab et al., 2023).

transformers' ``DPTForDepthEstimation`` builds its backbone with ``load_backbone`` from
``backbone_config`` (under ``backbone.``) when the config nests one and is not hybrid; DPT's own
ViT (no ``backbone_config``) and the hybrid variant keep their weights elsewhere and are refused.
The DINOv2 depth checkpoints tap four stages with ``apply_layernorm`` false (bbx honours it: ``hf``
applies no norm) and ``reshape_hidden_states`` false (bbx returns patch maps all the same).
Preprocessing: ``DPTImageProcessor`` without a resize, padding each side to a multiple of 14:
the size follows the image, so a run names one (``--image-size``, a multiple of 14), resized with
the processor's (bicubic) resample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bbx.errors import ModelError
from bbx.task import STANDARD, ProcessorClass, Task, load_catalog, nested_backbone_config

#: DPTImageProcessor's class defaults
PROCESSOR = ProcessorClass(
    "DPTImageProcessor",
    resample=3,
    mean=STANDARD[0],
    std=STANDARD[1],
    size={"height": 384, "width": 384},
    default_to_square=True,
    divisor_pads=True,
)


def _backbone(config: Mapping[str, Any], where: str, title: str) -> Mapping[str, Any]:
    if config.get("is_hybrid"):
        raise ModelError(
            f"{where} is a hybrid DPT checkpoint (its backbone sits inside DPT's own model); bbx does not read it"
        )
    if not isinstance(config.get("backbone_config"), Mapping):
        raise ModelError(
            f"{where} is a DPT checkpoint with its own vision transformer (no backbone_config); bbx reads DPT "
            "backbones nested as backbone_config"
        )
    return nested_backbone_config(config, where, title)


TASK = Task(
    name="dpt",
    title="DPT",
    kind="depth estimation",
    model_types=("dpt",),
    prefixes={"DPTForDepthEstimation": "backbone.", "DPTForSemanticSegmentation": "backbone."},
    processor=PROCESSOR,
    trained_norms=True,
    catalog=load_catalog(__file__),
    backbone=_backbone,
    notes="DPT's nested backbone: the four stages its head taps (the default), normed as the task config says (the "
    "public depth checkpoints: no norm, `apply_layernorm` false), as patch maps. Their processor pads each image to "
    "a multiple of 14 without resizing it, so extraction needs `--image-size` (a multiple of 14).",
)
