"""``bbx extract``: images from disk to stage feature maps in HDF5 or safetensors."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, console, emit_json
from bbx.errors import EXIT_OK, EXIT_PARTIAL, EXIT_SIGINT, EXIT_SIGTERM, Terminated, UsageError


def parse_indices(values: list[str] | None) -> tuple[int, ...] | None:
    """``--out-indices 1,3`` / repeated options / negatives -> a tuple of ints."""
    if not values:
        return None
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise UsageError(f"--out-indices takes integers (e.g. 1,3 or -1), got {part!r}") from None
    return tuple(out)


def parse_names(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip().lower().replace(" ", "")
    num = v.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = v[len(num) :]
    try:
        n = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--shard-size takes a size such as 500MB or 2GB, got {value!r}") from None
    if n < 1:
        raise UsageError(f"--shard-size must be positive, got {value!r}")
    return int(n)


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


class _PlainProgress:
    """Progress for a terminal with NO_COLOR: one line redrawn with a carriage return, at most
    twice a second, and no escape codes at all."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.last = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\rextracting {done}/{self.total} ({rate:.1f} images/s)")
        sys.stderr.flush()

    def stop(self) -> None:
        sys.stderr.write("\r" + " " * 60 + "\r")
        sys.stderr.flush()


@command("extract")
def extract(
    inputs: list[str] = typer.Argument(
        None, help="Image files, folders (searched recursively) or - to read paths from stdin.", show_default=False
    ),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Alias, checkpoint folder or hub id org/name.",
        autocompletion=_complete.complete_model,
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Output file (.h5/.hdf5 or .safetensors). Default: <model>_<stages>.h5 here."
    ),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="hdf5 or safetensors (default: from the suffix).", autocompletion=_complete.FORMATS
    ),
    out_indices: Optional[list[str]] = typer.Option(
        None, "--out-indices", help="Stages by index: 1,3 or -1 (repeatable). Default: the last stage."
    ),
    out_features: Optional[list[str]] = typer.Option(
        None,
        "--out-features",
        help="Stages by name: stage1,stage3 (repeatable).",
        autocompletion=_complete.complete_out_features,
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="Input size N (NxN) instead of the checkpoint's."
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per batch."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto, cpu, cuda, cuda:N or mps (auto: CUDA when present).",
        autocompletion=_complete.DEVICES,
    ),
    dtype: str = typer.Option(
        "float32",
        "--dtype",
        help="Compute dtype: float32, float16 or bfloat16 (autocast).",
        autocompletion=_complete.DTYPES,
    ),
    store_dtype: str = typer.Option(
        "float32",
        "--store-dtype",
        help="Stored dtype: float32, float16 or bfloat16.",
        autocompletion=_complete.DTYPES,
    ),
    pool: str = typer.Option(
        "none",
        "--pool",
        help="none (maps [N,C,H,W]), avg or max (vectors [N,C]).",
        autocompletion=_complete.POOLS,
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-j",
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
    stage_norm: str = typer.Option(
        "hf",
        "--stage-norm",
        help="Stage norms: hf (transformers), none or final.",
        autocompletion=_complete.STAGE_NORMS,
    ),
    pretrained: bool = typer.Option(
        True, "--pretrained/--no-pretrained", help="--no-pretrained: random weights from the config, offline."
    ),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit sha."),
    shard_size: Optional[str] = typer.Option(None, "--shard-size", help="safetensors shard size (default 5GB)."),
    on_error: str = typer.Option(
        "skip",
        "--on-error",
        help="skip: skip bad images and report them; stop: stop.",
        autocompletion=_complete.ON_ERROR,
    ),
    compile_model: bool = typer.Option(
        False, "--compile", help="torch.compile the model: slow to start (tens of seconds), faster for long runs."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout (nothing else there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Extract the feature maps of the chosen stages for every image.

    Examples:

      bbx extract --model swin-tiny --out-indices 1 imgs/

      find photos -name '*.jpg' -print0 | bbx extract -0 --model resnet-50 -o feats.h5 -

      bbx extract -m dinov2-small --pool avg --store-dtype float16 -o vecs.safetensors photos/
    """
    from bbx import inputs as inputs_mod
    from bbx.extract import ExtractOptions, plan, resolve_device, run
    from bbx.report import render_plan, render_summary

    opts = ExtractOptions(
        model=model,
        output=output,
        format=fmt,
        out_indices=parse_indices(out_indices),
        out_features=parse_names(out_features),
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        store_dtype=store_dtype,
        pool=pool,
        workers=workers,
        overwrite=overwrite,
        resume=resume,
        force=force,
        exif=not no_exif,
        fast_decode=fast_decode,
        stage_norm=stage_norm,
        pretrained=pretrained,
        revision=revision,
        shard_bytes=parse_size(shard_size),
        on_error=on_error,
        progress=False if (quiet or as_json) else None,
        compile=compile_model,
    )
    opts.validate()
    stdin = sys.stdin.buffer if "-" in (inputs or []) and sys.stdin is not None else None
    files = inputs_mod.discover(inputs or [], stdin=stdin, null=null)
    err = console(stderr=True)
    if dry_run:
        the_plan = plan(opts, files, device=resolve_device(device))
        if as_json:
            emit_json(the_plan.to_json())
        elif not quiet:
            render_plan(the_plan, err)
        return

    show = not quiet and not as_json
    progress_bar = None
    task = None

    def on_plan(p: object) -> None:
        nonlocal progress_bar, task
        if show:
            render_plan(p, err)  # type: ignore[arg-type]
        if not quiet and sys.stderr.isatty():
            if os.environ.get("NO_COLOR"):  # plain text: a line redrawn with \r, no escape codes
                progress_bar = _PlainProgress(p.todo)  # type: ignore[attr-defined]
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress_bar = Progress(
                TextColumn("extracting"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            )
            progress_bar.start()
            task = progress_bar.add_task("extract", total=p.todo)  # type: ignore[attr-defined]

    def on_progress(handled: int, total: int) -> None:
        if isinstance(progress_bar, _PlainProgress):
            progress_bar.update(handled)
        elif progress_bar is not None and task is not None:
            progress_bar.update(task, completed=handled)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = run(opts, files, progress=on_progress, on_plan=on_plan)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if progress_bar is not None:
            progress_bar.stop()
    if as_json:
        emit_json(summary.to_json())
    elif not quiet:
        render_summary(summary, err)
    elif summary.failed:
        for path, reason in summary.failed:
            sys.stderr.write(f"bbx: skipped {path}: {reason}\n")
    if summary.interrupted == "SIGINT":
        raise typer.Exit(EXIT_SIGINT)
    if summary.interrupted == "SIGTERM":
        raise typer.Exit(EXIT_SIGTERM)
    raise typer.Exit(EXIT_PARTIAL if summary.failed else EXIT_OK)
