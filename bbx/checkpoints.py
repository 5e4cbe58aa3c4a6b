"""The checkpoint-format seam: what a checkpoint's ``config.json`` is, and what it means for bbx.

A checkpoint comes in one of a few formats, each recognised here and nowhere else:

* **transformers**: ``config.json`` has a ``model_type`` that a family implements
  (``resnet``, ``swin``, ...); its weights are the model's own (a head prefix, if any, is the
  family's remap to drop).
* **task**: a detection, segmentation or depth model that carries its backbone
  (``backbone_config`` nested in the config, or ``use_timm_backbone``); the backbone's weights sit
  under a prefix of the task model's.
* **timm**: a timm hub repo (``architecture`` and ``pretrained_cfg``, no ``model_type``; weights
  under timm's own module names), transformers' ``TimmBackbone`` wrapper (``model_type:
  timm_backbone``, ``backbone`` naming the architecture, weights under ``_backbone.`` in the
  layout of timm's ``features_only`` networks, no preprocessing of its own) or ``TimmWrapper``
  (``model_type: timm_wrapper``: a timm hub config, weights under ``timm_model.``). The
  architecture name picks the family: families of timm-layout networks declare the names they
  implement (:class:`bbx.family.TimmLayout`), so nothing here names one. Preprocessing is timm's
  eval transform for the checkpoint's ``pretrained_cfg`` (TimmBackbone: timm's default
  pretrained tag's, which the family embeds), as ``resolve_data_config`` resolves it.

:func:`recognise` turns a config (and the preprocessing file beside it) into a
:class:`Checkpoint`: the family, the family's config, the preprocessing recipe's config, and the
weight-key prefix and rename that bring the file's tensors to the family's ``remap``. Every other
module consumes that record, so a new format is one reader here. Formats bbx does not read yet are
refused in one line that says what the checkpoint is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bbx import registry
from bbx.errors import ModelError
from bbx.family import Family, Settings, thaw


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

    def settings(self) -> Settings:
        return self.family.parse(self.config)

    @property
    def architecture(self) -> str:
        """What the checkpoint is, for reports: the model_type, or ``timm:<architecture>``."""
        if self.family.timm is not None:
            return f"timm:{self.config['architecture']}"
        return self.model_type

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
    return isinstance(config.get("backbone_config"), Mapping) or bool(config.get("use_timm_backbone"))


def _is_timm_family_config(config: Mapping[str, Any]) -> bool:
    """A config in the family layout of a family of timm-layout networks (its own model_type, the
    architecture and its arguments: what :func:`recognise` makes of a timm checkpoint)."""
    mt = config.get("model_type")
    return registry.is_supported(mt) and registry.family_of(mt).timm is not None


def _is_timm(config: Mapping[str, Any]) -> bool:
    return (
        config.get("model_type") in ("timm_backbone", "timm_wrapper")
        or ("model_type" not in config and "architecture" in config and "pretrained_cfg" in config)
        or _is_timm_family_config(config)
    )


def _task(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, where: str) -> Checkpoint:
    task = config.get("model_type") or "a task model"
    inner = config.get("backbone_config")
    what = f"timm backbone {config.get('backbone')!r}" if config.get("use_timm_backbone") else "its backbone"
    if isinstance(inner, Mapping):
        what = f"its {inner.get('model_type', 'nested')} backbone"
    raise ModelError(
        f"{where} is a {task} checkpoint; bbx does not yet read {what} from task checkpoints "
        f"(it reads backbone checkpoints of: {', '.join(registry.supported_model_types())})"
    )


#: timm's defaults where a ``pretrained_cfg`` leaves a field out (timm.data.resolve_data_config)
_TIMM_DATA_DEFAULTS = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def timm_data_config(pretrained_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What ``timm.data.resolve_data_config(pretrained_cfg=...)`` resolves for inference: the
    ``input_size`` (never ``test_input_size``), interpolation, mean, std, ``crop_pct`` and
    ``crop_mode``, a falsy value taking timm's default as timm does. The result is the
    preprocessing config :class:`bbx.preprocess.Preprocess` reads for timm checkpoints."""
    out: dict[str, Any] = {}
    for key, default in _TIMM_DATA_DEFAULTS.items():
        value = pretrained_cfg.get(key)
        out[key] = list(value) if isinstance(value, (list, tuple)) else (value if value else default)
        if isinstance(out[key], tuple):
            out[key] = list(out[key])
    return {"timm_data_config": out}


def _feature_net_key(key: str) -> str:
    """A key of timm's ``features_only`` wrapper (as TimmBackbone saves it, ``_backbone.`` removed)
    -> the model's own: FeatureGetterNet holds the model as ``model.``; FeatureListNet flattens
    top-level sequences (``stages.0`` -> ``stages_0``)."""
    key = key.removeprefix("model.")
    return re.sub(r"^([A-Za-z]+)_(\d+)\.", r"\1.\2.", key)


