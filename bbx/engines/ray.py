"""``bbx extract --engine ray [--address auto]``: the units of a run (:mod:`bbx.engines`) on a pool
of Ray actors, then one merge by the driver.

A Ray Data pipeline ``from_items(units) -> map_batches(_UnitWorker, ActorPoolStrategy)`` carries
only unit numbers and their input paths: each actor builds one :class:`bbx.Extractor` when it
starts and writes every unit it is given through the normal writer into the units folder (which
every node must see), so feature maps never travel through Ray's object store. A unit's result is
a few counts; a per-image failure is recorded in its output as on one machine, and nothing is ever
raised into Ray (one exception aborts a Ray Data job): errors come back as text and the driver
reports them. An actor that dies mid-unit is restarted by Ray and the retried unit resumes from its
``.partial``, nothing duplicated. Running the command again skips finished units.

Ray's traps, handled here: the ``DataContext`` is copied into a Dataset when it is created, so it
is configured first; a pool whose actors reserve every CPU starves the pipeline's other tasks, so a
CPU is left over (the actors' torch threads still use every core); Ray 2.60 turns token
authentication on for a new local cluster and writes ``~/.ray/auth_token``, so a local cluster is
given a token for this run in the environment instead (or the ``RAY_AUTH_MODE`` you set), bound to
127.0.0.1, without dashboard or usage statistics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bbx.engines import Prepared, Unit, WorkerError, finish, prepare
from bbx.errors import BbxError, Terminated, UsageError
from bbx.plan import ExtractOptions, Item
from bbx.report import Plan, Summary

#: Ray's object store for a local cluster: it only carries unit numbers and paths
LOCAL_OBJECT_STORE_BYTES = 128 << 20


@dataclass(frozen=True)
class Resources:
    actors: int
    cpus: float  # logical CPUs each actor reserves
    gpus: float
    threads: int | None  # torch threads in a CPU actor (None: torch's default)


def plan_resources(
    *, cpus: float, gpus: float, nodes: int, node_cpus: int, actors: int | None, device: str
) -> Resources:
    """How many actors, and what each reserves, on a cluster of ``cpus`` / ``gpus`` in ``nodes``.

    GPUs (``--device auto`` or cuda on a cluster that has them): one actor per GPU, each with one
    GPU and one CPU. CPUs: one actor per node by default; the actors together reserve all but one
    CPU (a pool that holds every CPU deadlocks the rest of the pipeline), yet their torch threads
    use the node's cores (Ray's reservations are logical; it would set one OpenMP thread per CPU).
    """
    use_gpu = gpus >= 1 and (device == "auto" or device.startswith("cuda"))
    if device.startswith("cuda") and gpus < 1:
        raise UsageError(f"--device {device}: the Ray cluster has no GPUs")
    if use_gpu:
        n = actors or int(gpus)
        if n > gpus:
            raise UsageError(f"--actors {n}: the Ray cluster has {int(gpus)} GPUs (one actor per GPU)")
        spare = max(0.0, cpus - 1)
        return Resources(n, min(1.0, spare / n) if spare else 0.0, 1.0, None)
    n = actors or max(1, nodes)
    if n < 1:
        raise UsageError("--actors must be at least 1")
    spare = cpus - 1 if cpus > 1 else cpus / 2
    per = max(0.01, round(spare / n, 2))
    per_node = max(1, math.ceil(n / max(1, nodes)))
    return Resources(n, per, 0.0, max(1, node_cpus // per_node))


def _import_ray(local: bool) -> Any:
    """``import ray`` with bbx's settings, which Ray reads when it is imported."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's C++ core logs internal notices on the driver's stderr; bbx reports failures itself
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if local and "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        # token authentication, with a token that lives in this run's environment only
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray Data: pip install 'bbx[ray]' (ray[data]>=2.60)") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices; bbx draws the progress
    return ray


