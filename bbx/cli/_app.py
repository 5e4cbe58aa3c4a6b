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
from typer.core import TyperGroup

from bbx import __version__
from bbx.errors import EXIT_INTERNAL, EXIT_SIGINT, EXIT_SIGTERM, BbxError, Terminated


class _Group(TyperGroup):
    """The root command: Typer's, with its usage errors (an unknown option, a missing or badly
    typed value) said in one line, like every other bbx error, instead of a usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        _tidy_help(self)
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except BrokenPipeError:  # the help (or a command's output) met a closed stdout
            _quiet_broken_pipe()
            code = 0
        except SystemExit as e:
            # rich (which renders the help) answers a closed stdout by pointing stdout at
            # /dev/null and exiting 1; a closed pipe is not an error for bbx
            if e.code != 1 or not _stdout_is_devnull():
                raise
            code = 0
        except typer.Abort:
            code = fail("aborted", EXIT_INTERNAL).exit_code
        except Exception as e:
            # the parser's errors (the vendored Click's UsageError and kin), recognised by their
            # interface: Typer keeps moving those classes within its private modules
            if not (callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)):
                raise
            code = e.exit_code  # type: ignore[attr-defined]
            if type(e).__name__ != "NoArgsIsHelpError":  # `bbx` alone: the help is already shown
                message = " ".join(e.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                fail(message[:1].lower() + message[1:] + hint, code)
        sys.exit(code if isinstance(code, int) else 0)


def _tidy_help(group: Any) -> None:
    """How the parameters read in ``--help``: a flag takes no value, so it shows none (Typer would
    show ``<bool>``); an argument is ``FILE`` or ``[INPUTS]...`` in the usage line, as in every
    other command-line tool (Typer writes ``{file}``). Options with fixed values name them with
    their own ``metavar``."""
    import types

    def usage_name(param: Any) -> str:
        name = (param.metavar or param.name or "").upper()
        name = name if param.required else f"[{name}]"
        return name + ("..." if param.nargs != 1 else "")

    def quiet_flag(option: Any) -> Any:
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    for command in [group, *getattr(group, "commands", {}).values()]:
        if hasattr(command, "get_help_option") and not hasattr(command.get_help_option, "_bbx"):
            made = command.get_help_option  # -h/--help is made on demand: a flag too

            def get_help_option(ctx: Any, made: Any = made) -> Any:
                return quiet_flag(made(ctx))

            get_help_option._bbx = True  # type: ignore[attr-defined]
            command.get_help_option = get_help_option
        for param in getattr(command, "params", []):
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            elif getattr(param, "param_type_name", "") == "argument":
                if param.metavar is None:
                    param.metavar = (param.name or "").upper()
                param._usage_display_name = types.MethodType(usage_name, param)
                param.display_type_rich = lambda ctx: None  # its name says what it is


app = typer.Typer(
    cls=_Group,
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
            except Terminated:
                raise fail("terminated", EXIT_SIGTERM) from None
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

        wrapper.__doc__ = reflow(fn.__doc__)
        app.command(*args, **kwargs)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def reflow(doc: str | None) -> str | None:
    """A command's docstring as help text: each paragraph of prose on one line, for the help to
    wrap at the terminal's width (Typer keeps the source's line breaks, which wrap raggedly at 80
    columns); example command lines (``bbx ...``) stay one per line."""
    if not doc:
        return doc
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    out = []
    for para in paragraphs:
        lines = para.splitlines()
        if any(ln.lstrip().startswith(("bbx ", "find ")) for ln in lines):
            out.append("\n".join(ln.strip() for ln in lines))
        else:
            out.append(" ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


def _stdout_is_devnull() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (``| head``): point stdout at devnull so the interpreter's final
    flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _stdout_closed() -> None:
    """A rich console on stdout met a closed pipe: end quietly with status 0, as for plain writes
    (rich's own handling would exit with status 1, bbx's "internal error")."""
    _quiet_broken_pipe()
    raise typer.Exit(0)


def flush_stdout() -> None:
    """Flush stdout now, so that a reader that went away is met here (quietly) rather than by
    the interpreter's final flush, which would print "Exception ignored ... BrokenPipeError"."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
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
    plain = bool(os.environ.get("NO_COLOR"))
    con = Console(
        file=stream,
        no_color=plain or None,
        color_system=None if plain else "auto",  # NO_COLOR: no styling escape codes at all
        width=None if tty else 200,
        force_terminal=None if tty else False,
        highlight=False,
        soft_wrap=not tty,
    )
    if not stderr:
        con.on_broken_pipe = _stdout_closed  # type: ignore[method-assign]
    return con


def _version(value: bool) -> None:
    if value:
        try:
            sys.stdout.write(f"bbx {__version__}\n")
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
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
