"""What a model's stages look like: names, channels, strides and map shapes, without weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bbx import hub, registry
from bbx.plan import check_stage_norm, model_plan


@dataclass(frozen=True)
class StageRow:
    index: int
    name: str
    channels: int
    stride: int
    shape: tuple[int, int, int]  # [C, H, W] at the report's input size
    default: bool
    #: for a timm checkpoint whose network bbx also has in transformers' layout: that stage's name
    transformers_stage: str | None = None


@dataclass(frozen=True)
class ModelReport:
    model: str
    checkpoint: str
    source: str
    revision: str | None
    architecture: str
    input_size: tuple[int, int]
    stage_norm: str
    stage_norm_means: str  # what the stage-norm mode does for this family
    default_selection: tuple[str, ...]
    default_indices: tuple[int, ...]
    stages: tuple[StageRow, ...]
    preprocessing: dict[str, Any]
    #: bytes: weights (counted twice, as a run holds them), workspace, one image; the machine's memory
    memory: dict[str, Any] = field(default_factory=dict)
    #: how images become inputs: the recipe in words, the --resize mode, the sizes the model takes
    geometry: dict[str, Any] = field(default_factory=dict)
    class_token: bool = False  # stages carry a class token (--pool cls)
    embedding_dim: int | None = None  # width of the model's own image embedding (--embedding), if any
    #: the transformers-layout family of the same network (a timm checkpoint's), e.g. "ResNet"
    transformers_layout: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "source": self.source,
            "revision": self.revision,
            "architecture": self.architecture,
            "input_size": list(self.input_size),
            "stage_norm": self.stage_norm,
            "stage_norm_means": self.stage_norm_means,
            "default_selection": {
                "out_features": list(self.default_selection),
                "out_indices": list(self.default_indices),
            },
            "stages": [
                {
                    k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in asdict(s).items()
                    if k not in ("default", "transformers_stage")
                }
                | {"default": s.default}
                | ({"transformers_stage": s.transformers_stage} if self.transformers_layout else {})
                for s in self.stages
            ],
            "preprocessing": self.preprocessing,
            "memory": self.memory,
            "input_geometry": self.geometry,
            "class_token": self.class_token,
            "embedding": {"shape": [self.embedding_dim]} if self.embedding_dim is not None else None,
        } | ({"transformers_layout": self.transformers_layout} if self.transformers_layout else {})


def inspect_model(
    name: str,
    *,
    revision: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    resize: str = "crop",
    stage_norm: str = "hf",
) -> ModelReport:
    """Stage table of MODEL at its input size (or ``image_size``), from its config alone: no
    torch, no weights, nothing downloaded for an alias or a folder."""
    check_stage_norm(stage_norm)
    ref = hub.resolve(name, revision=revision, weights=False)
    mp = model_plan(
        ref, image_size=image_size, resize=resize, check=False
    )  # inspect reports the memory, never refuses it
    default = set(mp.selection.out_indices)
    layout, counterpart = None, None
    if ref.spec.family.timm is not None:  # a timm network (a timm checkpoint, or a task model's backbone)
        fam = registry.timm_counterpart(str(ref.config.get("architecture")))
        if fam is not None and fam.timm_counterpart is not None:
            layout, counterpart = fam.title, fam.timm_counterpart.stage_of
    rows = tuple(
        StageRow(i, spec.name, spec.channels, spec.stride, shape, i in default, counterpart and counterpart(spec.name))
        for i, (spec, shape) in enumerate(zip(mp.stages, mp.shapes))
    )
    info = ref.describe()
    return ModelReport(
        model=name,
        checkpoint=info["checkpoint"],
        source=ref.source,
        revision=info["revision"],
        architecture=ref.architecture,
        input_size=mp.input_size,
        stage_norm=stage_norm,
        stage_norm_means=ref.family.stage_norms[stage_norm] or ref.family.stage_norms["hf"],
        default_selection=tuple(mp.selection.out_features),
        default_indices=tuple(mp.selection.out_indices),
        stages=rows,
        preprocessing=mp.preprocess.describe(),
        memory=_memory(mp),
        geometry=_geometry(mp),
        class_token=mp.settings.class_token,
        embedding_dim=mp.settings.embedding_dim,
        transformers_layout=layout,
    )


def _geometry(mp: Any) -> dict[str, Any]:
    fixed = mp.settings.fixed_input_size()
    smallest = None if fixed else _smallest_input(mp.settings)
    return {
        "recipe": mp.preprocess.explain(),
        "resize": mp.preprocess.resize_mode,
        "resize_modes": {
            "crop": "the checkpoint's own resize and crop (the default)",
            "squash": "the whole image resized to the input size, its aspect ratio not kept",
            "pad": "the whole image resized to fit inside the input size, black around it",
        },
        "image_sizes": (
            f"{fixed[0]}x{fixed[1]} only"
            if fixed
            else f"any N or HxW from {smallest}x{smallest} up"
            if smallest
            else "any N or HxW"
        ),
        "fixed_input_size": list(fixed) if fixed else None,
        "smallest_input": smallest,
    }


def _smallest_input(settings: Any) -> int | None:
    """The smallest square input the architecture takes (its size arithmetic alone)."""

    def fits(n: int) -> bool:
        try:
            settings.map_sizes((n, n))
            return True
        except ValueError:
            return False

    hi = 1
    while not fits(hi):
        hi *= 2
        if hi > 1 << 16:
            return None
    lo = hi // 2
    while lo + 1 < hi:  # fits(hi), not fits(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _memory(mp: Any) -> dict[str, Any]:
    from bbx.family import memory_needed
    from bbx.runtime import machine_memory

    need = memory_needed(mp.settings, mp.input_size)
    have = machine_memory()
    return {
        "parameters": mp.settings.parameter_count(),
        "weights_bytes": need.weights,
        "workspace_bytes": need.workspace,
        "per_image_bytes": need.per_image,
        "machine_bytes": have,
        "fits": have is None or need.total(1) <= have,
    }
