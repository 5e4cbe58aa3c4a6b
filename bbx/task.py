"""What a task model that carries a backbone is to bbx, without torch.

A detection, segmentation or depth checkpoint (Mask2Former, DETR, Depth Anything, ...) nests a
backbone: its config in the task config (``backbone_config``), its weights under a prefix of the
task model's. One module per task model, ``bbx/tasks/<name>.py``, exports a :class:`Task` as
``TASK``: the task ``model_type`` values it reads, where the backbone's weights lie (per
architecture class), whether the task checkpoint trains the backbone's stage norms, how its image
processor comes down to a backbone's preprocessing, and the catalog rows of its public checkpoints
(``bbx/tasks/<name>.json``: data, the hub's configs reduced to what bbx needs, with the nested
backbone config). :mod:`bbx.registry` discovers them as it discovers families, and the format seam
(:mod:`bbx.checkpoints`) turns a task config into the backbone's family, config, weight prefix,
default stages and preprocessing. Nothing here, and nothing in a task module, names a backbone
family: the backbone's ``model_type`` comes from the config.

Default stages are the ones the task model feeds to its neck: the nested config's ``out_features``
(else its ``out_indices``, indices into the backbone's stage list), or the stages a task always
taps (MaskFormer's four). Preprocessing: the task processor's resample and statistics, resizing
straight to one size with no crop; where the processor's size follows the image (a shortest edge,
a kept aspect ratio, padding), a run must name the size (``--image-size``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbx.errors import ModelError
from bbx.family import IMAGENET_MEAN, IMAGENET_STD, CatalogRow
from bbx.preprocess import RESAMPLE_NAMES, Preprocess

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class ProcessorClass:
    """The class defaults of a task model's image processor, for the fields bbx reads."""

    name: str  # "DetrImageProcessor"
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: Mapping[str, int]
    do_normalize: bool = True
    do_pad: bool = False
    #: an int ``size`` is a square (``{height, width}``) rather than a shortest edge
    default_to_square: bool = False
    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = 1  # the resized sides are rounded to a multiple of this (DPT)
    size_divisor: int = 0  # the output is a multiple of this (0: none)
    #: whether ``size_divisor`` only applies with ``do_pad`` (DPT pads to it; Mask2Former resizes to it)
    divisor_pads: bool = False


def _bad(message: str) -> ModelError:
    return ModelError(f"preprocessor_config.json: {message}")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise _bad(f"{what} needs one number or 3 (RGB), got {value!r}")
    return out[0], out[1], out[2]


def _size(value: Any, max_size: Any, square: bool) -> dict[str, int]:
    """A processor's ``size`` as transformers' ``get_size_dict`` reads it, legacy ``max_size``
    included (DETR's and MaskFormer's ``size: 800, max_size: 1333``)."""
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple, Mapping)):
        raise _bad(f"size must be a size, got {value!r}")
    if isinstance(value, int):
        if square and max_size is None:
            d = {"height": value, "width": value}
        else:
            d = {"shortest_edge": value}
            if max_size is not None:
                d["longest_edge"] = max_size
    elif isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _bad(f"size must be [height, width], got {value!r}")
        d = {"height": value[0], "width": value[1]}
    else:
        d = {str(k): v for k, v in value.items() if v is not None}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _bad(f"size {k} must be a positive number of pixels, got {v!r}")
    return d


def task_recipe(pre: Mapping[str, Any] | None, cls: ProcessorClass) -> Preprocess:
    """A task processor's ``preprocessor_config.json`` (None: the class defaults) as a backbone's
    recipe: the processor's resample, rescale and normalisation, resizing straight to its fixed
    size when it has one; otherwise a recipe that needs ``--image-size``, saying why."""
    pre = dict(pre or {})

    def get(key: str, default: Any) -> Any:
        value = pre.get(key)
        return default if value is None else value

    def flag(key: str, default: bool) -> bool:
        return bool(pre[key]) if key in pre else default

    named = str(pre.get("image_processor_type") or pre.get("feature_extractor_type") or cls.name)
    size = _size(get("size", cls.size), pre.get("max_size"), flag("default_to_square", cls.default_to_square))
    do_resize = flag("do_resize", True)
    keep = flag("keep_aspect_ratio", cls.keep_aspect_ratio)
    do_pad = flag("do_pad", cls.do_pad)
    multiple = 1
    if do_resize:
        multiple = max(multiple, _positive_int(get("ensure_multiple_of", cls.ensure_multiple_of), "ensure_multiple_of"))
    divisor = _positive_int(get("size_divisor", get("size_divisibility", cls.size_divisor)), "size_divisor")
    if divisor and (do_pad or not cls.divisor_pads):
        multiple = max(multiple, divisor)
    resample = get("resample", cls.resample)
    if isinstance(resample, bool) or not isinstance(resample, int) or resample not in RESAMPLE_NAMES:
        raise _bad(f"unknown resample filter {resample!r}")
    factor = get("rescale_factor", 1 / 255)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise _bad(f"rescale_factor must be a number, got {factor!r}")

    fixed: tuple[int, int] | None = None
    why = ""
    if not do_resize:
        why = "keeps each image's own size (do_resize false)"
    elif keep:
        why = "keeps each image's aspect ratio (keep_aspect_ratio)"
    elif "height" in size and "width" in size:
        h, w = size["height"], size["width"]
        if h % multiple or w % multiple:
            why = f"rounds its size {h}x{w} to multiples of {multiple}"
        else:
            fixed = (h, w)
    elif "shortest_edge" in size:
        edge = size["shortest_edge"]
        longest = f" (the longest at most {size['longest_edge']})" if "longest_edge" in size else ""
        why = f"resizes each image's shortest edge to {edge}{longest}"
    else:
        why = f"resizes to {size}, which depends on each image"
    if fixed is None and do_pad:
        why += " and pads the batch"
    return Preprocess.resize_to(
        named,
        fixed,
        resample=resample,
        do_rescale=flag("do_rescale", True),
        rescale_factor=float(factor),
        do_normalize=flag("do_normalize", cls.do_normalize),
        mean=_triple(get("image_mean", cls.mean), "image_mean"),
        std=_triple(get("image_std", cls.std), "image_std"),
        size_required=f"its {named} {why}, so images come out in different sizes",
        multiple_of=multiple,
    )


