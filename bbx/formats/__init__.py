"""Output formats behind one seam: HDF5 (:mod:`bbx.formats.hdf5`) and safetensors
(:mod:`bbx.formats.safetensors_`), each one module with its layout, suffixes, writer and reader.

A writer is opened for a run (new, ``overwrite`` or ``resume``), takes committed batches
(``write``) and failures (``fail``), and is closed with ``finish(status)``. Each batch is durable
when ``write`` returns: an interrupted run keeps every batch written so far, and a killed one is
recognised as unfinished and recovered by ``--resume``. Every format stores the same
:class:`~bbx.formats.base.RunFacts` in its metadata.

:func:`open_output` opens any output for its metadata (no rows read); ``Output.read_raw`` then
reads rows in their stored dtype (bfloat16 stays bfloat16, as raw 16-bit patterns). Importing this
package imports neither numpy nor h5py.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from bbx.errors import InputError, UsageError
from bbx.formats.base import (
    EMBEDDING_NAME,
    FORMAT_TAG,
    RESUME_KEYS,
    Output,
    ResumeSource,
    RunFacts,
    StageLayout,
    Writer,
    busy,
    check_target,
    fsync_dir,
    held_elsewhere,
    partial_path,
    refuse_to_replace,
)

#: format name -> its module; the first one whose reader recognises a path opens it
_MODULES = {"hdf5": "bbx.formats.hdf5", "safetensors": "bbx.formats.safetensors_"}
FORMATS = tuple(_MODULES)
#: output suffix -> format
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".safetensors": "safetensors"}


def module(fmt: str) -> ModuleType:
    return importlib.import_module(_MODULES[fmt])


def format_name(fmt: str) -> str:
    """``--format`` as a format name (hdf5 or safetensors; ``h5`` means hdf5)."""
    f = fmt.lower()
    if f in ("h5", "hdf5"):
        return "hdf5"
    if f == "safetensors":
        return "safetensors"
    raise UsageError(f"--format must be hdf5 or safetensors, got {fmt!r}")


def format_for(path: Path, fmt: str | None) -> str:
    """The output format: from the suffix, or ``--format`` (which must not contradict a suffix
    bbx knows: ``-o x.h5 --format safetensors`` would write safetensors under an HDF5 name)."""
    suffix = path.suffix.lower()
    by_suffix = SUFFIXES.get(suffix)
    if fmt is not None:
        name = format_name(fmt)
        if by_suffix is not None and by_suffix != name:
            raise UsageError(
                f"-o {path.name} has the suffix of {by_suffix} output but --format is {name}: "
                f"name it {path.stem}{suffix_of(name)}, or drop --format"
            )
        return name
    if by_suffix is not None:
        return by_suffix
    raise UsageError(f"cannot tell the output format from {path.name!r}: use .h5/.hdf5 or .safetensors, or --format")


def suffix_of(fmt: str) -> str:
    return ".h5" if fmt == "hdf5" else ".safetensors"


def resume_source(path: Path, fmt: str) -> ResumeSource | None:
    """What ``--resume`` of ``path`` in ``fmt`` would continue (see the format modules)."""
    return module(fmt).resume_source(path)


def space_needed(fmt: str, new_bytes: int, carried: int = 0, shard_bytes: int | None = None) -> int:
    """The disk bytes a run of ``fmt`` needs for ``new_bytes`` of new rows, carrying ``carried``."""
    return module(fmt).space_needed(new_bytes, carried, shard_bytes)


def discard_unfinished(path: Path) -> None:
    """Remove what a run that wrote nothing left under ``path`` (its ``.partial``, a file or a
    staging folder); only for a run that created it."""
    import shutil

    partial = partial_path(path)
    if partial.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.unlink(missing_ok=True)


def name_extra(fmt: str) -> int:
    """The most bytes a format adds to the output's name for the files it writes beside it
    (temporary names, staging folders, shard names)."""
    return module(fmt).NAME_EXTRA


def leftovers(path: Path, fmt: str) -> tuple[Path | None, Path | None]:
    """(a finished output, an unfinished one) that a run writing ``path`` in ``fmt`` would
    replace: what it refuses to touch without ``--overwrite`` or ``--resume``."""
    return module(fmt).leftovers(path)


def open_writer(
    path: Path,
    fmt: str,
    *,
    facts: RunFacts,
    stages: Sequence[StageLayout],
    overwrite: bool = False,
    resume: bool = False,
    shard_bytes: int | None = None,
    check_space: bool = True,
    compression: str = "none",
) -> Writer:
    """The writer of a run. ``check_space``: refuse a batch the disk has no room for before
    writing it (a run with --force leaves it to the disk to fail)."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if fmt == "hdf5":
        from bbx.formats.hdf5 import HDF5Writer

        return HDF5Writer(
            path,
            facts=facts,
            stages=stages,
            overwrite=overwrite,
            resume=resume,
            check_space=check_space,
            compression=compression,
        )
    if fmt == "safetensors":
        from bbx.formats.safetensors_ import SafetensorsWriter

        return SafetensorsWriter(
            path, facts=facts, stages=stages, overwrite=overwrite, resume=resume, shard_bytes=shard_bytes
        )
    raise UsageError(f"unknown format {fmt!r}")


def open_output(path: Path) -> Output:
    """Open any bbx output for its metadata: an HDF5 file, a single safetensors file, a shard set
    (by its ``.index.json`` or its base name), or what an unfinished run leaves (an HDF5
    ``.partial`` file, a safetensors ``.partial`` staging folder). InputError (one line) if it is
    none or is damaged."""
    path = Path(path)
    if path.is_dir() and not path.name.endswith(".partial"):
        raise InputError(f"{path} is a folder, not a bbx output")
    for fmt in FORMATS:
        found = module(fmt).locate(path)
        if found is not None:
            return found
    raise InputError(f"no such file: {path}")


__all__ = [
    "EMBEDDING_NAME",
    "FORMATS",
    "FORMAT_TAG",
    "RESUME_KEYS",
    "ResumeSource",
    "SUFFIXES",
    "Output",
    "RunFacts",
    "StageLayout",
    "Writer",
    "busy",
    "check_target",
    "discard_unfinished",
    "format_for",
    "format_name",
    "fsync_dir",
    "held_elsewhere",
    "leftovers",
    "name_extra",
    "open_output",
    "open_writer",
    "partial_path",
    "refuse_to_replace",
    "resume_source",
    "space_needed",
]
