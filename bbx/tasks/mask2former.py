"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation",
2022): a pixel decoder and a masked-attention transformer decoder on a backbone's four stages.

transformers' ``Mask2FormerForUniversalSegmentation`` builds its backbone with ``load_backbone``
from ``backbone_config`` (``model.pixel_level_module.encoder``) and feeds its ``out_features``
(``stage1..stage4``) to the pixel decoder. The backbone's stage norms (``hidden_states_norms``)
are part of the checkpoint, trained with the segmentation model: ``hf`` applies those.
Preprocessing: ``Mask2FormerImageProcessor`` (bilinear, ImageNet statistics, sizes rounded up to
multiples of ``size_divisor`` 32); the public checkpoints resize to 384x384.
"""

from __future__ import annotations

from bbx.task import IMAGENET, ProcessorClass, Task, load_catalog

PROCESSOR = ProcessorClass(
    "Mask2FormerImageProcessor",
    resample=2,
    mean=IMAGENET[0],
    std=IMAGENET[1],
    size={"shortest_edge": 800, "longest_edge": 1333},
    size_divisor=32,
)

TASK = Task(
    name="mask2former",
    title="Mask2Former",
    kind="universal segmentation",
    model_types=("mask2former",),
    prefixes={
        "Mask2FormerForUniversalSegmentation": "model.pixel_level_module.encoder.",
        "Mask2FormerModel": "pixel_level_module.encoder.",
    },
    processor=PROCESSOR,
    trained_norms=True,
    catalog=load_catalog(__file__),
    notes="Mask2Former's backbone: its four stages (`stage1`..`stage4`, the default) after the stage norms trained "
    "with the segmentation model. The public checkpoints' processor resizes to 384x384; `--image-size` takes "
    "multiples of 32 (the processor's `size_divisor`).",
)
