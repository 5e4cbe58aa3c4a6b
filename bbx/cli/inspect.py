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
    size = f"input {report.input_size[0]}x{report.input_size[1]}" if report.input_size else "input varies"
    at = f"@{report.revision[:12]}" if report.revision and report.task else ""
    out.print(
        f"[bold]{report.model}[/bold]  {report.checkpoint}{at}  ({report.architecture}, {size}, "
        f"stage norm {report.stage_norm})"
    )
    if report.task:
        t = report.task
        out.print(f"{t.title} backbone ({t.kind}): weights under {t.weight_prefix}*, stage norms {t.stage_norms}")
    columns = ["", ">index", "name", ">channels", ">stride", "shape [C, H, W]"]
    if report.transformers_layout:
        columns.append(f"{report.transformers_layout} (transformers)")
    table = make_table(*columns)
    for s in report.stages:
        c, h, w = s.shape if s.shape else (s.channels, f"H/{s.stride}", f"W/{s.stride}")
        cells = ["*" if s.default else "", str(s.index), s.name, str(s.channels), str(s.stride), f"[{c}, {h}, {w}]"]
        if report.transformers_layout:
            cells.append(s.transformers_stage or "-")
        table.add_row(*cells)
    print_table(out, table)
    if report.input_size is None:
        why = report.preprocessing.get("size_required", "the size varies")
        out.print(f"input: {why}; extraction needs --image-size N")
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

        ih, iw = report.input_size or (0, 0)
        line = (
            f"memory: {m['parameters']:,} parameters, {human_bytes(m['weights_bytes'] + m['workspace_bytes'])} "
            f"for the weights as a run holds them, {human_bytes(m['per_image_bytes'])} per {ih}x{iw} image"
        )
        if not m["fits"]:
            line += f": more than this machine's {human_bytes(m['machine_bytes'])}, so bbx extract would refuse it"
        out.print(line)
    which = f"the stages {report.task.title} taps" if report.task else "the last stage"
    out.print(f"* default selection ({which}); choose others with --out-indices or --out-features")
