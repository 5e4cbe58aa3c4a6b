"""The extraction loop: files -> decoded uint8 batches -> device -> backbone -> writer.

A plain loop with the error policy passed in. Decoding runs in background threads (``workers``)
while the model runs; results are consumed in input order, so the output never depends on worker
timing. A file that cannot be decoded is skipped and recorded with its reason (``on_error="skip"``)
or ends the run (``"stop"``). Every batch is committed to the output before the next one starts;
an interruption (SIGINT, SIGTERM) closes the output with every finished batch in it. Never prints:
returns a :class:`~bbx.report.Plan` / :class:`~bbx.report.Summary`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbx import __version__, hub
from bbx.errors import InputError, Terminated, UsageError
from bbx.report import Plan, StagePlan, Summary
from bbx.writers import StageLayout, format_for, open_writer

DTYPES = ("float32", "float16", "bfloat16")
POOLS = ("none", "avg", "max")


@dataclass(frozen=True)
class ExtractOptions:
    model: str
    output: Path | None = None
    format: str | None = None
    out_indices: tuple[int, ...] | None = None
    out_features: tuple[str, ...] | None = None
    image_size: int | None = None
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float32"
    store_dtype: str = "float32"
    pool: str = "none"
    workers: int | None = None
    overwrite: bool = False
    resume: bool = False
    force: bool = False
    exif: bool = True
    fast_decode: bool = False
    stage_norm: str = "hf"
    pretrained: bool = True
    revision: str | None = None
    shard_bytes: int | None = None
    on_error: str = "skip"
    channels_last: bool | None = None  # None: where the family prefers it (convolutional nets)
    progress: bool | None = None  # download progress bars (None: when stderr is a terminal)
    compile: bool = False  # torch.compile the model (long start-up; pays off on long runs)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.store_dtype not in DTYPES:
            raise UsageError(f"--store-dtype must be one of {', '.join(DTYPES)}, got {self.store_dtype!r}")
        if self.pool not in POOLS:
            raise UsageError(f"--pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")
        if self.on_error not in ("skip", "stop"):
            raise UsageError(f"--on-error must be skip or stop, got {self.on_error!r}")
        if self.overwrite and self.resume:
            raise UsageError("--overwrite and --resume exclude each other")


def resolve_device(name: str) -> str:
    import torch

    n = name.lower()
    if n == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if n == "cpu":
        return "cpu"
    if n == "cuda" or n.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
        if ":" in n:
            try:
                idx = int(n.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {name}: expected cuda:N") from None
            if not 0 <= idx < torch.cuda.device_count():
                raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        return n
    if n == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps: Metal is not available on this machine")
        return "mps"
    raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def default_output(opts: ExtractOptions, stages: Sequence[str]) -> Path:
    """``<model>_<stages>.h5`` in the current folder (or ``.safetensors`` with --format)."""
    slug = opts.model.rstrip("/").replace("\\", "/")
    if os.path.isdir(slug):
        slug = Path(slug).resolve().name
    slug = slug.replace("/", "--")
    name = f"{slug}_{'-'.join(stages)}"
    fmt = format_for(Path("x.h5"), opts.format) if opts.format else "hdf5"
    return Path(name + (".h5" if fmt == "hdf5" else ".safetensors"))


# --------------------------------------------------------------------------------------------
# planning


@dataclass
class _Prepared:
    plan: Plan
    ref: hub.ModelRef
    pre: Any
    output: Path
    fmt: str
    layouts: list[StageLayout]
    facts: dict[str, Any]
    todo: list[Path]
    done_before: int
    writer: Any = None
    resumed: bool = False  # the output held rows from an earlier run
    absolute_rows: bool = False  # see row_name


def _facts(opts: ExtractOptions, ref: hub.ModelRef, plan: Plan, pre: Any) -> dict[str, Any]:
    return {
        "format": "bbx-features",
        "bbx_version": __version__,
        "model": opts.model,
        "checkpoint": ref.checkpoint,
        "revision": ref.commit or ref.revision,
        "architecture": ref.model_type,
        "weights": plan.weights,
        "out_features": [s.name for s in plan.stages],
        "out_indices": [s.index for s in plan.stages],
        "stage_norm": opts.stage_norm,
        "input_size": list(plan.input_size),
        "compute_dtype": opts.dtype,
        "store_dtype": opts.store_dtype,
        "pool": opts.pool,
        "exif": opts.exif,
        "fast_decode": opts.fast_decode,
        "preprocessing": pre.describe(),
        "cwd": os.getcwd(),
    }


def plan(opts: ExtractOptions, inputs: Sequence[Path], *, device: str | None = None) -> Plan:
    """The shape report of a run, without weights (``--dry-run``)."""
    return _prepare(opts, inputs, device=device, open_output=False).plan


def _prepare(opts: ExtractOptions, inputs: Sequence[Path], *, device: str | None, open_output: bool) -> _Prepared:
    from bbx.inspection import input_size, stage_shapes
    from bbx.loading import RANDOM_SEED, build

    opts.validate()
    ref = hub.resolve(
        opts.model, revision=opts.revision, weights=opts.pretrained and open_output, progress=opts.progress
    )
    pre, size = input_size(ref, opts.image_size)
    meta_model = build(ref, stage_norm=opts.stage_norm, device="meta")
    meta_model.select(opts.out_indices, opts.out_features)
    shapes = stage_shapes(meta_model, size)
    stages = []
    layouts = []
    itemsize = 4 if opts.store_dtype == "float32" else 2
    for i in meta_model.out_indices:
        spec = meta_model.stage_specs[i]
        shape = shapes[i] if opts.pool == "none" else (shapes[i][0],)
        nbytes = itemsize
        for d in shape:
            nbytes *= d
        stages.append(StagePlan(i, spec.name, spec.channels, spec.stride, tuple(shape), opts.store_dtype, nbytes))
        layouts.append(StageLayout(spec.name, tuple(shape), opts.store_dtype))
    output = opts.output or default_output(opts, [s.name for s in stages])
    fmt = format_for(output, opts.format)
    if opts.shard_bytes is not None and fmt != "safetensors":
        raise UsageError("--shard-size applies to safetensors output only")
    if output.is_dir():
        raise InputError(f"output {output} is a folder: give a file name (.h5 or .safetensors)")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"output {output}: {parent} is not a folder")
    try:
        free: int | None = shutil.disk_usage(parent).free  # the disk the output's folder will be on
    except OSError:
        free = None
    the_plan = Plan(
        model=opts.model,
        checkpoint=ref.checkpoint,
        revision=ref.commit or ref.revision,
        architecture=ref.model_type or "",
        weights="pretrained" if opts.pretrained else f"random (seed {RANDOM_SEED})",
        device=device or "auto",
        compute_dtype=opts.dtype,
        store_dtype=opts.store_dtype,
        pool=opts.pool,
        stage_norm=opts.stage_norm,
        input_size=size,
        stages=stages,
        inputs=len(inputs),
        todo=len(inputs),
        output=str(output),
        format=fmt,
        free_bytes=free,
        preprocessing=pre.describe(),
    )
    facts = _facts(opts, ref, the_plan, pre)
    prepared = _Prepared(the_plan, ref, pre, output, fmt, layouts, facts, list(inputs), 0)
    if open_output:
        check_space(the_plan, force=opts.force, resume=opts.resume)
        writer = open_writer(
            output,
            fmt,
            facts=facts,
            stages=layouts,
            overwrite=opts.overwrite,
            resume=opts.resume,
            shard_bytes=opts.shard_bytes,
        )
        prepared.writer = writer
        if writer.existing_facts is not None:
            done = _done_keys(writer.existing_paths, writer.existing_facts.get("cwd"))
            prepared.todo = [p for p in inputs if not _is_done(p, done)]
            prepared.done_before = len(writer.existing_paths)
            prepared.resumed = True
            prepared.absolute_rows = _begun_elsewhere(writer.existing_facts)
            writer.forget_failed({row_name(p, prepared.absolute_rows) for p in prepared.todo})
        the_plan.todo = len(prepared.todo)
    else:
        the_plan.warnings = _dry_run_refusals(opts, the_plan, inputs, output, fmt, facts)
    return prepared


def _dry_run_refusals(
    opts: ExtractOptions, the_plan: Plan, inputs: Sequence[Path], output: Path, fmt: str, facts: Mapping[str, Any]
) -> list[str]:
    """What the real run would refuse, said by a dry run (which opens nothing for writing); for a
    resume, also how many inputs are left."""
    from bbx.errors import BbxError
    from bbx.outputs import open_output
    from bbx.writers import check_resumable, refuse_to_replace

    problems = []
    try:
        if opts.resume:
            if (
                output.exists()
                or output.with_name(output.name + ".partial").exists()
                or (output.with_name(output.name + ".index.json").exists())
            ):
                existing = open_output(output)
                check_resumable(existing.facts, facts, output)
                done = _done_keys(existing.paths, existing.facts.get("cwd"))
                the_plan.todo = sum(1 for p in inputs if not _is_done(p, done))
        elif not opts.overwrite:
            partial = output.with_name(output.name + ".partial")
            index = output.with_name(output.name + ".index.json")
            found = output if output.exists() else index if fmt == "safetensors" and index.exists() else None
            refuse_to_replace(found, partial if partial.exists() else None)
    except BbxError as e:
        problems.append(e.message)
    try:
        check_space(the_plan, force=opts.force, resume=opts.resume)
    except BbxError as e:
        problems.append(e.message)
    return problems


def _done_keys(paths: Sequence[str], cwd: str | None) -> set[str]:
    """The inputs an output already holds, as absolute paths (rows are stored as given, relative to
    the folder the run started in, which the output records as ``cwd``)."""
    if not cwd:
        return set(paths)
    return {os.path.normpath(os.path.join(cwd, p)) for p in paths}


def _is_done(path: Path, done: set[str]) -> bool:
    return os.path.normpath(os.path.abspath(path)) in done or str(path) in done


def _begun_elsewhere(existing_facts: Mapping[str, Any]) -> bool:
    """Whether the output being resumed was begun in another folder than the current one."""
    cwd = existing_facts.get("cwd")
    return bool(cwd) and os.path.realpath(cwd) != os.path.realpath(os.getcwd())


def row_name(path: Path, absolute: bool) -> str:
    """How a row's input path is stored: as given, unless this run resumes an output begun in
    another folder (``absolute``), where a relative path would mean something else."""
    return os.path.abspath(path) if absolute and not path.is_absolute() else str(path)


def check_space(the_plan: Plan, *, force: bool, resume: bool = False) -> None:
    """Refuse a run whose output would not fit on its disk: the new rows, plus the transient
    copies the format makes (safetensors stages rows, then assembles each file; extending a
    finished output copies it first)."""
    if force or the_plan.free_bytes is None:
        return
    from bbx.report import human_bytes

    need = the_plan.projected_bytes
    if the_plan.format == "safetensors":
        need = int(need * 1.1) + min(need, 5 * 10**9)  # staging + assembling one shard
    if resume:
        from bbx.errors import BbxError
        from bbx.outputs import open_output

        try:
            need += open_output(Path(the_plan.output)).bytes_on_disk
        except BbxError:
            pass
    if need > the_plan.free_bytes:
        raise InputError(
            f"projected output {human_bytes(need)} exceeds the {human_bytes(the_plan.free_bytes)} free for "
            f"{the_plan.output}; free some space, choose another -o, pool with --pool, or pass --force"
        )


# --------------------------------------------------------------------------------------------
# running


def _decoded(
    paths: Sequence[Path], load: Callable[[Path], Any], workers: int, window: int, *, overlap: bool
) -> Iterator[tuple[Path, Any, str | None]]:
    """(path, pixels or None, failure reason or None) in input order.

    With ``workers`` threads, decoding either runs ahead of the consumer (``overlap``: a window of
    files in flight while the model runs, for an accelerator) or in bursts (the next ``window``
    files decoded by all threads at once, then handed over, so decoding never competes with a
    model that uses every CPU core)."""
    from bbx.images import ImageError

    def one(p: Path) -> tuple[Any, str | None]:
        try:
            return load(p), None
        except ImageError as e:
            return None, e.reason
        except MemoryError:
            return None, "out of memory while decoding"
        except OSError as e:  # unreadable file (permissions, I/O error)
            return None, f"cannot read file: {e.strerror or e}"

    if workers == 0:
        for p in paths:
            yield (p, *one(p))
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bbx-decode")
    try:
        if not overlap:
            for start in range(0, len(paths), window):
                chunk = paths[start : start + window]
                results = list(pool.map(one, chunk))
                for p, r in zip(chunk, results):
                    yield (p, *r)
            return
        pending: deque[tuple[Path, Future[tuple[Any, str | None]]]] = deque()
        it = iter(paths)
        for p in it:
            pending.append((p, pool.submit(one, p)))
            if len(pending) >= window:
                break
        while pending:
            p, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(one, nxt)))
            yield (p, *fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers(device: str) -> int:
    """Decoding threads when ``--workers`` is not given: one per core, at most 8.

    On CPU they decode in bursts between model batches (see :func:`_decoded`): a decoding thread
    running beside a model that keeps every core busy only steals cycles, and its preemptions
    stall torch's OpenMP barriers (measured on 2 cores, ResNet-50: 10.2 images/s with one
    overlapping thread, 15.4 decoding inline). On an accelerator the CPU is free, and decoding
    overlaps the model."""
    cpus = os.cpu_count() or 1
    if device == "cpu":
        return min(cpus, 8) if cpus > 1 else 0
    return max(1, min(8, cpus - 1))


def run(
    opts: ExtractOptions,
    inputs: Sequence[Path],
    *,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> Summary:
    """Extract ``inputs`` as ``opts`` says. ``on_plan`` sees the shape report before any image
    is decoded (after the output is opened and the weights loaded).

    Once the output is open, every way out keeps what was committed: an interruption (Ctrl-C,
    SIGTERM, ``--on-error stop``) closes it as ``interrupted``; an unexpected failure leaves the
    ``.partial`` for ``--resume``; a write that fails (disk full, permissions) is one line."""
    t_start = time.perf_counter()
    device = resolve_device(opts.device)
    autocast = compute_context(device, opts.dtype)  # (refuses bf16 on a GPU without it, up front)
    prep = _prepare(opts, inputs, device=device, open_output=True)
    writer = prep.writer
    summary = Summary(plan=prep.plan, already=len(inputs) - len(prep.todo))
    summary.notes.extend(getattr(writer, "notes", []))
    status, stop = "complete", None
    t0 = time.perf_counter()
    try:
        model, channels_last = _model(opts, prep, device)
        if on_plan is not None:
            on_plan(prep.plan)
        t0 = time.perf_counter()
        _loop(opts, prep, model, channels_last, device, autocast, summary, progress, t_start)
    except KeyboardInterrupt:
        status, summary.interrupted = "interrupted", "SIGINT"
    except Terminated:
        status, summary.interrupted = "interrupted", "SIGTERM"
    except _Stopped as e:
        status, stop = "interrupted", e.error
    except OSError as e:
        writer.abort()
        raise InputError(f"cannot write {prep.output}: {e.strerror or e}") from None
    except BaseException:
        # an unexpected failure: keep what is committed, leave the partial output for --resume
        writer.abort()
        raise
    summary.seconds = time.perf_counter() - t0
    summary.rows_total = prep.done_before + summary.done
    if status != "complete" and summary.done == 0 and not prep.resumed:
        writer.abort()  # interrupted before anything was written: leave nothing behind
    else:
        try:
            summary.files = [str(p) for p in _signals_deferred(writer.finish, status)]
        except OSError as e:
            writer.abort()
            raise InputError(f"cannot write {prep.output}: {e.strerror or e}") from None
    if stop is not None:
        raise stop
    return summary


class _Stopped(Exception):
    """``--on-error stop`` met a bad input; the run ends like an interrupted one, then reports it."""

    def __init__(self, error: InputError) -> None:
        super().__init__(error.message)
        self.error = error


def _signals_deferred(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` with SIGINT and SIGTERM held back (closing and renaming the output must not be
    cut in half); a signal that arrived meanwhile is delivered afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return fn(*args)
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        return fn(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _model(opts: ExtractOptions, prep: _Prepared, device: str) -> tuple[Any, bool]:
    from bbx.loading import load_for_inference

    return load_for_inference(
        prep.ref,
        pretrained=opts.pretrained,
        stage_norm=opts.stage_norm,
        out_indices=opts.out_indices,
        out_features=opts.out_features,
        device=device,
        channels_last=opts.channels_last,
        compile=opts.compile,
    )


def compute_context(device: str, dtype: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the context a forward pass runs in for ``--dtype``: autocast to float16 or
    bfloat16 on ``device``'s type, nothing for float32. UsageError for bfloat16 on a GPU without it."""
    import torch

    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--dtype bfloat16: this GPU ({device}) has no bfloat16 support; use float16")
    compute = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if compute is None:
        return contextlib.nullcontext
    kind = torch.device(device).type
    return lambda: torch.autocast(kind, dtype=compute)


