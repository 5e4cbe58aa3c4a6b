"""bbx's command line: thin Typer commands over the library. Importing it imports no torch."""

from __future__ import annotations

from bbx.cli import bench as _bench  # noqa: F401  (registers the command)
from bbx.cli import download as _download  # noqa: F401
from bbx.cli import extract as _extract  # noqa: F401
from bbx.cli import inspect as _inspect  # noqa: F401
from bbx.cli import models as _models  # noqa: F401
from bbx.cli._app import app


def main() -> None:
    app(prog_name="bbx")


__all__ = ["app", "main"]
