"""The contract every family's network implements.

A family's model subclasses :class:`Backbone`, which takes the stage list (name, channels, stride)
and the map-size arithmetic from the family's torch-free settings (:class:`bbx.family.Settings`),
and implements two small methods:

* ``iter_stages(x)`` yields one *raw* state per stage, in order (stem first). It is a generator:
  :meth:`Backbone.forward_stages` stops pulling after the last stage asked for, so later stages are
  never computed.
* ``stage_map(index, raw)`` turns a raw state into the ``[N, C, H, W]`` feature map of that stage
  (stage norm, token reshape, ...). Only selected stages pay for it.

Vision transformers also implement ``stage_class_token(index, raw)`` (the class token ``[N, C]``,
under the same stage norm) and, where the model defines one, ``embedding(raw_last)`` (its own
image embedding ``[N, D]``); whether a model has them is its settings' (torch-free)
``class_token`` / ``embedding_dim``.

Selection (``out_indices`` / ``out_features``) follows :mod:`bbx.stages`; ``forward`` returns the
selected maps (or, after ``readout(cls=True)``, class tokens) as a tuple in stage order, followed
by the embedding after ``readout(embedding=True)``. No classification head exists in any bbx
backbone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bbx.family import STAGE_NORMS, Settings, StageInfo
from bbx.stages import Selection, select_stages


class Backbone(nn.Module):
    """Base class of every bbx backbone: built from the family's settings, whose stage list it
    reports (``stage_specs``) and whose size arithmetic ``map_sizes`` is."""

    stage_specs: tuple[StageInfo, ...]
    #: checkpoint keys that may be absent, with the value their tensor is filled with
    #: (transformers creates e.g. Swin's per-stage norms fresh when a checkpoint lacks them).
    optional_keys: Mapping[str, float] = {}

    def __init__(self, settings: Settings, *, config: Mapping[str, Any], stage_norm: str = "hf"):
        super().__init__()
        if stage_norm not in STAGE_NORMS:
            raise ValueError(f"stage_norm must be one of {STAGE_NORMS}, got {stage_norm!r}")
        self.settings = settings
        self.stage_specs = tuple(settings.stages())
        self.config = dict(config)
        self.stage_norm = stage_norm
        self._selection = select_stages(self.stage_names)
        self._cls = False  # readout(): class tokens instead of maps
        self._embedding = False  # readout(): the image embedding after the stages

    # --- metadata -------------------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stage_specs]

    @property
    def out_indices(self) -> list[int]:
        return list(self._selection.out_indices)

    @property
    def out_features(self) -> list[str]:
        return list(self._selection.out_features)

    @property
    def channels(self) -> list[int]:
        """Channels of the selected stages, in order (as transformers' ``backbone.channels``)."""
        return [self.stage_specs[i].channels for i in self.out_indices]

    @property
    def strides(self) -> list[int]:
        """Strides of the selected stages, in order."""
        return [self.stage_specs[i].stride for i in self.out_indices]

    def select(self, out_indices: Sequence[int] | None = None, out_features: Sequence[str] | None = None) -> Backbone:
        """Choose the stages ``forward`` returns (transformers' rules); returns ``self``."""
        selection = select_stages(self.stage_names, out_indices, out_features)
        kept = getattr(self, "_kept_through", None)
        if kept is not None and selection.out_indices[-1] > kept:
            raise ValueError(f"this model was truncated after stage {self.stage_names[kept]}")
        self._selection = selection
        return self

    #: the ModuleList attribute whose entry ``k`` computes stage ``k + stage_module_offset``
    #: (``stages``, ``blocks``), so that :meth:`truncate` can drop what later stages need
    stage_modules: str | None = None
    stage_module_offset: int = 1

    def truncate(self, last: int) -> None:
        """Drop the layers that only stages after ``last`` need (frozen inference for a fixed
        selection: their weights are never loaded, their memory never taken)."""
        if self.stage_modules is None:
            return
        mods = getattr(self, self.stage_modules)
        keep = max(0, last - self.stage_module_offset + 1)
        if keep < len(mods):
            setattr(self, self.stage_modules, nn.ModuleList(list(mods)[:keep]))
        self._kept_through = last

    @property
    def selection(self) -> Selection:
        return self._selection

    # --- forward ----------------------------------------------------------------------------
    def iter_stages(self, x: torch.Tensor) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def stage_map(self, index: int, raw: Any) -> torch.Tensor:
        return raw

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) of every stage's map for an input of ``image_size``; ValueError if too small."""
        return self.settings.map_sizes(image_size)

    def forward_stages(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Maps of the stages ``indices`` (non-negative, increasing); computes nothing past the last."""
        return self.forward_outputs(x, indices)[0]

    def forward_outputs(
        self, x: torch.Tensor, indices: Sequence[int], *, cls: bool = False, embedding: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(the maps of the stages ``indices``, or with ``cls`` their class tokens ``[N, C]``; the
        image embedding ``[N, D]`` with ``embedding``, else None). Computes nothing past the last
        stage asked for, which with ``embedding`` is the last stage of the model."""
        wanted = list(indices)
        last = len(self.stage_specs) - 1 if embedding else (wanted[-1] if wanted else -1)
        out: list[torch.Tensor] = []
        emb = None
        if last < 0:
            return out, emb
        stages = self.iter_stages(x)
        for i, raw in enumerate(stages):
            if i in wanted:
                out.append(self.stage_class_token(i, raw) if cls else self.stage_map(i, raw))
            if i == last:
                if embedding:
                    emb = self.embedding(raw)
                break
        stages.close()
        return out, emb

    def readout(self, *, cls: bool = False, embedding: bool = False) -> Backbone:
        """What ``forward`` returns for each selected stage (its map, or with ``cls`` its class
        token) and whether the image embedding follows them (``embedding``); returns ``self``.
        ValueError when the model has no class token or no embedding."""
        if cls and not self.has_class_token:
            raise ValueError(f"{type(self).__name__} has no class token")
        if embedding and not self.has_embedding:
            raise ValueError(f"{type(self).__name__} defines no image embedding")
        kept = getattr(self, "_kept_through", None)
        if embedding and kept is not None and kept < len(self.stage_names) - 1:
            raise ValueError(
                f"the image embedding needs the last block, but this model was truncated after stage "
                f"{self.stage_names[kept]}"
            )
        self._cls, self._embedding = cls, embedding
        return self

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The selected stages' maps (or class tokens, see :meth:`readout`) in stage order, then
        the image embedding when asked for."""
        maps, emb = self.forward_outputs(pixel_values, self.out_indices, cls=self._cls, embedding=self._embedding)
        return (*maps, emb) if emb is not None else tuple(maps)

    # --- tokens (vision transformers) ------------------------------------------------------------
    @property
    def has_class_token(self) -> bool:
        """Whether stages carry a class token (``--pool cls``): the settings say, torch-free."""
        return self.settings.class_token

    @property
    def has_embedding(self) -> bool:
        """Whether the model defines its own image embedding (``--embedding``: CLIP's projected
        class token, SigLIP's pooling head, ...), computed from the last stage's raw state."""
        return self.settings.embedding_dim is not None

    def stage_class_token(self, index: int, raw: Any) -> torch.Tensor:
        """The class token ``[N, C]`` of stage ``index``'s raw state, under the same stage-norm
        policy as :meth:`stage_map` (registers and distillation tokens are never it)."""
        raise NotImplementedError(f"{type(self).__name__} has no class token")

    def embedding(self, raw_last: Any) -> torch.Tensor:
        """The model's own image embedding ``[N, D]`` from the last stage's raw state."""
        raise NotImplementedError(f"{type(self).__name__} defines no image embedding")

    # --- weights ------------------------------------------------------------------------------
    def explain_missing(self, missing: Sequence[str]) -> str:
        """Why checkpoint keys this model needs are absent, in one clause for the load error
        (e.g. a stage-norm mode that needs a tensor the checkpoint lacks); "" for no comment."""
        return ""

    #: whether the family runs faster with channels-last weights and inputs (convolutional nets)
    prefers_channels_last: bool = False

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        """Rewrite the module for frozen inference where it pays and stays exact to fp32 rounding
        (e.g. folding BatchNorm into convolutions); ``fuse_kernels``: also switch to the fused
        oneDNN CPU kernels (``layers.linear_act`` / ``conv_act``; not under ``torch.compile``,
        which fuses for itself). ``bbx extract`` and ``bbx bench`` call it; a model from
        :func:`bbx.load_backbone` is left as loaded."""

    def init_computed_buffers(self) -> None:
        """Recompute non-persistent buffers after a model built on the meta device is loaded.

        Families whose buffers are computed (not loaded) override this.
        """


def map_shapes(model: Backbone, image_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """``[C, H, W]`` of every stage's map for an input of ``image_size`` (height, width), from
    the family's size arithmetic: no forward pass, no weights (the model may be on the meta
    device). Tests check the arithmetic against real forward passes."""
    from bbx.family import map_shapes as shapes

    return shapes(model.settings, image_size)
