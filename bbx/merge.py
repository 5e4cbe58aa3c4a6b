"""``bbx merge``: the shards of one run (``bbx extract --shard K/N``, the Ray engine's units, the
``--devices`` workers) streamed into one output, in shard order.

Rows are copied as stored (bfloat16 stays bfloat16), a chunk of rows at a time through the
formats' raw reads (:meth:`bbx.formats.Output.read_raw`), so memory stays flat whatever the
number of rows; HDF5 and safetensors shards merge into either format. The output is written like
every bbx output (a ``.partial``, renamed when complete), and a killed merge continues with
``--resume``. Before anything is written the shards are checked, and each mismatch is refused in
one line: another model, stages, shapes, preprocessing or dtypes; another input list (count or
digest); a missing shard, two files claiming one shard, an unfinished shard (unless
``complete_only``); a path in two rows. Failures recorded in the shards carry over.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbx.errors import InputError, Terminated, UsageError
from bbx.formats import (
    Output,
    RunFacts,
    check_target,
    format_for,
    leftovers,
    name_extra,
    open_output,
    open_writer,
    partial_path,
)
from bbx.formats.base import SHARD_KEYS
from bbx.shards import SHARD_NAME

#: rows are copied this many bytes (all stages together) at a time, at least one row
CHUNK_BYTES = 16 << 20
#: the suffixes of shard outputs a folder is searched for
_SUFFIXES = (".h5", ".hdf5", ".safetensors")

#: (what differs, the facts that say it), checked in this order
_AGREE = (
    ("model", ("checkpoint", "revision", "architecture", "weights")),
    ("stages", ("out_features",)),
    ("stage norm", ("stage_norm",)),
    ("input size", ("input_size",)),
    ("pooling", ("pool",)),
    ("image embedding", ("embedding",)),
    ("preprocessing", ("preprocessing", "exif", "fast_decode")),
    ("compute dtype", ("compute_dtype",)),
    ("store dtype", ("store_dtype",)),
)


@dataclass
class MergeSummary:
    output: str
    format: str
    shards: int  # shards merged
    count: int  # shards in the run
    rows: int  # rows in the merged output
    failed: int  # failures carried over
    left_out: list[str] = field(default_factory=list)  # shards not merged (complete_only), and why
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resumed_rows: int = 0  # rows a killed merge had written already
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "format": self.format,
            "shards_merged": self.shards,
            "shard_count": self.count,
            "rows": self.rows,
            "failed": self.failed,
            "left_out": self.left_out,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "resumed_rows": self.resumed_rows,
            "notes": self.notes,
        }


# --- finding the shards ---------------------------------------------------------------------------


def _shard_base(name: str) -> str | None:
    """The output name a file of a shard belongs to (``feats.shard-00003-of-00016.h5`` for itself,
    its ``.partial`` and, for safetensors, its ``.index.json``), or None if it is no shard's."""
    for tail in (".partial", ".index.json"):
        if name.endswith(tail):
            name = name[: -len(tail)]
    m = SHARD_NAME.match(name)
    return name if m is not None and m.group("suffix").lower() in _SUFFIXES else None


