"""The extraction loop: files -> decoded uint8 batches -> :class:`bbx.Extractor` -> writer.

A plain loop with the error policy passed in. Decoding runs in background threads (``workers``);
results are consumed in input order, so the output never depends on worker timing. A file that
cannot be decoded is skipped and recorded with its reason (``on_error="skip"``) or ends the run
(``"stop"``). Every batch is committed to the output before the next one starts; an interruption
(SIGINT, SIGTERM) closes the output with every finished batch in it. Never prints: returns a
:class:`~bbx.report.Plan` / :class:`~bbx.report.Summary`. Planning is :mod:`bbx.plan`, the
device and dtypes :mod:`bbx.runtime`, the formats :mod:`bbx.formats`.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bbx.errors import InputError, Terminated, first_line
from bbx.formats import Writer, discard_unfinished, open_writer, partial_path
from bbx.plan import (
    ExtractOptions,
    RunPlan,
    begun_elsewhere,
    done_keys,
    is_done,
    plan_run,
    preflight,
    row_name,
)
from bbx.report import Plan, Summary, plural
from bbx.runtime import default_workers, resolve_device

__all__ = ["ExtractOptions", "plan", "run"]


def plan(opts: ExtractOptions, inputs: Sequence[Path], *, device: str | None = None) -> Plan:
    """The shape report of a run, without weights (``--dry-run``), with what the real run would
    refuse in its ``warnings`` and the status it would then exit with in ``exit_code``."""
    rp = plan_run(opts, inputs, device=device, weights=False)
    problems = preflight(opts, rp)
    rp.report.warnings = [e.message for e in problems]
    rp.report.exit_code = problems[0].exit_code if problems else 0
    return rp.report


def device_of(opts: ExtractOptions) -> str:
    """``--device``, except that ``auto`` under a launcher that gives a local rank (torchrun,
    srun) on a node with GPUs is that rank's GPU."""
    if opts.shard is None or opts.shard.local_rank is None or opts.device.lower() != "auto":
        return opts.device
    import torch

    from bbx.shards import device_for

    return device_for(opts.shard, opts.device, cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0)


