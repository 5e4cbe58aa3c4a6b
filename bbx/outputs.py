"""Reading what ``bbx extract`` wrote, without loading the maps: for ``bbx info`` and ``bbx show``.

Any output works: an HDF5 file, a single safetensors file, a sharded safetensors set (named by
its ``.index.json`` or by its base name), and what an unfinished run leaves behind (an HDF5
``.partial`` file or a safetensors ``.partial`` staging folder). Opening reads only metadata
(HDF5 attributes and dataset shapes, safetensors headers, the shard index, the staging journal);
:meth:`Output.read` then reads just the rows asked for. See ``bbx/writers/`` for the layouts.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbx.errors import InputError, UsageError, first_line

FORMAT_TAG = "bbx-features"
#: the safetensors writer's staging journal, in its staging folder
JOURNAL = "journal.jsonl"
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class StoredStage:
    """One stage as stored: the per-image shape ((C, H, W), or (C,) when pooled) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def pooled(self) -> bool:
        return len(self.shape) == 1

    @property
    def row_bytes(self) -> int:
        n = _ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class Output:
    """A bbx output, opened for its metadata."""

    path: Path  # what was named
    format: str  # hdf5 | safetensors | safetensors-sharded | safetensors-staging
    files: list[Path]  # every file it consists of
    facts: dict[str, Any]
    stages: list[StoredStage]
    paths: list[str]
    failed: list[tuple[str, str]]
    status: str  # complete | interrupted | running
    unfinished: bool  # a .partial: the run was killed (or is still running)
    # where each row's data lies (safetensors): (file, {tensor name per stage}, first row, rows)
    parts: list[tuple[Path, dict[str, str], int, int]] = field(default_factory=list, repr=False)

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
    def state(self) -> str:
        """complete, interrupted, or unfinished (a .partial left by a killed or running run)."""
        return "unfinished" if self.unfinished else self.status

    def stage(self, name: str | None) -> StoredStage:
        """The stage called ``name`` (the last stored one if None); UsageError listing them if unknown."""
        if not self.stages:
            raise InputError(f"{self.path} holds no stages")
        if name is None:
            return self.stages[-1]
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

    def read(self, stage: StoredStage, rows: Sequence[int]) -> Any:
        """The maps of ``rows`` as a float32 numpy array [len(rows), *stage.shape]."""
        import numpy as np

        if self.format == "safetensors-staging":
            raise InputError(
                f"{self.path} is an unfinished safetensors output: finish it with bbx extract --resume first"
            )
        if self.format == "hdf5":
            return np.stack([_decode(a, stage.dtype) for a in _h5_rows(self.files[0], stage.name, rows)])
        out = []
        for r in rows:
            for file, names, first, count in self.parts:
                if first <= r < first + count:
                    out.append(_st_row(file, names[stage.name], stage, r - first))
                    break
            else:  # pragma: no cover - rows are checked against the paths first
                raise InputError(f"{self.path}: row {r} is in no shard")
        return np.stack(out)

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "file": str(self.path),
            "format": self.format,
            "status": self.state,
            "resume_hint": "resume with --resume" if self.unfinished or self.status != "complete" else None,
            "model": f.get("model"),
            "checkpoint": f.get("checkpoint"),
            "revision": f.get("revision"),
            "architecture": f.get("architecture"),
            "weights": f.get("weights"),
            "input_size": f.get("input_size"),
            "compute_dtype": f.get("compute_dtype"),
            "store_dtype": f.get("store_dtype"),
            "pool": f.get("pool"),
            "stage_norm": f.get("stage_norm"),
            "stages": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.stages],
            "images": self.images,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "files": [str(p) for p in self.files],
            "bytes_on_disk": self.bytes_on_disk,
            "bbx_version": f.get("bbx_version"),
            "preprocessing": f.get("preprocessing"),
        }


