"""``bbx show FILE``: a stage's feature maps as a picture (PCA colours or a channel grid)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, console, emit_json
from bbx.cli._options import parse_indices
from bbx.errors import InputError, UsageError

#: the longest default picture name (before ``-<stage>-<mode>.png``)
PICTURE_STEM_BYTES = 120


def _picture_name(file: Path, stage: str, mode: str) -> Path:
    """``<file>-<stage>-<mode>.png`` here; a long file name is cut (and given a digest)."""
    import hashlib

    name = file.name
    for tail in (".index.json", ".partial", ".safetensors", ".hdf5", ".h5"):
        if name.endswith(tail):
            name = name[: -len(tail)]
    if len(name.encode()) > PICTURE_STEM_BYTES:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[: PICTURE_STEM_BYTES - 9].decode(errors="ignore") + "-" + digest
    return Path(f"{name}-{stage}-{mode}.png")


@command("show")
def show(
    file: Path = typer.Argument(..., help="An output of bbx extract (as for bbx info).", show_default=False),
    stage: Optional[str] = typer.Option(
        None,
        "--stage",
        "-s",
        metavar="NAME",
        help="Stage to show (default: the last one stored).",
        autocompletion=_complete.complete_stored_stage,
    ),
    index: Optional[list[str]] = typer.Option(
        None,
        "--index",
        "-i",
        metavar="I,...",
        help="Rows to show: 0,5,-1 (or the option repeated; negative counts from the end). Default: 0.",
    ),
    mode: str = typer.Option(
        "pca",
        "--mode",
        metavar="pca|grid",
        help="pca: 3 main components as RGB; grid: top-variance channels in gray.",
        autocompletion=_complete.SHOW_MODES,
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Picture to write (.png, .jpg, .webp). Default: <file>-<stage>-<mode>.png here.",
    ),
    size: int = typer.Option(256, "--size", metavar="PX", help="Pixels along the longer side of each map."),
    channels: int = typer.Option(16, "--channels", metavar="K", help="grid: how many channels to show."),
    no_input: bool = typer.Option(False, "--no-input", help="Do not put the input images beside the maps."),
    overlay: bool = typer.Option(
        False, "--overlay", help="pca: draw each map over its whole photo, on the region the model saw."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the picture if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Render a stage's feature maps as a picture: PCA colours or a grid of channels.

    One row per --index: the input image on the left (when still on disk), its map on the right.

    pca: the 3 main components of the channels, fitted over all rows together, as red, green, blue.

    grid: the highest-variance channels in gray, each scaled over all rows.

    Examples:

      bbx show feats.h5 --stage stage4 --index 0 -o map.png

      bbx show feats.h5 -s stage2 -i 0,5,-1 --mode grid --channels 25 -o grid.png
    """
    from bbx import pictures
    from bbx.formats import check_target, open_output

    if mode not in pictures.MODES:  # before reading anything
        raise UsageError(f"--mode must be pca or grid, got {mode!r}")
    wanted = parse_indices(index, "--index") or (0,)  # before reading anything, like --mode
    out = open_output(file)
    chosen = out.stage(stage)
    if chosen.pooled:
        raise InputError(
            f"stage {chosen.name} of {file} holds pooled vectors {list(chosen.shape)} "
            f"(extracted with --pool {out.facts.pool}): bbx show needs maps, extract with --pool none"
        )
    rows = [out.row(i) for i in wanted]
    target = output or _picture_name(file, chosen.name, mode)
    check_target(target, extra=len(".tmp"), what="picture")  # before any map is read
    if not overwrite and os.path.lexists(target):
        raise pictures.exists(target)
    if overlay and mode != "pca":
        raise UsageError("--overlay draws the pca view over the photos: use --mode pca")
    sources = out.read_sources(rows) if overlay else None
    if overlay and sources is None:
        raise InputError(f"{file} records no sources (it was written before bbx recorded them): --overlay needs them")
    maps = out.read(chosen, rows)
    inputs = [out.paths[r] for r in rows]
    if sources is not None:
        picture = pictures.render_overlay(
            maps, inputs, sources, size=size, cwd=out.facts.cwd or None, exif=out.facts.exif
        )
    else:
        picture = pictures.render(
            maps,
            inputs,
            mode=mode,
            size=size,
            channels=channels,
            cwd=out.facts.cwd or None,
            exif=out.facts.exif,
            show_inputs=not no_input,
        )
    pictures.save(picture.image, target, overwrite=overwrite)
    width, height = picture.image.size
    if as_json:
        emit_json(
            {
                "output": str(target),
                "width": width,
                "height": height,
                "stage": chosen.name,
                "shape": list(chosen.shape),
                "mode": mode,
                "rows": [
                    {"index": r, "path": p, "input_shown": s} for r, p, s in zip(rows, inputs, picture.with_input)
                ],
            }
        )
    elif not quiet:
        from rich.markup import escape

        err = console(stderr=True)
        c, h, w = chosen.shape
        err.print(f"wrote {escape(str(target))} ({width}x{height} px): {chosen.name} [{c}, {h}, {w}], {mode}")
        for r, p, s in zip(rows, inputs, picture.with_input):
            err.print(f"  row {r}: {escape(p)}" + ("" if s or no_input else " (input image not found)"))
