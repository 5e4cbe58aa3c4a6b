"""What a model's stages look like: names, channels, strides and map shapes, without weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bbx import hub, registry
from bbx.plan import ImageSize, check_stage_norm, model_plan, recipe
from bbx.stages import select_stages


@dataclass(frozen=True)
class StageRow:
    index: int
    name: str
    channels: int
    stride: int
    shape: tuple[int, int, int] | None  # [C, H, W] at the report's input size (None: the size varies)
    default: bool
    #: for a timm checkpoint whose network bbx also has in transformers' layout: that stage's name
    transformers_stage: str | None = None


@dataclass(frozen=True)
class TaskInfo:
    """Where a task checkpoint's backbone comes from."""

    model_type: str  # the task model's ("mask2former")
    title: str
    kind: str
    checkpoint: str
    weight_prefix: str
    stage_norms: str  # trained with the task, or not in the checkpoint

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelReport:
    model: str
    checkpoint: str
    source: str
    revision: str | None
    architecture: str
    input_size: tuple[int, int] | None  # None: the checkpoint's size varies per image (pass --image-size)
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
    task: TaskInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "source": self.source,
            "revision": self.revision,
            "architecture": self.architecture,
            "input_size": list(self.input_size) if self.input_size else None,
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
            "task": self.task.to_json() if self.task else None,
            "class_token": self.class_token,
            "embedding": {"shape": [self.embedding_dim]} if self.embedding_dim is not None else None,
        } | ({"transformers_layout": self.transformers_layout} if self.transformers_layout else {})


def _task_info(ref: hub.ModelRef) -> TaskInfo | None:
    if not ref.spec.task:
        return None
    task = registry.task_of(ref.spec.task)
    norms = f"trained with {task.title} (in the checkpoint)" if ref.spec.trained_norms else "none in the checkpoint"
    return TaskInfo(ref.spec.task, task.title, task.kind, ref.checkpoint, ref.spec.weight_prefix, norms)


def inspect_model(
    name: str,
    *,
    revision: str | None = None,
    image_size: ImageSize | None = None,
    resize: str = "crop",
    stage_norm: str = "hf",
) -> ModelReport:
    """Stage table of MODEL at its input size (or ``image_size``), from its config alone: no
    torch, no weights, nothing downloaded for an alias or a folder. A checkpoint whose own
    preprocessing sizes every image differently (a task processor) and no ``image_size``: the
    stages without map shapes."""
    check_stage_norm(stage_norm)
    ref = hub.resolve(name, revision=revision, weights=False)
    pre = recipe(ref, image_size, resize)
    memory: dict[str, Any] = {}
    geometry: dict[str, Any] = {}
    if pre.output_size is None and pre.size_required:
        settings = ref.spec.settings()
        stages = settings.stages()
        selection = select_stages([s.name for s in stages], None, None, ref.spec.default_stages)
        shapes: list[tuple[int, int, int] | None] = [None] * len(stages)
        size = None
    else:
        mp = model_plan(ref, image_size=image_size, resize=resize, check=False)  # inspect reports the memory
        stages, selection, pre, size = list(mp.stages), mp.selection, mp.preprocess, mp.input_size
        settings = mp.settings
        shapes = list(mp.shapes)
        memory, geometry = _memory(mp), _geometry(mp)
    default = set(selection.out_indices)
    layout, counterpart = None, None
    if ref.spec.family.timm is not None:  # a timm network (a timm checkpoint, or a task model's backbone)
        fam = registry.timm_counterpart(str(ref.config.get("architecture")))
        if fam is not None and fam.timm_counterpart is not None:
            layout, counterpart = fam.title, fam.timm_counterpart.stage_of
    rows = tuple(
        StageRow(i, spec.name, spec.channels, spec.stride, shape, i in default, counterpart and counterpart(spec.name))
        for i, (spec, shape) in enumerate(zip(stages, shapes))
    )
    info = ref.describe()
    return ModelReport(
        model=name,
        checkpoint=info["checkpoint"],
        source=ref.source,
        revision=info["revision"],
        architecture=ref.architecture,
        input_size=size,
        stage_norm=stage_norm,
        stage_norm_means=ref.family.stage_norms[stage_norm] or ref.family.stage_norms["hf"],
        default_selection=tuple(selection.out_features),
        default_indices=tuple(selection.out_indices),
        stages=rows,
        preprocessing=pre.describe(),
        memory=memory,
        geometry=geometry,
        class_token=settings.class_token,
        embedding_dim=settings.embedding_dim,
        transformers_layout=layout,
        task=_task_info(ref),
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
