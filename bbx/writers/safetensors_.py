"""safetensors output, single file or hub-style shards.

A single file ``feats.safetensors`` holds one tensor per stage, named by the stage (``stage1``:
``[N, C, H, W]``, or ``[N, C]`` pooled), and string metadata: ``paths`` (JSON list; row i belongs
to ``paths[i]``), ``failed`` (JSON list of ``[path, reason]``) and the run's facts (model,
checkpoint, revision, stages, sizes, dtypes, preprocessing, status), JSON-encoded where not a
string. ``safetensors.torch.load_file`` alone reads it.

A run whose output exceeds the shard size (``--shard-size``, 5 GB by default as on the hub) is
written as ``feats-00001-of-00003.safetensors`` ... plus ``feats.safetensors.index.json`` in the
hub's sharded-checkpoint layout: ``weight_map`` names each tensor's file. Tensor names are unique
across shards (``stage1.00001`` holds shard 1's rows of stage1); each shard's metadata has its
``paths`` and ``row_offset``; the index's ``metadata`` has the facts, ``shards`` (file, rows) in
row order, ``failed`` and ``total_size``.

safetensors cannot be appended to, so rows are staged in ``feats.safetensors.partial/`` (raw
per-stage files plus a journal, fsynced batch by batch: memory stays flat) and each file is
assembled when complete: written to a temporary name, fsynced, renamed; the index last. A killed
run leaves only the staging folder, which ``--resume`` replays to its last finished batch.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbx.errors import InputError
from bbx.outputs import open_output, read_header, read_journal
from bbx.writers import StageLayout, check_resumable, fsync_dir, refuse_to_replace

DEFAULT_SHARD_BYTES = 5 * 10**9
_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_COPY = 16 << 20


def staging_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def index_path(path: Path) -> Path:
    return path.with_name(path.name + ".index.json")


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else path.stem


def _write_file(
    target: Path,
    tensors: Sequence[tuple[str, StageLayout, int, tuple[Path, int]]],
    metadata: Mapping[str, str],
) -> int:
    """Write a safetensors file at ``target`` (tmp, fsync, rename). Each tensor's bytes are
    copied in chunks from (file, offset): memory stays flat. Returns the data bytes written."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, layout, rows, _src in tensors:
        nbytes = rows * layout.bytes_per_image
        header[name] = {
            "dtype": _DTYPES[layout.dtype],
            "shape": [rows, *layout.shape],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for _name, layout, rows, (src, start) in tensors:
            nbytes = rows * layout.bytes_per_image
            with open(src, "rb") as raw:
                raw.seek(start)
                left = nbytes
                while left:
                    chunk = raw.read(min(_COPY, left))
                    if not chunk:
                        raise OSError(f"{src}: staged data is shorter than expected")
                    out.write(chunk)
                    left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
    return offset


class SafetensorsWriter:
    def __init__(
        self,
        path: Path,
        *,
        facts: Mapping[str, Any],
        stages: Sequence[StageLayout],
        overwrite: bool = False,
        resume: bool = False,
        shard_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.stage_dir = staging_dir(path)
        self.index = index_path(path)
        self.stages = list(stages)
        self.facts = dict(facts)
        self.shard_bytes = shard_bytes or DEFAULT_SHARD_BYTES
        self.bytes_per_image = sum(s.bytes_per_image for s in self.stages)
        self.existing_paths: list[str] = []
        self.existing_facts: dict[str, Any] | None = None
        self.notes: list[str] = []
        # the run's state, all replayable from the journal
        self.old_files: list[tuple[Path, list[str]]] = []  # finished outputs being extended
        self.sealed: list[tuple[str, list[str]]] = []  # shard files in the staging folder
        self.staged: list[str] = []  # rows in the current raw files
        self.failed: list[tuple[str, str]] = []
        self.gen = 0
        self._raw: dict[str, Any] = {}
        self._journal: Any = None
        self.replaced: list[Path] = []  # an overwritten output's files, removed once the new one is in place
        self._created = False
        self._open(overwrite=overwrite, resume=resume)

    # --- opening ------------------------------------------------------------------------------
    def _outputs_exist(self) -> bool:
        return self.path.exists() or self.index.exists()

    def _open(self, *, overwrite: bool, resume: bool) -> None:
        if not overwrite and not resume:
            found = self.path if self.path.exists() else self.index if self.index.exists() else None
            refuse_to_replace(found, self.stage_dir if self.stage_dir.exists() else None)
        if overwrite:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
            self.replaced = self._current_files()
        if resume and self._outputs_exist():
            existing = open_output(self.path)
            check_resumable(existing.facts, self.facts, self.path)
            self.existing_paths, self.existing_facts = list(existing.paths), dict(existing.facts)
            self.failed = list(existing.failed)
            # the finished files being extended, each with its rows
            self.old_files = [(f, existing.paths[first : first + n]) for f, _, first, n in existing.parts]
        if resume and self.stage_dir.exists():
            self._replay()
        else:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            self._write_journal({"facts": self.facts, "stages": [s.__dict__ for s in self.stages]}, new=True)
            self._new_raw_files()
            self._created = True

    def _current_files(self) -> list[Path]:
        files = []
        if self.index.exists():
            try:
                meta = json.loads(self.index.read_text())["metadata"]
                files = [self.path.parent / sh["file"] for sh in meta.get("shards", [])]
            except (OSError, ValueError, KeyError, TypeError):
                files = []
            files.append(self.index)
        if self.path.exists():
            files.append(self.path)
        return files

    def _replay(self) -> None:
        """Continue a staging folder left by an interrupted or killed run."""
        entries = read_journal(self.stage_dir)
        if not entries or "facts" not in entries[0]:
            self.notes.append(f"{self.stage_dir.name} held no usable journal and is started over")
            shutil.rmtree(self.stage_dir, ignore_errors=True)
            self.stage_dir.mkdir(parents=True)
            self._write_journal({"facts": self.facts, "stages": [s.__dict__ for s in self.stages]}, new=True)
            self._new_raw_files()
            return
        check_resumable(entries[0]["facts"], self.facts, self.path)
        failed_now: list[tuple[str, str]] = []
        for e in entries[1:]:
            if "rows" in e:
                self.staged.extend(e["rows"])
            elif "failed" in e:
                failed_now.append((e["failed"][0], e["failed"][1]))
            elif "forget" in e:
                gone = set(e["forget"])
                self.failed = [(p, r) for p, r in self.failed if p not in gone]
                failed_now = [(p, r) for p, r in failed_now if p not in gone]
            elif "sealed" in e:
                self.sealed.append((e["sealed"], list(self.staged)))
                self.staged = []
                self.gen = int(e["gen"])
        self.failed.extend(failed_now)
        self._journal = open(self.stage_dir / "journal.jsonl", "a", encoding="utf-8")
        rows = len(self.staged)
        for s in self.stages:
            raw = self._raw_path(s)
            size = rows * s.bytes_per_image
            if not raw.exists() or raw.stat().st_size < size:
                raise InputError(f"{self.stage_dir}: staged data is missing or short; remove it or pass --overwrite")
            with open(raw, "r+b") as f:
                f.truncate(size)
            self._raw[s.name] = open(raw, "ab")
        for old in self.stage_dir.glob("stage-*.raw"):
            if old not in {self._raw_path(s) for s in self.stages}:
                old.unlink()
        done = len(self.staged) + sum(len(p) for _, p in self.sealed)
        if self.existing_facts is None:
            self.existing_facts = dict(entries[0]["facts"])
        self.existing_paths += [p for _, ps in self.sealed for p in ps] + list(self.staged)
        if done:
            self.notes.append(f"recovered {done} images from the unfinished run in {self.stage_dir.name}")

    def _raw_path(self, s: StageLayout) -> Path:
        return self.stage_dir / f"stage-{s.name}.{self.gen}.raw"

    def _new_raw_files(self) -> None:
        for f in self._raw.values():
            f.close()
        self._raw = {s.name: open(self._raw_path(s), "wb") for s in self.stages}

    def _write_journal(self, entry: Mapping[str, Any], *, new: bool = False) -> None:
        if new:
            self._journal = open(self.stage_dir / "journal.jsonl", "w", encoding="utf-8")
        self._journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    # --- writing ------------------------------------------------------------------------------
    @property
    def rows_per_shard(self) -> int:
        return max(1, self.shard_bytes // max(1, self.bytes_per_image))

    def write(self, paths: Sequence[str], maps: Mapping[str, Any]) -> None:
        """Stage a batch; a batch that crosses the shard size is split between shards."""
        start = 0
        while start < len(paths):
            n = min(len(paths) - start, self.rows_per_shard - len(self.staged))
            for s in self.stages:
                f = self._raw[s.name]
                f.write(np.ascontiguousarray(maps[s.name][start : start + n]).tobytes())
                f.flush()
                os.fsync(f.fileno())
            self._write_journal({"rows": list(paths[start : start + n])})  # the commit point
            self.staged.extend(paths[start : start + n])
            start += n
            if len(self.staged) >= self.rows_per_shard:
                self._seal()

    def fail(self, path: str, reason: str) -> None:
        self.failed.append((path, reason))
        self._write_journal({"failed": [path, reason]})

    def forget_failed(self, paths: set[str]) -> None:
        """Drop earlier failures of inputs this run tries again."""
        if any(p in paths for p, _ in self.failed):
            self.failed = [(p, r) for p, r in self.failed if p not in paths]
            self._write_journal({"forget": sorted(paths)})

    def _seal(self) -> None:
        """Turn the staged rows into a finished shard in the staging folder."""
        k = len(self.sealed) + 1
        name = f"shard-{k:05d}.safetensors"
        self._assemble(self.stage_dir / name, self.staged, suffix=None, status="running", row_offset=None)
        self.gen += 1
        self._write_journal({"sealed": name, "gen": self.gen})
        for s in self.stages:
            self._raw[s.name].close()
        old = [self.stage_dir / f"stage-{s.name}.{self.gen - 1}.raw" for s in self.stages]
        self.sealed.append((name, list(self.staged)))
        self.staged = []
        self._new_raw_files()
        for p in old:
            p.unlink(missing_ok=True)

    def _file_meta(self, paths: Sequence[str], *, status: str, extra: Mapping[str, Any]) -> dict[str, str]:
        meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in self.facts.items() if v is not None}
        meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in extra.items()})
        meta["paths"] = json.dumps(list(paths), ensure_ascii=False)
        meta["status"] = status
        return meta

    def _assemble(
        self, target: Path, paths: Sequence[str], *, suffix: str | None, status: str, row_offset: int | None
    ) -> None:
        rows = len(paths)
        for s in self.stages:
            self._raw[s.name].flush()
        tensors = [
            (s.name if suffix is None else f"{s.name}.{suffix}", s, rows, (self._raw_path(s), 0)) for s in self.stages
        ]
        extra: dict[str, Any] = {}
        if row_offset is not None:
            extra["row_offset"] = row_offset
        if suffix is None and row_offset is None:
            extra["failed"] = [list(x) for x in self.failed]
        _write_file(target, tensors, self._file_meta(paths, status=status, extra=extra))

    def finish(self, status: str) -> list[Path]:
        for f in self._raw.values():
            f.flush()
        if not self.old_files and not self.sealed:
            # one file holds everything
            if self.index.exists():  # a sharded output being overwritten: its index must go first
                self.index.unlink()
            self._assemble(self.path, self.staged, suffix=None, status=status, row_offset=None)
            fsync_dir(self.path.parent)
            self._remove_replaced({self.path})
            self._cleanup()
            return [self.path]
        return self._finish_sharded(status)

    def _finish_sharded(self, status: str) -> list[Path]:
        parent = self.path.parent
        stem = _stem(self.path)
        # every shard's content, in row order: old finished files, sealed shards, the staged rest
        parts: list[tuple[str, Path | None, list[str]]] = [("old", f, p) for f, p in self.old_files]
        parts += [("sealed", self.stage_dir / n, p) for n, p in self.sealed]
        if self.staged or not parts:
            parts.append(("staged", None, list(self.staged)))
        n = len(parts)
        final_names = [f"{stem}-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
        shards_meta = []
        weight_map: dict[str, str] = {}
        total = 0
        offset = 0
        for k, ((kind, src, paths), name) in enumerate(zip(parts, final_names), start=1):
            target = parent / name
            suffix = f"{k:05d}"
            tensors = [(f"{s.name}.{suffix}", s, len(paths)) for s in self.stages]
            if kind == "staged":
                self._assemble(target, paths, suffix=suffix, status=status, row_offset=offset)
            else:
                assert src is not None
                self._rewrite(src, target, suffix=suffix, paths=paths, row_offset=offset, status=status)
            for t, s, rows in tensors:
                weight_map[t] = name
                total += rows * s.bytes_per_image
            shards_meta.append({"file": name, "rows": len(paths)})
            offset += len(paths)
        meta = {k: v for k, v in self.facts.items() if v is not None}
        meta.update({"status": status, "shards": shards_meta, "failed": [list(x) for x in self.failed]})
        meta["total_size"] = total
        meta["num_images"] = offset
        tmp = self.index.with_name(self.index.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"metadata": meta, "weight_map": weight_map}, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.index)
        fsync_dir(parent)
        keep = {parent / nm for nm in final_names} | {self.index}
        for f, _ in self.old_files:
            if f not in keep:
                f.unlink(missing_ok=True)
        if self.path.exists() and self.path not in keep:
            self.path.unlink()
        self._remove_replaced(keep)
        self._cleanup()
        return [parent / nm for nm in final_names] + [self.index]

    def _rewrite(
        self, src: Path, target: Path, *, suffix: str, paths: Sequence[str], row_offset: int, status: str
    ) -> None:
        """Copy a finished file (old output or sealed shard) under its shard name, renaming its
        tensors and refreshing its metadata. The source stays until the index is written."""
        header, data_start = read_header(src)
        by_stage = {key.split(".")[0]: info for key, info in header.items() if key != "__metadata__"}
        tensors: list[tuple[str, StageLayout, int, tuple[Path, int]]] = []
        for s in self.stages:
            info = by_stage.get(s.name)
            if info is None or info["shape"] != [len(paths), *s.shape]:
                raise InputError(f"{src}: stage {s.name} is missing or has an unexpected shape; cannot extend it")
            tensors.append((f"{s.name}.{suffix}", s, len(paths), (src, data_start + info["data_offsets"][0])))
        tmp_target = target if target != src else target.with_name(target.name + ".new")
        _write_file(tmp_target, tensors, self._file_meta(paths, status=status, extra={"row_offset": row_offset}))
        if tmp_target != target:
            os.replace(tmp_target, target)

    def _remove_replaced(self, keep: set[Path]) -> None:
        for f in self.replaced:
            if f not in keep:
                f.unlink(missing_ok=True)

    def _cleanup(self) -> None:
        for f in self._raw.values():
            f.close()
        self._raw = {}
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        shutil.rmtree(self.stage_dir, ignore_errors=True)

    def abort(self) -> None:
        """Close without assembling (the run failed): the staging folder stays for --resume,
        unless this run created it and staged nothing."""
        empty = self._created and not self.staged and not self.sealed and not self.failed
        for f in self._raw.values():
            f.close()
        self._raw = {}
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if empty:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
