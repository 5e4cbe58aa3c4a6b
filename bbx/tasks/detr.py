"""DETR (Carion et al., "End-to-End Object Detection with Transformers", 2020): a transformer
encoder-decoder on the last stage of a convolutional backbone.

transformers' ``DetrForObjectDetection`` builds its backbone (``model.backbone.conv_encoder.model``)
either from timm (``use_timm_backbone``, the public repos' main revision: ``backbone`` names the
timm model, whose ``features_only`` network's layers 1-4 DETR keeps, dilated last with ``dilation``)
or with ``load_backbone`` from a nested ``backbone_config`` (the repos' ``no_timm`` revision). A
timm backbone is read as a timm checkpoint under DETR's prefix (timm's own module names). Its
BatchNorms are frozen (the same statistics applied as a scale and shift, which a BatchNorm in eval
computes too). Default stages: the timm network's layers 1-4 (what DETR's conv encoder returns),
or the nested ``out_features`` (the last stage, which DETR's encoder reads). Preprocessing:
``DetrImageProcessor`` (bilinear, ImageNet statistics, the shortest edge resized to 800 and the
batch padded): the size follows the image, so a run names one (``--image-size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    if isinstance(inner, Mapping):  # transformers 5 writes a timm backbone as a nested timm_backbone config
        timm = inner.get("model_type") == "timm_backbone"
    else:  # DetrConfig reads a missing use_timm_backbone as true
        timm = config.get("use_timm_backbone", True)
    if not timm:
        return nested_backbone_config(config, where, title)
    if isinstance(inner, Mapping):
        return inner
    # the timm backbone DetrConfig builds: the named architecture's features_only network, its
    # layers 1-4 (backbone_kwargs may say otherwise), output stride 16 with dilation (DC5)
    kwargs = config.get("backbone_kwargs") if isinstance(config.get("backbone_kwargs"), Mapping) else {}
    nested: dict[str, Any] = {
        "model_type": "timm_backbone",
        "backbone": config.get("backbone"),
        "num_channels": kwargs.get("num_channels", config.get("num_channels", 3)),
        "out_indices": list(kwargs.get("out_indices", [1, 2, 3, 4])),
    }
    if config.get("dilation"):
        nested["output_stride"] = kwargs.get("output_stride", 16)
    return nested


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
    notes="DETR's backbone: in the public repos' main revision a timm network (its stages as timm names them, the "
    "default `layer1`..`layer4`, which DETR's conv encoder returns), in their `no_timm` revision a transformers one "
    "(the default its last stage, which DETR's encoder reads). Its processor resizes each image's shortest edge to "
    "800, so extraction needs `--image-size`.",
)
