"""What a run will do and what it did: plain dataclasses, rendered as a rich table (stderr) or
JSON (stdout). The library fills them; only the CLI prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def table(*columns: str) -> Any:
    """A borderless rich table, as every bbx listing uses; a column named ``">name"`` is
    right-aligned (numbers)."""
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col.lstrip(">"), justify="right" if col.startswith(">") else "left")
    return t


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    channels: int
    stride: int
    shape: tuple[int, ...]  # what is stored per image: (C, H, W) or (C,) pooled
    dtype: str
    bytes_per_image: int


@dataclass
class Plan:
    model: str
    checkpoint: str
    revision: str | None
    architecture: str
    weights: str  # "pretrained" or "random (seed 0)"
    device: str
    compute_dtype: str
    store_dtype: str
    pool: str
    stage_norm: str
    input_size: tuple[int, int]
    stages: list[StagePlan]
    inputs: int  # files found
    todo: int  # files this run will extract (after --resume skips)
    output: str
    format: str
    free_bytes: int | None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the run would refuse (--dry-run)

    @property
    def bytes_per_image(self) -> int:
        return sum(s.bytes_per_image for s in self.stages)

    @property
    def projected_bytes(self) -> int:
        return self.bytes_per_image * self.todo

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "revision": self.revision,
            "architecture": self.architecture,
            "weights": self.weights,
            "device": self.device,
            "compute_dtype": self.compute_dtype,
            "store_dtype": self.store_dtype,
            "pool": self.pool,
            "stage_norm": self.stage_norm,
            "input_size": list(self.input_size),
            "stages": [
                {
                    "index": s.index,
                    "name": s.name,
                    "channels": s.channels,
                    "stride": s.stride,
                    "shape": list(s.shape),
                    "dtype": s.dtype,
                    "bytes_per_image": s.bytes_per_image,
                }
                for s in self.stages
            ],
            "inputs": self.inputs,
            "todo": self.todo,
            "bytes_per_image": self.bytes_per_image,
            "projected_bytes": self.projected_bytes,
            "output": self.output,
            "format": self.format,
            "free_bytes": self.free_bytes,
            "warnings": self.warnings,
        }


@dataclass
class Summary:
    plan: Plan
    done: int = 0  # images extracted by this run
    already: int = 0  # inputs skipped because the output already had them (--resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # this run's skipped inputs
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    interrupted: str | None = None  # "SIGINT" / "SIGTERM"
    notes: list[str] = field(default_factory=list)
    rows_total: int = 0  # rows in the output after the run
    first_batch_s: float | None = None  # from the start of the run (model load included) to the first batch written

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "done": self.done,
            "already_present": self.already,
            "skipped": [{"path": p, "reason": r} for p, r in self.failed],
            "rows_in_output": self.rows_total,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "files": self.files,
            "first_batch_s": round(self.first_batch_s, 3) if self.first_batch_s is not None else None,
            "interrupted": self.interrupted,
            "notes": self.notes,
        }


def render_plan(plan: Plan, console: Any) -> None:
    h, w = plan.input_size
    console.print(
        f"[bold]{plan.model}[/bold]  {plan.checkpoint}"
        + (f"@{plan.revision[:12]}" if plan.revision else "")
        + f"  ({plan.architecture}, {plan.weights} weights, input {h}x{w}, stage norm {plan.stage_norm})"
    )
    console.print(
        f"device {plan.device}, compute {plan.compute_dtype}, store {plan.store_dtype}"
        + (f", pool {plan.pool}" if plan.pool != "none" else "")
    )
    listing = table(">index", "stage", ">channels", ">stride", "per image", ">bytes/image")
    for s in plan.stages:
        listing.add_row(
            str(s.index),
            s.name,
            str(s.channels),
            str(s.stride),
            f"{list(s.shape)} {s.dtype}",
            human_bytes(s.bytes_per_image),
        )
    console.print(listing)
    free = f", {human_bytes(plan.free_bytes)} free" if plan.free_bytes is not None else ""
    extra = f" ({plan.inputs - plan.todo} already in the output)" if plan.inputs != plan.todo else ""
    console.print(
        f"{plural(plan.todo, 'image')}{extra} x {human_bytes(plan.bytes_per_image)} = "
        f"{human_bytes(plan.projected_bytes)} projected -> {plan.output} ({plan.format}{free})"
    )
    for warning in plan.warnings:
        console.print(f"the run would be refused: {warning}")


def render_summary(summary: Summary, console: Any) -> None:
    for note in summary.notes:
        console.print(f"note: {note}")
    if summary.failed:
        console.print(f"skipped {plural(len(summary.failed), 'input')}:")
        for path, reason in summary.failed[:20]:
            console.print(f"  {path}: {reason}")
        if len(summary.failed) > 20:
            console.print(f"  ... and {len(summary.failed) - 20} more (all listed in the output)")
    state = f"interrupted ({summary.interrupted}); " if summary.interrupted else ""
    already = f", {summary.already} already present" if summary.already else ""
    console.print(
        f"{state}{plural(summary.done, 'image')} extracted{already}, {len(summary.failed)} skipped in "
        f"{summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s) -> {', '.join(summary.files) or '-'}"
    )
