"""How the CLI shows the library's reports on a console: tables, the shape report, the summary."""

from __future__ import annotations

from typing import Any

from bbx.report import Plan, Summary, human_bytes, plural


def table(*columns: str) -> Any:
    """A borderless rich table, as every bbx listing uses; a column named ``">name"`` is
    right-aligned (numbers)."""
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col.lstrip(">"), justify="right" if col.startswith(">") else "left")
    return t


def print_table(console: Any, table: Any) -> None:
    """A table on ``console``: as rich lays it out on a terminal; elsewhere (a pipe, a file) the
    same text without the padding rich puts after the last column, so lines end where their
    text does."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    console.file.write(text + "\n")
    console.file.flush()


def render_plan(plan: Plan, console: Any) -> None:
    h, w = plan.input_size
    console.print(
        f"[bold]{plan.model}[/bold]  {plan.checkpoint}"
        + (f"@{plan.revision[:12]}" if plan.revision else "")
        + f"  ({plan.architecture}, {plan.weights} weights, input {h}x{w}, stage norm {plan.stage_norm})"
    )
    if plan.weight_prefix:
        console.print(
            f"backbone weights: the tensors under {plan.weight_prefix}* (the rest of the task model is not read)"
        )
    console.print(
        f"device {plan.device}, compute {plan.compute_dtype}, store {plan.store_dtype}"
        + (f", pool {plan.pool}" if plan.pool != "none" else "")
    )
    if plan.shard:
        console.print(plan.shard)
    listing = table(">index", "stage", ">channels", ">stride", "per image", ">bytes/image")
    for s in [*plan.stages, *([plan.embedding] if plan.embedding is not None else [])]:
        listing.add_row(
            "-" if s.index is None else str(s.index),
            s.name,
            str(s.channels),
            "-" if s.stride is None else str(s.stride),
            f"{list(s.shape)} {s.dtype}",
            human_bytes(s.bytes_per_image),
        )
    print_table(console, listing)
    free = f", {human_bytes(plan.free_bytes)} free" if plan.free_bytes is not None else ""
    extra = f" ({plan.inputs - plan.todo} already in the output)" if plan.inputs != plan.todo else ""
    console.print(
        f"{plural(plan.todo, 'image')}{extra} x {human_bytes(plan.bytes_per_image)} = "
        f"{human_bytes(plan.projected_bytes)} projected -> {plan.output} ({plan.format}{free})"
    )
    if plan.compression != "none":
        console.print(f"compression {plan.compression} (with byte shuffling): the projected size is before it")
    for warning in plan.warnings:
        console.print(f"the run would be refused: {warning}")


def render_summary(summary: Summary, console: Any) -> None:
    for note in summary.notes:
        console.print(f"note: {note}")
    if summary.failed:
        console.print(f"skipped {plural(len(summary.failed), 'input')}:")
        for path, reason in summary.failed[:20]:
            console.print(f"  {path}: {reason}")
        if len(summary.failed) > 20:
            console.print(f"  ... and {len(summary.failed) - 20} more (all listed in the output)")
    if summary.compression_ratio is not None:
        console.print(
            f"compression {summary.plan.compression}: {human_bytes(summary.map_bytes)} of maps stored in "
            f"{human_bytes(summary.stored_bytes or 0)} ({summary.compression_ratio:.2f}x), "
            f"{summary.write_s:.1f} s writing them ({1000 * summary.write_s / max(1, summary.done):.1f} ms an image)"
        )
    if summary.startup:
        parts = {"import_s": "imports", "resolve_s": "model lookup", "weights_s": "weights", "prepare_s": "set-up"}
        said = ", ".join(f"{label} {summary.startup[k]:.1f} s" for k, label in parts.items() if k in summary.startup)
        first = summary.startup.get("first_batch_s")
        console.print(f"start-up: {said}" + (f"; first batch {first:.1f} s" if first is not None else ""))
    k = summary.kernels or {}
    if k.get("source") == "trial":  # decided by this run: say so once (later runs start from it)
        from bbx.nn.kernels import best_timed  # (torch is loaded: the run used it)

        said = ", ".join(f"{n} {t:.1f}" for n, t in best_timed(k.get("ms_per_image", {})).items())
        console.print(f"kernels: tried on this model's first batches ({said} ms an image), kept {k['pick']}")
    state = f"interrupted ({summary.interrupted}); " if summary.interrupted else ""
    resume = "; --resume continues the run" if summary.interrupted else ""
    already = f", {summary.already} already present" if summary.already else ""
    console.print(
        f"{state}{plural(summary.done, 'image')} extracted{already}, {len(summary.failed)} skipped in "
        f"{summary.seconds:.1f} s ({summary.load_s:.1f} s to load the model, then {summary.images_per_s:.1f} "
        f"images/s) -> {', '.join(summary.files) or '-'}{resume}"
    )
