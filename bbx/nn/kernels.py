"""Which CPU kernels run, chosen by measuring them on the machine they run on.

The inference levers in :mod:`bbx.nn.layers` (oneDNN's fused linear / conv + activation + residual
kernels, the sliced bf16 attention, row slices) were tuned on one CPU; on another, a lever that
won can lose (seen: the fused bf16 convolutions ran slower than plain autocast on an Intel Xeon
with AVX-512 BF16 and no AMX, so bf16 was slower than fp32 there). So each lever is a measured
choice per machine: the first run of a compute dtype times the candidate kernels on small
representative shapes (about a second), keeps the fastest, and caches the choice per CPU model,
instruction set, torch version and thread count in the user's cache folder
(``$BBX_CACHE``, else ``$XDG_CACHE_HOME/bbx``, else ``~/.cache/bbx``). ``bbx info --system`` shows
it. The candidates per dtype:

* ``linear`` / ``conv``: ``fused`` (one oneDNN kernel with the activation and residual sum),
  ``eager`` (PyTorch's ops, through autocast for half dtypes), and for bfloat16 also ``float32``
  (computed in float32 and rounded to bfloat16 afterwards: more precise than autocast, and
  chosen only where this CPU's bfloat16 kernels are slower than its float32 ones);
* ``attention`` (bfloat16): ``sliced`` (two oneDNN matmuls and a softmax a few images at a time)
  or ``sdpa`` (``scaled_dot_product_attention``);
* ``row_slices``: whether row-wise blocks run over cache-sized slices of rows;
* ``lanes`` (with two or more torch threads): whether a batch runs as one single-threaded *lane*
  per thread, each over its share of the images (:func:`in_lanes`), instead of every op splitting
  its work over all threads. Lanes never wait for each other inside a layer (no OpenMP barrier
  per op, no op too small to split): on a 2-core AMD EPYC ViT-B/16 ran 11% faster, CLIP B/32 13%,
  Swin-T 8%, ResNet-50 7%; a CPU whose threaded kernels scale well may not gain, so it is measured.

Where lanes win, the other levers are timed again as lanes run them (each lane the whole candidate
on one thread, at once: ``lever.mode@lanes``) and chosen from those timings.

The probe's ops stand in for models; :class:`ModelTrial` then checks the choice on each model's
own first batches against the same without fused kernels and against plain eager PyTorch, and
keeps (and caches) the fastest for that model (``BBX_MODEL_TRIAL=0``: no trials).

Every candidate computes the same function (tests check each against the eager ops), so the
choice changes speed, not results beyond rounding. ``BBX_KERNELS=eager`` turns every lever off
(plain eager PyTorch); ``BBX_KERNELS=default`` skips the probe and uses the defaults.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

#: bump when the probe or its candidates change, so cached choices are measured again
PROBE_VERSION = 3
LINEAR_MODES = ("fused", "eager", "float32")
ATTENTION_MODES = ("sliced", "sdpa")


@dataclass(frozen=True)
class Choice:
    """The kernels one compute dtype uses on this machine."""

    dtype: str
    linear: str = "fused"
    conv: str = "fused"
    attention: str = "sdpa"
    row_slices: bool = True
    lanes: bool = False
    source: str = "default"  # default | probe | cache | eager (BBX_KERNELS) | override
    #: candidate -> milliseconds (the best of a few calls), as measured by the probe
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cache_dir() -> Path:
    env = os.environ.get("BBX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bbx"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The instruction-set flags that decide which kernels oneDNN can use."""
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_ne_convert")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return tuple(f for f in wanted if f in have)
    except OSError:
        pass
    return ()


def machine() -> dict[str, Any]:
    """What a cached choice is valid for."""
    return {
        "cpu": cpu_name(),
        "flags": list(cpu_flags()),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "probe": PROBE_VERSION,
    }


