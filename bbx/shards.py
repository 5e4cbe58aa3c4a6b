"""Shards of one run: which contiguous slice of the ordered inputs a process takes, where that
comes from (``--shard K/N``, or a scheduler's environment with ``--shard auto``), what its output
is called, and the facts that let :mod:`bbx.merge` put the pieces back together.

Shard K of N (0-based) takes ``[floor(K*n/N), floor((K+1)*n/N))`` of the final ordered input list
(after discovery and de-duplication; a webdataset ``.tar`` counts as one input), so the shards'
concatenation is exactly the single-machine order. ``--shard auto`` reads:

* a Slurm job array: K = (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN``) / ``SLURM_ARRAY_TASK_STEP``,
  N = ``SLURM_ARRAY_TASK_COUNT`` (``--array=1-7:2`` gives shards 0..3 of 4);
* srun tasks: K = ``SLURM_PROCID``, N = ``SLURM_NTASKS`` (the CUDA device from ``SLURM_LOCALID``);
* both at once (an array whose tasks each run srun): array task a of A with srun task p of P is
  shard a*P + p of A*P, so every array task covers a contiguous block;
* torchrun: K = ``RANK``, N = ``WORLD_SIZE`` (the CUDA device from ``LOCAL_RANK``).

No torch, no numpy.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bbx.errors import UsageError

#: ``feats.shard-00003-of-00016.h5``: a shard's output name, before the format's suffix
SHARD_NAME = re.compile(r"^(?P<base>.+)\.shard-(?P<index>\d{5,})-of-(?P<count>\d{5,})(?P<suffix>\.[^.]+)$")
#: the most shards a run may be cut into (a name keeps five digits up to here)
MAX_SHARDS = 99_999


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; ``source`` says where it came from (for the report);
    ``local_rank`` is the process's rank on its node, when a launcher says it (picks the GPU)."""

    index: int
    count: int
    source: str = "--shard"
    local_rank: int | None = None
    #: (input count, digest) of the whole ordered list, when a run is handed its slice already
    #: (the engines' workers get only their unit's inputs)
    whole: tuple[int, str] | None = None

    def bounds(self, n: int) -> tuple[int, int]:
        """The slice ``[start, stop)`` of ``n`` ordered inputs this shard takes."""
        return self.index * n // self.count, (self.index + 1) * n // self.count

    def take(self, items: Sequence[object]) -> list[object]:
        start, stop = self.bounds(len(items))
        return list(items[start:stop])

    def output(self, path: Path) -> Path:
        """``feats.h5`` -> ``feats.shard-00003-of-00016.h5`` (likewise ``.safetensors``)."""
        return shard_output(path, self.index, self.count)

    def describe(self) -> str:
        return f"shard {self.index}/{self.count} ({self.source})"


def shard_output(path: Path, index: int, count: int) -> Path:
    suffix = path.suffix
    stem = path.name[: -len(suffix)] if suffix else path.name
    return path.with_name(f"{stem}.shard-{index:05d}-of-{count:05d}{suffix}")


