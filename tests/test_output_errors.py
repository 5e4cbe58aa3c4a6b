"""Outputs under abuse: full disks, folders that cannot be written, names too long for the file
system, damaged files. Every case is one line with its documented exit status, leaves nothing
that blocks the next run, and never loses what was committed. The full-disk cases run on a small
tmpfs the test mounts (as root); elsewhere they skip and say why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli import bbx_proc, proc_env
from tests.conftest import make_photos
from tests.test_extract import _read
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)

#: the tiny ResNet's stem maps are 8 x 56 x 56 float32: 100 kB an image at 224
STEM = ("--out-features", "stem,stage4")


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forty")
    make_photos(folder, [(64, 48)] * 40)
    return folder


def _one_error_line(p: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bbx: error: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _extract(ckpt, out, inputs, *extra, env=None):
    return bbx_proc("extract", "-m", ckpt, "-o", out, "-b", "4", "-q", *STEM, *extra, inputs, env=env)


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_a_full_disk_is_exit_3_in_one_line_and_resume_finishes(tiny_resnet, forty, small_disk, tmp_path, suffix):
    disk = small_disk("3m")
    out = disk / f"f{suffix}"
    p = _extract(tiny_resnet, out, forty, "--force")
    line = _one_error_line(p, 3, f"cannot write {out}", "no space left on device", "--resume")
    assert "kept in" in line
    assert out.with_name(out.name + ".partial").exists() and not out.exists()
    small_disk.resize(disk, "16m")
    p = _extract(tiny_resnet, out, forty, "--resume")
    assert p.returncode == 0, p.stderr
    clean = tmp_path / f"clean{suffix}"
    assert _extract(tiny_resnet, clean, forty).returncode == 0
    assert _read(out) == _read(clean)


def test_a_write_hdf5_itself_fails_is_one_line_without_a_crash(tiny_resnet, forty, small_disk):
    """The disk fills between bbx's own space check and HDF5's write (another program wrote
    meanwhile): h5py raises RuntimeError from a flush, and the file cannot be closed any more.
    The run still ends with exit 3 and one line, not a segfault, and the .partial resumes."""
    disk = small_disk("3m")
    out = disk / "f.h5"
    code = (
        "import sys, bbx.formats.hdf5 as h\n"
        "h.SPACE_MARGIN = -(1 << 40)  # no space check: HDF5 meets the full disk itself\n"
        f"sys.argv = ['bbx', 'extract', '-m', {str(tiny_resnet)!r}, '-o', {str(out)!r}, '-b', '4', '-q',"
        f" '--out-features', 'stem,stage4', '--force', {str(forty)!r}]\n"
        "from bbx.cli import main\nmain()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=proc_env())
    _one_error_line(p, 3, "no space left on device", "--resume")
    small_disk.resize(disk, "16m")
    p = _extract(tiny_resnet, out, forty, "--resume")
    assert p.returncode == 0, p.stderr
    from bbx.formats import open_output

    assert open_output(out).images == 40
