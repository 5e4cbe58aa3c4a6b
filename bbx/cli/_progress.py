"""The extraction progress display on stderr: a rich bar on a terminal, one plain line redrawn
in place with ``NO_COLOR``, nothing when stderr is not a terminal or ``--quiet``."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


class PlainProgress:
    """Progress for a terminal with NO_COLOR: one line redrawn with a carriage return, at most
    twice a second, and no escape codes at all."""

    def __init__(self, total: int, label: str = "extracting", unit: str = "images") -> None:
        self.total = total
        self.label, self.unit = label, unit
        self.last = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} {done}/{self.total} ({rate:.1f} {self.unit}/s)")
        sys.stderr.flush()

    def stop(self) -> None:
        sys.stderr.write("\r" + " " * 60 + "\r")
        sys.stderr.flush()


class RichProgress:
    """A rich progress bar (images done of total, images/s, time left), cleared when it stops."""

    def __init__(self, total: int, console: Any, label: str = "extracting", unit: str = "images") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("extract", total=total, rate="")
        self._t0 = time.monotonic()
        self._shown = False
        self._unit = unit

    def update(self, done: int) -> None:
        elapsed = time.monotonic() - self._t0
        rate = f"{done / elapsed:.1f} {self._unit}/s" if done and elapsed > 0 else ""
        # drawn at once the first time there is a rate (short runs end before rich's own refresh)
        self._bar.update(self._task, completed=done, rate=rate, refresh=not self._shown and bool(rate))
        self._shown = self._shown or bool(rate)

    def stop(self) -> None:
        self._bar.stop()


def progress_for(
    total: int, console: Any, *, quiet: bool, label: str = "extracting", unit: str = "images"
) -> PlainProgress | RichProgress | None:
    """The display for a run of ``total`` images (or rows, ...), or None where none is shown."""
    if quiet or not sys.stderr.isatty():
        return None
    if os.environ.get("NO_COLOR"):
        return PlainProgress(total, label, unit)
    return RichProgress(total, console, label, unit)
