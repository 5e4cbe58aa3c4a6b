"""The checkpoint-format seam: what a checkpoint's ``config.json`` is, and what it means for bbx.

A checkpoint comes in one of a few formats, each recognised here and nowhere else:

* **transformers**: ``config.json`` has a ``model_type`` that a family implements
  (``resnet``, ``swin``, ...); its weights are the model's own (a head prefix, if any, is the
  family's remap to drop).
* **task**: a detection, segmentation or depth model that carries its backbone
  (``backbone_config`` nested in the config, or ``use_timm_backbone``); the backbone's weights sit
  under a prefix of the task model's. The task modules (:mod:`bbx.task`, ``bbx/tasks/``) say where,
  which stages the task taps and how its processor comes down to the backbone's preprocessing;
  only the backbone's tensors are ever read.
* **timm**: a timm hub repo (``architecture`` and ``pretrained_cfg``, no ``model_type``), or
  transformers' ``TimmBackbone`` wrapper (``model_type: timm_backbone``).

:func:`recognise` turns a config (and the preprocessing file beside it) into a
:class:`Checkpoint`: the family, the family's config, the preprocessing recipe's config, and the
weight-key prefix and rename that bring the file's tensors to the family's ``remap``. Every other
module consumes that record, so a new format is one reader here. Formats bbx does not read yet are
refused in one line that says what the checkpoint is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bbx import registry
from bbx.errors import ModelError
from bbx.family import Family, Settings
from bbx.preprocess import Preprocess


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """What a checkpoint is to bbx (see the module docstring)."""

    format: str  # "transformers" | "task" | "timm"
    family: Family
    model_type: str  # the family's model_type the config describes
    config: Mapping[str, Any]  # the family's config (for a task checkpoint: the nested backbone's)
    preprocessor: Mapping[str, Any] | None  # the preprocessing config (the file's, or the family's default)
    #: only tensors whose keys start with this belong to the backbone; it is stripped before the remap
    weight_prefix: str = ""
    #: a rename of the stripped keys to what the family's remap expects, None for a key the
    #: backbone does not need (it is never read); None: every key as it is
    rename: Callable[[str], str | None] | None = field(default=None, repr=False)
    #: the task model around the backbone, for reports ("" for a plain backbone)
    task: str = ""
    #: the stages the task model taps (indices into the stage list), the default selection; None:
    #: the last stage, as for any backbone
    default_stages: tuple[int, ...] | None = None
    #: the preprocessing, when the format seam translated it (a task processor); None: read
    #: ``preprocessor`` as a backbone's ``preprocessor_config.json``
    recipe: Preprocess | None = None
    #: for a task checkpoint: whether it holds the backbone's stage norms, trained with the task
    trained_norms: bool | None = None

    def settings(self) -> Settings:
        return self.family.parse(self.config)

    @property
    def stage_names(self) -> list[str]:
        return self.settings().stage_names()

    def backbone_keys(self, keys: list[str]) -> dict[str, str]:
        """checkpoint key -> the key the family's remap sees, for the keys that belong to the backbone."""
        out = {}
        for k in keys:
            if not k.startswith(self.weight_prefix):
                continue
            inner = k[len(self.weight_prefix) :]
            new = self.rename(inner) if self.rename is not None else inner
            if new is not None:
                out[k] = new
        return out


# --- the formats ----------------------------------------------------------------------------------


def _is_task(config: Mapping[str, Any]) -> bool:
    return (
        registry.is_task(config.get("model_type"))
        or isinstance(config.get("backbone_config"), Mapping)
        or bool(config.get("use_timm_backbone"))
    )


