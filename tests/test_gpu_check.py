"""The prepared GPU check (tests/benchmarks/gpu_check.sh) runs only where a GPU machine is lent,
so its parity part is run here on the CPU (``GPU_CHECK_DEVICE=cpu``, both sides on the CPU) to
keep it working: one family of each kind of way in (a catalog checkpoint, a timm architecture,
a backbone only inside a task checkpoint sized per image) and one whose recipe resizes float
pixels (DINOv3), on photos of camera-like sizes, then its summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli import proc_env

SCRIPT = Path(__file__).parent / "benchmarks" / "gpu_check.py"


def test_the_gpu_checks_parity_runs_for_every_way_in(tmp_path):
    families = ["resnet", "timm_resnet", "maskformer_swin", "dinov3_vit"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "parity", str(tmp_path), ",".join(families)],
        env=proc_env(GPU_CHECK_DEVICE="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads((tmp_path / "parity.json").read_text())
    assert {r["family"] for r in rows} == set(families)
    by = {r["family"]: r for r in rows}
    assert by["timm_resnet"]["alias"].startswith("timm:") and by["maskformer_swin"]["alias"].startswith("maskformer")
    for r in rows:
        assert "error" not in r and r["ok"]
        assert r["fp32"] <= 1e-6  # the same seeded weights on both sides
        assert 0 < r["bf16"] <= max(1e-2, 1.25 * r.get("bf16_cpu_autocast", 0))  # bf16 ran, rounded
    (tmp_path / "speed.csv").write_text("0, 100\n50, 120\n100, 130\n[N/A]\n")
    subprocess.run(
        [sys.executable, str(SCRIPT), "util", str(tmp_path), str(tmp_path / "speed.csv"), "u.json"],
        env=proc_env(),
        check=True,
    )
    assert json.loads((tmp_path / "u.json").read_text()) == {"samples": 3, "mean": 75.0, "max": 100.0}
    summary = subprocess.run(
        [sys.executable, str(SCRIPT), "summary", str(tmp_path)], env=proc_env(), capture_output=True, text=True
    )
    assert summary.returncode == 0, summary.stderr
    lines = [line for line in summary.stdout.splitlines() if line.strip().split(" ")[0] in families]
    assert len(lines) == len(families) and all(line.rstrip().endswith("ok") for line in lines)
