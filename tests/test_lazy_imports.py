"""`bbx --help`, `bbx models` and Tab completion must not import torch (or numpy)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli import ROOT, proc_env

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


def _probe(argv: list[str], env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """(heavy modules imported, stdout) of running bbx with ``argv`` in a fresh interpreter."""

    e = proc_env(**(env or {}))
    p = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, env=e)
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY="))
    return json.loads(line[len("HEAVY=") :]), p.stdout


def _heavy(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    return _probe(argv, env)[0]


def test_help_imports_nothing_heavy():
    assert _heavy(["bbx", "--help"]) == []


def test_models_imports_nothing_heavy():
    assert _heavy(["bbx", "models"]) == []
    assert _heavy(["bbx", "models", "--json"]) == []


def test_inspect_answers_from_the_config_without_torch():
    """Stage shapes of catalog models come from the families' torch-free size arithmetic."""
    heavy, out = _probe(["bbx", "inspect", "swin-tiny", "--image-size", "200"])
    assert heavy == [] and "[768, 7, 7]" in out


def test_import_bbx_imports_nothing_heavy():
    p = subprocess.run(
        [sys.executable, "-c", "import bbx, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert p.stdout.strip() == "False"


def test_tab_completion_imports_nothing_heavy():
    """Every Tab press starts bbx: completing aliases, stage names and choices stays torch-free."""
    for line, want in (
        ("bbx extract --model res", "resnet-50"),
        ("bbx extract --model resnet-50 --out-features stem,sta", "stem,stage4"),
        ("bbx extract -m dinov2-small --out-features ", "stage12"),
        ("bbx inspect swin", "swin-tiny"),
        ("bbx extract --store-dtype ", "bfloat16"),
        ("bbx ", "extract"),
    ):
        env = {"_BBX_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(line.split(" ")) - 1)}
        heavy, out = _probe(["bbx"], env)
        assert want in out.split(), (line, out)
        assert heavy == [], line
    heavy, out = _probe(["bbx"], {"_BBX_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "bbx extract -m swin-t"})
    assert "swin-tiny" in out and heavy == []


def test_building_any_family_on_the_meta_device_stays_cheap():
    """inspect, --dry-run and weight loading build models on the meta device; some meta ops
    (randn * x, normal_, meshgrid) pull in torch's compiler stack (~1 s) on first use."""

    code = """
import sys, bbx
from bbx import registry
from bbx.inspection import inspect_model
for alias in ("resnet-50", "swin-tiny", "convnext-tiny", "dinov2-small", "dinov2-small-reg"):
    inspect_model(alias)
print(sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules))
"""
    e = proc_env()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_a_dry_run_imports_nothing_heavy(tmp_path):
    """--dry-run answers from the config and the catalog: no torch (devices are known without it
    on a machine without a GPU driver), no numpy or h5py (the format modules import them only to
    read and write)."""
    import os

    (tmp_path / "a.jpg").write_bytes(b"")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        for argv in (
            ["bbx", "extract", "-m", "resnet-50", "--dry-run", "-q", "a.jpg"],
            ["bbx", "extract", "-m", "swin-tiny", "--dry-run", "--json", "-o", "x.safetensors", "a.jpg"],
        ):
            heavy = set(_heavy(argv))
            gpu = any(os.path.exists(p) for p in ("/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd"))
            allowed = {"torch", "numpy"} if gpu else set()  # (a GPU machine asks torch whether it works)
            assert heavy <= allowed, (argv, heavy)
    finally:
        os.chdir(cwd)


def test_a_run_that_would_be_refused_is_refused_before_torch(tmp_path):
    """What a run refuses before it writes (here an output that is a FIFO) is said before torch
    is imported and before any weights are fetched (tests/test_hub.py checks the download)."""
    import os

    (tmp_path / "a.jpg").write_bytes(b"")
    os.mkfifo(tmp_path / "f.h5")
    heavy = set(_heavy(["bbx", "extract", "-m", "resnet-50", "-o", str(tmp_path / "f.h5"), str(tmp_path / "a.jpg")]))
    gpu = any(os.path.exists(p) for p in ("/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd"))
    assert heavy <= ({"torch", "numpy"} if gpu else set()), heavy
