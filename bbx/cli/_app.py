"""The Typer app, the one place where library errors become one-line messages and exit codes,
and the two output streams: stdout for data, stderr for everything else."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from bbx import __version__
from bbx.errors import EXIT_INTERNAL, EXIT_SIGINT, BbxError

app = typer.Typer(
    name="bbx",
    help="Vision-backbone feature maps from images on disk, to HDF5 or safetensors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": bool(os.environ.get("BBX_DEBUG"))}

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> typer.Exit:
    """Print ``bbx: error: message`` on stderr; return the Exit to raise."""
    sys.stderr.write(f"bbx: error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` plus the error policy: BbxError -> one line and its exit code; Ctrl-C ->
    130; anything else is a bug, reported in one line (the traceback with ``--debug``)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except (typer.Exit, typer.Abort):
                raise
            except BbxError as e:
                if _state["debug"]:
                    raise
                raise fail(e.message, e.exit_code) from None
            except KeyboardInterrupt:
                raise fail("interrupted", EXIT_SIGINT) from None
            except BrokenPipeError:
                _quiet_broken_pipe()
                raise typer.Exit(0) from None
            except Exception as e:  # a bug: say so in one line
                if _state["debug"]:
                    raise
                raise fail(
                    f"internal error: {type(e).__name__}: {e} (this is a bug; rerun with --debug for the traceback)",
                    EXIT_INTERNAL,
                ) from None

        app.command(*args, **kwargs)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (``| head``): point stdout at devnull so the interpreter's final
    flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def emit_json(obj: Any) -> None:
    """JSON on stdout, never through rich (which would wrap it at the console width)."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def console(stderr: bool = False) -> Any:
    """A rich console on stdout (data) or stderr (reports, progress). Plain text when the stream
    is not a terminal or NO_COLOR is set; no width limit in a pipe."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        no_color=bool(os.environ.get("NO_COLOR")) or None,
        width=None if tty else 200,
        force_terminal=None if tty else False,
        highlight=False,
        soft_wrap=not tty,
    )


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"bbx {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Vision-backbone feature maps from images on disk, to HDF5 or safetensors.

    Examples:

      bbx models

      bbx inspect swin-tiny

      bbx extract --model resnet-50 --out-indices 1,-1 -o feats.h5 photos/
    """
    if debug:
        _state["debug"] = True
