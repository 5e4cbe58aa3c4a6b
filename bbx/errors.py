"""Errors bbx reports to its users.

Every failure a user can cause or meet (a bad option, a missing file, a checkpoint that does not
fit, an unreachable hub) is a :class:`BbxError` with a one-line message and an exit status. The
library raises them; only the CLI turns them into a line on stderr and an exit code
(``bbx/cli/_app.py``). Anything else that escapes is a bug and is reported as one.

Exit statuses (documented in the README):

====  =====================================================================
 0    success: every input was extracted
 1    internal error (a bug: please report it, run with ``--debug``)
 2    usage error: a bad option or option value, a batch too large for the machine's memory
 3    input error: a missing input path, an output that exists, is being written, is damaged or
      cannot be written, no disk space (before or during the run)
 4    model error: unknown model, unsupported architecture, weights that do not fit, a config
      out of range or too large for the machine's memory
 5    hub: repository not found
 6    hub: gated or private repository, token missing or refused
 7    hub: revision not found
 8    offline and the files are not in the cache
 9    network unreachable or timing out
10    partial success: some inputs were skipped (listed in the report and the output)
130   interrupted (SIGINT, Ctrl-C); the output holds every image finished so far
143   terminated (SIGTERM); likewise
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_REPO_NOT_FOUND = 5
EXIT_GATED = 6
EXIT_REVISION_NOT_FOUND = 7
EXIT_OFFLINE = 8
EXIT_NETWORK = 9
EXIT_PARTIAL = 10
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class BbxError(Exception):
    """A failure with a one-line message meant for the user."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        # One line, always: a message is printed as ``bbx: error: <message>``.
        super().__init__(" ".join(message.split()) if "\n" in message else message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(BbxError):
    """A bad option or combination of options (e.g. an invalid stage selection)."""

    exit_code = EXIT_USAGE


class InputError(BbxError):
    """An input or output path problem found before any work starts."""

    exit_code = EXIT_INPUT


class ModelError(BbxError):
    """The model cannot be resolved, built or loaded."""

    exit_code = EXIT_MODEL


class RepoNotFoundError(ModelError):
    exit_code = EXIT_REPO_NOT_FOUND


class GatedRepoError(ModelError):
    exit_code = EXIT_GATED


class RevisionNotFoundError(ModelError):
    exit_code = EXIT_REVISION_NOT_FOUND


class OfflineError(ModelError):
    exit_code = EXIT_OFFLINE


class NetworkError(ModelError):
    exit_code = EXIT_NETWORK


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGTERM arrived (schedulers send it before killing a job); raised in the main thread so a
    run can close its output cleanly, like KeyboardInterrupt for SIGINT."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can run to many), or its type."""
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__
