"""``bbx extract``: images from disk to stage feature maps in HDF5 or safetensors."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, console, emit_json
from bbx.cli._options import (
    BATCH_SIZE,
    BatchSize,
    Compile,
    Device,
    Dtype,
    ImageSize,
    Json,
    ModelOption,
    OutFeatures,
    OutIndices,
    Quiet,
    Resize,
    Revision,
    StageNorm,
    parse_image_size,
    parse_indices,
    parse_names,
    parse_size,
)
from bbx.errors import EXIT_OK, EXIT_PARTIAL, EXIT_SIGINT, EXIT_SIGTERM, Terminated


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


@command("extract")
def extract(
    model: ModelOption,
    inputs: list[str] = typer.Argument(
        None,
        metavar="INPUTS",
        help="Image files, folders (searched recursively) or - to read paths from stdin.",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Output file (.h5/.hdf5 or .safetensors). Default: <model>_<stages>.h5 here.",
    ),
    fmt: Optional[str] = typer.Option(
        None,
        "--format",
        metavar="FORMAT",
        help="hdf5 or safetensors (default: from the suffix).",
        autocompletion=_complete.FORMATS,
    ),
    out_indices: OutIndices = None,
    out_features: OutFeatures = None,
    image_size: ImageSize = None,
    resize: Resize = "crop",
    batch_size: BatchSize = BATCH_SIZE,
    device: Device = "auto",
    dtype: Dtype = "float32",
    store_dtype: str = typer.Option(
        "float32",
        "--store-dtype",
        metavar="DTYPE",
        help="Stored dtype: float32, float16 or bfloat16.",
        autocompletion=_complete.DTYPES,
    ),
    pool: str = typer.Option(
        "none",
        "--pool",
        metavar="none|avg|max|cls",
        help="none: maps [N,C,H,W]; avg, max: vectors [N,C]; cls: each stage's class token [N,C].",
        autocompletion=_complete.POOLS,
    ),
    embedding: bool = typer.Option(
        False,
        "--embedding",
        help="Also store the model's own image embedding [N,D] as 'embedding' (bbx inspect says if it has one).",
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-j",
        metavar="N",
        help="Decoding threads (default: one per core, at most 8); on CPU between batches, on a GPU alongside.",
    ),
    null: bool = typer.Option(False, "--null", "-0", help="Paths on stdin are NUL-separated (find -print0)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    resume: bool = typer.Option(False, "--resume", help="Add to an existing or unfinished output; skip paths it has."),
    force: bool = typer.Option(False, "--force", help="Run even if the projected output exceeds the free space."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the shape report and exit; loads no weights."),
    no_exif: bool = typer.Option(False, "--no-exif", help="Keep raw pixels: do not apply EXIF orientation."),
    fast_decode: bool = typer.Option(
        False, "--fast-decode", help="Reduced-size JPEG decoding (faster, changes pixels slightly)."
    ),
    stage_norm: StageNorm = "hf",
    no_pretrained: bool = typer.Option(
        False, "--no-pretrained", help="Random weights from the config (seed 0), offline: no download."
    ),
    revision: Revision = None,
    compression: str = typer.Option(
        "none",
        "--compression",
        metavar="none|gzip|lzf",
        help="HDF5: compress the maps (gzip: smaller, lzf: faster), each with byte shuffling.",
        autocompletion=_complete.COMPRESSIONS,
    ),
    shard_size: Optional[str] = typer.Option(
        None, "--shard-size", metavar="SIZE", help="safetensors shard size (default 5GB)."
    ),
    on_error: str = typer.Option(
        "skip",
        "--on-error",
        metavar="skip|stop",
        help="skip: skip bad images and report them; stop: end the run at the first.",
        autocompletion=_complete.ON_ERROR,
    ),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        metavar="K/N|auto",
        help="K/N: extract shard K (0-based) of N contiguous slices of the inputs; auto: from Slurm or torchrun.",
    ),
    devices: Optional[str] = typer.Option(
        None,
        "--devices",
        metavar="DEV,...",
        help="cuda:0,cuda:1,... (or cpu,cpu): one worker per device over contiguous slices, merged.",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        metavar="local|ray",
        help="local, or ray: units on a Ray cluster's actors, merged.",
        autocompletion=_complete.ENGINES,
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        metavar="ADDR",
        help="With --engine ray: the cluster (auto: the one `ray start` made); default a local one.",
    ),
    actors: Optional[int] = typer.Option(
        None,
        "--actors",
        metavar="N",
        help="With --engine ray: model actors (default: one per GPU, or one per node on CPUs).",
    ),
    unit_size: int = typer.Option(
        1000, "--unit-size", metavar="N", help="With --engine ray: inputs per unit (a .tar counts as one input)."
    ),
    compile_model: Compile = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Extract the feature maps of the chosen stages for every image.

    Examples:

      bbx extract --model swin-tiny --out-indices 1 imgs/

      find photos -name '*.jpg' -print0 | bbx extract -0 --model resnet-50 -o feats.h5 -

      bbx extract -m dinov2-small --pool avg --store-dtype float16 -o vecs.safetensors photos/

      bbx extract -m clip-vit-base-patch32 --out-indices -1 --pool cls --embedding -o clip.h5 photos/
    """
    from bbx import inputs as inputs_mod
    from bbx import shards as shards_mod
    from bbx.cli._progress import progress_for
    from bbx.cli._render import render_plan, render_summary
    from bbx.extract import ExtractOptions, SignalGuard, device_of, plan, run
    from bbx.report import Summary
    from bbx.runtime import planned_device

    opts = ExtractOptions(
        model=model,
        output=output,
        format=fmt,
        out_indices=parse_indices(out_indices),
        out_features=parse_names(out_features),
        image_size=parse_image_size(image_size),
        resize=resize,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        store_dtype=store_dtype,
        pool=pool,
        embedding=embedding,
        workers=workers,
        overwrite=overwrite,
        resume=resume,
        force=force,
        exif=not no_exif,
        fast_decode=fast_decode,
        stage_norm=stage_norm,
        pretrained=not no_pretrained,
        revision=revision,
        shard_bytes=parse_size(shard_size),
        on_error=on_error,
        progress=False if (quiet or as_json) else None,
        compile=compile_model,
        compression=compression,
        shard=None if shard is None else shards_mod.parse(shard),
    )
    opts.validate()
    stdin = sys.stdin.buffer if "-" in (inputs or []) and sys.stdin is not None else None
    notes: list[str] = []
    files = inputs_mod.discover(inputs or [], stdin=stdin, null=null, notes=notes)
    err = console(stderr=True)
    if not quiet:
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
    if dry_run:
        the_plan = plan(opts, files, device=planned_device(device_of(opts)))
        if as_json:
            emit_json(the_plan.to_json())
        elif not quiet:
            render_plan(the_plan, err)
        raise typer.Exit(the_plan.exit_code)  # the status the real run would give at once

    progress_bar = None

    def on_plan(p: object) -> None:
        nonlocal progress_bar
        if not quiet and not as_json:
            render_plan(p, err)  # type: ignore[arg-type]
        progress_bar = progress_for(p.todo, err, quiet=quiet)  # type: ignore[attr-defined]

    def on_progress(handled: int, total: int) -> None:
        if progress_bar is not None:
            progress_bar.update(handled)

    if engine not in ("local", "ray"):
        from bbx.errors import UsageError

        raise UsageError(f"--engine must be local or ray, got {engine!r}")
    if engine != "ray" and (address is not None or actors is not None):
        from bbx.errors import UsageError

        raise UsageError("--address and --actors go with --engine ray")
    if engine == "ray" and devices is not None:
        from bbx.errors import UsageError

        raise UsageError("--devices runs on this machine; with --engine ray the cluster's GPUs are used")
    device_list = None
    if devices is not None:
        from bbx.engines.devices import parse_devices

        device_list = parse_devices(devices)

    def go() -> object:
        if device_list is not None:
            from bbx.engines import devices as devices_engine

            return devices_engine.run(opts, files, device_list, progress=on_progress, on_plan=on_plan)
        if engine == "ray":
            from bbx.engines import ray as ray_engine

            return ray_engine.run(
                opts, files, address=address, actors=actors, unit_size=unit_size, progress=on_progress, on_plan=on_plan
            )
        return run(opts, files, progress=on_progress, on_plan=on_plan)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = go()
    finally:
        if SignalGuard.seen:  # the run is over and its output closed: nothing more to stop
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, previous)
        if progress_bar is not None:
            progress_bar.stop()
    assert isinstance(summary, Summary)
    if as_json:
        emit_json(summary.to_json())
    elif not quiet:
        render_summary(summary, err)
    elif summary.failed:
        for path, reason in summary.failed:
            sys.stderr.write(f"bbx: skipped {path}: {reason}\n")
    signalled = summary.interrupted or summary.late_signal
    if signalled == "SIGINT":
        raise typer.Exit(EXIT_SIGINT)
    if signalled == "SIGTERM":
        raise typer.Exit(EXIT_SIGTERM)
    raise typer.Exit(EXIT_PARTIAL if summary.failed else EXIT_OK)
