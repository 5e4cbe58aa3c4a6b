"""HDF5 output: layout, writer and reader.

Layout::

    /features/<stage>   [N, C, H, W] (or [N, C] pooled), one chunk per image (per 256 pooled rows)
    /features/embedding [N, D]: the model's own image embedding (with --embedding; facts: embedding)
    /paths              [N] UTF-8 strings: row i of every dataset belongs to paths[i]
    /failed/paths       skipped inputs
    /failed/reasons     why each was skipped
    attributes on /     bbx_version, model, checkpoint, revision, architecture, out_features,
                        out_indices, input_size, compute_dtype, store_dtype, pool, embedding, stage_norm,
                        preprocessing (JSON), status (running|interrupted|complete), rows

bfloat16 has no HDF5 type: such datasets hold the raw 16-bit patterns as uint16 with the dataset
attribute ``dtype = "bfloat16"`` (``(x.astype(np.uint32) << 16).view(np.float32)`` decodes them).

Crash safety: a run writes ``<name>.partial`` and renames it to ``<name>`` when it ends (also when
interrupted by a signal, with status ``interrupted``). Each batch ends with a flush and the
``rows`` attribute, so a killed run leaves a ``.partial`` file that ``--resume`` truncates to its
last finished batch and continues, or, if the kill damaged it, reports that and starts over.
Behind the run a thread writes each committed batch back to the disk and drops the pages already
there (:class:`bbx.formats.base.WriteBehind`), so the final fsync has one batch left to wait for.
Extending a finished file works on a copy, so nothing already extracted is ever at risk.

One run per output: a run holds a lock on its ``.partial`` (:func:`bbx.formats.base.take_lock`)
from before it touches the file until it is renamed or left; a second run on the same output
(replacing, resuming or extending it) is refused while the lock is held.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bbx import dtypes
from bbx.errors import InputError, first_line
from bbx.formats.base import (
    FORMAT_TAG,
    Output,
    ResumeSource,
    RunFacts,
    StageLayout,
    WriteBehind,
    busy,
    decode,
    fsync_dir,
    held_elsewhere,
    not_bbx,
    partial_path,
    refuse_to_replace,
    release_lock,
    take_lock,
)

NAME = "hdf5"
SUFFIXES = (".h5", ".hdf5")
#: bytes added to the output's name: ``<name>.partial``
NAME_EXTRA = len(".partial")
POOLED_CHUNK_ROWS = 256
SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: free bytes a batch must leave on the disk beyond its own data (HDF5's metadata: chunk index,
#: object headers, the paths heap); a batch that would eat into it is refused before HDF5 sees it
SPACE_MARGIN = 1 << 20
#: files whose HDF5 state a failed write left broken (see :func:`broken`)
_BROKEN: list[Any] = []


def broken() -> bool:
    """Whether a write failed inside HDF5 itself (a disk filled by someone else between bbx's
    space check and the write) and left a file that cannot be closed. Its handles must then
    never be freed: HDF5 crashes the interpreter when it frees them, at exit at the latest, so
    the command line ends such a process with ``os._exit`` once its one-line error is out. The
    ``.partial`` on disk is intact up to its last committed batch."""
    return bool(_BROKEN)


def _ignore_broken_handles(unraisable: Any, previous: Any = sys.unraisablehook) -> None:
    """While a file is broken, h5py reports every freed handle of it ("Can't decrement id ref
    count"); those are the same failure, already reported once."""
    if "h5py" in repr(getattr(unraisable, "object", "")) or "h5py" in repr(unraisable.exc_value):
        return
    previous(unraisable)


def write_error(e: BaseException) -> OSError:
    """An error HDF5 raised while writing (h5py gives RuntimeError for a failed flush, OSError
    for others, the errno only in the text) as an OSError with its errno and the system's words."""
    code = getattr(e, "errno", None)
    if not isinstance(code, int) or not code:
        m = re.search(r"errno = (\d+)", str(e))
        code = int(m.group(1)) if m else None
    if code:
        return OSError(code, os.strerror(code))
    return OSError(errno.EIO, f"HDF5 could not write ({first_line(e)})")


def _check_room(folder: Path, nbytes: int) -> None:
    """ENOSPC, before HDF5 writes anything, when ``nbytes`` and the margin do not fit on the disk."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < nbytes + SPACE_MARGIN:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _attr(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value)


def leftovers(path: Path) -> tuple[Path | None, Path | None]:
    """(a finished output, an unfinished one) under this name that a new run would replace."""
    partial = partial_path(path)
    return (path if path.exists() else None), (partial if partial.exists() else None)


def _filters(compression: str) -> dict[str, Any]:
    """h5py's dataset arguments for ``--compression``: gzip (level 4, h5py's default) or lzf, both
    after byte shuffling (the bytes of floats compress far better grouped by significance)."""
    if compression == "none":
        return {}
    return {"compression": compression, "shuffle": True}


def stored_ratio(f: Any) -> tuple[int, int, str]:
    """(bytes of maps, bytes they take in the file, the filter) of an open bbx HDF5 file."""
    logical = stored = 0
    kinds = set()
    for name in f["features"]:
        ds = f["features"][name]
        logical += int(ds.size) * ds.dtype.itemsize
        stored += int(ds.id.get_storage_size())
        kinds.add(ds.compression or "none")
    return logical, stored, ",".join(sorted(kinds)) or "none"


#: where each row came from: the image's size as decoded (height, width) and the box of it the
#: model input covers (top, left, bottom, right, in that image's pixels); -1 / NaN where unknown
SOURCE_SIZE, SOURCE_BOX = "source/size", "source/box"


def _source_datasets(f: Any, rows: int) -> None:
    """``/source/size`` and ``/source/box`` (an output written before them gets them, unknown for
    the rows it holds)."""
    import numpy as np

    group = f.require_group("source")
    size = group.create_dataset("size", shape=(rows, 2), maxshape=(None, 2), dtype="int32", chunks=(1024, 2))
    box = group.create_dataset("box", shape=(rows, 4), maxshape=(None, 4), dtype="float32", chunks=(1024, 4))
    if rows:
        size[:] = -1
        box[:] = np.nan


def _failure_datasets(f: Any) -> None:
    import h5py

    strings = h5py.string_dtype("utf-8")
    failed = f.create_group("failed")
    failed.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=strings, chunks=(256,))
    failed.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=strings, chunks=(256,))


def _h5open(path: Path, mode: str) -> Any:
    """``h5py.File`` without HDF5's own file lock: bbx holds its own (:func:`take_lock`), which
    HDF5's would fight within this very process, and readers must see a file being written."""
    import h5py

    try:
        return h5py.File(path, mode, locking=False)
    except (TypeError, ValueError) as e:  # an HDF5 without locking options
        if "lock" not in str(e).lower():
            raise
        os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
        return h5py.File(path, mode)


