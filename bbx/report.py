"""What a run will do and what it did: plain dataclasses, turned into JSON here and rendered by
the CLI (:mod:`bbx.cli._render`). The library fills them; only the CLI prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    index: int | None  # None: not a stage (the image embedding)
    name: str
    channels: int
    stride: int | None
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
    exit_code: int = 0  # the status the run would end with at once (--dry-run): the first refusal's
    compression: str = "none"  # HDF5's filter; the projected bytes are before it
    #: for a task checkpoint: the prefix of the backbone's tensors in it (nothing else is read)
    weight_prefix: str = ""
    embedding: StagePlan | None = None  # the model's image embedding, stored beside the stages (--embedding)
    shard: str | None = None  # "shard 3/16 (Slurm array task 3 of 0..15)": this run's part of a bigger one

    @property
    def bytes_per_image(self) -> int:
        return sum(s.bytes_per_image for s in self.stages) + (self.embedding.bytes_per_image if self.embedding else 0)

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
            "stages": [_stage_json(s) for s in self.stages],
            "embedding": _stage_json(self.embedding) if self.embedding is not None else None,
            "inputs": self.inputs,
            "todo": self.todo,
            "bytes_per_image": self.bytes_per_image,
            "projected_bytes": self.projected_bytes,
            "output": self.output,
            "format": self.format,
            "free_bytes": self.free_bytes,
            "compression": self.compression,
            "warnings": self.warnings,
            "exit_code": self.exit_code,
            "shard": self.shard,
        } | ({"weight_prefix": self.weight_prefix} if self.weight_prefix else {})


def _stage_json(s: StagePlan) -> dict[str, Any]:
    return {
        "index": s.index,
        "name": s.name,
        "channels": s.channels,
        "stride": s.stride,
        "shape": list(s.shape),
        "dtype": s.dtype,
        "bytes_per_image": s.bytes_per_image,
    }


@dataclass
class Summary:
    plan: Plan
    done: int = 0  # images extracted by this run
    already: int = 0  # inputs skipped because the output already had them (--resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # this run's skipped inputs
    seconds: float = 0.0  # the whole run: planning, loading the model, extracting, closing the output
    load_s: float = 0.0  # of which from the start to the model ready to run
    files: list[str] = field(default_factory=list)
    interrupted: str | None = None  # "SIGINT" / "SIGTERM"
    late_signal: str | None = None  # a signal that arrived while a complete output was being closed
    write_s: float = 0.0  # spent writing batches (compressing them, with --compression)
    map_bytes: int = 0  # the maps this run wrote, as computed
    stored_bytes: int | None = None  # what they take in the output (known for compressed HDF5)
    notes: list[str] = field(default_factory=list)
    rows_total: int = 0  # rows in the output after the run
    first_batch_s: float | None = None  # from the start of the run (model load included) to the first batch written
    #: where the time before the first batch went: resolve_s (model lookup, configs, download), import_s
    #: (torch and the model code), weights_s (build and load), prepare_s (inference rewrites, device),
    #: first_batch_s (decoding, compute and writing of the first batch)
    startup: dict[str, float] = field(default_factory=dict)
    #: where the loop's time went: waiting for decoded images, compute (to the device, the model,
    #: back to the host), writing
    phases: dict[str, float] = field(default_factory=lambda: {"decode_s": 0.0, "compute_s": 0.0, "write_s": 0.0})
    #: on the CPU, the kernels the model ran with and where they came from (bbx.nn.kernels.ModelTrial)
    kernels: dict[str, Any] | None = None

    @property
    def compression_ratio(self) -> float | None:
        """Bytes of maps per byte stored (with --compression)."""
        if not self.stored_bytes or self.plan.compression == "none":
            return None
        return round(self.map_bytes / self.stored_bytes, 3)

    @property
    def images_per_s(self) -> float:
        """The extraction rate: images per second once the model is loaded."""
        busy = self.seconds - self.load_s
        return self.done / busy if busy > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "done": self.done,
            "already_present": self.already,
            "skipped": [{"path": p, "reason": r} for p, r in self.failed],
            "rows_in_output": self.rows_total,
            "seconds": round(self.seconds, 3),
            "load_s": round(self.load_s, 3),
            "images_per_s": round(self.images_per_s, 2),
            "files": self.files,
            "first_batch_s": round(self.first_batch_s, 3) if self.first_batch_s is not None else None,
            "startup": {k: round(v, 3) for k, v in self.startup.items()},
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "interrupted": self.interrupted,
            "late_signal": self.late_signal,
            "notes": self.notes,
            "write_s": round(self.write_s, 3),
            "map_bytes": self.map_bytes,
            "stored_bytes": self.stored_bytes,
            "compression_ratio": self.compression_ratio,
            "kernels": self.kernels,
        }