# --- the task record ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nested:
    """What a task checkpoint says about its backbone (see :meth:`Task.read`)."""

    backbone: Mapping[str, Any]  # the backbone's config, with its model_type
    prefix: str  # the backbone's weight-key prefix in the task checkpoint
    taps: tuple[str, ...] | tuple[int, ...] | None  # stage names, or indices into its stage list
    recipe: Preprocess


def nested_backbone_config(config: Mapping[str, Any], where: str, title: str) -> Mapping[str, Any]:
    """The ``backbone_config`` a task config nests (transformers' ``load_backbone``); ModelError
    in one line when there is none bbx can read."""
    inner = config.get("backbone_config")
    if not isinstance(inner, Mapping):
        raise ModelError(f"{where} is a {title} checkpoint without a nested backbone_config, which bbx reads it from")
    if not isinstance(inner.get("model_type"), str):
        raise ModelError(f"{where}: the backbone_config of this {title} checkpoint names no model_type")
    return inner


def load_catalog(module_file: str) -> tuple[CatalogRow, ...]:
    """The catalog rows of a task module, from the JSON file beside it (``<name>.json``): a
    ``rows`` list of ``alias``, ``repo_id``, optional ``revision``, ``description``, ``aliases``,
    ``config`` (the hub's config.json reduced to what bbx reads, with the nested backbone config)
    and ``preprocessor`` (the hub's preprocessor_config.json); ``source`` says where the values
    come from."""
    path = Path(module_file).with_suffix(".json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return tuple(
        CatalogRow(
            alias=r["alias"],
            repo_id=r["repo_id"],
            config=r["config"],
            preprocessor=r["preprocessor"],
            description=r.get("description", ""),
            extra_aliases=tuple(r.get("aliases", ())),
            revision=r.get("revision"),
        )
        for r in data["rows"]
    )


@dataclass(frozen=True, eq=False)
class Task:
    """Everything bbx needs to know about one task model that carries a backbone."""

    name: str  # the module name under bbx/tasks/
    title: str  # how people write it: "Mask2Former"
    kind: str  # "segmentation", "object detection", "depth estimation"
    model_types: tuple[str, ...]  # the task config's model_type values it reads
    #: the backbone's weight prefix per architecture class (config.json ``architectures``); the
    #: first is taken when the config names none of them
    prefixes: Mapping[str, str]
    processor: ProcessorClass
    #: whether the task checkpoint holds the backbone's stage norms, trained with the task model
    #: (``hf`` then uses those) rather than none (the family's own, or fresh ones)
    trained_norms: bool
    catalog: tuple[CatalogRow, ...] = ()
    #: stages the task model always taps, whatever the nested config says (MaskFormer's four)
    taps: tuple[str, ...] | None = None
    #: the nested backbone config: (task config, where, title) -> config with its model_type;
    #: ModelError for a task checkpoint whose backbone bbx cannot read (a timm one, say)
    backbone: Callable[[Mapping[str, Any], str, str], Mapping[str, Any]] = nested_backbone_config
    #: a paragraph for the README (what the task taps, how its inputs are sized)
    notes: str = ""
    #: the default preprocessing when a checkpoint folder has no preprocessor_config.json
    default_preprocessor: Mapping[str, Any] | None = field(default=None)

    def prefix(self, config: Mapping[str, Any]) -> str:
        """The backbone's weight prefix for a task config (by its ``architectures``)."""
        archs = config.get("architectures")
        for arch in archs if isinstance(archs, list) else ():
            if arch in self.prefixes:
                return self.prefixes[arch]
        return next(iter(self.prefixes.values()))

    def read(self, config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, where: str) -> Nested:
        """The backbone a task config nests: its config, weight prefix, the stages the task taps
        and the preprocessing (``preprocessor``: the checkpoint's task processor config)."""
        inner = dict(self.backbone(config, where, self.title))
        taps: tuple[str, ...] | tuple[int, ...] | None = self.taps
        if taps is None:
            features, indices = inner.get("out_features"), inner.get("out_indices")
            if isinstance(features, (list, tuple)) and features and all(isinstance(f, str) for f in features):
                taps = tuple(features)
            elif isinstance(indices, (list, tuple)) and indices:
                if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
                    raise ModelError(f"{where}: backbone_config out_indices must be integers, got {indices!r}")
                taps = tuple(indices)
        if preprocessor is None:
            preprocessor = self.default_preprocessor
            if preprocessor is None and self.catalog:
                preprocessor = self.catalog[0].preprocessor_dict()
        return Nested(inner, self.prefix(config), taps, task_recipe(preprocessor, self.processor))