class HDF5Writer:
    def __init__(
        self,
        path: Path,
        *,
        facts: RunFacts,
        stages: Sequence[StageLayout],
        overwrite: bool = False,
        resume: bool = False,
        check_space: bool = True,
        compression: str = "none",
    ) -> None:
        self.path = path
        self.partial = partial_path(path)
        #: refuse a batch the disk has no room for before HDF5 meets the full disk (off with
        #: --force, for file systems that misreport their free space: then HDF5's own failure ends the run)
        self.check_space = check_space
        #: the filter of new feature datasets (a resumed file keeps the one it was written with)
        self.compression = compression
        self.stages = list(stages)
        self.existing_paths: list[str] = []
        self.existing_facts: RunFacts | None = None
        self.notes: list[str] = []
        self._f: Any = None  # the h5py.File
        #: the datasets written, opened once (the paths, the failures, then one per stage): a
        #: handle must outlive a failed write (see :func:`broken`), so none is opened per batch
        self._ds: dict[str, Any] = {}
        self._created = False  # this run started the file (nothing earlier is in it)
        self._ours = False  # the .partial holds nothing of an earlier run: remove it if opening fails
        self._lock: int | None = None
        #: the committed batches go to the disk while the next ones run (see :class:`WriteBehind`)
        self._behind: WriteBehind | None = None
        try:
            self._open(facts, overwrite=overwrite, resume=resume)
            self._behind = WriteBehind(self.partial)
        except BaseException:
            self._close_quietly()
            if self._ours:
                self.partial.unlink(missing_ok=True)
            release_lock(self._lock)
            self._lock = None
            raise

    # --- opening ------------------------------------------------------------------------------
    def _open(self, facts: RunFacts, *, overwrite: bool, resume: bool) -> None:
        path, partial = self.path, self.partial
        if partial.is_dir():  # a safetensors run's staging folder under this name
            if held_elsewhere(partial):
                raise busy(partial)
            if not overwrite:
                raise InputError(
                    f"{partial} holds an unfinished safetensors run: resume it with --format safetensors, "
                    "or pass --overwrite"
                )
            shutil.rmtree(partial)
        if not overwrite and not resume:
            refuse_to_replace(*leftovers(path))
        existed = partial.exists()
        partial.parent.mkdir(parents=True, exist_ok=True)
        # the lock first: until this run holds it, another one may be writing the .partial
        self._lock = take_lock(partial, create=True)
        self._ours = not existed
        if resume and existed:
            if self._reopen(partial, facts, copy=False):
                return
            self.notes.append(f"{partial.name} was damaged (the run was killed mid-write) and is started over")
            self._ours = True
        if resume and path.exists():
            # work on a copy: a crash while extending must not damage the finished file
            self._ours = True
            self._check_room(path.stat().st_size)
            shutil.copyfile(path, partial)  # into the locked file: the lock stays
            if self._reopen(partial, facts, copy=True):
                return
            raise InputError(f"{path} is not a bbx HDF5 output that can be resumed")
        self._ours = True
        self._check_room(0)
        try:
            self._create(partial, facts)
        except (RuntimeError, OSError) as e:
            raise write_error(e) from None
        self._created = True

    def _reopen(self, partial: Path, facts: RunFacts, *, copy: bool) -> bool:
        """Continue ``partial`` (``copy``: this run's copy of a finished file); False if it cannot
        be read (a kill damaged it)."""
        try:
            existing = open_hdf5(partial, named=partial, unfinished=True)
        except InputError:
            return False
        existing.facts.check_resumable(facts, self.path)
        if [s.name for s in existing.stages] != [s.name for s in self.stages]:
            return False
        try:
            f = _h5open(partial, "r+")
        except (OSError, RuntimeError):
            return False
        self._f = f
        try:
            if "failed" not in f:  # an output written before failures were recorded
                _failure_datasets(f)
            if SOURCE_BOX not in f:  # one written before the sources were
                _source_datasets(f, len(existing.paths))
            self._adopt(f)
            rows = len(existing.paths)
            # drop any rows past the last finished batch
            for ds in self._rows_datasets():
                if len(ds) != rows:
                    ds.resize(rows, axis=0)
            _set_rows(f, rows)
            f.attrs["status"] = "running"
            f.flush()
        except (RuntimeError, OSError) as e:
            raise write_error(e) from None
        self.existing_paths = list(existing.paths)
        self.existing_facts = existing.facts
        kept = existing.facts.compression
        if kept != self.compression:
            self.notes.append(f"{self.path.name} keeps the compression it was written with ({kept})")
        if not copy and existing.status == "running":
            self.notes.append(f"recovered {rows} images from the unfinished run in {partial.name}")
        return True

    def _create(self, partial: Path, facts: RunFacts) -> None:
        f = _h5open(partial, "w")  # truncates the locked file in place
        self._f = f  # (closed if what follows fails)
        for k, v in facts.to_metadata().items():
            f.attrs[k] = _attr(v)
        f.attrs["status"] = "running"
        f.attrs["rows"] = 0
        feats = f.create_group("features")
        for s in self.stages:
            pooled = len(s.shape) == 1
            chunks = (POOLED_CHUNK_ROWS, *s.shape) if pooled else (1, *s.shape)
            ds = feats.create_dataset(
                s.name,
                shape=(0, *s.shape),
                maxshape=(None, *s.shape),
                dtype=s.storage,
                chunks=chunks,
                **_filters(self.compression),
            )
            ds.attrs["dtype"] = s.dtype
        import h5py

        f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(1024,))
        _failure_datasets(f)
        _source_datasets(f, 0)
        f.flush()
        self._adopt(f)

    def _adopt(self, f: Any) -> None:
        self._f = f
        self._ds = {name: f[name] for name in ("paths", "failed/paths", "failed/reasons", SOURCE_SIZE, SOURCE_BOX)}
        self._ds.update({s.name: f[f"features/{s.name}"] for s in self.stages})

    def _rows_datasets(self) -> list[Any]:
        return [self._ds[s.name] for s in self.stages] + [self._ds[k] for k in ("paths", SOURCE_SIZE, SOURCE_BOX)]

    def stored_bytes(self) -> int:
        """Bytes the feature datasets take in the file (after compression)."""
        return sum(int(self._ds[s.name].id.get_storage_size()) for s in self.stages)

    def _check_room(self, nbytes: int) -> None:
        if self.check_space:
            _check_room(self.partial.parent, nbytes)

    def _stop_behind(self) -> None:
        if self._behind is not None:
            self._behind.close()
            self._behind = None

    def _close_quietly(self) -> None:
        """Close after a failure. A file HDF5 cannot close (its last write failed inside HDF5) is
        kept, never freed (see :func:`broken`); the commit point on disk holds either way."""
        self._stop_behind()
        if self._f is None:
            return
        f, self._f = self._f, None
        handles, self._ds = self._ds, {}
        try:
            f.close()
        except Exception:
            if not _BROKEN:
                sys.unraisablehook = _ignore_broken_handles
            _BROKEN.append((f, handles))

    # --- writing ------------------------------------------------------------------------------
    def write(self, paths: Sequence[str], maps: Mapping[str, Any], sources: Sequence[Any] | None = None) -> None:
        """Commit a batch: its rows of every stage, its paths, and (``sources``: one
        :class:`bbx.images.Geometry` per row) where each came from."""
        f = self._f
        assert f is not None
        n = len(paths)
        if n == 0:
            return
        import numpy as np

        self._check_room(n * sum(s.row_bytes for s in self.stages) + sum(map(len, paths)))
        try:
            start = int(f.attrs["rows"])
            for s in self.stages:
                data = np.asarray(maps[s.name])
                if s.dtype == "bfloat16":
                    data = data.view(np.uint16)
                ds = self._ds[s.name]
                ds.resize(start + n, axis=0)
                ds[start : start + n] = data
            pds = self._ds["paths"]
            pds.resize(start + n, axis=0)
            pds[start : start + n] = list(paths)
            size, box = self._ds[SOURCE_SIZE], self._ds[SOURCE_BOX]
            size.resize(start + n, axis=0)
            box.resize(start + n, axis=0)
            if sources is not None and len(sources) == n:
                size[start : start + n] = np.array([g.source for g in sources], dtype=np.int32)
                box[start : start + n] = np.array([g.box for g in sources], dtype=np.float32)
            else:
                size[start : start + n] = -1
                box[start : start + n] = np.nan
            f.flush()  # the rows' data on disk first,
            _set_rows(f, start + n)  # then the commit point of the batch
            f.flush()
        except (RuntimeError, OSError) as e:
            raise write_error(e) from None
        if self._behind is not None:
            self._behind.kick()

    def fail(self, path: str, reason: str) -> None:
        f = self._f
        assert f is not None
        self._check_room(len(path) + len(reason))
        try:
            for name, value in (("failed/paths", path), ("failed/reasons", reason)):
                ds = self._ds[name]
                ds.resize(len(ds) + 1, axis=0)
                ds[-1] = value
            f.flush()
        except (RuntimeError, OSError) as e:
            raise write_error(e) from None

    def forget_failed(self, paths: set[str]) -> None:
        """Drop earlier failures of inputs this run tries again."""
        f = self._f
        assert f is not None
        try:
            fp, fr = self._ds["failed/paths"], self._ds["failed/reasons"]
            pairs = [(text(a), text(b)) for a, b in zip(fp[:], fr[:])]
            keep = [(a, b) for a, b in pairs if a not in paths]
            if len(keep) == len(pairs):
                return
            for ds, values in ((fp, [a for a, _ in keep]), (fr, [b for _, b in keep])):
                ds.resize(len(values), axis=0)
                if values:
                    ds[:] = values
            f.flush()
        except (RuntimeError, OSError) as e:
            raise write_error(e) from None

    def finish(self, status: str, reason: str | None = None) -> list[Path]:
        f = self._f
        assert f is not None
        try:
            rows = int(f.attrs["rows"])
            # a batch interrupted inside write() may have grown the datasets past the commit point
            for ds in self._rows_datasets():
                if len(ds) != rows:
                    ds.resize(rows, axis=0)
            f.attrs["status"] = status
            if reason and status == "interrupted":
                f.attrs["interrupted_by"] = reason
            elif "interrupted_by" in f.attrs:  # a resumed run that finished
                del f.attrs["interrupted_by"]
            f.flush()
            self._ds = {}
            f.close()
        except (RuntimeError, OSError) as e:
            raise write_error(e) from None
        self._f = None
        self._stop_behind()
        fd = os.open(self.partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.partial, self.path)
        fsync_dir(self.path.parent)
        release_lock(self._lock)
        self._lock = None
        return [self.path]

    def abort(self) -> None:
        """Close without renaming (the run failed): the ``.partial`` file stays for --resume,
        unless this run created it and wrote nothing."""
        if self._f is not None:
            try:
                empty = self._created and int(self._f.attrs["rows"]) == 0 and len(self._ds["failed/paths"]) == 0
            except Exception:  # the file is in a bad state (e.g. the disk filled up): keep it for --resume
                empty = False
            self._close_quietly()
            if empty:
                self.partial.unlink(missing_ok=True)
        release_lock(self._lock)
        self._lock = None


