"""Where and how a model runs: the device, the autocast context of a compute dtype, and the
decoding threads a device gets. torch is imported by the functions that need it."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

from bbx import dtypes
from bbx.errors import UsageError

#: the dtypes a model may compute in (through autocast) and store its maps in
DTYPES = dtypes.NAMES


def resolve_device(name: str) -> str:
    """``--device`` (auto, cpu, cuda, cuda:N, mps) -> a torch device string; UsageError when the
    machine has no such device."""
    import torch

    n = name.lower()
    if n == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
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


def planned_device(name: str) -> str:
    """The device a run with ``--device name`` would use, as cheaply as can be known: ``cpu``
    and ``auto`` on a machine without a GPU driver need no torch (the dry run and the shape
    report stay fast); anything else asks torch, as :func:`resolve_device` does."""
    n = name.lower()
    if n == "cpu" or (n == "auto" and not _gpu_driver_present()):
        return "cpu"
    return resolve_device(name)


def _gpu_driver_present() -> bool:
    """Whether this machine shows any sign of a CUDA (or ROCm) driver; False only where torch
    could not find a GPU either (no device nodes, no driver)."""
    import sys

    if not sys.platform.startswith("linux"):
        return True  # no cheap answer elsewhere: ask torch
    signs = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
    return any(os.path.exists(p) for p in signs)


def compute_context(device: str, dtype: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the context a forward pass runs in for ``--dtype``: autocast to float16 or
    bfloat16 on ``device``'s type, nothing for float32. UsageError for bfloat16 on a GPU without it."""
    import torch

    dt = dtypes.get(dtype)
    if dt.name == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--dtype bfloat16: this GPU ({device}) has no bfloat16 support; use float16")
    if dt.name == "float32":
        return contextlib.nullcontext
    kind = torch.device(device).type
    compute = dt.torch()
    return lambda: torch.autocast(kind, dtype=compute)


def default_workers(device: str) -> int:
    """Decoding threads when ``--workers`` is not given: one per core, at most 8.

    On CPU they decode in bursts between model batches (see :func:`bbx.extract.decoded`): a
    decoding thread running beside a model that keeps every core busy only steals cycles, and its
    preemptions stall torch's OpenMP barriers (measured on 2 cores, ResNet-50: 10.2 images/s with
    one overlapping thread, 15.4 decoding inline). On an accelerator the CPU is free, and decoding
    overlaps the model."""
    cpus = os.cpu_count() or 1
    if device == "cpu":
        return min(cpus, 8) if cpus > 1 else 0
    return max(1, min(8, cpus - 1))


def machine_memory() -> int | None:
    """Bytes of memory this process can have: the machine's physical memory, or its control
    group's limit when that is lower (a container, a scheduler's job); None if unknown."""
    total: int | None = None
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text)) if total else int(text)
    return total or None


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: heap instead of mmap below 1 GiB, no trim below 1 GiB free at the top, 64 MiB more per growth
_KEEP_FREED = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory a CPU forward frees for the next batch: tensors up to
    1 GiB come from the heap instead of a fresh ``mmap`` each, and the heap's top is not given back
    to the system after each free. By default a tensor over glibc's threshold is mapped anew at
    every allocation and the freed top of the heap is trimmed, so each batch pays a page fault for
    every 4 KiB it writes into a new tensor (Swin-T, one core, 8 images: 188 -> 169 ms per image,
    median of 12 forwards). Memory stays at the run's peak, which every batch reaches anyway.

    Once per process; only with glibc; never where the user set malloc up themselves (``MALLOC_*``
    or glibc tunables in the environment, another allocator preloaded) or ``BBX_MALLOC=default``.
    True when applied."""
    import platform

    env = os.environ
    own = (
        env.get("BBX_MALLOC", "").lower() == "default"
        or "GLIBC_TUNABLES" in env
        or "LD_PRELOAD" in env
        or any(k.startswith("MALLOC_") for k in env)
    )
    if own or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in _KEEP_FREED)
    except (OSError, AttributeError):
        return False