def shards_in(folder: Path) -> list[Path]:
    """The shard outputs in ``folder`` (by name), one path per shard; InputError when there are
    none, or when they belong to more than one run."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise InputError(f"cannot read folder {folder}: {e.strerror or e}") from None
    bases = sorted({b for b in map(_shard_base, names) if b is not None})
    if not bases:
        raise InputError(f"{folder} holds no shard outputs (named like feats.shard-00000-of-00004.h5)")
    runs = sorted({SHARD_NAME.match(b).group("base") for b in bases})  # type: ignore[union-attr]
    if len(runs) > 1:
        listed = ", ".join(runs[:4])
        raise InputError(f"{folder} holds the shards of more than one run ({listed}); name the shards to merge")
    return [folder / b for b in bases]


def find(args: Sequence[str | Path]) -> list[Path]:
    """``SHARDS...`` or ``DIR`` -> one path per shard output."""
    if not args:
        raise UsageError("no shards: give the shard outputs, or the folder that holds them")
    found: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir() and not p.name.endswith(".partial"):
            found.extend(shards_in(p))
        else:
            found.append(p)
    return found


# --- checking them --------------------------------------------------------------------------------


@dataclass
class _Shard:
    path: Path
    out: Output
    complete: bool
    why: str  # why it is not complete

    @property
    def facts(self) -> RunFacts:
        return self.out.facts


def _open(path: Path) -> _Shard:
    out = open_output(path)
    f = out.facts
    if f.shard_index is None or f.shard_count is None:
        raise InputError(f"{path} is not a shard (it was not written by bbx extract --shard K/N)")
    name = path.name[: -len(".index.json")] if path.name.endswith(".index.json") else path.name
    beside = partial_path(path.with_name(name))
    if out.unfinished:
        return _Shard(path, out, False, "unfinished (its run was killed or is still running)")
    if out.status != "complete":
        return _Shard(path, out, False, f"{out.status} (its run was stopped before the end)")
    if beside.exists():
        return _Shard(path, out, False, f"{beside.name} beside it: a run is resuming it, or was killed doing so")
    return _Shard(path, out, True, "")


def _value(facts: RunFacts, key: str) -> Any:
    return facts.to_json().get(key)


def _check_agree(a: _Shard, b: _Shard) -> None:
    fa, fb = a.facts, b.facts
    for what, keys in _AGREE:
        if any(_value(fa, k) != _value(fb, k) for k in keys):
            va = ", ".join(str(_value(fa, k)) for k in keys if _value(fa, k) != _value(fb, k))
            vb = ", ".join(str(_value(fb, k)) for k in keys if _value(fa, k) != _value(fb, k))
            raise UsageError(f"{b.path} has another {what} than {a.path} ({_short(vb)} vs {_short(va)}): not one run")
    shapes_a = [(s.name, s.shape, s.dtype) for s in a.out.stages]
    shapes_b = [(s.name, s.shape, s.dtype) for s in b.out.stages]
    if shapes_a != shapes_b:
        raise UsageError(f"{b.path} stores other shapes than {a.path} ({shapes_b} vs {shapes_a}): not one run")
    if fa.shard_count != fb.shard_count:
        raise UsageError(
            f"{b.path} is shard {fb.shard_index} of {fb.shard_count}, {a.path} shard {fa.shard_index} of "
            f"{fa.shard_count}: shards of different runs"
        )
    if fa.input_count != fb.input_count:
        raise UsageError(
            f"{b.path} was cut from a list of {fb.input_count} inputs, {a.path} from {fa.input_count}: "
            "shards of different input lists"
        )
    if fa.input_digest != fb.input_digest:
        raise UsageError(
            f"{b.path} was cut from another input list than {a.path} (digest {fb.input_digest} vs "
            f"{fa.input_digest}): every shard must be given the same inputs in the same order"
        )
    if os.path.realpath(fa.cwd or ".") != os.path.realpath(fb.cwd or "."):
        raise UsageError(
            f"{b.path} ran in {fb.cwd}, {a.path} in {fa.cwd}: their relative paths mean different files; "
            "run every shard from the same folder"
        )


def _short(s: str) -> str:
    return s if len(s) <= 80 else s[:77] + "..."


@dataclass
class MergePlan:
    """The shards to merge, in order, and what the merged output will hold."""

    shards: list[_Shard]
    count: int
    left_out: list[str]
    paths: list[str]
    failed: list[tuple[str, str]]
    facts: RunFacts

    @property
    def rows(self) -> int:
        return len(self.paths)


def plan(paths: Sequence[Path], *, complete_only: bool = False) -> MergePlan:
    """Open and check the shards (reading metadata only); the first mismatch is a one-line error."""
    if not paths:
        raise UsageError("no shards to merge")
    shards = [_open(p) for p in paths]
    first = shards[0]
    for s in shards[1:]:
        _check_agree(first, s)
    count = int(first.facts.shard_count or 0)
    by_index: dict[int, _Shard] = {}
    for s in shards:
        k = int(s.facts.shard_index or 0)
        if k in by_index and os.path.realpath(by_index[k].path) != os.path.realpath(s.path):
            raise UsageError(f"{by_index[k].path} and {s.path} both claim shard {k} of {count}")
        by_index[k] = s
    missing = [k for k in range(count) if k not in by_index]
    unfinished = [s for s in by_index.values() if not s.complete]
    left_out: list[str] = []
    if missing and not complete_only:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        name = first.path.name
        m = SHARD_NAME.match(name)
        hint = f", {m.group('base')}.shard-{missing[0]:05d}-of-{count:05d}{m.group('suffix')}" if m else ""
        raise InputError(
            f"shard {missing[0]} of {count} is missing{more}{hint}: merge every shard, "
            "or pass --complete-only to merge the complete ones"
        )
    if unfinished and not complete_only:
        s = min(unfinished, key=lambda x: int(x.facts.shard_index or 0))
        more = f" (and {len(unfinished) - 1} more)" if len(unfinished) > 1 else ""
        raise InputError(
            f"shard {s.facts.shard_index} of {count} ({s.path}) is {s.why}{more}: finish it with the same "
            "bbx extract command and --resume, or pass --complete-only to merge the complete ones"
        )
    left_out += [f"shard {k} of {count}: missing" for k in missing]
    left_out += [f"shard {s.facts.shard_index} of {count} ({s.path}): {s.why}" for s in unfinished]
    ordered = [by_index[k] for k in sorted(by_index) if by_index[k].complete]
    paths_out: list[str] = []
    failed: list[tuple[str, str]] = []
    owner: dict[str, Path] = {}
    cwd = first.facts.cwd
    for s in ordered:
        for p in s.out.paths:
            key = os.path.normpath(os.path.join(cwd, p)) if cwd else p
            if key in owner:
                where = "twice in" if owner[key] == s.path else f"in {owner[key]} and in"
                raise InputError(f"{p} is {where} {s.path}: a merged output holds each path once")
            owner[key] = s.path
        paths_out += s.out.paths
        failed += s.out.failed
    facts = first.facts.with_(**{k: None for k in SHARD_KEYS})
    return MergePlan(ordered, count, left_out, paths_out, failed, facts)


# --- writing --------------------------------------------------------------------------------------


def merge(
    paths: Sequence[Path],
    output: Path,
    *,
    fmt: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    complete_only: bool = False,
    shard_bytes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> MergeSummary:
    """Merge the shards ``paths`` into ``output`` (format from its suffix or ``fmt``)."""
    t0 = time.perf_counter()
    output = Path(output)
    fmt = format_for(output, fmt)
    mp = plan(paths, complete_only=complete_only)
    sources = {os.path.realpath(f) for s in mp.shards for f in s.out.files}
    if os.path.realpath(output) in sources or os.path.realpath(partial_path(output)) in sources:
        raise UsageError(f"-o {output} is one of the shards being merged: choose another name")
    check_target(output, extra=name_extra(fmt))  # a folder, a FIFO, a name too long, a folder not writable
    found, leftover = leftovers(output, fmt)
    if resume and found is not None and leftover is None:
        raise InputError(f"{found} is a finished output: pass --overwrite to merge again into it")
    layouts = list(mp.shards[0].out.stages) if mp.shards else []
    if not mp.shards:
        raise InputError("no complete shard to merge")
    # an HDF5 output keeps the shards' compression (the first's: they may differ); safetensors has none
    compression = mp.facts.compression if fmt == "hdf5" else "none"
    facts = dataclasses.replace(mp.facts, compression=compression)
    try:
        writer = open_writer(
            output,
            fmt,
            facts=facts,
            stages=layouts,
            overwrite=overwrite,
            resume=resume,
            shard_bytes=shard_bytes,
            compression=compression,
        )
    except OSError as e:  # the disk, the folder or the file system refused (the writer left nothing)
        raise InputError(f"cannot write {output}: {e.strerror or e}") from None
    summary = MergeSummary(str(output), fmt, len(mp.shards), mp.count, mp.rows, len(mp.failed), mp.left_out)
    summary.notes.extend(getattr(writer, "notes", []))
    try:
        have = list(writer.existing_paths)
        if have != mp.paths[: len(have)]:
            raise InputError(
                f"{partial_path(output)} holds other rows than these shards give, in another order: "
                "pass --overwrite to start the merge over"
            )
        summary.resumed_rows = len(have)
        writer.forget_failed({p for p, _ in mp.failed})
        _copy_rows(mp, writer, skip=len(have), chunk_bytes=chunk_bytes, progress=progress)
        for p, r in mp.failed:
            writer.fail(p, r)
    except (KeyboardInterrupt, Terminated):
        writer.abort()  # the .partial keeps every chunk written: bbx merge --resume continues
        raise
    except OSError as e:
        writer.abort()
        raise InputError(f"cannot write {output}: {e.strerror or e}") from None
    except BaseException:
        writer.abort()
        raise
    finally:
        for s in mp.shards:
            s.out.close()
    try:
        summary.files = [str(p) for p in writer.finish("complete")]
    except OSError as e:
        writer.abort()
        raise InputError(f"cannot write {output}: {e.strerror or e}") from None
    summary.seconds = time.perf_counter() - t0
    return summary


def _copy_rows(
    mp: MergePlan, writer: Any, *, skip: int, chunk_bytes: int, progress: Callable[[int, int], None] | None
) -> None:
    """Every shard's rows, in order, from row ``skip`` of the merged output on."""
    at = 0
    total = mp.rows
    for s in mp.shards:
        n = s.out.images
        if at + n <= skip:
            at += n
            continue
        stages = s.out.stages
        per_row = max(1, sum(st.row_bytes for st in stages))
        step = max(1, chunk_bytes // per_row)
        start = max(0, skip - at)
        while start < n:
            stop = min(n, start + step)
            maps = {st.name: s.out.read_raw(st, start, stop) for st in stages}
            writer.write(s.out.paths[start:stop], maps, sources=_sources(s.out, start, stop))
            del maps
            if progress is not None:
                progress(at + stop, total)
            start = stop
        at += n


def _sources(out: Output, start: int, stop: int) -> list[Any] | None:
    """Where rows ``start:stop`` of a shard came from, as the writers take it (one
    :class:`bbx.images.Geometry` a row, size -1 and a NaN box for a row that records none), or
    None when the shard records none."""
    found = out.read_sources(range(start, stop))
    if found is None:
        return None
    from bbx.images import Geometry

    size, box = found
    return [Geometry((int(h), int(w)), tuple(float(v) for v in b)) for (h, w), b in zip(size.tolist(), box.tolist())]