def open_output(path: Path) -> Output:
    """Open any bbx output for its metadata; InputError (one line) if it is none or is damaged."""
    name = path.name
    if name.endswith(".partial"):
        if path.is_dir():
            return _open_staging(path, named=path)
        if path.is_file():
            return _open_hdf5(path, named=path, unfinished=True)
        raise InputError(f"no such file: {path}")
    if name.endswith(".index.json"):
        return _open_sharded(path, named=path)
    partial = path.with_name(name + ".partial")
    index = path.with_name(name + ".index.json")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a bbx output")
    if path.is_file():
        return _open_file(path)
    if index.is_file():
        return _open_sharded(index, named=path)
    if partial.is_dir():
        return _open_staging(partial, named=path)
    if partial.is_file():
        return _open_hdf5(partial, named=path, unfinished=True)
    raise InputError(f"no such file: {path}")


def _open_file(path: Path) -> Output:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if head == _HDF5_SIGNATURE:
        return _open_hdf5(path, named=path, unfinished=False)
    return _open_single(path)


def _not_bbx(path: Path, why: str) -> InputError:
    return InputError(f"{path} is not a bbx output ({why})")


# --- HDF5 -------------------------------------------------------------------------------------
def attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v.item() if hasattr(v, "item") and not isinstance(v, str) else v


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _h5file(path: Path) -> Any:
    import h5py

    try:
        # no lock: a run may hold the .partial open for writing while someone looks at it
        return h5py.File(path, "r", locking=False)
    except (OSError, TypeError, ValueError):
        try:
            return h5py.File(path, "r")
        except OSError as e:
            raise InputError(f"{path} is not a readable HDF5 file ({first_line(e)})") from None


def _open_hdf5(path: Path, *, named: Path, unfinished: bool) -> Output:
    with _h5file(path) as f:
        try:
            facts = {k: attr_value(v) for k, v in f.attrs.items()}
            if facts.get("format") != FORMAT_TAG or "features" not in f or "paths" not in f:
                raise _not_bbx(path, "no bbx features in it")
            rows = int(facts.get("rows", 0))
            paths = [text(p) for p in f["paths"][:rows]]
            failed: list[tuple[str, str]] = []
            if "failed" in f:
                failed = [(text(a), text(b)) for a, b in zip(f["failed/paths"][:], f["failed/reasons"][:])]
            stages = []
            for name in facts.get("out_features") or list(f["features"]):
                ds = f["features"][name]
                dtype = text(ds.attrs.get("dtype", "float32"))
                if len(ds) < rows or dtype not in _ITEMSIZE:
                    raise InputError(f"{path} is damaged: stage {name} is short or of an unknown dtype")
                stages.append(StoredStage(name, tuple(int(d) for d in ds.shape[1:]), dtype))
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path} is damaged or not a bbx output ({first_line(e)})") from None
    status = str(facts.get("status", "complete"))
    return Output(named, "hdf5", [path], facts, stages, paths, failed, status, unfinished or status == "running")


def _h5_rows(path: Path, name: str, rows: Sequence[int]) -> list[Any]:
    with _h5file(path) as f:
        ds = f["features"][name]
        return [ds[r] for r in rows]


# --- safetensors ------------------------------------------------------------------------------
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
    for key, info in header.items():
        if key != "__metadata__" and start + int(info["data_offsets"][1]) > size:
            raise InputError(f"{path} is damaged: it is shorter than its header says (truncated?)")
    return header, start


