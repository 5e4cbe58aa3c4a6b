"""bbx's command line: thin Typer commands over the library. Importing it imports no torch."""

from __future__ import annotations

from bbx.cli import bench as _bench  # noqa: F401  (registers the command)
from bbx.cli import download as _download  # noqa: F401
from bbx.cli import extract as _extract  # noqa: F401
from bbx.cli import info as _info  # noqa: F401
from bbx.cli import inspect as _inspect  # noqa: F401
from bbx.cli import merge as _merge  # noqa: F401
from bbx.cli import models as _models  # noqa: F401
from bbx.cli import show as _show  # noqa: F401
from bbx.cli._app import app, flush_stdout


def main() -> None:
    try:
        app(prog_name="bbx")
    finally:
        flush_stdout()


__all__ = ["app", "main"]
