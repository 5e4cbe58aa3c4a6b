"""What every output format shares: the stage layout, the run facts, the opened-output record and
its raw reads, and the rules about replacing and resuming outputs. No numpy or h5py at import."""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from bbx import dtypes
from bbx.errors import InputError, UsageError

FORMAT_TAG = "bbx-features"
#: the dataset holding the model's own image embedding ``[N, D]`` beside the stages (``--embedding``)
EMBEDDING_NAME = "embedding"


@dataclass(frozen=True)
class StageLayout:
    """What one stage stores per image: ``(C, H, W)`` maps, or ``(C,)`` pooled vectors."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # float32 | float16 | bfloat16

    @property
    def itemsize(self) -> int:
        return dtypes.DTYPES[self.dtype].itemsize

    @property
    def row_bytes(self) -> int:
        n = self.itemsize
        for d in self.shape:
            n *= d
        return n

    bytes_per_image = row_bytes

    @property
    def storage(self) -> str:
        """The numpy dtype of the stored values (bfloat16: raw uint16 patterns)."""
        return dtypes.DTYPES[self.dtype].storage

    @property
    def pooled(self) -> bool:
        return len(self.shape) == 1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


# --- run facts ------------------------------------------------------------------------------------

#: fields stored as JSON text (in HDF5 attributes and safetensors metadata alike)
_JSON_FIELDS = ("out_features", "out_indices", "input_size", "preprocessing")


@dataclass(frozen=True)
class RunFacts:
    """What a run wrote its output with: the model, the stages and every setting that shapes the
    numbers. Written into every output's metadata; a resume must match it (:data:`RESUME_KEYS`)."""

    model: str = ""
    checkpoint: str = ""
    revision: str | None = None
    architecture: str = ""
    weights: str = ""
    out_features: tuple[str, ...] = ()
    out_indices: tuple[int, ...] = ()
    stage_norm: str = "hf"
    input_size: tuple[int, int] = (0, 0)
    compute_dtype: str = "float32"
    store_dtype: str = "float32"
    pool: str = "none"
    embedding: bool = False  # the image embedding is stored beside the stages (as EMBEDDING_NAME)
    exif: bool = True
    fast_decode: bool = False
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    cwd: str = ""
    #: how the maps are stored (HDF5: none, gzip, lzf); not a resume setting: the numbers are the same
    compression: str = "none"
    bbx_version: str = ""
    format: str = FORMAT_TAG
    #: a shard of a bigger run (``bbx extract --shard K/N``): its index and count, how many inputs
    #: the whole run's ordered list has and its digest (:func:`bbx.shards.digest`); None otherwise
    shard_index: int | None = None
    shard_count: int | None = None
    input_count: int | None = None
    input_digest: str | None = None
    #: metadata this bbx does not know (written by another version), kept as read
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        """Key -> value for a file's metadata: strings, numbers and booleans as they are, the
        rest as JSON text; absent (None) values left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name in _JSON_FIELDS:
                v = json.dumps(_jsonable(v))
            out[f.name] = v
        for k, v in self.extra.items():
            out.setdefault(k, v if isinstance(v, (str, int, float, bool)) else json.dumps(v))
        return out

    def to_strings(self) -> dict[str, str]:
        """:meth:`to_metadata` with every value a string (safetensors metadata)."""
        return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in self.to_metadata().items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> RunFacts:
        """The facts in a file's metadata (values as stored: JSON text or decoded); keys that are
        file state (rows, status, paths, ...) or unknown go to ``extra``, minus the state ones."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in meta.items():
            v = decode(v)
            if k in known:
                values[k] = v
            elif k not in STATE_KEYS:
                extra[k] = v
        for k in ("out_features", "out_indices", "input_size"):
            if isinstance(values.get(k), list):
                values[k] = tuple(values[k])
        for k in ("exif", "fast_decode", "embedding"):
            if k in values and not isinstance(values[k], bool):
                values[k] = values[k] in (True, 1, "true", "True", "1")
        _check_types(values)
        return cls(**values, extra=extra)

    @property
    def datasets(self) -> tuple[str, ...]:
        """What the output stores per image, in order: the stages, then the image embedding."""
        return (*self.out_features, EMBEDDING_NAME) if self.embedding else tuple(self.out_features)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out.update({k: _jsonable(v) for k, v in self.extra.items()})
        return out

    def with_(self, **changes: Any) -> RunFacts:
        return replace(self, **changes)

    def shard_text(self) -> str:
        """``shard 3/16 of 1000 inputs (sha256:...)``, or ``no shard``."""
        if self.shard_index is None:
            return "no shard"
        return f"shard {self.shard_index}/{self.shard_count} of {self.input_count} inputs ({self.input_digest})"

    def check_resumable(self, new: RunFacts, path: Path) -> None:
        """Refuse to resume an output written with other settings (its rows would not mix)."""
        for key in RESUME_KEYS:
            old_v, new_v = _jsonable(getattr(self, key)), _jsonable(getattr(new, key))
            if old_v != new_v and key in SHARD_KEYS:
                raise UsageError(
                    f"cannot resume {path}: it was written as {self.shard_text()}, this run is {new.shard_text()} "
                    "(give the same inputs in the same order and the same --shard)"
                )
            if old_v != new_v:
                raise UsageError(
                    f"cannot resume {path}: it was written with {key}={_short(old_v)}, this run has "
                    f"{key}={_short(new_v)} (use the same settings, or a new output)"
                )


