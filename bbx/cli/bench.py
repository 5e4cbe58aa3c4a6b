"""``bbx bench MODEL``: model-only throughput on synthetic input."""

from __future__ import annotations

from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, console, emit_json
from bbx.cli.extract import parse_indices, parse_names


@command("bench")
def bench(
    model: str = typer.Argument(
        ..., help="Alias, checkpoint folder or hub id org/name.", autocompletion=_complete.complete_model
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per batch."),
    dtype: str = typer.Option(
        "float32",
        "--dtype",
        help="Compute dtype: float32, float16 or bfloat16 (autocast).",
        autocompletion=_complete.DTYPES,
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto, cpu, cuda, cuda:N or mps.", autocompletion=_complete.DEVICES
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="Input size N (NxN); default: the checkpoint's."
    ),
    out_indices: Optional[list[str]] = typer.Option(None, "--out-indices", help="Stages by index (default: last)."),
    out_features: Optional[list[str]] = typer.Option(
        None, "--out-features", help="Stages by name.", autocompletion=_complete.complete_out_features
    ),
    stage_norm: str = typer.Option(
        "hf", "--stage-norm", help="Stage norms: hf, none or final.", autocompletion=_complete.STAGE_NORMS
    ),
    pretrained: bool = typer.Option(
        False, "--pretrained/--no-pretrained", help="Load the checkpoint's weights (default: random, no download)."
    ),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit (with --pretrained)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed batches first."),
    iters: int = typer.Option(10, "--iters", help="Timed batches (the median is reported)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (compiled in the warm-up)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
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
        image_size=image_size,
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
