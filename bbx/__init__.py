"""bbx: vision-backbone feature maps from images on disk.

The Python API (importing :mod:`bbx` does not import torch; the functions do)::

    import bbx
    model = bbx.load_backbone("resnet-50", out_indices=[1, -1])
    maps = model(pixel_values)          # tuple of [N, C, H, W] tensors, in stage order
    model.stage_names, model.out_features, model.out_indices, model.channels, model.strides
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bbx.backbones.base import Backbone


def load_backbone(
    name_or_path: str,
    out_indices: Sequence[int] | None = None,
    out_features: Sequence[str] | None = None,
    pretrained: bool = True,
    revision: str | None = None,
    *,
    stage_norm: str = "hf",
) -> Backbone:
    """A backbone (``torch.nn.Module``, eval mode) returning the selected stages' feature maps.

    ``name_or_path``: an alias (``resnet-50``), a local checkpoint folder or a hub id.
    ``out_indices`` / ``out_features``: the stages to return (transformers' rules; default: last).
    ``pretrained=False`` builds the same network with random weights from the embedded config (or
    the folder's ``config.json``), fully offline. ``stage_norm``: ``hf`` (transformers' backbone
    semantics), ``none`` or ``final`` (the checkpoint's trained final norm, where the family has one).
    """
    from bbx.loading import load_backbone as _load

    return _load(
        name_or_path,
        out_indices=out_indices,
        out_features=out_features,
        pretrained=pretrained,
        revision=revision,
        stage_norm=stage_norm,
    )


__all__ = ["__version__", "load_backbone"]