def _check_types(values: Mapping[str, Any]) -> None:
    """ValueError naming the first fact whose stored value has the wrong type (a damaged or
    hand-edited file): readers must not meet an ``out_features`` that is a number."""
    for f in fields(RunFacts):
        if f.name not in values or f.name == "extra":
            continue
        v = values[f.name]
        if f.name in ("revision", "input_digest"):
            ok = v is None or isinstance(v, str)
        elif f.name in ("shard_index", "shard_count", "input_count"):
            ok = v is None or (isinstance(v, int) and not isinstance(v, bool))
        elif f.name == "out_features":
            ok = isinstance(v, tuple) and all(isinstance(x, str) for x in v)
        elif f.name == "out_indices":
            ok = isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        elif f.name == "input_size":
            ok = isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        elif f.name == "preprocessing":
            ok = isinstance(v, Mapping)
        elif f.name in ("exif", "fast_decode", "embedding"):
            ok = isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if not ok:
            raise ValueError(f"its {f.name} is {_short(v) if isinstance(v, (str, list, tuple, dict)) else repr(v)}")


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
    "embedding",
    "compute_dtype",
    "preprocessing",
    "exif",
    "fast_decode",
    "shard_index",
    "shard_count",
    "input_count",
    "input_digest",
)
#: the facts of a shard (compared by :mod:`bbx.merge`, dropped from the merged output)
SHARD_KEYS = ("shard_index", "shard_count", "input_count", "input_digest")
#: metadata keys that describe a file's state, not the run
STATE_KEYS = frozenset(
    {"status", "rows", "paths", "failed", "run", "row_offset", "shards", "total_size", "num_images", "interrupted_by"}
)


