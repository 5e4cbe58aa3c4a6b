"""``bbx bench MODEL``: model-only throughput on synthetic input."""

from __future__ import annotations

import typer

from bbx.cli._app import command, console, emit_json
from bbx.cli._options import (
    BATCH_SIZE,
    BatchSize,
    Compile,
    Device,
    Dtype,
    ImageSize,
    Json,
    Model,
    OutFeatures,
    OutIndices,
    Revision,
    StageNorm,
    parse_image_size,
    parse_indices,
    parse_names,
)


@command("bench")
def bench(
    model: Model,
    batch_size: BatchSize = BATCH_SIZE,
    dtype: Dtype = "float32",
    device: Device = "auto",
    image_size: ImageSize = None,
    out_indices: OutIndices = None,
    out_features: OutFeatures = None,
    stage_norm: StageNorm = "hf",
    pretrained: bool = typer.Option(
        False, "--pretrained", help="Load the checkpoint's weights (default: random, no download)."
    ),
    revision: Revision = None,
    warmup: int = typer.Option(2, "--warmup", metavar="N", help="Untimed batches first."),
    iters: int = typer.Option(10, "--iters", metavar="N", help="Timed batches (the median is reported)."),
    compile_model: Compile = False,
    as_json: Json = False,
) -> None:
    """Model-only throughput: warm-up, then the median of timed batches (images/s, ms per batch).

    Decoding and writing are not timed; the model runs as in `bbx extract` (same device, memory
    format, autocast, and early stop after the last selected stage). Weights do not change the
    speed, so random weights are used unless --pretrained.

    Example: bbx bench resnet-50 --batch-size 32 --dtype bfloat16
    """
    from bbx.bench import benchmark

    r = benchmark(
        model,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        image_size=parse_image_size(image_size),
        out_indices=parse_indices(out_indices),
        out_features=parse_names(out_features),
        stage_norm=stage_norm,
        pretrained=pretrained,
        revision=revision,
        warmup=warmup,
        iters=iters,
        compile=compile_model,
    )
    if as_json:
        emit_json(r.to_json())
        return
    h, w = r.input_size
    ts = sorted(r.ms_per_batch)
    console().print(
        f"{r.model} ({r.architecture}) on {r.device}, {r.dtype}, {r.threads} threads, batch {r.batch_size}, "
        f"input {h}x{w}, stages {','.join(r.out_features)}: "
        f"{r.images_per_s:.1f} images/s, {r.median_ms:.1f} ms/batch "
        f"(median of {len(ts)}; min {ts[0]:.1f}, max {ts[-1]:.1f})"
    )
