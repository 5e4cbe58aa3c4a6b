"""MODEL -> where its config, preprocessing and weights are.

Resolution order (documented in the README):

1. an existing folder (a local checkpoint: ``config.json`` plus weights) always wins;
2. a registry alias (``resnet-50``) or an aliased hub id: the embedded config answers questions
   about the architecture without any download; weights come from the alias's hub repo;
   with ``--revision``, the config too comes from that revision of the repo; ``timm:<name>``, a
   timm architecture bbx implements, is the alias of the hub repo of timm's default pretrained
   tag for it (``timm:resnet50`` -> ``timm/resnet50.a1_in1k``);
3. a hub repo id (``org/name``), optionally at ``--revision`` (branch, tag or commit sha).

Hub downloads go through huggingface_hub into its standard cache and fetch only the files bbx
needs (see :func:`bbx.download.fetch`, which also covers offline use and the hub's errors).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbx import registry
from bbx.checkpoints import Checkpoint, recognise, timm_default
from bbx.download import CONFIG, PREPROCESSOR, Snapshot
from bbx.errors import InputError, ModelError, UsageError
from bbx.family import Family

#: how a bare timm model name is written: ``timm:resnet50`` (a hub id always has a slash)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True, eq=False)
class ModelRef:
    """A resolved MODEL argument: where its files are, and what the checkpoint is
    (:class:`bbx.checkpoints.Checkpoint`: family, family config, preprocessing, weight prefix)."""

    given: str
    source: str  # "folder" | "alias" | "hub"
    spec: Checkpoint
    folder: Path | None = None  # local folder or hub snapshot holding the files
    repo_id: str | None = None
    revision: str | None = None  # as asked for
    commit: str | None = None  # the exact commit the files came from
    alias: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    snapshot: Snapshot | None = None  # for a hub checkpoint: the files fetched or found in the cache

    @property
    def family(self) -> Family:
        return self.spec.family

    @property
    def config(self) -> Mapping[str, Any]:
        """The family's config (for a task checkpoint, its nested backbone's)."""
        return self.spec.config

    @property
    def preprocessor(self) -> Mapping[str, Any] | None:
        return self.spec.preprocessor

    @property
    def model_type(self) -> str:
        return self.spec.model_type

    @property
    def architecture(self) -> str:
        """For reports: the model_type, or ``timm:<architecture>`` for a timm checkpoint."""
        return self.spec.architecture

    @property
    def checkpoint(self) -> str:
        """What was resolved: the hub repo id, or the folder path."""
        if self.repo_id:
            return self.repo_id
        return str(self.folder)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.given,
            "checkpoint": self.checkpoint,
            "source": self.source,
            "revision": self.commit or self.revision,
            "architecture": self.architecture,
        }


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def read_folder(folder: Path, where: str | None = None) -> Checkpoint:
    """What the checkpoint in ``folder`` is, from its ``config.json`` and (if present)
    ``preprocessor_config.json``. ``where`` names the folder in errors (default: its path)."""
    if not (folder / CONFIG).is_file():
        raise ModelError(f"{where or folder} is not a checkpoint folder: it has no {CONFIG}")
    config = _read_json(folder / CONFIG, "config")
    pre = _read_json(folder / PREPROCESSOR, "preprocessor config") if (folder / PREPROCESSOR).is_file() else None
    return recognise(config, pre, f"{where} {CONFIG}" if where else str(folder / CONFIG))


def expand(name: str) -> Path:
    """``name`` with ``~`` / ``~user`` expanded; as given when there is no such user or home
    (then it names no folder, and is reported as such)."""
    try:
        return Path(name).expanduser()
    except RuntimeError:  # "Could not determine home directory"
        return Path(name)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve(
    name: str,
    *,
    revision: str | None = None,
    weights: bool = True,
    progress: bool | None = None,
    downloading: bool = False,
    require: Callable[[Checkpoint], object] | None = None,
) -> ModelRef:
    """Resolve MODEL. With ``weights`` the checkpoint's files are made local (downloaded or taken
    from the cache); without, an alias answers from its embedded config, offline (unless a
    ``revision`` is asked for: then that revision's config is fetched), and a hub id fetches only
    its configs. ``progress``: download bars on stderr (default: when stderr is a terminal).
    ``require(checkpoint)`` runs as soon as the config is known, before any weights are fetched
    (an alias's embedded config answers first), to refuse what the run cannot do."""
    path = expand(name)
    if path.is_dir():
        if revision is not None:
            raise UsageError(f"--revision applies to hub ids, but {name!r} is a local folder")
        spec = read_folder(path)
        if require is not None:
            require(spec)
        return ModelRef(given=name, source="folder", spec=spec, folder=path.resolve())
    if path.exists():
        raise InputError(f"{name} is a file, not a checkpoint folder")

    if name.startswith(TIMM_PREFIX):
        repo_id, config = timm_default(name[len(TIMM_PREFIX) :], name)
        if not weights and revision is None:
            spec = recognise(config, None, f"{name}'s embedded config")
            return ModelRef(given=name, source="alias", spec=spec, repo_id=repo_id, alias=name)
        return _from_hub(
            name, repo_id, revision, weights=weights, alias=name, progress=progress, downloading=downloading
        )

    row = registry.lookup(name)
    if row is not None:
        spec = row.checkpoint()
        if require is not None and revision is None:
            require(spec)
        if not weights and revision is None:
            return ModelRef(
                given=name,
                source="alias",
                spec=spec,
                repo_id=row.repo_id,
                revision=row.revision,
                alias=row.alias,
            )
        # a row may stand for a revision of its repo (DETR's no_timm); an asked-for revision wins
        return _from_hub(
            name,
            row.repo_id,
            revision or row.revision,
            weights=weights,
            alias=row.alias,
            progress=progress,
            downloading=downloading,
            require=require,
        )

    if _looks_like_path(name):
        raise InputError(f"no such checkpoint folder: {name}")
    if "/" in name:
        return _from_hub(
            name,
            name,
            revision,
            weights=weights,
            alias=None,
            progress=progress,
            downloading=downloading,
            require=require,
        )
    close = registry.suggestions(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(
        f"unknown model {name!r}{hint} (give an alias from `bbx models`, a checkpoint folder or a hub id org/name)"
    )


def _from_hub(
    given: str,
    repo_id: str,
    revision: str | None,
    *,
    weights: bool,
    alias: str | None,
    progress: bool | None,
    downloading: bool = False,
    require: Callable[[Checkpoint], object] | None = None,
) -> ModelRef:
    from bbx import download

    def where(folder: Path) -> str:
        return f"{repo_id}@{folder.name[:12]}"

    read: dict[Path, Checkpoint] = {}

    def check(folder: Path) -> None:  # read (and refuse an unsupported model) before the weights
        read[folder] = read_folder(folder, where(folder))
        if require is not None:
            require(read[folder])

    random_ok = alias is not None and weights and revision is None and not downloading  # its config is embedded
    snap = download.fetch(
        repo_id,
        revision=revision,
        weights=weights,
        progress=progress,
        check=check,
        downloading=downloading,
        random_ok=random_ok,
    )
    spec = read[snap.folder] if snap.folder in read else read_folder(snap.folder, where(snap.folder))
    return ModelRef(
        given=given,
        source="alias" if alias else "hub",
        spec=spec,
        folder=snap.folder,
        repo_id=repo_id,
        revision=revision,
        commit=snap.commit,
        alias=alias,
        snapshot=snap,
    )