def decode(v: Any) -> Any:
    """A stored metadata value: bytes as text, JSON text (lists, objects) decoded, numpy scalars
    as Python values."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v.item() if hasattr(v, "item") and not isinstance(v, str) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


# --- an opened output -----------------------------------------------------------------------------


@dataclass
class Output:
    """A bbx output opened for its metadata; rows are read on demand (:meth:`read_raw`)."""

    path: Path  # what was named
    format: str  # hdf5 | safetensors | safetensors-sharded | safetensors-staging
    files: list[Path]  # every file it consists of
    facts: RunFacts
    stages: list[StageLayout]
    paths: list[str]
    failed: list[tuple[str, str]]
    status: str  # complete | interrupted | running
    unfinished: bool  # a .partial: the run was killed (or is still running)
    #: why an interrupted run stopped: "SIGINT", "SIGTERM", or "--on-error stop at <path>: <reason>"
    interrupted_by: str | None = None
    #: (bytes of maps, bytes they take on disk, the filter), where the format knows (HDF5)
    storage: tuple[int, int, str] | None = None

    @property
    def images(self) -> int:
        return len(self.paths)

    @property
    def bytes_on_disk(self) -> int:
        total = 0
        for f in self.files:
            try:
                total += f.stat().st_size
            except OSError:
                pass
        return total

    @property
    def being_written(self) -> bool:
        """An unfinished output whose run is writing it right now (it holds its lock)."""
        return self.unfinished and any(held_elsewhere(f) for f in self._unfinished_files())

    def _unfinished_files(self) -> list[Path]:
        return [f for f in self.files if f.name.endswith(".partial")] or [
            p for p in {f.parent for f in self.files} if p.name.endswith(".partial")
        ]

    def describe_state(self) -> str:
        """What state the output is in, in words a user can act on."""
        if self.unfinished:
            if self.being_written:
                return "unfinished: a run is writing it now"
            return "unfinished (the run that wrote it was killed or failed): resume with --resume"
        if self.status != "interrupted":
            return self.status
        why = self.interrupted_by
        if why is None:
            return "interrupted (holds every image finished before it stopped): resume with --resume"
        if why.startswith("--on-error stop"):
            return f"stopped at a bad input ({why}); it holds the images before it: resume with --resume"
        return f"interrupted by {why} (holds every image finished before it): resume with --resume"

    @property
    def state(self) -> str:
        """complete, interrupted, or unfinished (a .partial left by a killed or running run)."""
        return "unfinished" if self.unfinished else self.status

    def stage(self, name: str | None) -> StageLayout:
        """The stage called ``name`` (the last stored stage if None); UsageError listing them if unknown."""
        if not self.stages:
            raise InputError(f"{self.path} holds no stages")
        if name is None:
            maps = [s for s in self.stages if s.name != EMBEDDING_NAME]
            return (maps or self.stages)[-1]
        for s in self.stages:
            if s.name == name:
                return s
        have = ", ".join(s.name for s in self.stages)
        raise UsageError(f"--stage {name}: {self.path} holds no stage {name!r}; it has: {have}")

    def row(self, index: int) -> int:
        """``--index`` (negative counts from the end) -> a row number; UsageError if out of range."""
        n = self.images
        if not -n <= index < n:
            span = f"0..{n - 1}" if n else "none"
            raise UsageError(f"--index {index} is out of range: {self.path} holds {n} images (indices {span})")
        return index % n

    # -- reading rows ---------------------------------------------------------------------------
    def read_raw(self, stage: StageLayout, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of ``stage`` as stored: numpy ``[stop - start, *shape]`` in
        ``stage.storage`` (bfloat16 as its raw uint16 patterns). Formats implement it."""
        raise NotImplementedError

    def read_rows(self, stage: StageLayout, rows: Sequence[int]) -> Any:
        """The rows ``rows`` (any order, repeats allowed) as stored, reading each run of
        consecutive rows once."""
        import numpy as np

        rows = [int(r) for r in rows]
        out = np.empty((len(rows), *stage.shape), dtype=stage.storage)
        if not rows:
            return out
        order = sorted(set(rows))
        got: dict[int, int] = {}
        block: list[Any] = []
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and order[j + 1] == order[j] + 1:
                j += 1
            data = self.read_raw(stage, order[i], order[j] + 1)
            for k, r in enumerate(range(order[i], order[j] + 1)):
                got[r] = len(block)
                block.append(data[k])
            i = j + 1
        for n, r in enumerate(rows):
            out[n] = block[got[r]]
        return out

    def read(self, stage: StageLayout, rows: Sequence[int]) -> Any:
        """The maps of ``rows`` as a float32 numpy array ``[len(rows), *stage.shape]``."""
        return dtypes.to_float32(self.read_rows(stage, rows), stage.dtype)

    def read_sources(self, rows: Sequence[int]) -> tuple[Any, Any] | None:
        """Where ``rows`` came from: (image sizes ``[k, 2]`` as (height, width), boxes ``[k, 4]``
        as (top, left, bottom, right) in the image's pixels: what the model input covers), or None
        when the output does not record it. Formats implement it."""
        return None

    def sources_recorded(self) -> int | None:
        """How many rows record where they came from; None when the output records none."""
        try:
            found = self.read_sources(range(self.images))
        except InputError:
            return None
        return None if found is None else int((found[0][:, 0] >= 0).sum())

    def close(self) -> None:
        """Release open file handles (readers that keep one open)."""

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "file": str(self.path),
            "format": self.format,
            "status": self.state,
            "resume_hint": "resume with --resume" if self.unfinished or self.status != "complete" else None,
            "interrupted_by": self.interrupted_by,
            "being_written": self.being_written,
            "compression": None
            if self.storage is None
            else {
                "filter": self.storage[2],
                "map_bytes": self.storage[0],
                "stored_bytes": self.storage[1],
                "ratio": round(self.storage[0] / self.storage[1], 3) if self.storage[1] else None,
            },
            "model": f.model,
            "checkpoint": f.checkpoint,
            "revision": f.revision,
            "architecture": f.architecture,
            "weights": f.weights,
            "input_size": list(f.input_size),
            "compute_dtype": f.compute_dtype,
            "store_dtype": f.store_dtype,
            "pool": f.pool,
            "embedding": f.embedding,
            "stage_norm": f.stage_norm,
            "stages": [s.to_json() for s in self.stages],
            "images": self.images,
            "sources_recorded": self.sources_recorded(),
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "files": [str(p) for p in self.files],
            "bytes_on_disk": self.bytes_on_disk,
            "bbx_version": f.bbx_version,
            "preprocessing": _jsonable(f.preprocessing),
            "shard": None
            if f.shard_index is None
            else {
                "index": f.shard_index,
                "count": f.shard_count,
                "input_count": f.input_count,
                "input_digest": f.input_digest,
            },
        }