def configured_context(ray: Any) -> Any:
    """The DataContext every Dataset of a run copies when it is created: set before creating one."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # bbx draws its own
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False  # units are independent; the merge puts them in order
    ctx.enable_operator_progress_bars = False
    ctx.execution_options.verbose_progress = False
    return ctx


class _UnitWorker:
    """A Ray actor: one Extractor for its lifetime, one unit per call, written through bbx's writer."""

    def __init__(self, opts: ExtractOptions, cwd: str, threads: int | None) -> None:
        try:
            os.chdir(cwd)  # rows are named relative to the driver's folder, which every node must have
        except OSError as e:
            self.error: str | None = (
                f"the driver's folder {cwd} is not on this node ({e.strerror}): run from a shared folder"
            )
            self.extractor = None
            return
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.opts = opts
        self.error = None
        try:
            from bbx.extractor import Extractor

            self.extractor = Extractor(
                opts.model,
                out_indices=opts.out_indices,
                out_features=opts.out_features,
                device=opts.device,
                dtype=opts.dtype,
                stage_norm=opts.stage_norm,
                image_size=opts.image_size,
                pool=opts.pool,
                output_dtype=opts.store_dtype,
                pretrained=opts.pretrained,
                revision=opts.revision,
                exif=opts.exif,
                fast_decode=opts.fast_decode,
                channels_last=opts.channels_last,
                compile=opts.compile,
            )
        except BbxError as e:
            self.extractor, self.error = None, e.message
        except Exception as e:  # carried to the driver, never raised into Ray
            self.extractor, self.error = None, f"internal error loading the model: {type(e).__name__}: {e}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import json

        from bbx.extract import run

        out: dict[str, list[Any]] = {"unit": [], "summary": [], "error": []}
        for k, opts_json, inputs in zip(batch["unit"], batch["opts"], batch["inputs"]):
            out["unit"].append(int(k))
            if self.extractor is None:
                out["summary"].append("")
                out["error"].append(self.error or "no model")
                continue
            try:
                unit_opts = _opts_from_json(self.opts, json.loads(str(opts_json)))
                summary = run(unit_opts, [Path(str(p)) for p in inputs], extractor=self.extractor)
                out["summary"].append(json.dumps(_summary_json(summary)))
                out["error"].append("")
            except BbxError as e:
                out["summary"].append("")
                out["error"].append(json.dumps([e.message, e.exit_code]))
            except (KeyboardInterrupt, Terminated):
                out["summary"].append("")
                out["error"].append(json.dumps(["the actor was stopped", 1]))
            except Exception as e:
                out["summary"].append("")
                out["error"].append(json.dumps([f"internal error in a Ray actor: {type(e).__name__}: {e}", 1]))
        return out


def _unit_json(unit: Unit) -> dict[str, Any]:
    shard = unit.opts.shard
    assert shard is not None and shard.whole is not None
    return {
        "output": str(unit.opts.output),
        "index": shard.index,
        "count": shard.count,
        "whole": list(shard.whole),
        "source": shard.source,
    }


def _opts_from_json(base: ExtractOptions, d: dict[str, Any]) -> ExtractOptions:
    from bbx.shards import Shard

    shard = Shard(int(d["index"]), int(d["count"]), str(d["source"]), whole=(int(d["whole"][0]), str(d["whole"][1])))
    return replace(base, output=Path(d["output"]), shard=shard)


def _summary_json(s: Summary) -> dict[str, Any]:
    return {
        "done": s.done,
        "already": s.already,
        "failed": [list(x) for x in s.failed],
        "notes": s.notes,
        "interrupted": s.interrupted,
        "first_batch_s": s.first_batch_s,
    }


def _summary_from(plan: Plan, d: dict[str, Any]) -> Summary:
    s = Summary(plan=plan, done=int(d["done"]), already=int(d["already"]))
    s.failed = [(str(a), str(b)) for a, b in d["failed"]]
    s.notes = [str(n) for n in d["notes"]]
    s.interrupted = d.get("interrupted")
    s.first_batch_s = d.get("first_batch_s")
    return s