# --- reading ------------------------------------------------------------------------------------


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _h5file(path: Path) -> Any:
    import h5py

    try:
        # no lock: a run may hold the .partial open for writing while someone looks at it
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError) as e:  # an HDF5 without locking options
        if "lock" not in str(e).lower():
            raise InputError(f"{path} is not a readable HDF5 file ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, ... for damaged files
        raise InputError(f"{path} is not a readable HDF5 file ({first_line(e)})") from None
    try:
        return h5py.File(path, "r")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path} is not a readable HDF5 file ({first_line(e)})") from None


class HDF5Output(Output):
    """An HDF5 output; rows are read with one open handle, kept until :meth:`close`."""

    _handle: Any = None

    def read_sources(self, rows: Sequence[int]) -> tuple[Any, Any] | None:
        """(image sizes ``[k, 2]``, boxes ``[k, 4]``) of ``rows``, or None for an output that
        predates them; -1 / NaN for rows whose source is unknown."""
        import numpy as np

        if self._handle is None:
            self._handle = _h5file(self.files[0])
        f = self._handle
        if SOURCE_BOX not in f:
            return None
        try:
            size, box = np.asarray(f[SOURCE_SIZE][:], np.int32), np.asarray(f[SOURCE_BOX][:], np.float32)
            picked = np.asarray([int(r) for r in rows], dtype=np.int64)
            known = picked < len(size)
            out_size = np.full((len(picked), 2), -1, np.int32)
            out_box = np.full((len(picked), 4), np.nan, np.float32)
            out_size[known], out_box[known] = size[picked[known]], box[picked[known]]
        except Exception as e:  # noqa: BLE001 - damaged
            raise InputError(f"{self.files[0]} is damaged: its sources cannot be read ({first_line(e)})") from None
        return out_size.reshape(-1, 2), out_box.reshape(-1, 4)

    def read_raw(self, stage: StageLayout, start: int, stop: int) -> Any:
        if self._handle is None:
            self._handle = _h5file(self.files[0])
        import numpy as np

        try:
            return np.asarray(self._handle["features"][stage.name][start:stop])
        except Exception as e:  # noqa: BLE001 - a damaged chunk: h5py raises OSError, RuntimeError, ...
            raise InputError(
                f"{self.files[0]} is damaged: rows {start}..{stop - 1} of {stage.name} cannot be read ({first_line(e)})"
            ) from None

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except Exception:  # noqa: BLE001 - read-only: nothing to lose
                pass


