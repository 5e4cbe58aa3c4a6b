"""Regenerate the shell completion scripts in this folder from the CLI itself.

    python completions/generate.py            # rewrite bbx.bash, bbx.zsh, bbx.fish here
    python completions/generate.py OUTDIR     # write them elsewhere (tests/test_completion.py)

Each script is what ``_BBX_COMPLETE=source_<shell> bbx`` prints: a small shell function that
calls bbx back on every Tab press, so completions follow the CLI without regenerating; only a
change of Typer's script templates makes these files stale (the test says so).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"bash": "bbx.bash", "zsh": "bbx.zsh", "fish": "bbx.fish"}


def source(shell: str) -> str:
    env = dict(os.environ, _BBX_COMPLETE=f"source_{shell}")
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "bbx"], env=env, capture_output=True, text=True, check=True)
    return p.stdout.strip() + "\n"


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else HERE
    out.mkdir(parents=True, exist_ok=True)
    for shell, name in SCRIPTS.items():
        (out / name).write_text(source(shell), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
