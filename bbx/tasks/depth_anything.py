"""Depth Anything (Yang et al., "Depth Anything V2", 2024): a DPT-style head on four taps of a
ViT backbone.

transformers' ``DepthAnythingForDepthEstimation`` builds its backbone with ``load_backbone`` from
``backbone_config`` (under ``backbone.``) with ``out_indices`` the four taps (3/6/9/12 for
small and base, 5/12/18/24 for large), ``apply_layernorm`` true (the backbone's trained final norm
on every tap) and ``reshape_hidden_states`` false (it keeps token sequences, class token first):
bbx returns the same taps as ``[N, C, H, W]`` patch maps. Preprocessing: ``DPTImageProcessor``
(bicubic, ImageNet statistics) resizing to about 518 keeping the aspect ratio, sides rounded to
multiples of 14: the size follows the image, so a run names one (``--image-size``, a multiple of 14).
"""

from __future__ import annotations

from bbx.task import STANDARD, ProcessorClass, Task, load_catalog

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

TASK = Task(
    name="depth_anything",
    title="Depth Anything",
    kind="depth estimation",
    model_types=("depth_anything",),
    prefixes={"DepthAnythingForDepthEstimation": "backbone."},
    processor=PROCESSOR,
    trained_norms=True,
    catalog=load_catalog(__file__),
    notes="Depth Anything's backbone: the four stages its head taps (the default), after the backbone's trained final "
    "norm, as patch maps (the class token dropped). Its processor keeps each image's aspect ratio, so extraction "
    "needs `--image-size` (a multiple of 14).",
)
