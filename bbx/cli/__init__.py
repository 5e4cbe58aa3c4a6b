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
    code: object = 0
    try:
        app(prog_name="bbx")
    except SystemExit as e:
        code = e.code
        raise
    finally:
        flush_stdout()
        _leave_broken_hdf5_alone(code)


def _leave_broken_hdf5_alone(code: object) -> None:
    """After a write that failed inside HDF5 (bbx.formats.hdf5.broken), end the process now: the
    error is reported and the .partial is intact, but freeing the file's handles would crash the
    interpreter on its way out."""
    import os
    import sys

    hdf5 = sys.modules.get("bbx.formats.hdf5")
    if hdf5 is not None and hdf5.broken():
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)


__all__ = ["app", "main"]
