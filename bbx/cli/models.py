"""``bbx models``: the aliases bbx knows."""

from __future__ import annotations

import typer

from bbx.cli._app import command, console, emit_json


def _rows() -> list[dict[str, object]]:
    from bbx import registry
    from bbx.preprocess import Preprocess

    rows = []
    for row in registry.checkpoints():
        ck = row.checkpoint()
        size = Preprocess.from_checkpoint(ck).output_size
        names = ck.stage_names
        rows.append(
            {
                "alias": row.alias,
                "checkpoint": row.repo_id,
                "revision": row.revision,
                "architecture": ck.network if ck.task else row.model_type,
                "task": ck.task or None,
                "input_size": list(size) if size else None,
                "stages": list(names),
                "default_stages": [names[i] for i in ck.default_stages] if ck.default_stages else [names[-1]],
                "description": row.description,
                "other_names": list(row.extra_aliases),
            }
        )
    return rows


@command("models")
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a table."),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the README's model and stage-norm tables (Markdown) on stdout."
    ),
) -> None:
    """List the model aliases: checkpoint, architecture, input size and stages.

    Any checkpoint of a supported architecture works too (a folder or a hub id), not only these.

    Example: bbx models --json | jq -r '.[].alias'
    """
    if markdown:
        import sys

        from bbx.catalog_docs import markdown as tables

        sys.stdout.write(tables())
        return
    rows = _rows()
    if as_json:
        emit_json(rows)
        return
    from bbx.cli._render import print_table
    from bbx.cli._render import table as make_table

    cells = []
    for r in rows:
        size = r["input_size"]
        stages = r["stages"]
        assert isinstance(stages, list)
        at = f"@{r['revision']}" if r["revision"] else ""
        cells.append(
            [
                str(r["alias"]),
                f"{r['checkpoint']}{at}",
                f"{r['architecture']} in {r['task']}" if r["task"] else str(r["architecture"]),
                f"{size[0]}x{size[1]}" if isinstance(size, list) else "varies",
                f"{stages[0]}, {stages[1]} .. {stages[-1]} ({len(stages)})",
            ]
        )
    headers = ["alias", "checkpoint", "architecture", "input", "stages"]
    con = console()
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    if not con.is_terminal or sum(widths) + 2 * (len(widths) - 1) <= con.width:
        table = make_table(*headers)
        for c in cells:
            table.add_row(*c)
        print_table(con, table)
        return
    # a terminal too narrow for the table: ids are never cut, the details go on a second line
    from rich.markup import escape

    pad = widths[0] if widths[0] + 2 + widths[1] <= con.width else 0
    for alias, checkpoint, architecture, size, stages in cells:
        con.print(f"[bold]{escape(alias)}[/bold]{' ' * (pad - len(alias))}  {escape(checkpoint)}", crop=False)
        con.print(f"    {architecture}, input {size}, stages {stages}")
