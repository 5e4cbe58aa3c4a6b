"""safetensors output, single file or hub-style shards: layout, writer and reader.

A single file ``feats.safetensors`` holds one tensor per stage, named by the stage (``stage1``:
``[N, C, H, W]``, or ``[N, C]`` pooled; with ``--embedding`` also ``embedding``: ``[N, D]``), and
string metadata: ``paths`` (JSON list; row i belongs
to ``paths[i]``), ``failed`` (JSON list of ``[path, reason]``) and the run's facts (model,
checkpoint, revision, stages, sizes, dtypes, preprocessing, status), JSON-encoded where not a
string. ``safetensors.torch.load_file`` alone reads it.

A run whose output exceeds the shard size (``--shard-size``, 5 GB by default as on the hub) is
written as ``feats-00001-of-00003.safetensors`` ... plus ``feats.safetensors.index.json`` in the
hub's sharded-checkpoint layout: ``weight_map`` names each tensor's file. Tensor names are unique
across shards (``stage1.00001`` holds shard 1's rows of stage1); each shard's metadata has its
``paths`` and ``row_offset``; the index's ``metadata`` has the facts, ``shards`` (file, rows) in
row order, ``failed`` and ``total_size``. A file's ``paths`` live in its header, which safetensors
caps at 100 MB: a shard also ends when its paths reach :data:`HEADER_CAP`, so runs of millions of
pooled vectors stay loadable. ``--resume`` extends a finished output: a single file that still fits
one shard stays a single file (rewritten with the new rows); otherwise its files become the first
shards and the new rows follow.

safetensors cannot be appended to, so rows are staged in ``feats.safetensors.partial/``: raw
per-stage files (``stage-<name>.<generation>.raw``) and ``journal.jsonl``. Each batch's rows are
written and fsynced, then its journal line (the commit point); memory stays flat. A full shard is
sealed into ``shard-0000k.safetensors`` in the folder. Files are assembled when complete: written
to a temporary name, fsynced, renamed; the index last. The journal's first entry holds the facts,
a random run token (also written into the finished output's metadata as ``run``) and, for an
``--overwrite`` run, the files it replaces (resuming that run goes on replacing them rather than
extending them). A lock on ``lock`` keeps a second run out.

Crash safety: every step either is undone by a replay or is the commit point of one. A killed run
leaves the staging folder, which ``--resume`` replays to its last whole journal line (cutting a
torn one). The staging folder stays until the output is in place and what it replaced is gone; a
folder whose token the finished output already carries is spent and dropped, so no row is staged
twice. Nothing that looks complete is ever a mix of old and new files: an index is replaced in one
rename, or removed before the files it would misdescribe are written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

from bbx import dtypes
from bbx.errors import InputError, first_line
from bbx.formats.base import (
    FORMAT_TAG,
    LOCK,
    Output,
    ResumeSource,
    RunFacts,
    StageLayout,
    busy,
    check_shapes,
    fsync_dir,
    held_elsewhere,
    not_bbx,
    partial_path,
    refuse_to_replace,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - no advisory locks (Windows)
    fcntl = None  # type: ignore[assignment]

DEFAULT_SHARD_BYTES = 5 * 10**9
#: the most bytes one file's ``paths`` may take in its header (safetensors refuses headers over 100 MB)
HEADER_CAP = 32 * 10**6
_HEADER_BASE = 4  # the quotes and brackets around a stored paths list
_COPY = 16 << 20
#: the staging folder's journal
JOURNAL = "journal.jsonl"
NAME = "safetensors"
SUFFIXES = (".safetensors",)
#: bytes added to the output's name: shards ``<stem>-00001-of-00002.safetensors`` written as
#: ``....tmp`` first (the longest; ``.index.json.tmp`` and ``.partial`` are shorter)
NAME_EXTRA = len("-00001-of-00002") + len(".tmp")

#: where a tensor's bytes come from: (file, offset, bytes), concatenated in order
Segment = tuple[Path, int, int]


staging_dir = partial_path


def index_path(path: Path) -> Path:
    return path.with_name(path.name + ".index.json")


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else path.stem


#: header bytes a row's source takes at most in a stored ``sources`` list: ``[h,w,top,left,bottom,right]``
#: with the numbers rounded to hundredths (the budget of a shard's header counts it for every row)
_SOURCE_COST = 56


def _source(geometry: Any) -> list[float] | None:
    """A row's source as stored: [height, width, top, left, bottom, right] (see bbx.images.Geometry);
    None for a row that records none (a size below 0: rows merged from an output without them)."""
    if geometry is None or int(geometry.source[0]) < 0:
        return None
    return [int(geometry.source[0]), int(geometry.source[1]), *(round(float(v), 2) for v in geometry.box)]


def _row_cost(path: str) -> int:
    """Header bytes one row takes: its path and its source."""
    return _path_cost(path) + _SOURCE_COST


def _path_cost(path: str) -> int:
    """Header bytes one path takes in a stored ``paths`` list (JSON in a JSON string), comma included."""
    return len(json.dumps(json.dumps(path, ensure_ascii=False), ensure_ascii=False).encode()) - 1


def _contiguous(array: Any) -> bytes:
    import numpy as np

    return np.ascontiguousarray(array).tobytes()


def _copy(src: Path, offset: int, nbytes: int, out: BinaryIO) -> None:
    """Append ``nbytes`` of ``src`` from ``offset`` to ``out``, in chunks."""
    with open(src, "rb") as raw:
        raw.seek(offset)
        left = nbytes
        while left:
            chunk = raw.read(min(_COPY, left))
            if not chunk:
                raise OSError(f"{src}: staged data is shorter than expected")
            out.write(chunk)
            left -= len(chunk)


@contextlib.contextmanager
def _durably(target: Path, mode: str) -> Iterator[IO[Any]]:
    """A temporary file beside ``target``, open in ``mode``; when the block ends it is flushed,
    fsynced and renamed over ``target``, and the folder fsynced. On any failure it is removed."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_file(
    target: Path,
    tensors: Sequence[tuple[str, StageLayout, int, Sequence[Segment]]],
    metadata: Mapping[str, str],
) -> int:
    """Write a safetensors file at ``target`` (tmp, fsync, rename, fsync the folder). Each tensor's
    bytes are its segments, copied in chunks: memory stays flat. Returns the data bytes written."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, layout, rows, segments in tensors:
        nbytes = rows * layout.bytes_per_image
        if sum(n for _, _, n in segments) != nbytes:
            raise RuntimeError(f"internal error: {name} has {rows} rows but its sources hold another size")
        header[name] = {
            "dtype": dtypes.DTYPES[layout.dtype].safetensors,
            "shape": [rows, *layout.shape],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * (-len(blob) % 8)
    with _durably(target, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for _name, _layout, _rows, segments in tensors:
            for src, start, nbytes in segments:
                _copy(src, start, nbytes, out)
    return offset


def _write_json(target: Path, obj: Any) -> None:
    with _durably(target, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


class SafetensorsWriter:
    def __init__(
        self,
        path: Path,
        *,
        facts: RunFacts,
        stages: Sequence[StageLayout],
        overwrite: bool = False,
        resume: bool = False,
        shard_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.stage_dir = staging_dir(path)
        self.index = index_path(path)
        self.stages = list(stages)
        self.facts = facts
        self.shard_bytes = shard_bytes or DEFAULT_SHARD_BYTES
        self.bytes_per_image = sum(s.bytes_per_image for s in self.stages)
        self.existing_paths: list[str] = []
        self.existing_facts: RunFacts | None = None
        self.notes: list[str] = []
        # in the journal and in the finished output: which run made what (not a number, so JSON keeps it a string)
        self.run = f"run-{secrets.token_hex(8)}"
        # the run's state, all replayable from the journal
        self.old_files: list[tuple[Path, dict[str, str], list[str]]] = []  # finished files being extended
        self.old_sharded = False  # the output being extended is a shard set (its index stays until replaced)
        self.sealed: list[tuple[str, list[str]]] = []  # shard files in the staging folder
        self.staged: list[str] = []  # rows in the current raw files, from row ``base``
        #: where each row came from (stored as the files' ``sources``), by its path: rows are unique
        self.sources: dict[str, list[float] | None] = {}
        self.base = 0
        self.gen = 0
        self.failed: list[tuple[str, str]] = []
        self.replaced: list[Path] = []  # an overwritten output's files, removed once the new one is in place
        self._header = 0  # header bytes of the staged rows' paths
        self._raw: dict[str, BinaryIO] = {}
        self._journal: Any = None
        self._lock: Any = None
        self._created = False
        self.reason: str | None = None  # why an interrupted run stopped (stored as interrupted_by)
        try:
            self._open(overwrite=overwrite, resume=resume)
        except BaseException:
            self._close()
            raise

    # --- opening ------------------------------------------------------------------------------
    def _open(self, *, overwrite: bool, resume: bool) -> None:
        folder = self.stage_dir
        if folder.exists() and not folder.is_dir():
            if held_elsewhere(folder):  # an HDF5 run writing under this name
                raise busy(folder)
            if not overwrite:
                raise InputError(
                    f"{folder} is not a safetensors staging folder (an HDF5 run's?): resume it with --format hdf5, "
                    "or pass --overwrite"
                )
            folder.unlink()
        if folder.is_dir():
            self._take_lock()  # before anything else: another run may be writing it
        if not overwrite and not resume:
            refuse_to_replace(*leftovers(self.path), probe=self._lock is None)
        if overwrite:
            replaced = self._current_files()
            earlier, _ = scan_journal(folder) if folder.is_dir() else ([], 0)
            if earlier and isinstance(earlier[0].get("replaces"), list):  # an overwrite that was killed
                replaced += self._named(earlier[0]["replaces"])
            self.replaced = _unique(replaced)
            self._start(replaces=self.replaced)
            return
        existing = None
        if resume and (self.path.exists() or self.index.exists()):
            from bbx.formats import open_output

            existing = open_output(self.path)
            if not isinstance(existing, SafetensorsOutput):
                raise InputError(
                    f"cannot resume {self.path} as safetensors: it is an {existing.format} output, "
                    "not a safetensors output (resume it with --format hdf5, or choose another -o)"
                )
        entries, end = scan_journal(folder) if resume and folder.is_dir() else ([], 0)
        usable = bool(entries) and "facts" in entries[0]
        token = entries[0].get("run") if usable else None
        if existing is not None and token and str(existing.run) == str(token):
            # killed after its output was in place: the folder is spent, replaying it would add its rows twice
            self.notes.append(f"{folder.name} was left by a run whose output had been finished; removed it")
            self._sweep(entries, keep=set(existing.files), spent=True)
            usable = False
            entries = []
        elif folder.is_dir() and not usable:
            self.notes.append(f"{folder.name} held no usable journal and is started over")
        overwriting = usable and "replaces" in entries[0]
        if existing is not None and not overwriting:
            existing.facts.check_resumable(self.facts, self.path)
            self.existing_paths, self.existing_facts = list(existing.paths), existing.facts
            self.failed = list(existing.failed)
            self.old_files = [(f, names, existing.paths[first : first + n]) for f, names, first, n in existing.parts]
            self.sources.update(zip(existing.paths, existing.sources or []))
            self.old_sharded = existing.format == "safetensors-sharded"
        if usable:
            self._sweep(entries, keep=set(existing.files) if existing is not None else set(), spent=False)
            self._replay(entries, end)
        else:
            self._start(replaces=None)

    def _take_lock(self) -> None:
        """Hold ``lock`` in the staging folder for the writer's lifetime: one run per folder."""
        lock = open(self.stage_dir / LOCK, "a")
        if fcntl is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise busy(self.stage_dir) from None
            except OSError:
                pass  # a file system without locks
        if self._lock is not None:
            self._lock.close()
        self._lock = lock

    def _named(self, names: Sequence[Any]) -> list[Path]:
        """Plain file names next to the output as paths; anything else (a folder, ``..``) is ignored."""
        return [self.path.parent / n for n in names if isinstance(n, str) and n and Path(n).name == n]

    def _index_files(self) -> list[Path]:
        try:
            meta = json.loads(self.index.read_text(encoding="utf-8"))["metadata"]
            return self._named([sh["file"] for sh in meta.get("shards", [])])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    def _current_files(self) -> list[Path]:
        files = []
        if self.index.exists():
            files = [*self._index_files(), self.index]
        if self.path.exists():
            files.append(self.path)
        return files

    def _start(self, *, replaces: Sequence[Path] | None) -> None:
        """A new staging folder: the journal's first entry, then empty raw files."""
        folder = self.stage_dir
        if folder.exists():
            shutil.rmtree(folder)  # a spent or unusable folder, under this run's lock
        folder.mkdir(parents=True)
        self._take_lock()
        first: dict[str, Any] = {
            "facts": self.facts.to_json(),
            "stages": [s.to_json() for s in self.stages],
            "run": self.run,
        }
        if replaces is not None:
            first["replaces"] = sorted({f.name for f in replaces})
        try:
            self._journal = open(folder / JOURNAL, "w", encoding="utf-8")
            self._log(first)
            self._raw = {s.name: open(self._raw_path(s), "w+b") for s in self.stages}
            fsync_dir(folder)
        except BaseException:  # (a full disk): a folder without its first entry would block the next run
            self._close_files()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._created = True

    def _replay(self, entries: list[dict[str, Any]], end: int) -> None:
        """Continue a staging folder left by an interrupted or killed run."""
        folder = self.stage_dir
        first = entries[0]
        RunFacts.from_metadata(first["facts"]).check_resumable(self.facts, self.path)
        self.run = str(first.get("run") or self.run)
        if "replaces" in first:
            self.replaced = _unique(self._named(first["replaces"]) + self._current_files())
        failed_now: list[tuple[str, str]] = []
        try:
            for e in entries[1:]:
                if "rows" in e:
                    self.staged.extend(str(p) for p in e["rows"])
                    self.sources.update(zip((str(p) for p in e["rows"]), e.get("sources") or []))
                elif "failed" in e:
                    failed_now.append((str(e["failed"][0]), str(e["failed"][1])))
                elif "forget" in e:
                    gone = set(e["forget"])
                    self.failed = [(p, r) for p, r in self.failed if p not in gone]
                    failed_now = [(p, r) for p, r in failed_now if p not in gone]
                elif "sealed" in e:
                    count = int(e.get("count", len(self.staged)))
                    self.sealed.append((str(e["sealed"]), self.staged[:count]))
                    self.staged = self.staged[count:]
                    gen = int(e["gen"])
                    self.base = 0 if gen != self.gen else self.base + count
                    self.gen = gen
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(f"{folder}: damaged journal ({err}); remove it or pass --overwrite") from None
        self.failed.extend(failed_now)
        journal = folder / JOURNAL
        with open(journal, "r+b") as f:  # cut a torn last line: new entries must follow whole ones
            if f.seek(0, os.SEEK_END) != end:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        self._journal = open(journal, "a", encoding="utf-8")
        for name, _ in self.sealed:
            if not (folder / name).is_file():
                raise InputError(f"{folder}: sealed shard {name} is missing; remove the folder or pass --overwrite")
        for s in self.stages:
            raw = self._raw_path(s)
            size = (self.base + len(self.staged)) * s.bytes_per_image
            if not raw.exists() and size == 0:
                raw.touch()  # killed between a seal's journal entry and its new raw files
            if not raw.exists() or raw.stat().st_size < size:
                raise InputError(f"{folder}: staged data is missing or short; remove it or pass --overwrite")
            f = open(raw, "r+b")
            f.truncate(size)
            self._raw[s.name] = f
        keep = {self._raw_path(s).name for s in self.stages} | {n for n, _ in self.sealed} | {JOURNAL, LOCK}
        for left in folder.iterdir():  # other generations, unrecorded shards, temporary files
            if left.name not in keep and left.is_file():
                left.unlink()
        fsync_dir(folder)
        done = len(self.staged) + sum(len(p) for _, p in self.sealed)
        if self.existing_facts is None:
            self.existing_facts = RunFacts.from_metadata(first["facts"])
        self.existing_paths += [p for _, ps in self.sealed for p in ps] + list(self.staged)
        self._header = sum(_row_cost(p) for p in self.staged)
        if done:
            self.notes.append(f"recovered {done} images from the unfinished run in {folder.name}")
        # the shard size may be smaller than the run that staged these rows had
        while self.staged and (len(self.staged) >= self.rows_per_shard or self._header + _HEADER_BASE > HEADER_CAP):
            self._seal(self._room(self.staged, rows=0, header=0))

    def _sweep(self, entries: list[dict[str, Any]], *, keep: set[Path], spent: bool) -> None:
        """Clear up after the finishes this journal records, sparing ``keep`` (the output's files).
        A finish that was killed (``spent`` False) leaves files being written, which a replay writes
        again, maybe under other names; one whose output is in place leaves what it meant to remove."""
        for e in entries:
            if not isinstance(e.get("finishing"), list):
                continue
            writing = self._named(e.get("writing", []))
            doomed = [f.with_name(f.name + ".tmp") for f in writing]
            doomed += self._named(e["finishing"]) if spent else writing
            for f in doomed:
                if f not in keep:
                    f.unlink(missing_ok=True)
        fsync_dir(self.path.parent)

    def _raw_path(self, s: StageLayout, gen: int | None = None) -> Path:
        return self.stage_dir / f"stage-{s.name}.{self.gen if gen is None else gen}.raw"

    def _log(self, entry: Mapping[str, Any]) -> None:
        self._journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    # --- writing ------------------------------------------------------------------------------
    @property
    def rows_per_shard(self) -> int:
        return max(1, self.shard_bytes // max(1, self.bytes_per_image))

    def _room(self, paths: Sequence[str], *, rows: int, header: int) -> int:
        """How many of ``paths`` (from the first) fit a shard holding ``rows`` rows whose paths take
        ``header`` bytes: its size and its header are capped. An empty shard takes at least one."""
        limit = min(len(paths), self.rows_per_shard - rows)
        n = 0
        while n < limit:
            header += _row_cost(paths[n])
            if header + _HEADER_BASE > HEADER_CAP:
                break
            n += 1
        return n if n or rows else min(1, len(paths))

    def write(self, paths: Sequence[str], maps: Mapping[str, Any], sources: Sequence[Any] | None = None) -> None:
        """Stage a batch; a batch that crosses the shard size is split between shards. ``sources``:
        one :class:`bbx.images.Geometry` per row."""
        stored = [_source(g) for g in sources] if sources is not None and len(sources) == len(paths) else None
        check_shapes(self.stages, len(paths), maps)
        start = 0
        while start < len(paths):
            n = self._room(paths[start:], rows=len(self.staged), header=self._header)
            if n <= 0:
                self._seal(len(self.staged))
                continue
            at = self.base + len(self.staged)
            for s in self.stages:
                f = self._raw[s.name]
                f.seek(at * s.bytes_per_image)  # after the committed rows, whatever a failed batch left
                f.write(_contiguous(maps[s.name][start : start + n]))
                f.flush()
                os.fsync(f.fileno())
            rows = [str(p) for p in paths[start : start + n]]
            entry: dict[str, Any] = {"rows": rows}
            if stored is not None:
                entry["sources"] = stored[start : start + n]
                self.sources.update(zip(rows, entry["sources"]))
            self._log(entry)  # the commit point
            self.staged.extend(rows)
            self._header += sum(_row_cost(p) for p in rows)
            start += n
            if len(self.staged) >= self.rows_per_shard:
                self._seal(len(self.staged))

    def fail(self, path: str, reason: str) -> None:
        self.failed.append((path, reason))
        self._log({"failed": [path, reason]})

    def forget_failed(self, paths: set[str]) -> None:
        """Drop earlier failures of inputs this run tries again."""
        gone = sorted({p for p, _ in self.failed if p in paths})
        if gone:
            self.failed = [(p, r) for p, r in self.failed if p not in paths]
            self._log({"forget": gone})

    def _seal(self, count: int) -> None:
        """Turn the first ``count`` staged rows into a finished shard in the staging folder.

        The journal entry is the commit point: before it a replay ignores the shard file, after it
        everything the entry names exists. When no row is left the raw files start a new generation
        (created before the entry, the old one removed after it); otherwise the rest stay where
        they are, from row ``base``."""
        folder = self.stage_dir
        name = f"shard-{len(self.sealed) + 1:05d}.safetensors"
        rows = self.staged[:count]
        self._assemble(folder / name, rows, at=self.base)
        rest = self.staged[count:]
        gen = self.gen + 1 if not rest else self.gen
        new: dict[str, BinaryIO] = {}
        if gen != self.gen:
            new = {s.name: open(self._raw_path(s, gen), "w+b") for s in self.stages}
            fsync_dir(folder)
        self._log({"sealed": name, "count": count, "gen": gen})
        self.sealed.append((name, rows))
        self.staged = rest
        self._header = sum(_row_cost(p) for p in rest)
        if gen == self.gen:
            self.base += count
            return
        old = [self._raw_path(s) for s in self.stages]
        for f in self._raw.values():
            f.close()
        self._raw, self.gen, self.base = new, gen, 0
        for p in old:
            p.unlink(missing_ok=True)

    def _file_meta(self, paths: Sequence[str], *, status: str, extra: Mapping[str, Any]) -> dict[str, str]:
        meta = self.facts.to_strings()
        meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in extra.items()})
        meta["paths"] = json.dumps(list(paths), ensure_ascii=False)
        known = [self.sources.get(p) for p in paths]
        if any(k is not None for k in known):
            meta["sources"] = json.dumps(known, separators=(",", ":"))
        meta["status"] = status
        if self.reason and status == "interrupted":
            meta["interrupted_by"] = self.reason
        return meta

    def _staged_segments(self, s: StageLayout, at: int, rows: int) -> list[Segment]:
        return [(self._raw_path(s), at * s.bytes_per_image, rows * s.bytes_per_image)]

    def _assemble(self, target: Path, paths: Sequence[str], *, at: int) -> None:
        """Write the staged rows from raw row ``at`` as the (still running) shard ``target``."""
        tensors = [(s.name, s, len(paths), self._staged_segments(s, at, len(paths))) for s in self.stages]
        _write_file(target, tensors, self._file_meta(paths, status="running", extra={}))

    def _file_segments(self, src: Path, names: Mapping[str, str], rows: int) -> dict[str, list[Segment]]:
        """Where each stage's rows lie in a finished file (an old output or a sealed shard)."""
        header, data_start = read_header(src)
        out = {}
        for s in self.stages:
            info = header.get(names.get(s.name, ""))
            fits = isinstance(info, dict) and info.get("shape") == [rows, *s.shape]
            if not fits or info.get("dtype") != dtypes.DTYPES[s.dtype].safetensors:
                raise InputError(f"{src}: stage {s.name} is missing or has an unexpected shape; cannot extend it")
            out[s.name] = [(src, data_start + int(info["data_offsets"][0]), rows * s.bytes_per_image)]
        return out

    # --- finishing ----------------------------------------------------------------------------
    def _fits_one_file(self) -> bool:
        if self.sealed or self.old_sharded:
            return False
        paths = [p for _, _, ps in self.old_files for p in ps] + self.staged
        if len(paths) > self.rows_per_shard:
            return False
        failed = json.dumps(json.dumps([list(x) for x in self.failed], ensure_ascii=False), ensure_ascii=False)
        return sum(_row_cost(p) for p in paths) + 2 * _HEADER_BASE + len(failed.encode()) <= HEADER_CAP

    def finish(self, status: str, reason: str | None = None) -> list[Path]:
        self.reason = reason
        parent = self.path.parent
        single = self._fits_one_file()
        if single:
            files = [self.path]
        else:
            n = (
                len(self.old_files)
                + len(self.sealed)
                + (1 if self.staged or not (self.old_files or self.sealed) else 0)
            )
            stem = _stem(self.path)
            files = [parent / f"{stem}-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)] + [self.index]
        keep = set(files)
        stale = [f for f, _, _ in self.old_files] + self.replaced + self._current_files() + [self.path, self.index]
        stale = [f for f in _unique(stale) if f not in keep and f.parent == parent]
        # what the cleanup will remove, in case a kill leaves it to the next --resume
        self._log({"finishing": sorted(f.name for f in stale), "writing": [f.name for f in files]})
        if not self.old_sharded and self.index.exists():
            # an index that is not a source (an overwritten shard set, or one a killed finish left) must
            # go before any file it would misdescribe is written: then nothing looks complete
            self.index.unlink()
            fsync_dir(parent)
        if single:
            self._finish_single(status)
        else:
            self._finish_sharded(status, files[:-1])
        self._done(stale)
        return files

    def _finish_single(self, status: str) -> None:
        segments: dict[str, list[Segment]] = {s.name: [] for s in self.stages}
        paths: list[str] = []
        for src, names, old in self.old_files:  # at most one: a single file being extended
            for name, segs in self._file_segments(src, names, len(old)).items():
                segments[name] += segs
            paths += old
        for s in self.stages:
            segments[s.name] += self._staged_segments(s, self.base, len(self.staged))
        paths += self.staged
        tensors = [(s.name, s, len(paths), segments[s.name]) for s in self.stages]
        extra = {"failed": [list(x) for x in self.failed], "run": self.run}
        _write_file(self.path, tensors, self._file_meta(paths, status=status, extra=extra))

    def _finish_sharded(self, status: str, targets: Sequence[Path]) -> None:
        # every shard's content, in row order: old finished files, sealed shards, the staged rest
        parts: list[tuple[list[str], dict[str, list[Segment]]]] = []
        for src, names, paths in self.old_files:
            parts.append((paths, self._file_segments(src, names, len(paths))))
        for name, paths in self.sealed:
            by_stage = {s.name: s.name for s in self.stages}
            parts.append((paths, self._file_segments(self.stage_dir / name, by_stage, len(paths))))
        if len(parts) < len(targets):
            parts.append(
                (self.staged, {s.name: self._staged_segments(s, self.base, len(self.staged)) for s in self.stages})
            )
        shards_meta = []
        weight_map: dict[str, str] = {}
        total = 0
        offset = 0
        for k, ((paths, segments), target) in enumerate(zip(parts, targets), start=1):
            suffix = f"{k:05d}"
            tensors = [(f"{s.name}.{suffix}", s, len(paths), segments[s.name]) for s in self.stages]
            meta = self._file_meta(paths, status=status, extra={"row_offset": offset})
            total += _write_file(target, tensors, meta)
            for t, _, _, _ in tensors:
                weight_map[t] = target.name
            shards_meta.append({"file": target.name, "rows": len(paths)})
            offset += len(paths)
        meta = {k: v for k, v in self.facts.to_json().items() if v is not None}
        meta.update({"status": status, "shards": shards_meta, "failed": [list(x) for x in self.failed]})
        if self.reason and status == "interrupted":
            meta["interrupted_by"] = self.reason
        meta.update({"total_size": total, "num_images": offset, "run": self.run})
        _write_json(self.index, {"metadata": meta, "weight_map": weight_map})

    def _done(self, stale: Sequence[Path]) -> None:
        """The output is in place: remove what it replaces, then the journal (the staging folder is
        spent from then on), then the rest of the folder."""
        for f in stale:
            f.unlink(missing_ok=True)
        if stale:
            fsync_dir(self.path.parent)
        self._close_files()
        (self.stage_dir / JOURNAL).unlink(missing_ok=True)
        fsync_dir(self.stage_dir)
        shutil.rmtree(self.stage_dir, ignore_errors=True)
        self._close()

    def _close_files(self) -> None:
        """Close the raw files and the journal. Closing flushes: after a failed write (a full disk)
        it fails the same way, and what was committed was fsynced before, so that is ignored."""
        files = [*self._raw.values(), *([self._journal] if self._journal is not None else [])]
        self._raw, self._journal = {}, None
        for f in files:
            try:
                f.close()
            except OSError:
                pass

    def _close(self) -> None:
        self._close_files()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def abort(self) -> None:
        """Close without assembling (the run failed): the staging folder stays for --resume,
        unless this run created it and staged nothing."""
        empty = self._created and not self.staged and not self.sealed and not self.failed
        self._close_files()
        if empty:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
        self._close()


def _unique(files: Sequence[Path]) -> list[Path]:
    return list(dict.fromkeys(files))


# --- reading ------------------------------------------------------------------------------------


def leftovers(path: Path) -> tuple[Path | None, Path | None]:
    """(a finished output, an unfinished one) under this name that a new run would replace."""
    index, folder = index_path(path), staging_dir(path)
    found = path if path.exists() else index if index.exists() else None
    return found, (folder if folder.exists() else None)


class SafetensorsOutput(Output):
    """A safetensors output (single file, shard set or staging folder)."""

    #: where each row's data lies: (file, {tensor name per stage}, first row, rows)
    parts: list[tuple[Path, dict[str, str], int, int]]
    #: per row, [height, width, top, left, bottom, right] or None (see :meth:`read_sources`)
    sources: list[Any] | None = None

    def read_sources(self, rows: Sequence[int]) -> tuple[Any, Any] | None:
        import numpy as np

        if not self.sources or not any(x is not None for x in self.sources):
            return None
        picked = [self.sources[int(r)] if int(r) < len(self.sources) else None for r in rows]
        size = np.array([p[:2] if p else (-1, -1) for p in picked], dtype=np.int32).reshape(-1, 2)
        box = np.array([p[2:6] if p else (np.nan,) * 4 for p in picked], dtype=np.float32).reshape(-1, 4)
        return size, box

    run: str | None = None  # the token of the run that wrote it

    def read_raw(self, stage: StageLayout, start: int, stop: int) -> Any:
        if self.format == "safetensors-staging":
            raise InputError(
                f"{self.path} is an unfinished safetensors output: finish it with bbx extract --resume first"
            )
        import numpy as np

        out = np.empty((max(0, stop - start), *stage.shape), dtype=stage.storage)
        at = 0
        for file, names, first, count in self.parts:
            lo, hi = max(start, first), min(stop, first + count)
            if lo >= hi:
                continue
            cache = self.__dict__.setdefault("_headers", {})
            if file not in cache:  # a header can hold megabytes of paths: parse it once
                cache[file] = read_header(file)
            out[at : at + hi - lo] = _st_rows(file, names[stage.name], stage, lo - first, hi - first, cache[file])
            at += hi - lo
        if at != len(out):  # pragma: no cover - rows are checked against the paths first
            raise InputError(f"{self.path}: rows {start}..{stop - 1} are not all in its files")
        return out


def _output(
    path: Path,
    fmt: str,
    files: list[Path],
    facts: RunFacts,
    stages: list[StageLayout],
    paths: list[str],
    failed: list[tuple[str, str]],
    status: str,
    unfinished: bool,
    parts: list[tuple[Path, dict[str, str], int, int]],
    run: Any,
) -> SafetensorsOutput:
    out = SafetensorsOutput(path, fmt, files, facts, stages, paths, failed, status, unfinished)
    out.parts = parts
    out.run = None if run is None else str(run)
    return out


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header and where its data starts; InputError if unreadable."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("too short")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100_000_000):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, struct.error) as e:
        raise InputError(f"{path} is neither HDF5 nor safetensors, or it is damaged ({e})") from None
    start = 8 + n
    problem = _header_problem(header)
    if problem:
        raise InputError(f"{path} is damaged: {problem}")
    for key, info in header.items():
        if key != "__metadata__" and start + int(info["data_offsets"][1]) > size:
            raise InputError(f"{path} is damaged: it is shorter than its header says (truncated?)")
    return header, start


def _header_problem(header: dict[str, Any]) -> str:
    """What is wrong with a safetensors header's structure ("" when nothing): metadata must map
    strings to strings, every tensor have a dtype, a shape of sizes and offsets that fit it."""
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return "its metadata is not a table of strings"
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            return f"tensor {key!r} is not described"
        shape, offsets, dt = info.get("shape"), info.get("data_offsets"), info.get("dtype")
        ints = (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in [*shape, *offsets]
        )
        if not ints or not isinstance(dt, str) or offsets[0] > offsets[1]:
            return f"tensor {key!r} has a broken shape, dtype or offsets"
        known = dtypes.BY_SAFETENSORS.get(dt)
        if known is not None and offsets[1] - offsets[0] != math.prod(shape) * known.itemsize:
            return f"tensor {key!r} holds {offsets[1] - offsets[0]} bytes for its shape {shape}"
    return ""


def _meta(header: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in (header.get("__metadata__") or {}).items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def _stage_of(key: str, names: Sequence[str] | None) -> str:
    """The stage a tensor holds: ``stage`` or ``stage.00001`` (a shard's rows). Stage names may have
    dots themselves (timm's ``blocks.11``): the known names are matched first."""
    for name in names or ():
        if key == name or (key.startswith(name + ".") and key[len(name) + 1 :].isdigit()):
            return name
    head, dot, tail = key.rpartition(".")
    return head if dot and tail.isdigit() and len(tail) == 5 else key


def _tensor_stages(path: Path, header: dict[str, Any], order: Sequence[str] | None) -> tuple[list[StageLayout], dict]:
    """Stage layouts and tensor names of one file (tensors are ``stage`` or ``stage.00001``)."""
    found: dict[str, tuple[StageLayout, str, int]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        stage = _stage_of(key, order)
        dt = dtypes.BY_SAFETENSORS.get(info.get("dtype"))
        if dt is None:
            raise InputError(f"{path}: tensor {key} has dtype {info.get('dtype')}, which bbx does not write")
        shape = [int(d) for d in info["shape"]]
        found[stage] = (StageLayout(stage, tuple(shape[1:]), dt.name), key, shape[0])
    names = [n for n in (order or sorted(found)) if n in found]
    if order and len(names) != len(order):
        missing = ", ".join(n for n in order if n not in found)
        raise InputError(f"{path} is damaged: no tensor for stage {missing}")
    return [found[n][0] for n in names], {n: (found[n][1], found[n][2]) for n in names}


def _open_single(path: Path) -> SafetensorsOutput:
    header, _ = read_header(path)
    meta = _meta(header)
    if meta.get("format") != FORMAT_TAG:
        raise not_bbx(path, "its metadata has no bbx format tag")
    try:
        facts = RunFacts.from_metadata(meta)
        paths = meta.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError("its paths are not a list of strings")
        failed = [(str(a), str(b)) for a, b in meta.get("failed", [])]
    except (ValueError, TypeError) as e:
        raise InputError(f"{path} is damaged: {first_line(e)}") from None
    stages, tensors = _tensor_stages(path, header, facts.datasets)
    for name, (_, rows) in tensors.items():
        if rows != len(paths):
            raise InputError(f"{path} is damaged: stage {name} has {rows} rows for {len(paths)} paths")
    status = str(meta.get("status", "complete"))
    parts = [(path, {n: t for n, (t, _) in tensors.items()}, 0, len(paths))]
    out = _output(path, NAME, [path], facts, stages, paths, failed, status, status == "running", parts, meta.get("run"))
    out.interrupted_by = _reason(meta)
    out.sources = _sources(meta.get("sources"), len(paths))
    return out


def _open_sharded(index: Path, *, named: Path) -> SafetensorsOutput:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        meta = dict(data["metadata"])
        shards = list(meta["shards"])
    except FileNotFoundError:
        raise InputError(f"no such file: {index}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{index} is not a bbx shard index ({first_line(e)})") from None
    if meta.get("format") != FORMAT_TAG:
        raise not_bbx(index, "its metadata has no bbx format tag")
    try:
        facts = RunFacts.from_metadata(meta)
    except (ValueError, TypeError) as e:
        raise InputError(f"{index} is damaged: {first_line(e)}") from None
    paths: list[str] = []
    parts: list[tuple[Path, dict[str, str], int, int]] = []
    stages: list[StageLayout] = []
    files: list[Path] = []
    sources: list[Any] = []
    for shard in shards:
        file = index.parent / str(shard["file"])
        header, _ = read_header(file)
        shard_stages, tensors = _tensor_stages(file, header, facts.datasets)
        if not stages:
            stages = shard_stages
        shard_meta = _meta(header)
        shard_paths = [str(p) for p in shard_meta.get("paths", [])]
        sources += _sources(shard_meta.get("sources"), len(shard_paths))
        if any(rows != len(shard_paths) for _, rows in tensors.values()) or len(shard_paths) != int(shard["rows"]):
            raise InputError(f"{file} is damaged: its rows do not match the index")
        parts.append((file, {n: t for n, (t, _) in tensors.items()}, len(paths), len(shard_paths)))
        paths += shard_paths
        files.append(file)
    failed = [(str(a), str(b)) for a, b in meta.get("failed", [])]
    status = str(meta.get("status", "complete"))
    out = _output(
        named,
        "safetensors-sharded",
        files + [index],
        facts,
        stages,
        paths,
        failed,
        status,
        status == "running",
        parts,
        meta.get("run"),
    )
    out.interrupted_by = _reason(meta)
    out.sources = sources
    return out


def _sources(value: Any, rows: int) -> list[Any]:
    """A stored ``sources`` list, or Nones (an output without them, or a damaged one)."""
    ok = isinstance(value, list) and len(value) == rows
    ok = ok and all(v is None or (isinstance(v, list) and len(v) == 6) for v in value)
    return list(value) if ok else [None] * rows


def _reason(meta: Mapping[str, Any]) -> str | None:
    value = meta.get("interrupted_by")
    return str(value) if value else None


def read_journal(folder: Path) -> list[dict[str, Any]]:
    """The entries of a safetensors staging folder's journal, up to the last whole line (a torn
    last line is a batch that never finished); [] if there is none."""
    return scan_journal(folder)[0]


def scan_journal(folder: Path) -> tuple[list[dict[str, Any]], int]:
    """The journal's whole entries (see :func:`read_journal`) and the byte length of the lines they
    fill: a writer cuts the journal there before appending, so a torn line never hides what follows."""
    entries: list[dict[str, Any]] = []
    end = 0
    try:
        with open(folder / JOURNAL, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    break
                if not isinstance(entry, dict):
                    break
                entries.append(entry)
                end += len(line)
    except OSError:
        return [], 0
    return entries, end


def _open_staging(folder: Path, *, named: Path) -> SafetensorsOutput:
    """A safetensors staging folder: replay its journal (what a killed or running run committed)."""
    entries = read_journal(folder)
    if not entries or "facts" not in entries[0]:
        raise InputError(f"{folder} is an unfinished bbx output without a usable journal (rerun with --overwrite)")
    try:
        facts = RunFacts.from_metadata(dict(entries[0]["facts"]))
        stages = [StageLayout(s["name"], tuple(s["shape"]), s["dtype"]) for s in entries[0].get("stages", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{folder}: damaged journal ({e})") from None
    paths: list[str] = []
    sources: list[Any] = []
    failed: list[tuple[str, str]] = []
    for e in entries[1:]:
        if "rows" in e:
            paths.extend(str(p) for p in e["rows"])
            rows_sources = e.get("sources")
            sources += (
                rows_sources
                if isinstance(rows_sources, list) and len(rows_sources) == len(e["rows"])
                else [None] * len(e["rows"])
            )
        elif "failed" in e:
            failed.append((str(e["failed"][0]), str(e["failed"][1])))
        elif "forget" in e:
            gone = set(e["forget"])
            failed = [(p, r) for p, r in failed if p not in gone]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    out = _output(
        named, "safetensors-staging", files, facts, stages, paths, failed, "running", True, [], entries[0].get("run")
    )
    out.sources = sources
    return out


def _st_rows(
    file: Path, tensor: str, stage: StageLayout, start: int, stop: int, parsed: tuple[dict, int] | None = None
) -> Any:
    """Rows ``start:stop`` of one tensor of a safetensors file, as stored, in one read
    (``parsed``: the file's :func:`read_header`, when the caller has it)."""
    header, data_start = parsed or read_header(file)
    begin = data_start + int(header[tensor]["data_offsets"][0]) + start * stage.row_bytes
    want = (stop - start) * stage.row_bytes
    with open(file, "rb") as f:
        f.seek(begin)
        raw = f.read(want)
    if len(raw) != want:
        raise InputError(f"{file} is damaged: rows {start}..{stop - 1} of {tensor} are cut short")
    import numpy as np

    return np.frombuffer(raw, dtype=stage.storage).reshape(stop - start, *stage.shape)


def resume_source(path: Path) -> ResumeSource | None:
    """What ``--resume`` of ``path`` continues: the finished output and the rows staged beside
    it. ``carried``: the bytes a finish rewrites besides the new rows (a single file extended in
    place of itself, the staged rows); None when nothing is there."""
    found, folder = leftovers(path)
    finished = open_output_st(path) if found is not None else None
    staged = None
    if folder is not None and folder.is_dir():
        try:
            staged = _open_staging(folder, named=path)
        except InputError:
            staged = None  # no usable journal: the run starts the folder over
    if finished is None and staged is None:
        return None
    if staged is not None and finished is not None and staged.run is not None and staged.run == finished.run:
        staged = None  # spent: the output already holds it
    facts = finished.facts if finished is not None else staged.facts  # type: ignore[union-attr]
    paths = (list(finished.paths) if finished is not None else []) + (list(staged.paths) if staged else [])
    carried = staged.bytes_on_disk if staged is not None else 0
    if finished is not None and finished.format == NAME:
        carried += finished.bytes_on_disk
    return ResumeSource(facts, paths, carried)


def open_output_st(path: Path) -> SafetensorsOutput:
    out = locate(path)
    if not isinstance(out, SafetensorsOutput) or out.format == "safetensors-staging":
        raise InputError(f"{path} is not a finished safetensors output")
    return out


def space_needed(new_bytes: int, carried: int, shard_bytes: int | None = None) -> int:
    """Disk bytes a run needs: the new rows staged (and their journal), then the largest file
    assembled from them and the rows it carries, before the staged ones are removed."""
    return int(new_bytes * 1.1) + min(new_bytes + carried, shard_bytes or DEFAULT_SHARD_BYTES)


def locate(path: Path) -> Output | None:
    """The safetensors output ``path`` names (a file, a shard set by its index or base name, a
    staging folder or the name it stages), or None when it names none."""
    name = path.name
    if name.endswith(".partial"):
        return _open_staging(path, named=path) if path.is_dir() else None
    if name.endswith(".index.json"):
        return _open_sharded(path, named=path)
    if path.is_file():
        return _open_single(path)
    index, folder = index_path(path), staging_dir(path)
    if index.is_file():
        return _open_sharded(index, named=path)
    if folder.is_dir():
        return _open_staging(folder, named=path)
    return None
