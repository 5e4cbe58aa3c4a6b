"""``bbx inspect MODEL``: the stages of a backbone and their map shapes."""

from __future__ import annotations

from bbx.cli._app import command, console, emit_json
from bbx.cli._options import ImageSize, Json, Model, Resize, Revision, StageNorm, parse_image_size


@command("inspect")
def inspect(
    model: Model,
    image_size: ImageSize = None,
    resize: Resize = "crop",
    revision: Revision = None,
    stage_norm: StageNorm = "hf",
    as_json: Json = False,
) -> None:
    """List a model's stages: index, name, channels, stride and feature-map shape.

    Works offline for aliases and folders, and never loads weights. A hub id fetches only the
    repo's config files (offline: from the cache; see `bbx download`).

    Example: bbx inspect resnet-50 --image-size 320
    """
    from bbx.inspection import inspect_model

    report = inspect_model(
        model, revision=revision, image_size=parse_image_size(image_size), resize=resize, stage_norm=stage_norm
    )
    if as_json:
        emit_json(report.to_json())
        return
    from bbx.cli._render import print_table
    from bbx.cli._render import table as make_table

    out = console()
    h, w = report.input_size
    out.print(
        f"[bold]{report.model}[/bold]  {report.checkpoint}  ({report.architecture}, input {h}x{w}, "
        f"stage norm {report.stage_norm})"
    )
    columns = ["", ">index", "name", ">channels", ">stride", "shape [C, H, W]"]
    if report.transformers_layout:
        columns.append(f"{report.transformers_layout} (transformers)")
    table = make_table(*columns)
    for s in report.stages:
        cells = [
            "*" if s.default else "",
            str(s.index),
            s.name,
            str(s.channels),
            str(s.stride),
            f"[{s.shape[0]}, {s.shape[1]}, {s.shape[2]}]",
        ]
        if report.transformers_layout:
            cells.append(s.transformers_stage or "-")
        table.add_row(*cells)
    print_table(out, table)
    out.print(f"stage norm {report.stage_norm}: {report.stage_norm_means}")
    if report.class_token:
        out.print("--pool cls: the class token of each stage, [C] per image")
    if report.embedding_dim is not None:
        out.print(f"--embedding: the model's own image embedding, [{report.embedding_dim}] per image")
    g = report.geometry
    if g:
        out.print(f"input: {g['recipe']} (--resize {g['resize']}); --image-size: {g['image_sizes']}", markup=False)
        if g["resize"] == "crop":
            out.print("--resize squash or pad keeps the whole image (squashed, or fitted and padded with black)")
    m = report.memory
    if m:
        from bbx.report import human_bytes

        line = (
            f"memory: {m['parameters']:,} parameters, {human_bytes(m['weights_bytes'] + m['workspace_bytes'])} "
            f"for the weights as a run holds them, {human_bytes(m['per_image_bytes'])} per {h}x{w} image"
        )
        if not m["fits"]:
            line += f": more than this machine's {human_bytes(m['machine_bytes'])}, so bbx extract would refuse it"
        out.print(line)
    out.print("* default selection (the last stage); choose others with --out-indices or --out-features")