def open_hdf5(path: Path, *, named: Path, unfinished: bool) -> HDF5Output:
    """The HDF5 output in ``path`` (its metadata), InputError if it is not one or is damaged
    (in its header, its attributes or its index: whatever HDF5 or the decoding raises)."""
    f = _h5file(path)
    try:
        meta = {k: decode(v) for k, v in f.attrs.items()}
        if meta.get("format") != FORMAT_TAG or "features" not in f or "paths" not in f:
            raise not_bbx(path, "no bbx features in it")
        facts = RunFacts.from_metadata(meta)
        rows = int(meta.get("rows", 0))
        paths = [text(p) for p in f["paths"][:rows]]
        if len(paths) != rows:
            raise InputError(f"{path} is damaged: it holds {len(paths)} paths for {rows} rows")
        failed: list[tuple[str, str]] = []
        if "failed" in f:
            failed = [(text(a), text(b)) for a, b in zip(f["failed/paths"][:], f["failed/reasons"][:])]
        stages = []
        for name in facts.datasets or list(f["features"]):
            ds = f["features"][name]
            dtype = text(ds.attrs.get("dtype", "float32"))
            if len(ds) < rows or dtype not in dtypes.DTYPES or len(ds.shape) not in (2, 4):
                raise InputError(f"{path} is damaged: stage {name} is short or of an unknown dtype or shape")
            stages.append(StageLayout(name, tuple(int(d) for d in ds.shape[1:]), dtype))
        storage = stored_ratio(f)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises RuntimeError, OSError, KeyError, ... for damage
        raise InputError(f"{path} is damaged or not a bbx output ({first_line(e)})") from None
    finally:
        try:
            f.close()
        except Exception:  # noqa: BLE001
            pass
    status = str(meta.get("status", "complete"))
    running = unfinished or status == "running"
    out = HDF5Output(named, NAME, [path], facts, stages, paths, failed, status, running)
    out.storage = storage
    out.interrupted_by = str(meta["interrupted_by"]) if meta.get("interrupted_by") else None
    return out


