"""``bbx inspect MODEL``: the stages of a backbone and their map shapes."""

from __future__ import annotations

from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, console, emit_json


@command("inspect")
def inspect(
    model: str = typer.Argument(
        ...,
        help="Alias (see `bbx models`), checkpoint folder or hub id org/name.",
        autocompletion=_complete.complete_model,
    ),
    image_size: Optional[int] = typer.Option(  # noqa: UP007,UP045 (typer needs Optional on 3.10)
        None, "--image-size", help="Input size N (NxN pixels); default: the checkpoint's."
    ),
    revision: Optional[str] = typer.Option(  # noqa: UP045
        None, "--revision", help="Hub branch, tag or commit sha (for an alias: read that revision's config)."
    ),
    stage_norm: str = typer.Option(
        "hf",
        "--stage-norm",
        help="Stage norms: hf (transformers' backbone), none, or final.",
        autocompletion=_complete.STAGE_NORMS,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a table."),
) -> None:
    """List a model's stages: index, name, channels, stride and feature-map shape.

    Works offline for aliases and folders, and never loads weights. A hub id fetches only the
    repo's config files (offline: from the cache; see `bbx download`).

    Example: bbx inspect resnet-50 --image-size 320
    """
    from bbx.inspection import inspect_model

    report = inspect_model(model, revision=revision, image_size=image_size, stage_norm=stage_norm)
    if as_json:
        emit_json(report.to_json())
        return
    from bbx.report import table as make_table

    out = console()
    h, w = report.input_size
    out.print(
        f"[bold]{report.model}[/bold]  {report.checkpoint}  ({report.architecture}, input {h}x{w}, "
        f"stage norm {report.stage_norm})"
    )
    table = make_table("", ">index", "name", ">channels", ">stride", "shape [C, H, W]")
    for s in report.stages:
        table.add_row(
            "*" if s.default else "",
            str(s.index),
            s.name,
            str(s.channels),
            str(s.stride),
            f"[{s.shape[0]}, {s.shape[1]}, {s.shape[2]}]",
        )
    out.print(table)
    out.print("* default selection (the last stage); choose others with --out-indices or --out-features")