@dataclass(frozen=True)
class ResumeSource:
    """What a ``--resume`` of an output continues, as planning sees it without opening anything
    for writing: the rows already there and the facts they were written with, and ``carried``,
    the bytes of them the writer copies or rewrites on the way (extending a finished HDF5 file
    works on a copy; a .partial is extended in place)."""

    facts: RunFacts
    paths: list[str]
    carried: int


def not_bbx(path: Path, why: str) -> InputError:
    return InputError(f"{path} is not a bbx output ({why})")


# --- writers ---------------------------------------------------------------------------------------


class Writer(Protocol):
    """An output being written by one run (see :mod:`bbx.formats`)."""

    path: Path
    #: rows the output already holds when resuming (in row order), and the facts they were written with
    existing_paths: list[str]
    existing_facts: RunFacts | None
    notes: list[str]

    def write(self, paths: Sequence[str], maps: Mapping[str, Any], sources: Sequence[Any] | None = None) -> None:
        """Commit a batch; ``sources`` (one :class:`bbx.images.Geometry` a row, optional): where
        each row came from. A writer that records no sources may leave the parameter out."""
        ...

    def fail(self, path: str, reason: str) -> None: ...

    def forget_failed(self, paths: set[str]) -> None: ...

    def finish(self, status: str, reason: str | None = None) -> list[Path]:
        """Close the output as ``status`` (complete | interrupted); ``reason``: why an interrupted
        run stopped, stored as ``interrupted_by`` for readers to say."""
        ...

    def abort(self) -> None: ...


# --- one run per output ------------------------------------------------------------------------------
#
# A run holds an exclusive advisory lock (flock) on what it writes for as long as it writes: the
# HDF5 ``.partial`` file itself, or the ``lock`` file in a safetensors staging folder. Another run
# that would touch that output (to replace, resume or extend it) asks for the same lock first and
# is refused while it is held. The lock dies with the process, so a killed run leaves none.

#: the lock file of a staging folder (safetensors)
LOCK = "lock"


def busy(where: Path) -> InputError:
    return InputError(f"{where} is being written by another bbx run: wait for it to end, or choose another -o")


def take_lock(path: Path, *, create: bool = False) -> int | None:
    """Hold an exclusive lock on the file ``path`` (created empty with ``create``) until
    :func:`release_lock`; :func:`busy` when another process holds it. None where the system or
    the file system has no locks (then nothing keeps a second run out)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # a lock needs no write access
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise busy(path) from None
    except OSError:  # a file system without locks
        pass
    return fd


def release_lock(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def held_elsewhere(leftover: Path) -> bool:
    """Whether another process holds the lock of ``leftover`` (an HDF5 ``.partial`` file, or a
    staging folder with its ``lock`` file): a run is writing it right now."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    target = leftover / LOCK if leftover.is_dir() else leftover
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


def refuse_to_replace(found: Path | None, leftover: Path | None, *, probe: bool = True) -> None:
    """Without --overwrite or --resume a run never replaces an output, nor an unfinished one; an
    output another run is writing is refused whatever the options (``probe=False``: the caller
    holds the lock itself, so nobody else does)."""
    if probe and leftover is not None and held_elsewhere(leftover):
        raise busy(leftover)
    if found is not None:
        raise InputError(f"{found} exists: pass --overwrite to replace it or --resume to add to it")
    if leftover is not None:
        raise InputError(
            f"{leftover} is left from an unfinished run: pass --resume to continue it or --overwrite to start over"
        )


# --- where an output can go ------------------------------------------------------------------------


