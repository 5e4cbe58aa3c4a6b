"""MaskFormer (Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic
Segmentation", 2021): a pixel decoder (FPN) and a transformer decoder on a backbone's four stages.

transformers' ``MaskFormerForInstanceSegmentation`` builds its backbone from ``backbone_config``
(``model.pixel_level_module.encoder``); a nested ``swin`` config becomes its own Swin copy
(``maskformer-swin``, which that family declares with ``Family.nested``), whose weights sit under
``encoder.model.`` with the stage norms (``hidden_states_norms``, trained with MaskFormer) beside
them. Default stages: the nested ``out_features`` (``stage1..stage4``). Preprocessing:
``MaskFormerImageProcessor`` (bilinear, ImageNet statistics, the shortest edge resized, sizes
rounded up to multiples of 32): the size follows the image, so a run names one (``--image-size``).
"""

from __future__ import annotations

from bbx.task import IMAGENET, ProcessorClass, Task, load_catalog

PROCESSOR = ProcessorClass(
    "MaskFormerImageProcessor",
    resample=2,
    mean=IMAGENET[0],
    std=IMAGENET[1],
    size={"shortest_edge": 800, "longest_edge": 1333},
    size_divisor=32,
)

TASK = Task(
    name="maskformer",
    title="MaskFormer",
    kind="semantic and panoptic segmentation",
    model_types=("maskformer",),
    prefixes={
        "MaskFormerForInstanceSegmentation": "model.pixel_level_module.encoder.",
        "MaskFormerModel": "pixel_level_module.encoder.",
    },
    processor=PROCESSOR,
    trained_norms=True,
    catalog=load_catalog(__file__),
    notes="MaskFormer's backbone is transformers' MaskFormer copy of the nested backbone: `stage1`..`stage4` (the "
    "default), each after its trained stage norm. Its processor resizes each image's shortest edge, so extraction "
    "needs `--image-size` (a multiple of 32).",
)
