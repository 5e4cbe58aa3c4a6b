"""DETR (Carion et al., "End-to-End Object Detection with Transformers", 2020): a transformer
encoder-decoder on the last stage of a convolutional backbone.

transformers' ``DetrForObjectDetection`` builds its backbone (``model.backbone.conv_encoder.model``)
either from timm (``use_timm_backbone``, the public repos' main revision: ``backbone`` names the
timm model) or with ``load_backbone`` from a nested ``backbone_config`` (the repos' ``no_timm``
revision). Its BatchNorms are frozen (the same statistics applied as a scale and shift, which a
BatchNorm in eval computes too). Default stages: the nested ``out_features`` (the last stage,
which DETR's encoder reads). Preprocessing: ``DetrImageProcessor`` (bilinear, ImageNet statistics,
the shortest edge resized to 800 and the batch padded): the size follows the image, so a run
names one (``--image-size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bbx.errors import ModelError
from bbx.task import IMAGENET, ProcessorClass, Task, load_catalog, nested_backbone_config

#: DetrImageProcessor's class defaults
PROCESSOR = ProcessorClass(
    "DetrImageProcessor",
    resample=2,
    mean=IMAGENET[0],
    std=IMAGENET[1],
    size={"shortest_edge": 800, "longest_edge": 1333},
    do_pad=True,
)


def _backbone(config: Mapping[str, Any], where: str, title: str) -> Mapping[str, Any]:
    inner = config.get("backbone_config")
    timm = (
        inner.get("model_type") == "timm_backbone"
        if isinstance(inner, Mapping)
        else config.get("use_timm_backbone", True)
    )
    if timm:
        name = (inner or {}).get("backbone") if isinstance(inner, Mapping) else config.get("backbone")
        named = f" ({name})" if isinstance(name, str) else ""
        raise ModelError(
            f"{where} is a DETR checkpoint with a timm backbone{named}, which bbx does not read yet; "
            "the hub repos' no_timm revision nests a transformers backbone bbx reads (--revision no_timm)"
        )
    return nested_backbone_config(config, where, title)


TASK = Task(
    name="detr",
    title="DETR",
    kind="object detection",
    model_types=("detr",),
    prefixes={
        "DetrForObjectDetection": "model.backbone.conv_encoder.model.",
        "DetrForSegmentation": "detr.model.backbone.conv_encoder.model.",
        "DetrModel": "backbone.conv_encoder.model.",
    },
    processor=PROCESSOR,
    trained_norms=False,
    catalog=load_catalog(__file__),
    backbone=_backbone,
    notes="DETR's backbone (the `no_timm` revision of the public repos, which nests a transformers backbone; the "
    "main revision's timm backbone is not read yet): the last stage (the default), which DETR's encoder reads. Its "
    "processor resizes each image's shortest edge to 800, so extraction needs `--image-size`.",
)
