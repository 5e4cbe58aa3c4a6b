"""Outputs under abuse: full disks, folders that cannot be written, names too long for the file
system, damaged files. Every case is one line with its documented exit status, leaves nothing
that blocks the next run, and never loses what was committed. The full-disk cases run on a small
tmpfs the test mounts (as root); elsewhere they skip and say why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli import bbx_proc, proc_env, run
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
    """The run as a subprocess: its exit status and stderr as a user sees them."""
    return bbx_proc("extract", "-m", ckpt, "-o", out, "-b", "4", "-q", *STEM, *extra, inputs, env=env)


def _extract_here(ckpt, out, inputs, *extra) -> int:
    """The same run in this process (CliRunner), for the runs expected to succeed (resuming,
    the clean reference): no subprocess's seconds of imports. Its exit status."""
    r = run("extract", "-m", ckpt, "-o", out, "-b", "4", "-q", *STEM, *extra, inputs)
    assert r.exit_code == 0, r.stderr
    return r.exit_code


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_a_full_disk_is_exit_3_in_one_line_and_resume_finishes(tiny_resnet, forty, small_disk, tmp_path, suffix):
    disk = small_disk("3m")
    out = disk / f"f{suffix}"
    p = _extract(tiny_resnet, out, forty, "--force")
    line = _one_error_line(p, 3, f"cannot write {out}", "no space left on device", "--resume")
    assert "kept in" in line
    assert out.with_name(out.name + ".partial").exists() and not out.exists()
    small_disk.resize(disk, "16m")
    _extract_here(tiny_resnet, out, forty, "--resume")
    clean = tmp_path / f"clean{suffix}"
    _extract_here(tiny_resnet, clean, forty)
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
    _extract_here(tiny_resnet, out, forty, "--resume")
    from bbx.formats import open_output

    assert open_output(out).images == 40


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_a_disk_without_a_free_byte_leaves_nothing_that_blocks_the_next_run(tiny_resnet, forty, small_disk, suffix):
    disk = small_disk("2m")
    out = disk / f"f{suffix}"
    small_disk.fill(disk)
    _one_error_line(_extract(tiny_resnet, out, forty, "--force"), 3, f"cannot write {out}", "no space left")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    (disk / "filler").unlink()
    small_disk.resize(disk, "16m")
    _extract_here(tiny_resnet, out, forty)  # no --resume, no --overwrite needed


def test_extending_a_finished_file_whose_copy_does_not_fit(tiny_resnet, forty, small_disk):
    disk = small_disk("3m")
    out = disk / "f.h5"
    first = sorted(forty.iterdir())[:16]
    assert run("extract", "-m", tiny_resnet, "-o", out, "-q", *STEM, *first).exit_code == 0
    before = _read(out)
    _one_error_line(_extract(tiny_resnet, out, forty, "--resume", "--force"), 3, "no space left")
    assert sorted(p.name for p in disk.iterdir()) == ["f.h5"]  # no truncated copy keeps the disk full
    assert _read(out) == before


def test_outputs_that_cannot_be_created_are_one_line(tiny_resnet, forty, tmp_path):
    import os

    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    for extra in ((), ("--resume",), ("--overwrite",)):
        _one_error_line(_extract(tiny_resnet, fifo, forty, *extra), 3, "is a FIFO, not a regular file")
    long = tmp_path / ("x" * 300 + ".h5")
    _one_error_line(_extract(tiny_resnet, long, forty), 3, "too long", "255")
    near = tmp_path / ("y" * 240 + ".safetensors")  # fits, but its shard and temporary names would not
    _one_error_line(_extract(tiny_resnet, near, forty), 3, "too long")
    _one_error_line(_extract(tiny_resnet, "/proc/x.h5", forty), 3, "/proc is not writable")
    assert not any(p.name.startswith(".bbx-probe") for p in tmp_path.iterdir())


def test_a_folder_the_user_cannot_write_is_one_line(tiny_resnet, forty, tmp_path):
    import os
    import shutil

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cmd = [sys.executable, "-m", "bbx", "extract", "-m", str(tiny_resnet), "-o", str(locked / "f.h5"), "-q"]
    if os.geteuid() == 0:  # root writes anywhere: run without the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("as root this needs setpriv to drop CAP_DAC_OVERRIDE")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    p = subprocess.run([*cmd, str(forty)], capture_output=True, text=True, env=proc_env())
    _one_error_line(p, 3, f"{locked} is not writable", "ermission denied")
    p = subprocess.run([*cmd, "--dry-run", str(forty)], capture_output=True, text=True, env=proc_env())
    assert f"{locked} is not writable" in p.stderr


def test_long_selections_get_a_short_default_name(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"")
    r = run(
        "extract", "-m", "dinov2-giant", "--out-indices", ",".join(map(str, range(41))), "--dry-run", "--json", "a.jpg"
    )
    assert json.loads(r.stdout)["output"] == "dinov2-giant_stem-to-stage40.h5"
    r = run(
        "extract",
        "-m",
        "dinov2-giant",
        "--out-indices",
        ",".join(map(str, range(0, 41, 2))),
        "--dry-run",
        "--json",
        "a.jpg",
    )
    name = json.loads(r.stdout)["output"]
    assert name.startswith("dinov2-giant_21stages-stem-to-stage40-") and len(name) < 80


