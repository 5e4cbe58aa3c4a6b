"""`bbx --help`, `bbx models` and Tab completion must not import torch (or numpy)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli import ROOT

PROBE = """
import sys, json
sys.argv = {argv!r}
from bbx.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "numpy", "h5py", "safetensors", "PIL", "transformers") if m in sys.modules)
sys.stderr.write("HEAVY=" + json.dumps(heavy) + "\\n")
"""


def _heavy(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    import os

    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    p = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, env=e)
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY="))
    return json.loads(line[len("HEAVY=") :])


def test_help_imports_nothing_heavy():
    assert _heavy(["bbx", "--help"]) == []


def test_models_imports_nothing_heavy():
    assert _heavy(["bbx", "models"]) == []
    assert _heavy(["bbx", "models", "--json"]) == []


def test_import_bbx_imports_nothing_heavy():
    p = subprocess.run(
        [sys.executable, "-c", "import bbx, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert p.stdout.strip() == "False"
