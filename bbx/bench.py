"""Model-only throughput on synthetic input, so a user can size a job on their machine.

Warm-up batches first (allocator, kernel selection), then the median of timed batches. The model
runs exactly as ``bbx extract`` runs it (same device placement, memory format, autocast and
early stop after the last selected stage); decoding and writing are not included.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bbx.errors import UsageError


@dataclass
class BenchResult:
    model: str
    checkpoint: str
    architecture: str
    device: str
    dtype: str
    batch_size: int
    input_size: tuple[int, int]
    out_features: list[str]
    stage_norm: str
    threads: int
    warmup: int
    ms_per_batch: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms_per_batch)

    @property
    def images_per_s(self) -> float:
        return self.batch_size * 1000.0 / self.median_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "architecture": self.architecture,
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "input_size": list(self.input_size),
            "out_features": self.out_features,
            "stage_norm": self.stage_norm,
            "threads": self.threads,
            "warmup": self.warmup,
            "median_ms_per_batch": round(self.median_ms, 3),
            "images_per_s": round(self.images_per_s, 2),
            "ms_per_batch": [round(t, 3) for t in self.ms_per_batch],
        }


def benchmark(
    model_name: str,
    *,
    batch_size: int = 32,
    dtype: str = "float32",
    device: str = "auto",
    image_size: int | tuple[int, int] | None = None,
    out_indices: tuple[int, ...] | None = None,
    out_features: tuple[str, ...] | None = None,
    stage_norm: str = "hf",
    pretrained: bool = False,
    revision: str | None = None,
    warmup: int = 2,
    iters: int = 10,
    channels_last: bool | None = None,
    compile: bool = False,
) -> BenchResult:
    import torch

    from bbx.extractor import Extractor

    if batch_size < 1 or iters < 1 or warmup < 0:
        raise UsageError("--batch-size and --iters must be at least 1, --warmup at least 0")
    from bbx import hub
    from bbx.plan import check_memory, model_plan

    plan = model_plan(
        hub.resolve(model_name, revision=revision, weights=pretrained),
        image_size=image_size,
        out_indices=out_indices,
        out_features=out_features,
    )
    check_memory(plan.ref, plan.settings, plan.input_size, batch=batch_size)  # before anything is built
    ex = Extractor.from_plan(
        plan,
        device=device,
        dtype=dtype,
        stage_norm=stage_norm,
        pretrained=pretrained,
        channels_last=channels_last,
        compile=compile,
    )
    dev = ex.device
    channels = int(ex.ref.config.get("num_channels", 3))
    x = torch.randn(batch_size, channels, *ex.input_size, device=dev)
    if ex.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if torch.device(dev).type == "cuda":
            torch.cuda.synchronize(dev)

    result = BenchResult(
        model=model_name,
        checkpoint=ex.ref.checkpoint,
        architecture=ex.ref.architecture,
        device=dev,
        dtype=ex.dtype,
        batch_size=batch_size,
        input_size=ex.input_size,
        out_features=ex.stages,
        stage_norm=stage_norm,
        threads=torch.get_num_threads(),
        warmup=warmup,
    )
    for _ in range(warmup):
        ex.forward(x)
    sync()
    for _ in range(iters):
        t = time.perf_counter()
        ex.forward(x)
        sync()
        result.ms_per_batch.append((time.perf_counter() - t) * 1000.0)
    return result