def _loop(
    opts: ExtractOptions,
    prep: _Prepared,
    model: Any,
    channels_last: bool,
    device: str,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    summary: Summary,
    progress: Callable[[int, int], None] | None,
    t_start: float,
) -> None:
    """Decode, batch, run the model, commit; every batch is in the output when the next starts."""
    import numpy as np
    import torch

    from bbx import images

    writer = prep.writer
    store = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[opts.store_dtype]
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    names = [s.name for s in prep.plan.stages]

    def flush(batch: list[Path], arrays: list[Any]) -> None:
        host = torch.from_numpy(np.stack(arrays))
        if cuda:
            host = host.pin_memory()
        x = images.normalize(host.to(dev, non_blocking=cuda), prep.pre, memory_format=memory_format)
        with torch.inference_mode(), autocast():
            maps = model(x)
        out: dict[str, Any] = {}
        for name, m in zip(names, maps):
            if opts.pool == "avg":
                m = m.float().mean(dim=(2, 3))
            elif opts.pool == "max":
                m = m.amax(dim=(2, 3))
            m = m.to(store).contiguous().cpu()
            out[name] = m.view(torch.int16).numpy().view(np.uint16) if store == torch.bfloat16 else m.numpy()
        writer.write([row_name(p, prep.absolute_rows) for p in batch], out)
        summary.done += len(batch)
        if summary.first_batch_s is None:
            summary.first_batch_s = time.perf_counter() - t_start

    workers = default_workers(device) if opts.workers is None else opts.workers
    overlap = dev.type != "cpu"
    window = max(opts.batch_size * 2, workers * 4) if overlap else opts.batch_size
    load = _loader(prep.pre, prep.plan.input_size, opts)
    batch: list[Path] = []
    arrays: list[Any] = []
    total = len(prep.todo)
    for handled, (path, pixels, reason) in enumerate(_decoded(prep.todo, load, workers, window, overlap=overlap), 1):
        if reason is not None:
            writer.fail(row_name(path, prep.absolute_rows), reason)
            summary.failed.append((str(path), reason))
            if opts.on_error == "stop":
                if batch:
                    flush(batch, arrays)  # the images before the bad one are fine: keep them
                raise _Stopped(InputError(f"{path}: {reason} (stopped: --on-error stop)"))
        else:
            batch.append(path)
            arrays.append(pixels)
            if len(batch) == opts.batch_size:
                flush(batch, arrays)
                batch, arrays = [], []
        if progress is not None:
            progress(handled, total)
    if batch:
        flush(batch, arrays)


def _loader(pre: Any, size: tuple[int, int], opts: ExtractOptions) -> Callable[[Path], Any]:
    from bbx import images

    def load(path: Path) -> Any:
        arr = images.load(path, pre, exif=opts.exif, fast_decode=opts.fast_decode)
        if tuple(arr.shape[:2]) != tuple(size):
            raise images.ImageError(
                f"preprocessing gave {arr.shape[0]}x{arr.shape[1]} pixels, expected {size[0]}x{size[1]}"
            )
        return arr

    return load
