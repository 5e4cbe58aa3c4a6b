"""bbx: vision-backbone feature maps from images on disk.

The Python API (importing :mod:`bbx` does not import torch; the functions do)::

    import bbx
    ex = bbx.Extractor("resnet-50", out_indices=[1, -1])      # built once: weights, device, dtype
    maps = ex(["a.jpg", "b.png"])        # {"stage1": tensor [2, 256, 56, 56], "stage4": ...}

    with bbx.open("feats.h5") as f:      # what bbx extract wrote
        f.paths, f.stages, f.facts, f["stage4"][0:8]

    model = bbx.load_backbone("resnet-50", out_indices=[1, -1])   # the bare torch module
    maps = model(pixel_values)          # tuple of [N, C, H, W] tensors, in stage order
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bbx.extractor import Extractor
    from bbx.nn.backbone import Backbone
    from bbx.reader import Features


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


def open(path: str | Path) -> Features:  # noqa: A001 - bbx.open, as h5py.File / safetensors.safe_open
    """Open an output of ``bbx extract`` for reading (see :mod:`bbx.reader`)."""
    from bbx.reader import open_features

    return open_features(path)


def __getattr__(name: str) -> Any:
    if name == "Extractor":  # imported on first use: it pulls in the model code
        from bbx.extractor import Extractor

        return Extractor
    raise AttributeError(f"module 'bbx' has no attribute {name!r}")


__all__ = ["Extractor", "__version__", "load_backbone", "open"]