def _cache_file(info: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"kernels-{digest}.json"


# --- the probe ----------------------------------------------------------------------------------


def _best_ms(fn: Callable[[], Any], *, repeat: int = 4, give_up_ms: float | None = None) -> float:
    """The fastest of ``repeat`` timed calls after a warm-up, in milliseconds: other work on the
    machine only ever adds time (on a shared 2-core VM the same call took 100 or 175 ms), so the
    minimum is the estimate that noise moves least. A first timed call over ``give_up_ms`` is the
    answer: a candidate that slow cannot win (emulated bf16 kernels on a CPU without bf16
    instructions, AMD EPYC Zen 2: 0.6 s a call, 8x the fp32 layer, were 3.2 of the probe's 7.5 s)."""
    fn()  # warm-up: primitive creation, weight reorders, the lanes' threads
    times: list[float] = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
        if give_up_ms is not None and times[0] > give_up_ms:
            break
    return min(times)


#: a candidate whose first timed call is this many times the lever's best so far is not timed again
GIVE_UP = 3.0


def _candidates(dtype: torch.dtype) -> dict[str, dict[str, Callable[[], Any]]]:
    """Per lever, per mode: a closure computing a representative op that way."""
    from bbx.nn import layers

    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    half = dtype != torch.float32
    # whole MLPs (fc1 + GELU, then fc2 + the residual), as the blocks run them: ViT-S's over its
    # tokens and a ConvNeXt/Swin stage-2 one over its rows. fc1 + GELU alone misleads: on an idle
    # Intel Xeon (AMX) eager won it by 30% while the fused pair ran ConvNeXt-T and Swin-T 15-20%
    # faster end to end, the fused residual sum being where the pass is saved
    mlps = []
    for n, c in ((8 * 197, 384), (8 * 28 * 28, 192)):
        x, w1, b1, w2, b2 = rand(n, c), rand(4 * c, c) * 0.05, rand(4 * c), rand(c, 4 * c) * 0.05, rand(c)
        mlps.append((x, w1, b1, w2, b2, *(t.to(dtype) for t in (x, w1, b1, w2, b2))))

    def mlp(mode: str) -> Callable[[], Any]:
        def run() -> None:
            for x, w1, b1, w2, b2, xd, w1d, b1d, w2d, b2d in mlps:
                if mode == "fused":
                    h = torch.ops.mkldnn._linear_pointwise(xd, w1d, b1d, "gelu", [], "none")
                    torch.ops.mkldnn._linear_pointwise.binary(h, xd, w2d, b2d, "add")
                elif mode == "eager":
                    F.linear(F.gelu(F.linear(xd, w1d, b1d)), w2d, b2d) + xd
                else:  # float32: the bf16 layer computed in fp32, rounded after
                    (F.linear(F.gelu(F.linear(xd.float(), w1, b1)), w2, b2) + x).to(dtype)

        return run

    # a ResNet bottleneck's 3x3 conv
    xi = rand(8, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    cw, cb = rand(64, 64, 3, 3) * 0.05, rand(64)
    xid, cwd, cbd = (t.to(dtype) for t in (xi, cw, cb))
    out: dict[str, dict[str, Callable[[], Any]]] = {"linear": {}, "conv": {}}
    if half:  # timed first: it is the bar a bf16 kernel has to clear, and a slow one then gives up early
        out["linear"]["float32"] = mlp("float32")
        out["conv"]["float32"] = lambda: F.relu(F.conv2d(xid.float(), cw, cb, padding=1)).to(dtype)
    if layers.onednn_fusion_available() and (not half or layers.onednn_bf16_available()):
        out["linear"]["fused"] = mlp("fused")
        out["conv"]["fused"] = lambda: torch.ops.mkldnn._convolution_pointwise(
            xid, cwd, cbd, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""
        )
    out["linear"]["eager"] = mlp("eager")
    out["conv"]["eager"] = lambda: F.relu(F.conv2d(xid, cwd, cbd, padding=1))
    if half:
        q, k, v = (rand(8, 6, 197, 64).to(dtype) for _ in range(3))
        out["attention"] = {
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
            "sliced": lambda: layers.sliced_attention(q, k, v),
        }
        if not layers.onednn_bf16_matmul():
            del out["attention"]["sliced"]
    return out


def _row_slice_candidates(dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    """A ConvNeXt-T stage-1 block's MLP (LayerNorm, fc1 + GELU, fc2 + residual) over its rows."""
    from bbx.nn import layers

    g = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    rows = rand(8 * 56 * 56, 96).to(dtype)  # a batch of 8: the widest intermediate is 38 MB in fp32
    w1, b1, w2, b2 = (t.to(dtype) for t in (rand(384, 96) * 0.1, rand(384), rand(96, 384) * 0.05, rand(96)))
    gamma, beta = torch.ones(96, dtype=dtype), torch.zeros(96, dtype=dtype)

    def block(r: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(r, (96,), gamma, beta, 1e-6)
        return F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2) + r

    return {
        "whole": lambda: block(rows),
        "sliced": lambda: layers.in_row_slices(block, rows, width=384, force=True),
    }


def _lane_candidates(dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    """The lanes lever, with two or more torch threads."""
    threads = torch.get_num_threads()
    if threads < 2:
        return {}
    tokens, work = _lane_workload(dtype, images=max(16, 2 * threads))
    return {"whole": lambda: work(tokens), "lanes": lambda: in_lanes(work, tokens, threads)}


def _lane_workload(dtype: torch.dtype, images: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The tokens of ``images`` and a ViT-S block (LayerNorm, attention, MLP) to run a batch of
    them through. A single large matmul or convolution misleads here:
    on a 2-core AMD EPYC either ran as fast whole as in lanes (within 5%), while the block, and
    whole models, ran 10-20% faster in lanes, the gain being in the ops between the matmuls; and
    8 images (4 a lane) showed half the gain of 16."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    tokens = rand(images, 197, 384).to(dtype)
    qkv_w, proj_w = (rand(3 * 384, 384) * 0.05).to(dtype), (rand(384, 384) * 0.05).to(dtype)
    w1, w2 = (rand(1536, 384) * 0.05).to(dtype), (rand(384, 1536) * 0.05).to(dtype)

    def work(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = F.linear(F.layer_norm(x, (384,)), qkv_w).view(b, 197, 3, 6, 64).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 197, 384)
        x = x + F.linear(a, proj_w)
        return x + F.linear(F.gelu(F.linear(F.layer_norm(x, (384,)), w1)), w2)

    return tokens, work


# --- lanes --------------------------------------------------------------------------------------

_lane_pools: dict[int, Any] = {}
_lanes_lock = threading.Lock()
_lane = threading.local()  # .threads: inside a lane, the thread count outside it


def _one_thread() -> None:
    torch.set_num_threads(1)


def in_lanes(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, lanes: int) -> list[Any]:
    """``fn`` over ``lanes`` slices of the batch ``x`` (along its first dimension) at once, each
    in its own thread with one torch thread, the calling thread being the first lane; returns each
    slice's result, in batch order. ``fn`` takes the slice and enters whatever thread-local context
    it needs (autocast, inference mode). Inside a lane, :func:`choice` is the choice of the thread count outside it
    (no second probe). One laned call runs at a time: torch's thread count is process-wide."""
    from concurrent.futures import ThreadPoolExecutor, wait

    parts = [p for p in x.tensor_split(lanes) if len(p)]
    if len(parts) < 2:
        return [fn(x)]
    with _lanes_lock:
        threads = torch.get_num_threads()
        picks = getattr(_lane, "picks", None)  # a model trial's kernels go with the lanes

        def lane(part: Any) -> Any:
            before = getattr(_lane, "picks", None)
            _lane.threads, _lane.picks = threads, picks
            try:
                return fn(part)
            finally:
                _lane.threads, _lane.picks = None, before

        pool = _lane_pools.get(lanes)
        if pool is None:
            pool = _lane_pools[lanes] = ThreadPoolExecutor(
                lanes - 1, thread_name_prefix="bbx-lane", initializer=_one_thread
            )
        torch.set_num_threads(1)
        try:
            futures = [pool.submit(lane, p) for p in parts[1:]]
            try:
                first = lane(parts[0])
            finally:
                wait(futures)
            return [first, *(f.result() for f in futures)]
        finally:
            torch.set_num_threads(threads)


def probe(dtype_name: str, measure: Callable[[str, Callable[[], Any]], float] | None = None) -> Choice:
    """Time every candidate for ``dtype_name`` on this machine and keep the fastest of each lever.
    ``measure(name, fn)`` times candidate ``name`` ("lever.mode"), a closure, in milliseconds
    (tests pass fake timings); by default :func:`_best_ms`."""
    give_up: float | None = None  # GIVE_UP times the best of the lever being timed, once it has one
    if measure is None:
        measure = lambda name, fn: _best_ms(fn, give_up_ms=give_up)  # noqa: E731
    global _probing
    dtype = getattr(torch, dtype_name)
    timings: dict[str, float] = {}
    best: dict[str, str] = {}
    _probing, before = True, _probing
    try:
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            levers: dict[str, Any] = _candidates(dtype)
            # the block-level levers run after the linear choice, computing as it does: in
            # float32 where bf16 layers compute in float32 (timing the emulated bf16 kernels of a
            # CPU without bf16 instructions would only slow the probe down)
            levers["row_slices"] = _row_slice_candidates
            levers["lanes"] = _lane_candidates
            tried: dict[str, dict[str, Callable[[], Any]]] = {}
            for lever, modes in levers.items():
                if callable(modes):
                    modes = modes(torch.float32 if best["linear"] == "float32" else dtype)
                tried[lever] = modes
                give_up = None
                for mode, fn in modes.items():
                    ms = timings[f"{lever}.{mode}"] = round(float(measure(f"{lever}.{mode}", fn)), 3)
                    give_up = min(give_up or math.inf, GIVE_UP * ms)
                if modes:
                    best[lever] = min(modes, key=lambda m: timings[f"{lever}.{m}"])
            if best.get("lanes") == "lanes":
                _retime_in_lanes(tried, best, timings, measure)
    finally:
        _probing = before
    return Choice(
        dtype=dtype_name,
        linear=best["linear"],
        conv=best["conv"],
        attention=best.get("attention", "sdpa"),
        row_slices=best["row_slices"] == "sliced",
        lanes=best.get("lanes") == "lanes",
        source="probe",
        timings=timings,
    )


def _retime_in_lanes(
    tried: dict[str, dict[str, Callable[[], Any]]],
    best: dict[str, str],
    timings: dict[str, float],
    measure: Callable[[str, Callable[[], Any]], float],
) -> None:
    """Where lanes win, every op runs single-threaded, one lane per thread at the same time, and a
    kernel that is fastest on all threads can lose there (2-core AMD EPYC, batch 16 in lanes, each
    mode forced: ViT-B/16 345 ms an image fused, 305 eager; ConvNeXt-T all stages 107-110 fused,
    98-104 eager, medians of 3 to 20 forwards). So the other levers are timed again as lanes run
    them (each lane the whole candidate, ``lever.mode@lanes``) and chosen from those timings. A mode already 1.5 times
    slower than the lever's best is not timed again (emulated bf16 kernels: seconds for nothing)."""
    threads = torch.get_num_threads()
    marks = torch.empty(threads)  # one slice per lane; each lane runs the candidate whole
    for lever, modes in tried.items():
        if lever == "lanes":
            continue
        fastest = min((timings[f"{lever}.{m}"] for m in modes), default=0.0)
        close = {m: fn for m, fn in modes.items() if timings[f"{lever}.{m}"] <= 1.5 * fastest}
        if len(close) < 2:
            continue
        for mode, fn in close.items():
            name = f"{lever}.{mode}@lanes"
            timings[name] = round(float(measure(name, lambda fn=fn: in_lanes(lambda _: fn(), marks, threads))), 3)
        best[lever] = min(close, key=lambda m: timings[f"{lever}.{m}@lanes"])


def _default(dtype_name: str) -> Choice:
    from bbx.nn import layers

    half = dtype_name != "float32"
    fused = layers.onednn_fusion_available() and (not half or layers.onednn_bf16_available())
    mode = "fused" if fused else "eager"
    sliced = dtype_name == "bfloat16" and layers.onednn_bf16_matmul()
    return Choice(dtype_name, mode, mode, "sliced" if sliced else "sdpa", True, False, "default")


_overrides: dict[str, Choice] = {}


@functools.lru_cache(maxsize=16)
def _chosen(dtype_name: str, threads: int) -> Choice:
    setting = os.environ.get("BBX_KERNELS", "probe").lower()
    if setting == "eager":
        return plain(dtype_name)
    if setting == "default" or dtype_name == "float16":
        return _default(dtype_name)  # float16: no probe (CPUs without fp16 units run its matmuls slowly)
    info = machine()
    c = _read_cache(info).get("choices", {}).get(dtype_name)
    if isinstance(c, dict):
        try:
            return replace(Choice(**{k: v for k, v in c.items() if k in Choice.__dataclass_fields__}), source="cache")
        except TypeError:
            pass
    choice = probe(dtype_name)

    def keep(record: dict[str, Any]) -> None:
        record.setdefault("choices", {})[dtype_name] = choice.to_json()

    _update_cache(info, keep)
    return choice


def _read_cache(info: dict[str, Any]) -> dict[str, Any]:
    """The cache file's record for machine ``info`` (empty when missing, damaged or another's)."""
    try:
        data = json.loads(_cache_file(info).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("machine") != info:
        return {}
    # a section damaged by hand (not a mapping) is dropped, not trusted
    return {k: v for k, v in data.items() if k == "machine" or isinstance(v, dict)}


def _update_cache(info: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> None:
    """Read, ``change`` and atomically replace machine ``info``'s cache record; a read-only home
    only means measuring again next time."""
    path = _cache_file(info)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = _read_cache(info) or {"machine": info, "choices": {}}
        change(record)
        tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError):
        pass


_probing = False


def choice(dtype: torch.dtype | str) -> Choice:
    """The kernels for compute dtype ``dtype`` on this machine (probed once, then cached);
    ``BBX_LANES=1`` / ``0`` turns lanes on / off whatever was measured."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name in _overrides:
        return _overrides[name]
    picks = getattr(_lane, "picks", None)
    if picks and name in picks:  # a model trial's candidate or pick, in this thread
        return picks[name]
    if _probing:  # the probe's own candidates call the layers: they get the defaults
        return _default(name)
    chosen = _chosen(name, getattr(_lane, "threads", None) or torch.get_num_threads())
    lanes = os.environ.get("BBX_LANES", "")
    if lanes in ("0", "1"):
        return replace(chosen, lanes=lanes == "1")
    return chosen


@contextlib.contextmanager
def override(dtype: str, **modes: Any) -> Iterator[Choice]:
    """Use the given modes for ``dtype`` inside the block (tests, benchmarks)."""
    with using(replace(choice(dtype), **modes, source="override")) as c:
        yield c


def report() -> dict[str, Any]:
    """What ``bbx info --system`` shows: the machine and the choice of each dtype."""
    choices = {d: choice(d).to_json() for d in ("float32", "bfloat16")}  # (probed first, then cached)
    info = machine()
    return {
        "machine": info,
        "cache": str(_cache_file(info)),
        "choices": choices,
        #: what the model trials cached on this machine: the pick per model (key: ModelTrial's hash)
        "models": _read_cache(info).get("models", {}),
    }


# --- per model: the machine's choice against plain eager, on the model's own batches ------------

#: timed calls per candidate in a model trial, after each candidate's first (warm-up) call
TRIAL_CALLS = 2
MODE_FIELDS = ("linear", "conv", "attention", "row_slices", "lanes")


def plain(dtype_name: str) -> Choice:
    """Plain eager PyTorch for ``dtype_name``: what ``BBX_KERNELS=eager`` runs."""
    return Choice(dtype_name, "eager", "eager", "sdpa", False, False, "eager")


def _modes(c: Choice) -> dict[str, Any]:
    return {f: getattr(c, f) for f in MODE_FIELDS}


def best_timed(ms_per_image: dict[str, list[float]]) -> dict[str, float]:
    """A model trial's best timed batch per candidate (ms an image; each list's first entry is the
    warm-up), for the candidates timed so far."""
    return {n: min(v[1:]) for n, v in ms_per_image.items() if len(v) > 1}


@contextlib.contextmanager
def _running(c: Choice) -> Iterator[Choice]:
    """A model trial's kernels for ``c``'s dtype in this thread (and the lanes it starts) inside
    the block; other threads keep theirs, and kernels set by hand still win."""
    picks = getattr(_lane, "picks", None) or {}
    _lane.picks = {**picks, c.dtype: c}
    try:
        yield c
    finally:
        _lane.picks = picks


@contextlib.contextmanager
def using(c: Choice) -> Iterator[Choice]:
    """Run ``c``'s kernels for its dtype inside the block, set by hand (every thread: lanes
    included; tests, benchmarks)."""
    before = _overrides.get(c.dtype)
    _overrides[c.dtype] = c
    try:
        yield c
    finally:
        if before is None:
            _overrides.pop(c.dtype, None)
        else:
            _overrides[c.dtype] = before


class ModelTrial:
    """The machine's kernel choice checked on one model's own batches against plain eager PyTorch.

    The probe times each lever on small representative ops; a whole model can still run slower
    with the levers it picked than without them (2-core AMD EPYC Zen 2, ConvNeXt-T all stages:
    its fused linears 5% slower than eager ones, within the probe's noise). So the first full
    batches of a model on a machine take turns, timed: the machine's choice (``chosen``), the same
    without the fused kernels (``unfused``), and plain eager (``eager``), each once to warm up,
    then :data:`TRIAL_CALLS` times; the fastest per image is kept and cached with the machine's
    kernel choices, per model (``model``: what decides its speed; the batch size is added),
    so later runs use it from their first batch. The trial costs no extra work, only batches run
    with a slower candidate (a candidate whose first timed batch is :data:`GIVE_UP` times the best
    is not timed again); the maps of the trial's batches differ from the others' only by rounding.
    A batch of another size (a run's last) runs the pick cached for its own size, else the
    machine's choice, so a run and the Python API run the same kernels for the same batch.

    The pick is in force for the calling thread and the lanes it starts only
    (:func:`_running`), so models in other threads keep their own. No trial where the kernels are
    set by hand (``BBX_KERNELS``, ``BBX_LANES``, :func:`override`, :func:`using`), with
    ``BBX_MODEL_TRIAL=0`` (the machine's choice for every batch, from a model's first run), for float16,
    or for a bfloat16 model this CPU computes in float32 (its bf16 kernels measured slower, eager
    included).
    """

    def __init__(self, model: dict[str, Any], dtype_name: str, *, clock: Callable[[], float] = time.perf_counter):
        self.model = model
        self.dtype = dtype_name
        self.clock = clock
        self.key: str | None = None  # the cache key at the trial's batch size (None: no trial applies)
        self.pick: Choice | None = None  # decided: every batch of the trial's size runs it
        self.picked: str | None = None  # its candidate's name
        #: machine (no trial: the kernels as set) | trial (decided by this run) | cache (by an
        #: earlier run); the report says "trying" while a trial has batches to go
        self.source = "machine"
        self.candidates: dict[str, Choice] = {}
        self.ms_per_image: dict[str, list[float]] = {}
        self._turns: list[str] = []
        self._batch: int | None = None  # the batch size the trial (or its cached pick) is for
        #: per batch size looked up without a trial: (the cached pick's name, its kernels), or None
        self._looked_up: dict[int, tuple[str, Choice] | None] = {}
        #: what the last batch outside a trial and its pick ran: (source, pick name, kernels)
        self._last: tuple[str, str | None, Choice | None] | None = None

    def _wanted(self, base: Choice) -> bool:
        """Whether the kernels are the machine's to choose here (see the class docstring)."""
        env = os.environ
        if env.get("BBX_KERNELS", "probe").lower() != "probe" or env.get("BBX_LANES", "") in ("0", "1"):
            return False
        if env.get("BBX_MODEL_TRIAL", "") == "0":  # trials off (and cached picks unused)
            return False
        if self.dtype not in ("float32", "bfloat16"):
            return False
        return not (self.dtype == "bfloat16" and base.linear == base.conv == "float32")

    def _key(self, images: int) -> str:
        model = {**self.model, "dtype": self.dtype, "batch": images}
        return hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _cached(self, images: int) -> tuple[str, Choice] | None:
        """The pick (its name and kernels) a trial of this model at batches of ``images`` cached on
        this machine; None where none was, or where no trial applies (the kernels set by hand, ...)."""
        if not self._wanted(choice(self.dtype)):
            return None
        cached = _read_cache(machine()).get("models", {}).get(self._key(images))
        try:
            if isinstance(cached, dict) and cached.get("dtype") == self.dtype:
                modes = {f: cached["modes"][f] for f in MODE_FIELDS}
                known = modes["linear"] in LINEAR_MODES and modes["conv"] in LINEAR_MODES
                if known and modes["attention"] in ATTENTION_MODES:
                    return str(cached["pick"]), Choice(self.dtype, **modes, source="cache")
        except (KeyError, TypeError):
            pass
        return None

    def _lookup(self, images: int) -> tuple[str, Choice] | None:
        if images not in self._looked_up:  # once per batch size: the cache is a file
            self._looked_up[images] = self._cached(images)
        return self._looked_up[images]

    def _start(self, images: int) -> None:
        """At the first batch: the cached pick for this model and batch size, else the candidates
        (none where no trial applies: then every batch runs as the kernels are set at the time)."""
        self._batch = images
        found = self._lookup(images)
        if found is not None:
            self.picked, self.pick = found
            self.source = "cache"
            return
        base = choice(self.dtype)
        if not self._wanted(base):
            return
        self.key = self._key(images)
        unfused = replace(
            base,
            linear="eager" if base.linear == "fused" else base.linear,
            conv="eager" if base.conv == "fused" else base.conv,
        )
        seen: list[dict[str, Any]] = []
        for name, c in (("chosen", base), ("unfused", unfused), ("eager", plain(self.dtype))):
            if _modes(c) not in seen:
                seen.append(_modes(c))
                self.candidates[name] = replace(c, source="trial")
        if len(self.candidates) < 2:  # the machine's choice is plain eager
            self.candidates = {}
            return
        self.ms_per_image = {name: [] for name in self.candidates}
        self._turns = [name for _ in range(TRIAL_CALLS + 1) for name in self.candidates]

    def _plain_run(self, images: int, fn: Callable[[], Any]) -> Any:
        """A batch outside the trial: the pick cached for its size, else the kernels as set."""
        found = self._lookup(images)
        self._last = ("cache", found[0], found[1]) if found is not None else ("machine", None, None)
        with _running(found[1]) if found is not None else contextlib.nullcontext():
            return fn()

    def run(self, images: int, fn: Callable[[], Any], *, trial: bool = True) -> Any:
        """``fn()``, one batch of ``images``, under the kernels this model runs with; while the trial
        lasts, under the candidate whose turn it is (timed). ``trial=False``: a cached pick or the
        kernels as set, never a trial (``bbx bench``, :meth:`bbx.Extractor.forward`)."""
        if self.dtype in _overrides or images < 1:  # kernels set by hand (override, using) win
            self._last = ("machine", None, None)
            return fn()
        if self._batch is None and not trial:
            return self._plain_run(images, fn)
        if self._batch is None:
            self._start(images)
        if images != self._batch:  # another size (the last batch): no fair sample, nor the pick's
            return self._plain_run(images, fn)
        if self.pick is not None:
            with _running(self.pick):
                return fn()
        if not self._turns or not trial:
            return fn()
        name = self._turns[0]
        with _running(self.candidates[name]):
            t = self.clock()
            out = fn()  # a batch that fails leaves the turn to be taken again
            ms = (self.clock() - t) * 1000.0 / images
        self._turns.pop(0)
        times = self.ms_per_image[name]
        times.append(ms)
        if len(times) == 2 and ms > GIVE_UP * min(best_timed(self.ms_per_image).values()):
            self._turns = [n for n in self._turns if n != name]  # far behind: not timed again
        if not self._turns:
            self._decide()
        return out

    def _decide(self) -> None:
        best = best_timed(self.ms_per_image)
        if not best:  # cannot happen with whole turns; kept safe: the machine's choice, nothing cached
            return
        name = min(best, key=lambda n: best[n])  # ties go to the first: the machine's choice
        self.picked, self.pick, self.source = name, self.candidates[name], "trial"
        record = {
            "dtype": self.dtype,
            "pick": name,
            "modes": _modes(self.pick),
            "batch": self._batch,
            "ms_per_image": {n: [round(t, 3) for t in v] for n, v in self.ms_per_image.items()},
            "model": self.model.get("family"),
        }

        def keep(r: dict[str, Any]) -> None:
            r.setdefault("models", {})[self.key] = record

        _update_cache(machine(), keep)

    def state(self) -> dict[str, Any] | None:
        """For the run's report: which kernels the model's batches ran with (its full batches'
        where a trial or its cached pick ran; else the last batch's) and where that came from
        (None before a batch)."""
        if self.pick is not None:
            source, picked, ran = self.source, self.picked, self.pick
        elif self._turns:
            source, picked, ran = "trying", None, None
        elif self._last is not None:
            source, picked, ran = self._last
        elif self._batch is not None:  # no trial applies: the kernels as set
            source, picked, ran = "machine", None, None
        else:
            return None
        out: dict[str, Any] = {"dtype": self.dtype, "source": source}
        if picked is not None:
            out["pick"] = picked
        out["modes"] = _modes(ran if ran is not None else choice(self.dtype))
        if self.ms_per_image:
            out["ms_per_image"] = {n: [round(t, 3) for t in v] for n, v in self.ms_per_image.items()}
        return out
