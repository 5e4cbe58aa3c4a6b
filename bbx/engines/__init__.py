"""One extraction run as units (shards) on several workers, then merged: what ``--devices`` and
``--engine ray`` share.

The driver plans the whole run (model, stages, output, space), cuts the ordered inputs into
``count`` contiguous units (:class:`bbx.shards.Shard`), and hands each unfinished unit to a worker,
which runs the normal extraction loop (:func:`bbx.extract.run`) into its own shard output in
``<output>.units/`` (``feats.shard-00003-of-00016.h5``: a complete bbx output, resumable). When
every unit is complete the driver merges them (:func:`bbx.merge.merge`) into the output and removes
the folder. Running the same command again skips finished units and resumes unfinished ones from
their ``.partial``; ``--overwrite`` starts over.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bbx.errors import BbxError, InputError, UsageError
from bbx.formats import leftovers, open_output, partial_path
from bbx.plan import ExtractOptions, Item, RunPlan, check_space, plan_run
from bbx.report import Summary
from bbx.shards import Shard, digest, shard_output
from bbx.tars import expand as expand_tars


def units_dir(output: Path) -> Path:
    """Where the units of a run writing ``output`` live (it must be shared by every node)."""
    return output.with_name(output.name + ".units")


@dataclass
class Unit:
    """One unit of a run: its options (output in the units folder, shard set, resuming) and its
    slice of the ordered inputs."""

    index: int
    opts: ExtractOptions
    inputs: list[Item]
    output: Path  # its shard output
    items: int  # images (tar samples included) in it
    done: bool = False  # finished by an earlier run


@dataclass
class Prepared:
    rp: RunPlan
    units: list[Unit]
    folder: Path
    count: int
    notes: list[str] = field(default_factory=list)

    @property
    def todo(self) -> list[Unit]:
        return [u for u in self.units if not u.done]


class WorkerError(BbxError):
    """A worker's failure, carried to the driver with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def prepare(opts: ExtractOptions, units: list[Item], *, count: int, source: str) -> Prepared:
    """Plan the whole run and its ``count`` units; refuse what the run would refuse."""
    if opts.shard is not None:
        raise UsageError(f"--shard and {source} exclude each other: shard the inputs one way")
    whole = replace(opts, shard=None)
    rp = plan_run(whole, units, device=opts.device, weights=opts.pretrained)
    output, fmt = rp.output, rp.fmt
    found, leftover = leftovers(output, fmt)
    folder = units_dir(output)
    if found is not None and not opts.overwrite:
        raise InputError(
            f"{found} exists: pass --overwrite to replace it"
            + (" (--resume with " + source + " continues an unfinished run's units)" if opts.resume else "")
        )
    check_space(rp.report, force=opts.force)
    notes: list[str] = []
    if opts.overwrite and folder.exists():
        shutil.rmtree(folder)
    n = len(units)
    count = max(1, min(count, n)) if n else 1
    names = [str(u) for u in units]
    whole_digest = digest(names)
    base = folder / output.name
    out_units: list[Unit] = []
    for k in range(count):
        shard = Shard(k, count, f"{source} unit", whole=(n, whole_digest))
        start, stop = shard.bounds(n)
        chunk = list(units[start:stop])
        uopts = replace(
            opts,
            output=base,
            format=fmt,
            shard=shard,
            resume=True,
            overwrite=False,
            force=True,
            progress=False,
        )
        items = _count_items(chunk)
        out_units.append(Unit(k, uopts, chunk, shard_output(base, k, count), items))
    _check_folder(folder, out_units, count, n, whole_digest, rp)
    done = [u for u in out_units if u.done]
    if done:
        notes.append(f"{len(done)} of {count} units finished by an earlier run are kept")
    if leftover is not None and not opts.overwrite:
        notes.append(f"{leftover.name} is left from an earlier merge: it is continued")
    rp.report.todo = sum(u.items for u in out_units if not u.done)
    return Prepared(rp, out_units, folder, count, notes)


def _count_items(chunk: list[Item]) -> int:
    paths = [u for u in chunk if isinstance(u, Path)]
    if len(paths) == len(chunk) and any(str(p).lower().endswith(".tar") for p in paths):
        return len(expand_tars(paths)[0])
    return len(chunk)


def _check_folder(folder: Path, units: list[Unit], count: int, n: int, whole_digest: str, rp: RunPlan) -> None:
    """Mark the units an earlier run finished; refuse a folder left by another run."""
    if not folder.is_dir():
        return
    for name in sorted(os.listdir(folder)):
        from bbx.merge import _shard_base  # the shard names bbx.merge recognises

        if _shard_base(name) is None:
            continue
        try:
            facts = open_output(folder / _shard_base(name)).facts  # type: ignore[operator]
        except BbxError:
            continue  # a damaged unit: its run resumes or starts it over
        if facts.shard_count != count or facts.input_count != n or facts.input_digest != whole_digest:
            raise InputError(
                f"{folder} holds units of another run ({facts.shard_text()}; this run cuts {n} inputs into "
                f"{count} units): rerun with the same inputs and options, or pass --overwrite to start over"
            )
        facts.check_resumable(rp.facts.with_(**_shard_facts(facts)), folder / name)
    for u in units:
        if u.output.exists() and not partial_path(u.output).exists():
            try:
                out = open_output(u.output)
            except BbxError:
                continue
            u.done = out.status == "complete" and not out.unfinished


def _shard_facts(facts: Any) -> dict[str, Any]:
    return {
        "shard_index": facts.shard_index,
        "shard_count": facts.shard_count,
        "input_count": facts.input_count,
        "input_digest": facts.input_digest,
    }


def finish(prep: Prepared, opts: ExtractOptions, results: list[Summary], seconds: float) -> Summary:
    """Merge every unit into the output, remove the units folder, and sum the units' reports."""
    from bbx import merge

    rp = prep.rp
    output = rp.output
    resume = partial_path(output).exists() and not opts.overwrite
    merged = merge.merge(
        [u.output for u in prep.units],
        output,
        fmt=rp.fmt,
        overwrite=opts.overwrite,
        resume=resume,
        shard_bytes=opts.shard_bytes,
    )
    shutil.rmtree(prep.folder, ignore_errors=True)
    summary = Summary(plan=rp.report)
    summary.notes = list(prep.notes) + list(merged.notes)
    for r in results:
        summary.done += r.done
        summary.already += r.already
        summary.failed += r.failed
        summary.notes += r.notes
        if r.first_batch_s is not None and (summary.first_batch_s is None or r.first_batch_s < summary.first_batch_s):
            summary.first_batch_s = r.first_batch_s
    summary.already += sum(u.items for u in prep.units if u.done)
    summary.seconds = seconds
    summary.rows_total = merged.rows
    summary.files = merged.files
    return summary