def parse(text: str, env: Mapping[str, str] | None = None) -> Shard:
    """``--shard K/N`` (0-based) or ``--shard auto`` -> a :class:`Shard`; UsageError in one line."""
    value = text.strip()
    if value.lower() == "auto":
        return from_environment(os.environ if env is None else env)
    m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", value)
    if m is None:
        raise UsageError(f"--shard takes K/N (0-based, e.g. 3/16) or auto, got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    return checked(k, n, "--shard")


def checked(k: int, n: int, source: str, local_rank: int | None = None) -> Shard:
    if n < 1:
        raise UsageError(f"{source}: a run has at least one shard, got {n}")
    if n > MAX_SHARDS:
        raise UsageError(f"{source}: at most {MAX_SHARDS} shards, got {n}")
    if not 0 <= k < n:
        raise UsageError(f"{source}: shard {k} of {n} does not exist (shards are numbered 0..{n - 1})")
    return Shard(k, n, source, local_rank)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        if default is not None:
            return default
        raise UsageError(f"--shard auto: {name} is not set")
    try:
        return int(raw.strip())
    except ValueError:
        raise UsageError(f"--shard auto: {name}={raw!r} is not a number") from None


def _array(env: Mapping[str, str]) -> tuple[int, int, str]:
    """(K, N, description) of a Slurm job array task."""
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    low = _int(env, "SLURM_ARRAY_TASK_MIN", task)
    step = _int(env, "SLURM_ARRAY_TASK_STEP", 1)
    count = _int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    if step < 1 or task < low or (task - low) % step:
        raise UsageError(
            f"--shard auto: Slurm array task {task} is not of the form MIN + k*STEP "
            f"(MIN {low}, STEP {step}); use an array range such as --array=0-15 or 1-7:2, or --shard K/N"
        )
    k = (task - low) // step
    if k >= count:
        raise UsageError(
            f"--shard auto: Slurm array task {task} is task {k} but the array has {count} tasks "
            f"(MIN {low}, STEP {step}); an array list with gaps cannot be sharded, use --shard K/N"
        )
    return (
        k,
        count,
        f"Slurm array task {task} of {low}..{low + (count - 1) * step}" + (f" step {step}" if step != 1 else ""),
    )


def _srun(env: Mapping[str, str]) -> tuple[int, int, int | None]:
    local = env.get("SLURM_LOCALID")
    return _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), int(local) if local and local.isdigit() else None


def in_srun(env: Mapping[str, str]) -> bool:
    """Inside a job step started by srun (a batch script itself has SLURM_PROCID 0 and, with
    --ntasks, SLURM_NTASKS too, but no step id)."""
    return "SLURM_PROCID" in env and "SLURM_NTASKS" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


def from_environment(env: Mapping[str, str]) -> Shard:
    """The shard a scheduler's environment gives this process (see the module docstring)."""
    if "RANK" in env and "WORLD_SIZE" in env:
        local = env.get("LOCAL_RANK")
        k, n = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        return checked(k, n, f"torchrun RANK={k} WORLD_SIZE={n}", int(local) if local and local.isdigit() else None)
    array = "SLURM_ARRAY_TASK_ID" in env
    srun = in_srun(env) and _int(env, "SLURM_NTASKS") > 1
    if array and srun:
        a, count, what = _array(env)
        p, tasks, local = _srun(env)
        if not 0 <= p < tasks:
            raise UsageError(f"--shard auto: SLURM_PROCID={p} is not below SLURM_NTASKS={tasks}")
        return checked(a * tasks + p, count * tasks, f"{what} x srun task {p} of {tasks}", local)
    if array:
        k, n, what = _array(env)
        return checked(k, n, what)
    if srun:
        p, tasks, local = _srun(env)
        return checked(p, tasks, f"srun task SLURM_PROCID={p} of SLURM_NTASKS={tasks}", local)
    raise UsageError(
        "--shard auto: no Slurm job array (SLURM_ARRAY_TASK_ID), srun step (SLURM_PROCID, SLURM_NTASKS) "
        "or torchrun (RANK, WORLD_SIZE) in the environment; give --shard K/N"
    )


def digest(names: Sequence[str]) -> str:
    """A digest of an ordered input list (as given): shards of one run carry the same one."""
    h = hashlib.sha256()
    for name in names:
        h.update(os.fsencode(name))
        h.update(b"\0")
    return "sha256:" + h.hexdigest()[:32]


def device_for(shard: Shard | None, device: str, *, cuda_count: int) -> str:
    """``--device auto`` on a node with GPUs, under a launcher that gives a local rank: that GPU."""
    if shard is None or shard.local_rank is None or device.lower() != "auto" or cuda_count < 1:
        return device
    if shard.local_rank >= cuda_count:
        raise UsageError(
            f"--shard auto: local rank {shard.local_rank} but this node has {cuda_count} CUDA devices; "
            "start one process per GPU or pass --device"
        )
    return f"cuda:{shard.local_rank}"
