"""Output files: HDF5 or safetensors behind one small protocol.

A writer is opened for a run (new, ``overwrite`` or ``resume``), takes committed batches
(``write``) and failures (``fail``), and is closed with ``finish(status)``. Each batch is durable
when ``write`` returns: an interrupted run keeps every batch written so far, and a killed one is
recognised as unfinished and recovered by ``--resume``. Formats keep the same facts (model,
checkpoint, revision, stages, sizes, dtypes, preprocessing) in their metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bbx.errors import InputError, UsageError

FORMATS = ("hdf5", "safetensors")
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".safetensors": "safetensors"}

#: facts that must agree between a file and a run that resumes it
RESUME_KEYS = (
    "checkpoint",
    "revision",
    "architecture",
    "weights",
    "out_features",
    "stage_norm",
    "input_size",
    "store_dtype",
    "pool",
    "compute_dtype",
    "preprocessing",
    "exif",
    "fast_decode",
)


@dataclass(frozen=True)
class StageLayout:
    """What one stage stores per image."""

    name: str
    shape: tuple[int, ...]  # per image: (C, H, W), or (C,) when pooled
    dtype: str  # float32 | float16 | bfloat16

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def bytes_per_image(self) -> int:
        n = self.itemsize
        for d in self.shape:
            n *= d
        return n


class Writer(Protocol):
    path: Path
    #: rows the output already holds when resuming (in row order), and the facts they were written with
    existing_paths: list[str]
    existing_facts: dict[str, Any] | None
    notes: list[str]

    def write(self, paths: Sequence[str], maps: Mapping[str, Any]) -> None: ...

    def fail(self, path: str, reason: str) -> None: ...

    def forget_failed(self, paths: set[str]) -> None: ...

    def finish(self, status: str) -> list[Path]: ...

    def abort(self) -> None: ...


def format_for(path: Path, fmt: str | None) -> str:
    """The output format: ``--format`` if given, else from the suffix."""
    if fmt is not None:
        f = fmt.lower()
        if f in ("h5", "hdf5"):
            return "hdf5"
        if f == "safetensors":
            return "safetensors"
        raise UsageError(f"--format must be hdf5 or safetensors, got {fmt!r}")
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise UsageError(f"cannot tell the output format from {path.name!r}: use .h5/.hdf5 or .safetensors, or --format")


def refuse_to_replace(found: Path | None, leftover: Path | None) -> None:
    """Without --overwrite or --resume a run never replaces an output, nor an unfinished one."""
    if found is not None:
        raise InputError(f"{found} exists: pass --overwrite to replace it or --resume to add to it")
    if leftover is not None:
        raise InputError(
            f"{leftover} is left from an unfinished run: pass --resume to continue it or --overwrite to start over"
        )


def check_resumable(existing: Mapping[str, Any], facts: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a file written with different settings (its rows would not mix)."""
    for key in RESUME_KEYS:
        old, new = existing.get(key), facts.get(key)
        if _norm(old) != _norm(new):
            raise UsageError(
                f"cannot resume {path}: it was written with {key}={_short(old)}, this run has {key}={_short(new)} "
                "(use the same settings, or a new output)"
            )


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v)) if v is not None else None


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_writer(
    path: Path,
    fmt: str,
    *,
    facts: Mapping[str, Any],
    stages: Sequence[StageLayout],
    overwrite: bool = False,
    resume: bool = False,
    shard_bytes: int | None = None,
) -> Writer:
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if fmt == "hdf5":
        from bbx.writers.hdf5 import HDF5Writer

        return HDF5Writer(path, facts=facts, stages=stages, overwrite=overwrite, resume=resume)
    if fmt == "safetensors":
        from bbx.writers.safetensors_ import SafetensorsWriter

        return SafetensorsWriter(
            path, facts=facts, stages=stages, overwrite=overwrite, resume=resume, shard_bytes=shard_bytes
        )
    raise UsageError(f"unknown format {fmt!r}")