def _is_timm(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == "timm_backbone" or (
        "model_type" not in config and "architecture" in config and "pretrained_cfg" in config
    )


def _task(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, where: str) -> Checkpoint:
    model_type = config.get("model_type")
    if not registry.is_task(model_type):
        inner = config.get("backbone_config")
        what = f"timm backbone {config.get('backbone')!r}" if config.get("use_timm_backbone") else "its backbone"
        if isinstance(inner, Mapping):
            what = f"its {inner.get('model_type', 'nested')} backbone"
        raise ModelError(
            f"{where} is a {model_type or 'task model'} checkpoint; bbx does not read {what} from it "
            f"(it reads the backbones of {', '.join(registry.task_model_types())} checkpoints)"
        )
    task = registry.task_of(model_type)
    nested = task.read(config, preprocessor, where)
    inner_type = nested.backbone["model_type"]
    at = f"{where}, the {task.title} backbone_config"
    fam = registry.family_for(inner_type, str(model_type), at)
    backbone = dict(nested.backbone)
    if inner_type not in fam.model_types:  # a family reading this backbone in the task's own variant
        backbone["model_type"] = fam.model_types[0]
    settings = fam.parse(backbone, at)
    names = settings.stage_names()
    recipe = nested.recipe
    strides = {st.stride for st in settings.stages()}
    if len(strides) == 1 and min(strides) > 1:  # a patch backbone (one stride): other sizes lose pixels
        recipe = replace(recipe, multiple_of=math.lcm(recipe.multiple_of, strides.pop()))
    return Checkpoint(
        "task",
        fam,
        str(backbone["model_type"]),
        backbone,
        preprocessor,
        nested.prefix,
        task=str(model_type),
        default_stages=_taps(nested.taps, names, at),
        recipe=recipe,
        trained_norms=task.trained_norms,
    )


def _taps(taps: tuple[str, ...] | tuple[int, ...] | None, names: list[str], where: str) -> tuple[int, ...] | None:
    """The stages a task taps, as indices into the backbone's stage list (names, or indices with
    transformers' negative ones), in stage order; ModelError for a stage the backbone lacks."""
    if taps is None:
        return None
    out = []
    for t in taps:
        if isinstance(t, str):
            if t not in names:
                raise ModelError(f"{where} taps stage {t!r}, which this backbone lacks (it has {', '.join(names)})")
            out.append(names.index(t))
        else:
            if not -len(names) <= t < len(names):
                raise ModelError(f"{where} taps stage index {t}, out of range for {len(names)} stages")
            out.append(t % len(names))
    return tuple(sorted(set(out)))


def _timm(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, where: str) -> Checkpoint:
    arch = config.get("architecture") or config.get("backbone")
    raise ModelError(
        f"{where} is a timm checkpoint ({arch}); bbx does not read timm checkpoints yet "
        f"(it reads transformers checkpoints of: {', '.join(registry.supported_model_types())})"
    )


def _transformers(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, where: str) -> Checkpoint:
    model_type = config.get("model_type")
    fam = registry.family_of(model_type, where)
    if preprocessor is None:  # the family's public recipe rather than a processor class default nobody trained with
        preprocessor = registry.default_preprocessor(model_type)
    if fam.unwrap is not None:  # a checkpoint that wraps the backbone (a vision tower in a two-tower model)
        inner, prefix, rename = fam.unwrap(config)
        return Checkpoint(
            "transformers", fam, str(inner.get("model_type", model_type)), inner, preprocessor, prefix, rename
        )
    return Checkpoint("transformers", fam, str(model_type), config, preprocessor)


#: (format name, recognises the config, reads it), tried in order: a task config also has a
#: model_type (its own), so it goes first
FORMATS: tuple[tuple[str, Callable[[Mapping[str, Any]], bool], Callable[..., Checkpoint]], ...] = (
    ("task", _is_task, _task),
    ("timm", _is_timm, _timm),
    ("transformers", lambda config: True, _transformers),
)


def recognise(
    config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None, where: str = "config.json"
) -> Checkpoint:
    """What the checkpoint whose ``config.json`` is ``config`` is; ModelError in one line when bbx
    cannot read it. ``where`` names the file in errors."""
    if not isinstance(config, Mapping):
        raise ModelError(f"{where} is not a JSON object")
    for _, matches, read in FORMATS:
        if matches(config):
            ck = read(config, preprocessor, where)
            ck.family.parse(ck.config, where)  # a config that does not fit is refused before anything is built
            return ck
    raise AssertionError("the transformers format accepts every config")  # pragma: no cover
