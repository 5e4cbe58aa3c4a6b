"""Hostile or broken config.json files are refused in one line (exit 4) before anything is
allocated, by every command that reads one: sizes out of range, types that are wrong, and
networks whose weights or activations would not fit the machine's memory. (Every family's
fields and estimates are checked generically in tests/test_families.py.)"""

from __future__ import annotations

import json

import pytest

import bbx.runtime
from tests.cli import run

GB = 10**9
#: (config, what the one-line message says)
HOSTILE = {
    "huge-width": ({"model_type": "resnet", "hidden_sizes": [10**9, 512, 1024, 2048]}, "at most"),
    "negative-width": ({"model_type": "resnet", "hidden_sizes": [-5, 512, 1024, 2048]}, "at least 1"),
    "huge-depth": ({"model_type": "resnet", "depths": [10**7, 2, 2, 2]}, "depths[0]"),
    "model-type-list": ({"model_type": ["resnet"]}, "model_type must be a string"),
    "all-wide-and-deep": (
        {"model_type": "resnet", "hidden_sizes": [1 << 20] * 4, "depths": [4096] * 4},
        "parameters",
    ),
    # each within its range, but together: 1M stem channels at 112x112 are 50 GB per image
    "wide-stem": ({"model_type": "resnet", "embedding_size": 1 << 20}, "memory"),
    # a Swin window as large as the range allows: attention over a million tokens at once
    "huge-window": ({"model_type": "swin", "window_size": 1024}, "memory"),
    # position embeddings for a 1M-pixel square image
    "huge-positions": ({"model_type": "dinov2", "image_size": 1 << 20, "patch_size": 14}, "parameters"),
}


@pytest.fixture(autouse=True)
def small_machine(monkeypatch):
    """A machine of 8 GB, whatever this one has: the refusals must not depend on it."""
    monkeypatch.setattr(bbx.runtime, "machine_memory", lambda: 8 * GB, raising=False)


def _folder(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _refused(r, code: int, needle: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("bbx: error: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_configs_are_one_line_exit_4_everywhere(case, tmp_path, photos, monkeypatch):
    import bbx.loading

    config, needle = HOSTILE[case]
    folder = _folder(tmp_path, case, config)
    monkeypatch.setattr(bbx.loading, "build", lambda *a, **k: pytest.fail("a hostile config reached the build"))
    images, _ = photos
    if needle == "memory":  # inspect builds nothing: it says what the run would refuse
        r = run("inspect", folder)
        assert r.exit_code == 0 and "more than this machine's 8.0 GB, so bbx extract would refuse it" in r.stdout
    else:
        _refused(run("inspect", folder), 4, needle)
    _refused(run("extract", "-m", folder, "--no-pretrained", "-o", tmp_path / "f.h5", images), 4, needle)
    _refused(run("bench", folder, "--iters", "1", "--warmup", "0"), 4, needle)
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()


def test_a_batch_that_does_not_fit_is_a_usage_error_with_a_batch_size_that_does(tmp_path, photos, monkeypatch):
    monkeypatch.setattr(bbx.runtime, "machine_memory", lambda: 3 * GB, raising=False)
    images, _ = photos
    r = run("extract", "-m", "resnet-50", "--no-pretrained", "-b", "512", "-o", tmp_path / "f.h5", images)
    _refused(r, 2, "--batch-size")
    fits = int(r.stderr.split("--batch-size ")[1].split()[0])
    assert 1 <= fits < 512
    r = run("bench", "resnet-50", "-b", "512", "--iters", "1", "--warmup", "0")
    _refused(r, 2, "--batch-size")


def test_load_backbone_refuses_weights_the_machine_cannot_hold(tmp_path, monkeypatch):
    import bbx
    from bbx.errors import ModelError

    monkeypatch.setattr(bbx.runtime, "machine_memory", lambda: 5 * 10**7, raising=False)
    with pytest.raises(ModelError, match="parameters.*more than this machine"):
        bbx.load_backbone("resnet-50", pretrained=False)
