"""UperNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", 2018): a pyramid
pooling and FPN head on a backbone's four stages, as OpenMMLab trained it on ADE20k.

transformers' ``UperNetForSemanticSegmentation`` builds its backbone with ``load_backbone`` from
``backbone_config`` (under ``backbone.``) and feeds its ``out_features`` (``stage1..stage4``) to the
head; the backbone's stage norms (``hidden_states_norms``) are part of the checkpoint, trained with
the segmentation model, and ``hf`` applies those. Preprocessing: ``SegformerImageProcessor``
(512x512, bilinear, ImageNet statistics).
"""

from __future__ import annotations

from bbx.task import IMAGENET, ProcessorClass, Task, load_catalog

#: SegformerImageProcessor's class defaults
PROCESSOR = ProcessorClass(
    "SegformerImageProcessor",
    resample=2,
    mean=IMAGENET[0],
    std=IMAGENET[1],
    size={"height": 512, "width": 512},
    default_to_square=True,
)

TASK = Task(
    name="upernet",
    title="UperNet",
    kind="semantic segmentation",
    model_types=("upernet",),
    prefixes={"UperNetForSemanticSegmentation": "backbone."},
    processor=PROCESSOR,
    trained_norms=True,
    catalog=load_catalog(__file__),
    notes="UperNet's backbone: `stage1`..`stage4` (the default) after the stage norms trained with the segmentation "
    "model, at the processor's 512x512.",
)