def _timm_unsupported(arch: str, where: str) -> ModelError:
    fam = registry.timm_family_claiming(arch)
    if fam is not None and fam.timm is not None:
        names = ", ".join(a.name for a in fam.timm.architectures)
        return ModelError(
            f"{where}: bbx does not implement timm architecture {arch!r}; of timm's "
            f"{'/'.join(fam.timm.patterns)} it implements: {names}"
        )
    return ModelError(
        f"{where}: bbx does not implement timm architecture {arch!r}; it implements timm's "
        f"{', '.join(registry.timm_patterns())}: {', '.join(registry.timm_architectures())}"
    )


def timm_default(name: str, where: str) -> tuple[str, dict[str, Any]]:
    """A bare timm model name (``timm:resnet50``'s ``resnet50``) -> the hub repo of timm's default
    pretrained tag for it and that repo's ``config.json`` as the family embeds it (architecture
    and pretrained_cfg), so that ``inspect`` needs no download."""
    found = registry.timm_arch(name)
    if found is None:
        raise _timm_unsupported(name, where)
    _, arch = found
    return arch.repo_id, {"architecture": arch.name, "pretrained_cfg": {"tag": arch.tag, **thaw(arch.data)}}


def _timm(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, where: str) -> Checkpoint:
    kind = config.get("model_type")
    if kind == "timm_backbone":
        arch_name, prefix, rename = config.get("backbone"), "_backbone.", _feature_net_key
        model_args: Any = {}
        if config.get("output_stride") not in (None, 32):
            raise ModelError(
                f"{where}: output_stride {config.get('output_stride')!r} (dilated stages) is not supported"
            )
        if config.get("num_channels", 3) != 3:
            model_args = {"in_chans": config.get("num_channels")}
        pretrained_cfg = None
    elif _is_timm_family_config(config):
        arch_name, prefix, rename = config.get("architecture"), "", None
        model_args = {k: v for k, v in config.items() if k not in ("model_type", "architecture")}
        pretrained_cfg = None
        if registry.timm_arch(arch_name) is not None and registry.timm_arch(arch_name)[0].model_types[0] != kind:
            raise ModelError(f"{where}: architecture {arch_name!r} is not a {kind} network")
    else:
        arch_name, prefix, rename = config.get("architecture"), "timm_model." if kind == "timm_wrapper" else "", None
        model_args = config.get("model_args") or {}
        pretrained_cfg = config.get("pretrained_cfg")
        if kind == "timm_wrapper" and not pretrained_cfg:
            pretrained_cfg = None  # TimmWrapper saves none of its own: timm's default tag's applies
        elif not isinstance(pretrained_cfg, Mapping):
            raise ModelError(f"{where}: pretrained_cfg must be a JSON object, got {pretrained_cfg!r}")
    return timm_checkpoint(
        arch_name,
        where,
        model_args=model_args,
        pretrained_cfg=pretrained_cfg,
        prefix=prefix,
        rename=rename,
        global_pool=config.get("global_pool"),
    )


def timm_checkpoint(
    arch_name: Any,
    where: str,
    *,
    model_args: Any = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    prefix: str = "",
    rename: Callable[[str], str | None] | None = None,
    global_pool: Any = None,
    format: str = "timm",
    task: str = "",
) -> Checkpoint:
    """The :class:`Checkpoint` of a timm network named ``arch_name`` (with timm's ``model_args``;
    ``pretrained_cfg`` None: timm's default tag's) whose tensors sit under ``prefix`` in timm's own
    names (after ``rename``): what the timm readers here build, and what a task checkpoint that
    carries a timm backbone (``use_timm_backbone``) builds with its own prefix and ``format="task"``."""
    model_args = {} if model_args is None else model_args
    if not isinstance(arch_name, str) or not arch_name:
        raise ModelError(f"{where}: a timm checkpoint names its architecture, got {arch_name!r}")
    found = registry.timm_arch(arch_name)
    if found is None:
        raise _timm_unsupported(arch_name, where)
    fam, arch = found
    assert fam.timm is not None
    if not isinstance(model_args, Mapping):
        raise ModelError(f"{where}: model_args must be a JSON object, got {model_args!r}")
    fields = {f.name for f in dataclasses.fields(fam.settings)}
    family_config: dict[str, Any] = {"model_type": fam.model_types[0], "architecture": arch_name, **arch.args}
    for key, value in model_args.items():
        if key in fields and key not in ("model_type", "architecture"):
            family_config[key] = value
        elif key not in fam.timm.accepts:
            raise ModelError(f"{where}: model_args {key}={value!r} changes {arch_name} in a way bbx does not implement")
    if global_pool is not None and "global_pool" in fields:
        family_config["global_pool"] = global_pool
    cfg = pretrained_cfg if pretrained_cfg is not None else arch.data
    size = cfg.get("input_size")
    if cfg.get("fixed_input_size") and "img_size" in fields and "img_size" not in model_args:
        # timm builds a fixed-size model for its pretrained_cfg's input_size (build_model_with_cfg)
        if isinstance(size, (list, tuple)) and len(size) == 3:
            family_config["img_size"] = list(size[1:])
    data = timm_data_config(cfg)
    return Checkpoint(format, fam, fam.model_types[0], family_config, data, prefix, rename, task)


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
