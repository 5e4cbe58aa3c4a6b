"""The timm oracle from the test suite's side: one server process (tests/timm_oracle.py, run with
the oracle venv's python) per test session, and the parity harness for timm checkpoints.

The oracle's python is ``$BBX_TIMM_PYTHON``, else ``.venv-timm/bin/python`` in the repository
(``.ci/run`` builds that venv: torch 2.14.1, torchvision 0.29.1, timm, transformers). Without one
the timm parity tests skip, unless ``BBX_REQUIRE_TIMM=1`` (CI), where they fail.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.cli import ROOT
from tests.util import rel_err

TOL = 1e-5


def python() -> str | None:
    found = os.environ.get("BBX_TIMM_PYTHON") or str(ROOT / ".venv-timm" / "bin" / "python")
    return found if Path(found).is_file() else None


class Oracle:
    """A running tests/timm_oracle.py: ``ask(op, **fields)`` sends one request, returns the reply."""

    def __init__(self, exe: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        env.pop("HF_ENDPOINT", None)
        threads = str(max(1, torch.get_num_threads()))
        self.proc = subprocess.Popen(
            [exe, str(ROOT / "tests" / "timm_oracle.py"), threads],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
        self.lock = threading.Lock()

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the timm oracle died (exit {self.proc.poll()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError("the timm oracle failed:\n" + reply["error"])
        return reply


@functools.cache
def _oracle() -> Oracle | None:
    exe = python()
    return Oracle(exe) if exe else None


def oracle() -> Oracle:
    """The session's oracle; skips the test (fails under ``BBX_REQUIRE_TIMM=1``) without one."""
    found = _oracle()
    if found is None:
        message = "no timm oracle venv (set BBX_TIMM_PYTHON or build .venv-timm as .ci/run does)"
        if os.environ.get("BBX_REQUIRE_TIMM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def make(folder: Path, arch: str, *, seed: int = 0, layout: str = "hub", **fields: Any) -> Path:
    """A random-weight timm checkpoint of ``arch`` in ``folder`` (see tests/timm_oracle.py)."""
    oracle().ask("make", arch=arch, folder=str(folder), seed=seed, layout=layout, **fields)
    return folder


def timm_maps(folder: Path, x: torch.Tensor, tmp: Path, **fields: Any) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """timm's maps of the checkpoint in ``folder`` on the batch ``x`` (and the reply's facts)."""
    from safetensors.torch import load_file, save_file

    tmp.mkdir(parents=True, exist_ok=True)
    src, out = tmp / "x.safetensors", tmp / "maps.safetensors"
    save_file({"x": x.contiguous()}, str(src))
    reply = oracle().ask("features", folder=str(folder), input=str(src), out=str(out), **fields)
    maps = load_file(str(out))
    return [maps[str(i)] for i in range(len(maps))], reply


def timm_pixels(folder: Path, images: Sequence[Path], tmp: Path, input_size: int | None = None) -> torch.Tensor:
    """timm's eval-transform batch for image files, with the folder's pretrained_cfg."""
    from safetensors.torch import load_file

    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "pixels.safetensors"
    oracle().ask("transform", folder=str(folder), images=[str(p) for p in images], out=str(out), input_size=input_size)
    return load_file(str(out))["x"]


def compare(
    folder: Path,
    size: int | tuple[int, int],
    tmp: Path,
    n: int = 2,
    *,
    names: list[str] | None = None,
    stage_norm: str = "hf",
    tol: float = TOL,
    inference: bool = False,
    **fields: Any,
) -> dict[str, float]:
    """bbx against timm on the same timm checkpoint: every stage (or ``names``), fp32, on ``n``
    photos of ``size``; each stage within ``tol``. bbx's stage names, channels and strides are
    timm's feature_info; ``inference``: bbx after its inference rewrites. Returns the errors."""
    import bbx
    from bbx.loading import prepare_for_inference
    from bbx.nn.backbone import map_shapes
    from tests.parity import photos

    model = bbx.load_backbone(str(folder), stage_norm=stage_norm)
    names = names or model.stage_names
    model.select(out_features=names)
    indices = list(model.out_indices)
    x = photos(size, n)
    if inference:
        model, channels_last = prepare_for_inference(model, "cpu")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = model(x)
    want, reply = timm_maps(folder, x.contiguous(), tmp, out_indices=indices, norm=stage_norm == "final", **fields)
    assert len(got) == len(want) == len(names)
    if "feature_info" in reply:
        fi = reply["feature_info"]
        assert fi["module"] == names, (fi["module"], names)
        assert fi["channels"] == model.channels and fi["reduction"] == model.strides, (fi, model.channels)
    errors = {}
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, (name, tuple(a.shape), tuple(b.shape))
        errors[name] = rel_err(a, b)
    assert max(errors.values()) <= tol, errors
    shapes = map_shapes(model, tuple(x.shape[2:]))
    assert [tuple(m.shape[1:]) for m in got] == [shapes[model.stage_names.index(s)] for s in names]
    return errors