def resume_source(path: Path) -> ResumeSource | None:
    """What ``--resume`` of ``path`` continues (as :class:`HDF5Writer` decides it): a readable
    ``.partial``, extended in place, else the finished file, copied first; None when neither
    exists. InputError when the finished file is damaged (a damaged .partial is started over)."""
    partial = partial_path(path)
    if partial.is_file():
        try:
            out = open_hdf5(partial, named=partial, unfinished=True)
            return ResumeSource(out.facts, out.paths, 0)
        except InputError:
            pass  # damaged: the run starts it over (from the finished file, if there is one)
    if path.is_file():
        out = open_hdf5(path, named=path, unfinished=False)
        return ResumeSource(out.facts, out.paths, out.bytes_on_disk)
    return None


def space_needed(new_bytes: int, carried: int, shard_bytes: int | None = None) -> int:
    """Disk bytes a run needs: the new rows, and a copy of the rows it carries."""
    return new_bytes + carried


def locate(path: Path) -> Output | None:
    """The HDF5 output ``path`` names (the file, its ``.partial``, or the ``.partial`` itself), or
    None when it names none."""
    if path.name.endswith(".partial"):
        return open_hdf5(path, named=path, unfinished=True) if path.is_file() else None
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from None
        return open_hdf5(path, named=path, unfinished=False) if head == SIGNATURE else None
    partial = partial_path(path)
    if partial.is_file():
        return open_hdf5(partial, named=path, unfinished=True)
    return None


def _set_rows(f: Any, rows: int) -> None:
    """The ``rows`` attribute (the commit point) written in place, in one HDF5 call. Assigning
    ``attrs["rows"]`` deletes the attribute and creates it again, and a signal whose handler raised
    between the two left a file without one: the interrupted run then failed its own close
    ("can't locate attribute: 'rows'", an internal error; seen once in the interrupt tests)."""
    f.attrs.modify("rows", rows)