def decoded(
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


class _Stopped(Exception):
    """``--on-error stop`` met a bad input; the run ends like an interrupted one, then reports it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.why = path, reason
        self.reason = f"--on-error stop at {path}: {reason}"  # what the output records
        self.nothing_written = False
        super().__init__(self.reason)

    @property
    def error(self) -> InputError:
        left = "; nothing was written" if self.nothing_written else ""
        return InputError(f"{self.path}: {self.why} (stopped: --on-error stop{left})")


class _Run:
    """One extraction's state: the plan, the open output, what is left to do, the tallies."""

    def __init__(self, opts: ExtractOptions, inputs: Sequence[Path], device: str) -> None:
        self.opts = opts
        self.device = device
        self.rp: RunPlan = plan_run(opts, inputs, device=device, weights=opts.pretrained)
        problems = preflight(opts, self.rp)
        if problems:
            raise problems[0]
        try:
            self.writer: Writer = open_writer(
                self.rp.output,
                self.rp.fmt,
                facts=self.rp.facts,
                stages=self.rp.layouts,
                overwrite=opts.overwrite,
                resume=opts.resume,
                shard_bytes=opts.shard_bytes,
                check_space=not opts.force,
                compression=opts.compression,
            )
        except OSError as e:  # the disk, the folder or the file system refused (the writer left nothing)
            reason = e.strerror or first_line(e)
            raise InputError(f"cannot write {self.rp.output}: {reason[:1].lower() + reason[1:]}{_hint(e)}") from None
        inputs = self.rp.inputs.items  # this shard's, tars listed
        self.todo = list(inputs)
        self.done_before = 0
        self.resumed = False  # the output held rows from an earlier run
        self.absolute_rows = False  # see row_name
        existing = self.writer.existing_facts
        if existing is not None:
            done = done_keys(self.writer.existing_paths, existing.cwd)
            self.todo = [p for p in inputs if not is_done(p, done)]
            self.done_before = len(self.writer.existing_paths)
            self.resumed = True
            self.absolute_rows = begun_elsewhere(existing)
            retried = {self.row(p) for p in self.todo} | {name for name, _ in self.rp.inputs.unreadable}
            self.writer.forget_failed(retried)
        self.rp.report.todo = len(self.todo)
        self.summary = Summary(plan=self.rp.report, already=len(inputs) - len(self.todo))
        self.summary.notes.extend(getattr(self.writer, "notes", []))
        for name, reason in self.rp.inputs.unreadable:  # tars that could not be read, or not wholly
            self.writer.fail(name, reason)
            self.summary.failed.append((name, reason))

    def row(self, path: Path) -> str:
        return row_name(path, self.absolute_rows)


def run(
    opts: ExtractOptions,
    inputs: Sequence[Path],
    *,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    extractor: Any = None,
) -> Summary:
    """Extract ``inputs`` (the ordered files and tars; ``opts.shard`` takes its slice) as
    ``opts`` says. ``on_plan`` sees the shape report before any image is decoded (after the
    output is opened and the weights loaded). ``extractor``: a :class:`bbx.Extractor` built
    for these options already (a worker that runs many shards loads its model once).

    Once the output is open, every way out keeps what was committed: an interruption (Ctrl-C,
    SIGTERM, ``--on-error stop``) closes it as ``interrupted``; an unexpected failure leaves the
    ``.partial`` for ``--resume``; a write that fails (disk full, permissions) is one line."""
    from bbx.extractor import Extractor
    from bbx.runtime import compute_context

    t_start = time.perf_counter()
    if extractor is None:
        # what the run would refuse (the output, the disk space, the memory for a batch) is refused
        # before torch is imported and the weights are fetched: a wrong -o costs a moment, not a
        # download
        problems = preflight(opts, plan_run(opts, inputs, device=None, weights=False))
        if problems:
            raise problems[0]
    t_planned = time.perf_counter()
    device = extractor.device if extractor is not None else resolve_device(device_of(opts))  # (imports torch)
    t_import = time.perf_counter()
    compute_context(device, opts.dtype)  # refuses bf16 on a GPU without it, before anything is opened
    with SignalGuard() as guard:
        r = _Run(opts, inputs, device)
        guard.output = r.rp.output
        t_resolved = time.perf_counter()
        resolve_s = (t_planned - t_start) + (t_resolved - t_import)
        r.summary.startup = {"import_s": t_import - t_planned, "resolve_s": resolve_s}
        return _run(r, opts, device, guard, progress, on_plan, t_start, extractor or Extractor)


def _run(
    r: _Run,
    opts: ExtractOptions,
    device: str,
    guard: SignalGuard,
    progress: Callable[[int, int], None] | None,
    on_plan: Callable[[Plan], None] | None,
    t_start: float,
    extractor: Any,
) -> Summary:
    """The run once its output is open; ``extractor``: a :class:`bbx.Extractor` ready for it, or
    the class to build one from the plan."""
    writer, summary = r.writer, r.summary
    status, stop = "complete", None
    t0 = time.perf_counter()
    try:
        import bbx.loading  # noqa: F401  (the model code: timed apart from the weights)

        summary.startup["import_s"] += time.perf_counter() - t0
        if isinstance(extractor, type):
            extractor = extractor.from_plan(
                r.rp.model,
                device=device,
                dtype=opts.dtype,
                stage_norm=opts.stage_norm,
                pool=opts.pool,
                embedding=opts.embedding,
                output_dtype=opts.store_dtype,
                pretrained=opts.pretrained,
                exif=opts.exif,
                fast_decode=opts.fast_decode,
                channels_last=opts.channels_last,
                compile=opts.compile,
                kernel_trial=True,
            )
        summary.startup.update(getattr(extractor.model, "load_seconds", {}))
        if on_plan is not None:
            on_plan(r.rp.report)
        t0 = time.perf_counter()
        _loop(r, extractor, progress, t_start, guard.check)
        guard.check()
    except KeyboardInterrupt:
        guard.taken()
        status, summary.interrupted = "interrupted", "SIGINT"
    except Terminated:
        guard.taken()
        status, summary.interrupted = "interrupted", "SIGTERM"
    except _Stopped as e:
        status, stop = "interrupted", e
    except OSError as e:
        with guard.closing():
            writer.abort()
        raise _cannot_write(r, e) from None
    except BaseException:
        # an unexpected failure: keep what is committed, leave the partial output for --resume
        with guard.closing():
            writer.abort()
        raise
    # From here on a signal is acknowledged, never obeyed: closing and renaming must not be cut in half.
    with guard.closing():
        summary.load_s = t0 - t_start
        kernels = None if isinstance(extractor, type) else getattr(extractor, "kernels", None)
        summary.kernels = kernels if isinstance(kernels, dict) else None  # (a test's stand-in has none)
        summary.rows_total = r.done_before + summary.done
        if status != "complete" and summary.done == 0 and not r.resumed:
            writer.abort()  # interrupted before anything was written: leave nothing behind
            discard_unfinished(r.rp.output)
            if stop is not None:
                stop.nothing_written = True
        else:
            reason = stop.reason if stop is not None else summary.interrupted
            stored = getattr(writer, "stored_bytes", None)  # before the close: the file is open
            summary.stored_bytes = stored() if stored is not None else None
            try:
                summary.files = [str(p) for p in writer.finish(status, reason)]
            except OSError as e:
                writer.abort()
                raise _cannot_write(r, e) from None
    summary.seconds = time.perf_counter() - t_start  # the whole run, its close included
    if guard.late is not None and summary.interrupted is None:
        summary.late_signal = guard.late
        summary.notes.append(f"{guard.late} arrived while the output was being closed: it was closed first, complete")
    if stop is not None:
        raise stop.error
    return summary


class SignalGuard:
    """SIGINT and SIGTERM during a run (main thread only; elsewhere it does nothing).

    The first signal is obeyed: KeyboardInterrupt or :class:`Terminated` is raised where the run
    is, and the run closes its output as ``interrupted``. Every later one, and any signal while the
    output is being closed (:meth:`closing`), is acknowledged on stderr and otherwise ignored, so
    that the close and the rename are never cut in half (process-directed signals reach whichever
    thread does not block them, so masking them in one thread cannot do this). Once a signal has
    arrived, the guard stays installed until the process ends: an interpreter on its way out
    must not be interrupted either.

    The handler's exception is raised wherever the main thread is; where that is a destructor or a
    weakref callback, Python prints it and carries on. The guard hides that print
    (``sys.unraisablehook``) and the run loop calls :meth:`check`, which raises the signal's
    exception again until the run has taken it (:meth:`taken`), so an obeyed signal is never lost.

    :attr:`seen` tells a caller that a signal arrived in this process; the command line then
    ignores further ones until it exits (the interpreter's own shutdown puts the default handlers
    back, and a signal then would kill it with the wrong status)."""

    seen = False

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.first: str | None = None  # the signal obeyed
        self.late: str | None = None  # a first signal that arrived while closing
        self.output: Path | None = None
        self._closing = False
        self._taken = False  # the first signal's exception reached the run
        self._previous: dict[int, Any] = {}
        self._unraisable: Any = None

    def __enter__(self) -> SignalGuard:
        if self.active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
            self._unraisable = sys.unraisablehook
            sys.unraisablehook = self._lost
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.active:
            return
        sys.unraisablehook = self._unraisable
        if self.first is None and self.late is None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def check(self) -> None:
        """Raise the obeyed signal's exception if it has not reached the run yet (its handler ran
        in a destructor or callback, which swallowed it)."""
        if self.first is not None and not self._taken and not self._closing:
            raise KeyboardInterrupt if self.first == "SIGINT" else Terminated()

    def taken(self) -> None:
        """The run has caught the obeyed signal's exception."""
        self._taken = True

    def _lost(self, args: Any) -> None:
        if self.first is not None and args.exc_type in (KeyboardInterrupt, Terminated):
            return  # the handler's raise, inside a destructor: check() raises it again
        self._unraisable(args)

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        self._closing = True
        try:
            yield
        finally:
            self._closing = False

    def _handle(self, signum: int, frame: Any) -> None:
        SignalGuard.seen = True
        name = signal.Signals(signum).name
        if self.first is None and self.late is None and not self._closing:
            self.first = name
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        if self.first is None and self.late is None:
            self.late = name
        where = f"{self.output}" if self.output is not None else "the output"
        kept = partial_path(self.output) if self.output is not None else "its .partial"
        _say(
            f"bbx: {name} again: still closing {where} with every finished image in it; "
            f"if bbx is killed before that ends, --resume recovers the run from {kept}\n"
            if self.first is not None
            else f"bbx: {name} while closing {where}: the close finishes first "
            f"(if bbx is killed before that ends, --resume recovers the run from {kept})\n"
        )


def _say(text: str) -> None:
    try:
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass


def _cannot_write(r: _Run, e: OSError) -> InputError:
    """A write that failed (a full disk, an I/O error), in one line that says what is kept."""
    reason = e.strerror or first_line(e)
    kept = partial_path(r.rp.output)
    rows = r.done_before + r.summary.done
    if kept.exists() and rows:
        what = f"the {plural(rows, 'image')} written so far are kept in {kept}: {fix(e)}rerun with --resume"
    else:
        what = f"nothing was written: {fix(e)}rerun"
    return InputError(f"cannot write {r.rp.output}: {reason[:1].lower() + reason[1:]} ({what})")


def fix(e: OSError) -> str:
    return "free some space, then " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""


def _hint(e: OSError) -> str:
    return " (nothing was written: free some space, then rerun)" if fix(e) else ""


def _timed(items: Iterator[Any], phases: dict[str, float]) -> Iterator[Any]:
    """``items``, adding the time spent waiting for each to ``phases["decode_s"]``."""
    while True:
        t = time.perf_counter()
        item = next(items, None)
        phases["decode_s"] += time.perf_counter() - t
        if item is None:
            return
        yield item


def _loop(
    r: _Run,
    extractor: Any,
    progress: Callable[[int, int], None] | None,
    t_start: float,
    check: Callable[[], None],
) -> None:
    """Decode, batch, run the model, commit; every batch is in the output when the next starts.
    ``check`` raises a signal that arrived and was lost (:meth:`SignalGuard.check`), at every image."""
    import numpy as np

    from bbx.dtypes import to_storage
    from bbx.tars import TarMember

    opts, writer, summary = r.opts, r.writer, r.summary
    t_loop = time.perf_counter()
    phases = summary.phases

    def load(item: Any) -> Any:  # the pixels and where on the image they came from
        return extractor.load_with_geometry(item.read() if isinstance(item, TarMember) else item)

    takes_sources = "sources" in inspect.signature(writer.write).parameters
    sources: list[Any] = []

    def flush(batch: list[Path], arrays: list[Any]) -> None:
        t0 = time.perf_counter()
        maps = extractor.run(np.stack(arrays))  # transfer, normalise, model, back to the host
        stored = {name: to_storage(m) for name, m in maps.items()}
        t1 = time.perf_counter()
        if takes_sources:  # where each row came from: the image's size and the box the input covers
            writer.write([r.row(p) for p in batch], stored, sources=list(sources))
        else:
            writer.write([r.row(p) for p in batch], stored)
        sources.clear()
        t2 = time.perf_counter()
        phases["compute_s"] += t1 - t0
        phases["write_s"] += t2 - t1
        summary.write_s += t2 - t1
        summary.map_bytes += sum(a.nbytes for a in stored.values())
        summary.done += len(batch)
        if summary.first_batch_s is None:
            now = time.perf_counter()
            summary.first_batch_s = now - t_start
            summary.startup["first_batch_s"] = now - t_loop

    workers = default_workers(r.device) if opts.workers is None else opts.workers
    overlap = r.device != "cpu"
    window = max(opts.batch_size * 2, workers * 4) if overlap else opts.batch_size
    batch: list[Path] = []
    arrays: list[Any] = []
    total = len(r.todo)
    for handled, (path, loaded, reason) in enumerate(
        _timed(decoded(r.todo, load, workers, window, overlap=overlap), phases), 1
    ):
        check()
        if reason is not None:
            writer.fail(r.row(path), reason)
            summary.failed.append((str(path), reason))
            if opts.on_error == "stop":
                if batch:
                    flush(batch, arrays)  # the images before the bad one are fine: keep them
                    batch, arrays = [], []
                raise _Stopped(path, reason)
        else:
            batch.append(path)
            arrays.append(loaded[0])  # the pixels,
            sources.append(loaded[1])  # and where on the image they came from
            if len(batch) == opts.batch_size:
                flush(batch, arrays)
                batch, arrays = [], []
        if progress is not None:
            progress(handled, total)
    if batch:
        flush(batch, arrays)
