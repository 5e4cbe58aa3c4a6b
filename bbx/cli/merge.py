"""``bbx merge``: the shards of one run into one output, in shard order."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, console, emit_json
from bbx.cli._options import Json, Quiet, parse_size
from bbx.errors import EXIT_OK, EXIT_PARTIAL, Terminated


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


@command("merge")
def merge(
    shards: list[str] = typer.Argument(
        None,
        metavar="SHARDS",
        help="Shard outputs (feats.shard-00000-of-00016.h5 ...) or their folder.",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="The merged output (.h5/.hdf5 or .safetensors). Default: the shards' name.",
    ),
    fmt: Optional[str] = typer.Option(
        None,
        "--format",
        metavar="FORMAT",
        help="hdf5 or safetensors (default: from the suffix).",
        autocompletion=_complete.FORMATS,
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    resume: bool = typer.Option(False, "--resume", help="Continue a merge that was killed or interrupted."),
    complete_only: bool = typer.Option(
        False, "--complete-only", help="Merge the complete shards, leaving out missing and unfinished ones (exit 10)."
    ),
    shard_size: Optional[str] = typer.Option(
        None, "--shard-size", metavar="SIZE", help="safetensors file size (default 5GB)."
    ),
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Merge the shards of one bbx extract --shard run into one output, in shard order.

    Rows are copied as stored, chunk by chunk, HDF5 or safetensors; bad shard sets are refused first.

    Examples:

      bbx merge -o feats.h5 shards/

      bbx merge -o feats.safetensors feats.shard-*.h5
    """
    from bbx import merge as merge_mod
    from bbx.cli._progress import progress_for
    from bbx.report import human_bytes, plural

    if overwrite and resume:
        from bbx.errors import UsageError

        raise UsageError("--overwrite and --resume exclude each other")
    paths = merge_mod.find(shards or [])
    if output is None:
        output = _default_output(paths)
    err = console(stderr=True)
    bar = None
    started = False

    def on_progress(done: int, total: int) -> None:
        nonlocal bar, started
        if not started:
            started = True
            bar = progress_for(total, err, quiet=quiet or as_json, label="merging", unit="rows")
        if bar is not None:
            bar.update(done)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = merge_mod.merge(
            paths,
            output,
            fmt=fmt,
            overwrite=overwrite,
            resume=resume,
            complete_only=complete_only,
            shard_bytes=parse_size(shard_size),
            progress=on_progress,
        )
    except (KeyboardInterrupt, Terminated):
        if bar is not None:
            bar.stop()
            bar = None
        sys.stderr.write(f"bbx: merge stopped; continue it with bbx merge --resume -o {output} ...\n")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.stop()
    if as_json:
        emit_json(summary.to_json())
    elif not quiet:
        for note in summary.notes:
            err.print(f"note: {note}")
        for line in summary.left_out:
            err.print(f"left out {line}")
        size = sum(Path(f).stat().st_size for f in summary.files if Path(f).exists())
        resumed = f" ({summary.resumed_rows} already written)" if summary.resumed_rows else ""
        err.print(
            f"merged {summary.shards} of {plural(summary.count, 'shard')}: {plural(summary.rows, 'row')}{resumed}, "
            f"{plural(summary.failed, 'failed input')} carried over, in {summary.seconds:.1f} s -> "
            f"{', '.join(summary.files)} ({human_bytes(size)})"
        )
    raise typer.Exit(EXIT_PARTIAL if summary.left_out else EXIT_OK)


def _default_output(paths: list[Path]) -> Path:
    """``feats.shard-00000-of-00016.h5`` -> ``feats.h5`` beside it."""
    from bbx.errors import UsageError
    from bbx.shards import SHARD_NAME

    name = paths[0].name
    for tail in (".partial", ".index.json"):
        name = name[: -len(tail)] if name.endswith(tail) else name
    m = SHARD_NAME.match(name)
    if m is None:
        raise UsageError("name the merged output with -o")
    return paths[0].with_name(m.group("base") + m.group("suffix"))