def test_a_disk_that_fills_during_the_run_ends_it_before_hdf5_fails(tiny_resnet, photos, tmp_path, monkeypatch):
    """Without --force, a batch the disk has no room for (another program filled it since the
    run began) is refused before HDF5 writes it: the file closes cleanly at its last batch."""
    import collections
    import shutil

    import h5py

    import bbx.formats.hdf5 as hdf5

    folder, paths = photos
    usage = collections.namedtuple("usage", "total used free")
    real = shutil.disk_usage
    calls = {"n": 0}

    def filling(p):
        calls["n"] += 1
        return real(p) if calls["n"] <= 5 else usage(10**9, 10**9 - 10**5, 10**5)  # 2 plans, create, 2 batches

    monkeypatch.setattr(shutil, "disk_usage", filling)
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "-b", "2", "-q", *STEM, folder)
    assert r.exit_code == 3 and r.stderr.startswith("bbx: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "no space left on device" in r.stderr and "the 4 images written so far are kept" in r.stderr
    assert not hdf5.broken()
    with h5py.File(tmp_path / "f.h5.partial") as f:
        assert f.attrs["rows"] == 4


def _damage_attributes(path) -> None:
    """Garble 16 bytes of the file's root object header so that h5py opens the file but fails
    while reading its attributes (RuntimeError "Error iterating over attributes"), as a disk error
    or a stray write in the header region would: the first such window from the start is used."""
    import h5py

    data = path.read_bytes()
    for at in range(512, min(len(data), 16384), 16):
        damaged = bytearray(data)
        for k in range(at, at + 16):
            damaged[k] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            with h5py.File(path, "r") as f:
                dict(f.attrs)
        except RuntimeError as e:
            if "attribute" in str(e):
                return
        except Exception:  # noqa: BLE001 - another kind of damage: try the next window
            pass
    raise AssertionError("no window of the header damages only the attributes")


def test_an_hdf5_file_damaged_in_its_attributes(tiny_resnet, photos, tmp_path):
    """A finished file damaged in its header is refused (exit 3, one line) by info, show and
    --resume; a damaged .partial is reported and started over."""

    folder, paths = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "-o", out, *map(str, paths[:2])).exit_code == 0
    _damage_attributes(out)
    for args in (("info", out), ("info", out, "--json"), ("show", out, "-o", tmp_path / "p.png")):
        r = run(*args)
        assert r.exit_code == 3 and r.stderr.startswith("bbx: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "damaged" in r.stderr or "not a readable HDF5 file" in r.stderr
    r = run("extract", "-m", tiny_resnet, "-o", out, "--resume", "-q", folder)
    assert r.exit_code == 3 and r.stderr.count("\n") == 1 and str(out) in r.stderr, r.stderr
    assert not out.with_name("f.h5.partial").exists()

    partial = tmp_path / "g.h5.partial"
    out.rename(partial)
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "g.h5", "--resume", "--json", folder)
    assert r.exit_code == 0, r.stderr
    import json

    report = json.loads(r.stdout)
    assert any("damaged" in n and "started over" in n for n in report["notes"]), report["notes"]
    assert report["done"] == len(paths)


def test_the_resume_space_check_counts_only_what_is_left(tiny_resnet, photos, tmp_path, monkeypatch):
    """Resuming a .partial needs room for the inputs left only (it is extended in place);
    extending a finished file needs room for its copy as well."""
    import json
    import shutil

    import bbx.plan

    folder, paths = photos
    done = tmp_path / "done.h5"
    assert run("extract", "-m", tiny_resnet, "-o", done, *STEM, *map(str, paths[:5])).exit_code == 0
    per_image = json.loads(
        run("extract", "-m", tiny_resnet, "-o", tmp_path / "x.h5", *STEM, "--dry-run", "--json", folder).stdout
    )["bytes_per_image"]
    monkeypatch.setattr(bbx.plan, "free_space", lambda output: 3 * per_image)  # room for 3 more images

    partial = tmp_path / "f.h5"
    shutil.copyfile(done, tmp_path / "f.h5.partial")  # a killed run that had done 5 of the 7
    rep = json.loads(
        run("extract", "-m", tiny_resnet, "-o", partial, *STEM, "--resume", "--dry-run", "--json", folder).stdout
    )
    assert rep["todo"] == 2 and rep["warnings"] == [] and rep["exit_code"] == 0
    r = run("extract", "-m", tiny_resnet, "-o", partial, *STEM, "--resume", "--json", folder)
    assert r.exit_code == 0 and json.loads(r.stdout)["done"] == 2, r.stderr

    r = run("extract", "-m", tiny_resnet, "-o", done, *STEM, "--resume", "-q", folder)  # copies 5 images first
    assert r.exit_code == 3 and "exceeds" in r.stderr and "for the rows already extracted" in r.stderr, r.stderr