def _meta(header: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in (header.get("__metadata__") or {}).items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def _tensor_stages(path: Path, header: dict[str, Any], order: Sequence[str] | None) -> tuple[list[StoredStage], dict]:
    """Stage layouts and tensor names of one file (tensors are ``stage`` or ``stage.00001``)."""
    found: dict[str, tuple[StoredStage, str, int]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        stage = key.split(".")[0]
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InputError(f"{path}: tensor {key} has dtype {info.get('dtype')}, which bbx does not write")
        shape = [int(d) for d in info["shape"]]
        found[stage] = (StoredStage(stage, tuple(shape[1:]), dtype), key, shape[0])
    names = [n for n in (order or sorted(found)) if n in found]
    if order and len(names) != len(order):
        missing = ", ".join(n for n in order if n not in found)
        raise InputError(f"{path} is damaged: no tensor for stage {missing}")
    return [found[n][0] for n in names], {n: (found[n][1], found[n][2]) for n in names}


def _open_single(path: Path) -> Output:
    header, _ = read_header(path)
    meta = _meta(header)
    if meta.get("format") != FORMAT_TAG:
        raise _not_bbx(path, "its metadata has no bbx format tag")
    paths = [str(p) for p in meta.get("paths", [])]
    stages, tensors = _tensor_stages(path, header, meta.get("out_features"))
    for name, (_, rows) in tensors.items():
        if rows != len(paths):
            raise InputError(f"{path} is damaged: stage {name} has {rows} rows for {len(paths)} paths")
    failed = [(str(a), str(b)) for a, b in meta.get("failed", [])]
    status = str(meta.get("status", "complete"))
    parts = [(path, {n: t for n, (t, _) in tensors.items()}, 0, len(paths))]
    return Output(path, "safetensors", [path], meta, stages, paths, failed, status, status == "running", parts)


def _open_sharded(index: Path, *, named: Path) -> Output:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        meta = dict(data["metadata"])
        shards = list(meta["shards"])
    except FileNotFoundError:
        raise InputError(f"no such file: {index}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{index} is not a bbx shard index ({first_line(e)})") from None
    if meta.get("format") != FORMAT_TAG:
        raise _not_bbx(index, "its metadata has no bbx format tag")
    paths: list[str] = []
    parts: list[tuple[Path, dict[str, str], int, int]] = []
    stages: list[StoredStage] = []
    files: list[Path] = []
    for shard in shards:
        file = index.parent / str(shard["file"])
        header, _ = read_header(file)
        shard_stages, tensors = _tensor_stages(file, header, meta.get("out_features"))
        if not stages:
            stages = shard_stages
        shard_paths = [str(p) for p in _meta(header).get("paths", [])]
        if any(rows != len(shard_paths) for _, rows in tensors.values()) or len(shard_paths) != int(shard["rows"]):
            raise InputError(f"{file} is damaged: its rows do not match the index")
        parts.append((file, {n: t for n, (t, _) in tensors.items()}, len(paths), len(shard_paths)))
        paths += shard_paths
        files.append(file)
    failed = [(str(a), str(b)) for a, b in meta.get("failed", [])]
    status = str(meta.get("status", "complete"))
    return Output(
        named, "safetensors-sharded", files + [index], meta, stages, paths, failed, status, status == "running", parts
    )


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


def _open_staging(folder: Path, *, named: Path) -> Output:
    """A safetensors staging folder: replay its journal (what a killed or running run committed)."""
    entries = read_journal(folder)
    if not entries or "facts" not in entries[0]:
        raise InputError(f"{folder} is an unfinished bbx output without a usable journal (rerun with --overwrite)")
    facts = dict(entries[0]["facts"])
    try:
        stages = [StoredStage(s["name"], tuple(s["shape"]), s["dtype"]) for s in entries[0].get("stages", [])]
    except (KeyError, TypeError) as e:
        raise InputError(f"{folder}: damaged journal ({e})") from None
    paths: list[str] = []
    failed: list[tuple[str, str]] = []
    for e in entries[1:]:
        if "rows" in e:
            paths.extend(str(p) for p in e["rows"])
        elif "failed" in e:
            failed.append((str(e["failed"][0]), str(e["failed"][1])))
        elif "forget" in e:
            gone = set(e["forget"])
            failed = [(p, r) for p, r in failed if p not in gone]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return Output(named, "safetensors-staging", files, facts, stages, paths, failed, "running", True)


def _st_row(file: Path, tensor: str, stage: StoredStage, row: int) -> Any:
    import numpy as np

    header, start = read_header(file)
    begin = start + int(header[tensor]["data_offsets"][0]) + row * stage.row_bytes
    with open(file, "rb") as f:
        f.seek(begin)
        raw = f.read(stage.row_bytes)
    if len(raw) != stage.row_bytes:
        raise InputError(f"{file} is damaged: row {row} of {tensor} is cut short")
    kind = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}[stage.dtype]
    return _decode(np.frombuffer(raw, dtype=kind).reshape(stage.shape), stage.dtype)


def _decode(a: Any, dtype: str) -> Any:
    """Stored values -> float32 (bfloat16 is stored as its raw 16-bit patterns)."""
    import numpy as np

    a = np.asarray(a)
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)
