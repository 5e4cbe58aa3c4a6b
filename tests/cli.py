"""Running the CLI in tests: in-process through Typer's CliRunner (stdout and stderr kept apart),
or as a real subprocess where signals, pipes or import costs matter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from bbx.cli import app

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input, env=env, catch_exceptions=False)
    return result


def proc_env(**extra: str) -> dict[str, str]:
    """The environment for a Python subprocess that imports this checkout, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def bbx_proc(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m bbx ...`` in a subprocess, with this checkout importable."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run([sys.executable, "-m", "bbx", *map(str, args)], env=proc_env(**(env or {})), **kwargs)
