"""``bbx info FILE``: what an output holds, read from its metadata alone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from bbx.cli._app import command, console, emit_json
from bbx.errors import UsageError

SHOWN_FAILURES = 20


@command("info")
def info(
    file: Optional[Path] = typer.Argument(  # noqa: UP045
        None,
        help="An output of bbx extract: .h5, .safetensors, a shard set's .index.json, or a .partial.",
        show_default=False,
    ),
    system: bool = typer.Option(
        False, "--system", help="Show this machine instead: CPU, torch, devices and the kernels bbx chose."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    list_paths: bool = typer.Option(
        False, "--paths", help="Print the stored input paths, one per line in row order, and nothing else."
    ),
    null: bool = typer.Option(False, "--null", "-0", help="With --paths: end each path with NUL (for xargs -0)."),
) -> None:
    """Show what an output holds: model, stages, shapes, images, failures, size on disk.

    Reads any output of bbx extract (HDF5, safetensors, shards, an unfinished .partial) from its metadata alone.

    Examples:

      bbx info feats.h5

      bbx info feats.safetensors.index.json --json | jq .stages

      bbx info feats.h5 --paths | head

      bbx info --system
    """
    from bbx.formats import open_output
    from bbx.report import human_bytes

    if system:
        return _system(as_json)
    if file is None:
        raise UsageError("give an output file (or --system for this machine)")
    out = open_output(file)
    if list_paths:
        end = "\0" if null else "\n"
        sys.stdout.write("".join(p + end for p in out.paths))
        sys.stdout.flush()
        return
    if as_json:
        emit_json(out.to_json())
        return
    from rich.markup import escape

    from bbx.cli._render import print_table
    from bbx.cli._render import table as make_table
    from bbx.report import plural

    f = out.facts.to_json()
    con = console()
    con.print(
        f"[bold]{escape(str(out.path))}[/bold]  {out.format}, {escape(out.describe_state())}, "
        f"{plural(out.images, 'image')}, {human_bytes(out.bytes_on_disk)} on disk"
        + (f" in {len(out.files)} files" if len(out.files) > 1 else "")
    )
    revision = f"@{f['revision']}" if f.get("revision") else ""
    size = f.get("input_size")
    size_text = f"{size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else "?"
    for key, value in (
        ("model", str(f.get("model"))),
        ("checkpoint", f"{f.get('checkpoint')}{revision}"),
        ("architecture", f"{f.get('architecture')}, {f.get('weights', '?')} weights"),
        ("input", f"{size_text}, stage norm {f.get('stage_norm', '?')}"),
        ("dtypes", f"compute {f.get('compute_dtype', '?')}, store {f.get('store_dtype', '?')}, pool {f.get('pool')}"),
        *(
            [("shard", f"{f['shard_index']} of {f['shard_count']}, of {f['input_count']} inputs ({f['input_digest']})")]
            if f.get("shard_index") is not None
            else []
        ),
    ):
        con.print(f"[bold]{key:<13}[/bold]{escape(value)}")
    known = out.sources_recorded()
    if known is not None:
        con.print(
            f"[bold]{'sources':<13}[/bold]{known} of {plural(out.images, 'image')}: the image size and the box the "
            "input covers (bbx show --overlay draws the maps over the photos)"
        )
    if out.storage is not None and out.storage[2] != "none":
        logical, stored, kind = out.storage
        ratio = f" ({logical / stored:.2f}x)" if stored else ""
        con.print(f"[bold]{'stored':<13}[/bold]{kind}, {human_bytes(logical)} of maps in {human_bytes(stored)}{ratio}")
    table = make_table("stage", "per image", "dtype", ">bytes/image")
    for s in out.stages:
        table.add_row(s.name, str(list(s.shape)), s.dtype, human_bytes(s.row_bytes))
    print_table(con, table)
    if out.failed:
        con.print(f"{plural(len(out.failed), 'failed input')}:")
        for path, reason in out.failed[:SHOWN_FAILURES]:
            con.print(f"  {escape(path)}: {escape(reason)}")
        if len(out.failed) > SHOWN_FAILURES:
            con.print(f"  ... and {len(out.failed) - SHOWN_FAILURES} more (bbx info --json lists them all)")


def _system(as_json: bool) -> None:
    """The machine as bbx sees it: versions, CPU, devices, and the measured kernel choices."""
    import platform

    import torch

    from bbx import __version__
    from bbx.nn import kernels

    report: dict[str, Any] = {
        "bbx": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        **kernels.report(),
    }
    if as_json:
        emit_json(report)
        return
    m = report["machine"]
    con = console()
    con.print(f"bbx {report['bbx']}, python {report['python']}, torch {report['torch']}")
    con.print(f"cpu          {m['cpu']} ({m['isa']}; {', '.join(m['flags']) or 'no AVX-512'}), {m['threads']} threads")
    con.print(f"cuda         {', '.join(report['cuda']) or 'none'}")
    con.print(f"kernel cache {report['cache']}")
    for dtype, c in report["choices"].items():
        slices = "row slices" if c["row_slices"] else "no row slices"
        lanes = "lanes" if c["lanes"] else "no lanes"
        con.print(
            f"{dtype:<13}linear {c['linear']}, conv {c['conv']}, attention {c['attention']}, {slices}, {lanes}"
            f" ({c['source']})"
        )
    from collections import Counter

    picks = Counter(str(e.get("pick")) for e in report["models"].values() if isinstance(e, dict))
    if picks:
        counts = ", ".join(f"{n} {pick}" for pick, n in sorted(picks.items()))
        n = sum(picks.values())
        con.print(f"model trials {n} model{'s' if n != 1 else ''} tried on their own batches, kept: {counts}")
