"""What a model's stages look like: names, channels, strides and map shapes, without weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bbx import hub
from bbx.errors import ModelError, UsageError, first_line
from bbx.preprocess import Preprocess


@dataclass(frozen=True)
class StageRow:
    index: int
    name: str
    channels: int
    stride: int
    shape: tuple[int, int, int]  # [C, H, W] at the report's input size
    default: bool


@dataclass(frozen=True)
class ModelReport:
    model: str
    checkpoint: str
    source: str
    revision: str | None
    architecture: str
    input_size: tuple[int, int]
    stage_norm: str
    default_selection: tuple[str, ...]
    default_indices: tuple[int, ...]
    stages: tuple[StageRow, ...]
    preprocessing: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "source": self.source,
            "revision": self.revision,
            "architecture": self.architecture,
            "input_size": list(self.input_size),
            "stage_norm": self.stage_norm,
            "default_selection": {
                "out_features": list(self.default_selection),
                "out_indices": list(self.default_indices),
            },
            "stages": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items() if k != "default"}
                | {"default": s.default}
                for s in self.stages
            ],
            "preprocessing": self.preprocessing,
        }


def input_size(ref: hub.ModelRef, image_size: int | None = None) -> tuple[Preprocess, tuple[int, int]]:
    """The preprocessing recipe (with ``--image-size`` applied) and the size it produces."""
    pre = Preprocess.from_config(ref.preprocessor, ref.model_type or "")
    if image_size is not None:
        if image_size < 1:
            raise UsageError(f"--image-size must be a positive number of pixels, got {image_size}")
        pre = pre.with_image_size(image_size)
    size = pre.output_size
    if size is None and image_size is not None:  # a shortest-edge resize without a crop keeps the aspect
        raise UsageError(
            f"{ref.checkpoint}: its preprocessing resizes the shortest edge (to {image_size} with --image-size) "
            "without a crop, so images keep their aspect ratios and sizes differ; a batch needs one size"
        )
    if size is None:
        raise UsageError(
            f"{ref.checkpoint}: its preprocessing does not give every image the same size "
            "(no resize or crop); pass --image-size N"
        )
    return pre, size


def stage_shapes(model: Any, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    from bbx.backbones.base import map_shapes

    try:
        return map_shapes(model, size)
    except ValueError as e:
        raise UsageError(f"input size {size[0]}x{size[1]} does not fit this model: {first_line(e)}") from None


def inspect_model(
    name: str, *, revision: str | None = None, image_size: int | None = None, stage_norm: str = "hf"
) -> ModelReport:
    """Stage table of MODEL at its input size (or ``image_size``). Builds on the meta device:
    no weights are read or allocated, nothing is downloaded for an alias or a folder."""
    from bbx.loading import build

    ref = hub.resolve(name, revision=revision, weights=False)
    pre, size = input_size(ref, image_size)
    model = build(ref, stage_norm=stage_norm, device="meta")
    shapes = stage_shapes(model, size)
    if len(shapes) != len(model.stage_specs):
        raise ModelError("internal: stage count mismatch")
    default = set(model.out_indices)
    rows = tuple(
        StageRow(i, spec.name, spec.channels, spec.stride, shape, i in default)
        for i, (spec, shape) in enumerate(zip(model.stage_specs, shapes))
    )
    info = ref.describe()
    return ModelReport(
        model=name,
        checkpoint=info["checkpoint"],
        source=ref.source,
        revision=info["revision"],
        architecture=ref.model_type or "",
        input_size=size,
        stage_norm=stage_norm,
        default_selection=tuple(model.out_features),
        default_indices=tuple(model.out_indices),
        stages=rows,
        preprocessing=pre.describe(),
    )