def existing_folder(path: Path) -> Path:
    """The folder ``path`` lies in, or its nearest ancestor that exists (outputs create the
    rest); InputError when that is not a folder."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"output {path}: {parent} is not a folder")
    return parent


def name_limits(folder: Path) -> tuple[int, int]:
    """(longest file name, longest path) in bytes on the file system of ``folder``."""
    try:
        name_max = int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        name_max = 255
    try:
        path_max = int(os.pathconf(folder, "PC_PATH_MAX"))
    except (OSError, ValueError, AttributeError):
        path_max = 4096
    return name_max, path_max


def check_target(path: Path, *, extra: int = 0, what: str = "output") -> None:
    """Refuse, in one line and before anything is written, a file bbx could not create at
    ``path``: an existing non-regular file (a FIFO would block, a device would be clobbered), a
    name longer than the file system takes (``extra``: the bytes bbx appends for its temporary
    and staging names), a folder nobody may write in. ``what`` names it in messages (``-o``)."""
    folder = existing_folder(path)
    name_max, path_max = name_limits(folder)
    size = len(os.fsencode(path.name)) + extra
    if size > name_max:
        more = f" (with the {extra} bytes bbx adds for its temporary files)" if extra else ""
        raise InputError(
            f"{what} name {path.name[:40]}... is too long: {size} bytes{more}, and this file system takes names "
            f"of at most {name_max}; choose a shorter name"
        )
    if len(os.fsencode(os.path.abspath(path))) + extra >= path_max:
        raise InputError(f"{what} path {str(path)[:40]}... is too long for this system (at most {path_max} bytes)")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise InputError(f"cannot use {what} {path}: {e.strerror or e}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise InputError(f"{what} {path} is a folder: give a file name (.h5 or .safetensors)")
    if mode is not None and not stat.S_ISREG(mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
        )
        raise InputError(f"{what} {path} is {kind}, not a regular file: choose another file name")
    probe = folder / f".bbx-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as e:
        raise InputError(f"cannot write {path}: {folder} is not writable ({e.strerror or e})") from None
    os.unlink(probe)


def check_shapes(stages: Sequence[StageLayout], n: int, maps: Mapping[str, Any]) -> None:
    """A batch's arrays must be what the output stores; a mismatch is a bug of the caller."""
    for s in stages:
        a = maps.get(s.name)
        shape = tuple(getattr(a, "shape", ()))
        itemsize = getattr(getattr(a, "dtype", None), "itemsize", None)
        if shape != (n, *s.shape) or itemsize != s.itemsize:
            got = "nothing" if a is None else f"{shape} of {getattr(a, 'dtype', type(a).__name__)}"
            raise RuntimeError(
                f"internal error: stage {s.name} maps for {n} images are {got}, "
                f"the output stores {s.shape} of {s.dtype} per image"
            )


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


class WriteBehind:
    """Moves an output's committed batches to the disk as the run goes, and out of the page cache.

    After each batch, :meth:`kick` wakes a thread that gives the kernel ``POSIX_FADV_DONTNEED`` for
    the whole file: the kernel starts writing back the pages the batch dirtied and drops those that
    are already on disk (the previous batches'). Dirty pages are never dropped, so this is advice,
    never a loss. Three things follow: the final ``fsync`` has one batch left to wait for, not the
    whole run's output (768 MB of ConvNeXt-T maps: 0.35 s on this project's VMs, minutes on a slow
    disk); a run's output never crowds the page cache (the images it reads, other users' files);
    and the pages the next batch writes are the ones just freed, where fresh ones can cost several
    times the copy (on a VM whose host reclaims free guest memory, 768 MB took 1.1-1.7 s to write
    into new pages and 0.15-0.3 s into recycled ones). The thread waits for the disk, not the CPU,
    and the advice is given off the main thread because starting the write-back blocks until the
    device has taken the batch. Where the call is missing (macOS) or refused, nothing happens."""

    def __init__(self, path: Path) -> None:
        self._wake = threading.Event()  # set: advice asked for and not yet given
        self._stop = False
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        thread = threading.Thread(target=self._run, name="bbx-write-behind", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the run goes on without the advice
            os.close(self._fd)
            self._fd = None
            return
        self._thread = thread

    def kick(self) -> None:
        """A batch was committed: start writing it back (returns at once)."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)  # type: ignore[arg-type]
            except OSError:  # a file system that refuses advice: the page cache keeps the pages
                return  # (and it is not asked again)
            if self._stop and not self._wake.is_set():
                return

    def close(self) -> None:
        """Stop the thread once it has given the advice asked for so far, and close its descriptor."""
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def partial_path(path: Path) -> Path:
    """Where an unfinished run keeps its output (HDF5: a file; safetensors: a staging folder)."""
    return path.with_name(path.name + ".partial")
