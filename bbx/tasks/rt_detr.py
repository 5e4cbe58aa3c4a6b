"""RT-DETR (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", 2023): a hybrid encoder
and a DETR decoder on three stages of a convolutional backbone.

transformers' ``RTDetrForObjectDetection`` builds its backbone with ``load_backbone`` from
``backbone_config`` (``model.backbone.model``, after ``RTDetrConvEncoder`` froze its BatchNorms:
the same statistics applied as a scale and shift, which a BatchNorm in eval computes too) and feeds
its ``out_indices`` (``stage2..stage4``) to the encoder. Preprocessing: ``RTDetrImageProcessor``
(640x640, bilinear, rescaled to 0..1 and not normalised).
"""

from __future__ import annotations

from bbx.task import IMAGENET, ProcessorClass, Task, load_catalog

#: RTDetrImageProcessor's class defaults
PROCESSOR = ProcessorClass(
    "RTDetrImageProcessor",
    resample=2,
    mean=IMAGENET[0],
    std=IMAGENET[1],
    size={"height": 640, "width": 640},
    do_normalize=False,
)

TASK = Task(
    name="rt_detr",
    title="RT-DETR",
    kind="object detection",
    model_types=("rt_detr",),
    prefixes={"RTDetrForObjectDetection": "model.backbone.model.", "RTDetrModel": "backbone.model."},
    processor=PROCESSOR,
    trained_norms=False,
    catalog=load_catalog(__file__),
    notes="RT-DETR's backbone: the three stages its encoder taps (`stage2`..`stage4`, the default), at the "
    "processor's 640x640 with pixels rescaled to 0..1 (no mean/std).",
)