def run(
    opts: ExtractOptions,
    units: list[Item],
    *,
    address: str | None = None,
    actors: int | None = None,
    unit_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> Summary:
    """Extract ``units`` on a Ray cluster (a local one unless ``address``), then merge."""
    if unit_size < 1:
        raise UsageError(f"--unit-size must be at least 1, got {unit_size}")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {opts.workers}")
    t0 = time.perf_counter()
    count = max(1, math.ceil(len(units) / unit_size))
    output = opts.output
    opts = replace(opts, output=None if output is None else Path(os.path.abspath(output)))
    prep: Prepared = prepare(opts, units, count=count, source="--engine ray")
    ray = _import_ray(local=address is None)
    started = False
    # Ray's driver prints its cluster's notices (a restarted actor, a retried task) on stdout,
    # which is bbx's data stream (--json): they go to stderr with the rest of the report
    quiet_stdout = contextlib.redirect_stdout(sys.stderr)
    quiet_stdout.__enter__()
    try:
        if not ray.is_initialized():
            handlers = _signal_handlers()
            try:
                if address is None:
                    ray.init(
                        include_dashboard=False,
                        _node_ip_address="127.0.0.1",
                        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                        logging_level=logging.WARNING,
                        log_to_driver=False,
                    )
                else:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as e:  # Ray's connection and start-up errors
                raise UsageError(
                    f"--engine ray: cannot start or reach the Ray cluster ({type(e).__name__}: {e})"
                ) from None
            finally:
                _restore(handlers)  # Ray's core installs its own SIGTERM handler, which just exits
            started = True
        res = _resources(ray, actors, opts.device)
        prep.rp.report.device = f"ray: {res.actors} actors x ({res.cpus:g} CPU, {res.gpus:g} GPU)"
        if on_plan is not None:
            on_plan(prep.rp.report)
        results = _run_units(ray, prep, opts, res, progress)
    finally:
        try:
            if started:
                ray.shutdown()
        finally:
            quiet_stdout.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    errors = [(k, e) for k, e in results.items() if isinstance(e, tuple)]
    if errors:
        k, (message, code) = min(errors)
        raise WorkerError(f"unit {k} of {prep.count}: {message}", int(code))
    summaries = [results[k] for k in sorted(results)]
    if any(s.interrupted for s in summaries):  # type: ignore[union-attr]
        raise WorkerError("a unit was interrupted; run the same command again to continue", 1)
    return finish(prep, opts, summaries, seconds)  # type: ignore[arg-type]


def _signal_handlers() -> dict[int, Any]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict[int, Any]) -> None:
    """bbx's handlers again: SIGTERM and Ctrl-C stop the driver cleanly (units keep what they
    committed, the cluster is shut down, the command says so and exits 143 / 130)."""
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _resources(ray: Any, actors: int | None, device: str) -> Resources:
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = min((int(n.get("Resources", {}).get("CPU", 1)) for n in nodes), default=1)
    dev = "auto" if device.lower() == "auto" else device.lower()
    return plan_resources(
        cpus=float(total.get("CPU", 1)),
        gpus=float(total.get("GPU", 0)),
        nodes=max(1, len(nodes)),
        node_cpus=node_cpus,
        actors=actors,
        device=dev,
    )


def _run_units(
    ray: Any, prep: Prepared, opts: ExtractOptions, res: Resources, progress: Callable[[int, int], None] | None
) -> dict[int, Summary | tuple[str, int]]:
    import json

    todo = prep.todo
    results: dict[int, Summary | tuple[str, int]] = {}
    if not todo:
        return results
    configured_context(ray)  # before the Dataset: it copies the context when created
    rows = [{"unit": u.index, "opts": json.dumps(_unit_json(u)), "inputs": [str(p) for p in u.inputs]} for u in todo]
    worker_opts = replace(todo[0].opts, device="cuda" if res.gpus else "cpu")
    ds = ray.data.from_items(rows)
    mapped = ds.map_batches(
        _UnitWorker,
        fn_constructor_kwargs={"opts": worker_opts, "cwd": os.getcwd(), "threads": res.threads},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(res.actors, len(todo))),
        num_cpus=res.cpus,
        num_gpus=res.gpus,
    )
    total = prep.rp.report.todo
    done = 0
    items = {u.index: u.items for u in todo}
    for row in mapped.iter_rows():
        k = int(row["unit"])
        err = str(row["error"])
        if err:
            try:
                message, code = json.loads(err)
            except ValueError:
                message, code = err, 1
            results[k] = (str(message), int(code))
        else:
            results[k] = _summary_from(prep.rp.report, json.loads(str(row["summary"])))
        done += items.get(k, 0)
        if progress is not None:
            progress(done, total)
    return results
