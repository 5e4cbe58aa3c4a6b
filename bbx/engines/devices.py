"""``bbx extract --devices cuda:0,cuda:1,...``: one worker process per device, each extracting a
contiguous slice of the inputs into its unit (see :mod:`bbx.engines`), then one merge.

Workers are started with multiprocessing's ``spawn`` (no CUDA state is ever forked), each loads
the model once on its device; CPU workers (``--devices cpu,cpu``) share the cores evenly. The
driver shows one progress bar for all. Ctrl-C or SIGTERM reaches the driver, which stops every
worker with SIGTERM: each closes its unit with every finished batch, and the same command
continues them.
"""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import time
from collections.abc import Callable
from typing import Any

from bbx.engines import Prepared, Unit, WorkerError, finish, prepare
from bbx.errors import BbxError, Terminated, UsageError
from bbx.plan import ExtractOptions, Item
from bbx.report import Plan, Summary

#: the least time between two progress messages of one worker
_PROGRESS_EVERY_S = 0.2


def parse_devices(text: str) -> list[str]:
    """``cuda:0,cuda:1`` / ``cpu,cpu`` -> the list; each checked against this machine."""
    from bbx.runtime import resolve_device

    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise UsageError("--devices takes a comma list of devices, e.g. cuda:0,cuda:1 or cpu,cpu")
    out = []
    for name in names:
        if name.lower() == "auto":
            raise UsageError("--devices names each device: cuda:0,cuda:1 or cpu,cpu (not auto)")
        out.append(resolve_device(name))
    gpus = [d for d in out if d.startswith("cuda")]
    if len(set(gpus)) != len(gpus) or "cuda" in gpus and len(gpus) > 1:
        raise UsageError(f"--devices {text}: each GPU once (cuda:0,cuda:1,...)")
    return out


def _threads(devices: list[str], device: str) -> int | None:
    """CPU workers split the cores between them; GPU workers keep torch's default."""
    if device != "cpu":
        return None
    cpus = len([d for d in devices if d == "cpu"])
    return max(1, (os.cpu_count() or 1) // cpus)


def _worker(unit: Unit, device: str, threads: int | None, messages: Any) -> None:
    """A worker process: its unit through the normal extraction loop. Reports go to the driver's
    queue; nothing is raised out of here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides: it sends SIGTERM

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    last = [0.0]

    def progress(handled: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY_S or handled == total:
            last[0] = now
            messages.put(("progress", unit.index, handled))

    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        from dataclasses import replace

        from bbx.extract import run

        summary = run(replace(unit.opts, device=device), unit.inputs, progress=progress)
        messages.put(("done", unit.index, summary))
    except BbxError as e:
        messages.put(("error", unit.index, (e.message, e.exit_code)))
    except Terminated:
        messages.put(("stopped", unit.index, "SIGTERM"))
    except BaseException as e:  # a bug: carried to the driver in one line
        messages.put(("error", unit.index, (f"internal error in the {device} worker: {type(e).__name__}: {e}", 1)))


def run(
    opts: ExtractOptions,
    units: list[Item],
    devices: list[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> Summary:
    """Extract ``units`` on ``devices``, one worker each, then merge (see the module docstring)."""
    import multiprocessing

    t0 = time.perf_counter()
    prep: Prepared = prepare(opts, units, count=len(devices), source="--devices")
    prep.rp.report.device = ",".join(devices)
    if on_plan is not None:
        on_plan(prep.rp.report)
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    procs: dict[int, Any] = {}
    for unit in prep.todo:
        device = devices[unit.index]
        p = ctx.Process(
            target=_worker, args=(unit, device, _threads(devices, device), messages), name=f"bbx-{device}", daemon=True
        )
        p.start()
        procs[unit.index] = p
    results: dict[int, Summary] = {}
    errors: dict[int, tuple[str, int]] = {}
    handled: dict[int, int] = {}
    stopped: str | None = None
    total = prep.rp.report.todo

    def stop(sig: str) -> None:
        nonlocal stopped
        stopped = stopped or sig
        for p in procs.values():
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except OSError:
                    pass

    reported: set[int] = set()
    while len(reported) < len(procs):
        try:
            kind, k, payload = messages.get(timeout=0.2)
        except queue_mod.Empty:
            for k, p in procs.items():  # a worker that died without a word (killed, out of memory)
                if k not in reported and not p.is_alive() and p.exitcode is not None:
                    try:
                        kind, k2, payload = messages.get(timeout=0.5)
                    except queue_mod.Empty:
                        errors[k] = (
                            f"the worker on {devices[k]} died (exit status {p.exitcode}); run the same command "
                            "again to continue (finished units are kept)",
                            1,
                        )
                        reported.add(k)
                        continue
                    _take(kind, k2, payload, results, errors, handled, reported)
            continue
        except KeyboardInterrupt:
            stop("SIGINT")
            continue
        except Terminated:
            stop("SIGTERM")
            continue
        _take(kind, k, payload, results, errors, handled, reported)
        if kind == "stopped" and stopped is None:
            stopped = str(payload)
        if progress is not None and kind == "progress":
            progress(sum(handled.values()), total)
    for p in procs.values():
        p.join(timeout=60)
    seconds = time.perf_counter() - t0
    if stopped is None and any(r.interrupted for r in results.values()):
        stopped = next(r.interrupted for r in results.values() if r.interrupted)
    if stopped is not None:
        summary = Summary(plan=prep.rp.report, interrupted=stopped, seconds=seconds)
        for r in results.values():
            summary.done += r.done
            summary.failed += r.failed
        summary.notes.append(f"stopped before the merge: the units in {prep.folder} are kept; run it again to go on")
        return summary
    if errors:
        message, code = errors[min(errors)]
        raise WorkerError(message, code)
    summary = finish(prep, opts, [results[k] for k in sorted(results)], seconds)
    return summary


def _take(
    kind: str,
    k: int,
    payload: Any,
    results: dict[int, Summary],
    errors: dict[int, tuple[str, int]],
    handled: dict[int, int],
    reported: set[int],
) -> None:
    if kind == "progress":
        handled[k] = int(payload)
    elif kind == "done":
        results[k] = payload
        handled[k] = payload.done + len(payload.failed)
        reported.add(k)
    elif kind == "error":
        errors[k] = payload
        reported.add(k)
    elif kind == "stopped":
        reported.add(k)
