"""Interrupted and killed runs: every finished batch survives, nothing looks complete that is
not, and --resume reaches the same result as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from tests.cli import proc_env, run
from tests.conftest import make_photos
from tests.test_extract import _read
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)

N_IMAGES = 120  # about 6 s of a run at -b 1: a signal lands mid-run, a second run meets it writing


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Camera-sized photos (so that a run lasts a few seconds and a signal lands mid-run): eight
    distinct ones, hard-linked under many names (distinct paths are distinct inputs)."""
    import os

    folder = tmp_path_factory.mktemp("many")
    seeds = make_photos(tmp_path_factory.mktemp("seeds"), [(1024, 768), (768, 1024)] * 4, "jpg")
    for i in range(N_IMAGES):
        os.link(seeds[i % len(seeds)], folder / f"img{i:03d}.jpg")
    return folder


def _cmd(ckpt: Path, out: Path, folder: Path, *extra: str) -> list[str]:
    """The run as a subprocess: what a signal or a kill hits."""
    return [sys.executable, "-m", "bbx", *_args(ckpt, out, folder, *extra)]


def _in_process(ckpt: Path, out: Path, folder: Path, *extra: str):
    """The same run in this process (CliRunner): the uninterrupted and resuming runs, which no
    signal hits, without a subprocess's 2-3 s of imports each."""
    return run(*_args(ckpt, out, folder, *extra))


def _args(ckpt: Path, out: Path, folder: Path, *extra: str) -> list[str]:
    return [
        "extract",
        "-m",
        str(ckpt),
        "-o",
        str(out),
        "-b",
        "1",
        "-j",
        "0",
        "-q",
        str(folder),
        *extra,
    ]


def _env():

    return proc_env()


def _start_and_signal(cmd: list[str], staging: Path, sig: int) -> subprocess.CompletedProcess:
    from bbx.errors import BbxError
    from bbx.formats import open_output

    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:  # until a few batches are committed
        try:
            if staging.exists() and open_output(staging).images >= 3:
                break
        except (BbxError, OSError):
            pass  # caught mid-write: look again
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.fixture(scope="module")
def full(tiny_resnet, many, tmp_path_factory):
    """The uninterrupted run's (paths, maps) per output suffix, computed once."""
    cache: dict[str, tuple[list[str], bytes]] = {}

    def get(suffix: str) -> tuple[list[str], bytes]:
        if suffix not in cache:
            out = tmp_path_factory.mktemp("full") / f"full{suffix}"
            r = _in_process(tiny_resnet, out, many)
            assert r.exit_code == 0, r.stderr
            cache[suffix] = _read(out)
        return cache[suffix]

    return get


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_signal_leaves_a_valid_file_and_resume_completes_it(tiny_resnet, many, full, tmp_path, sig, code, suffix):
    out = tmp_path / f"f{suffix}"
    p = _start_and_signal(_cmd(tiny_resnet, out, many), out.with_name(out.name + ".partial"), sig)
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    from bbx.formats import open_output

    info = open_output(out)  # a valid file under the final name
    assert info.status == "interrupted" and 0 < len(info.paths) < N_IMAGES
    assert not out.with_name(out.name + ".partial").exists()
    r = _in_process(tiny_resnet, out, many, "--resume")
    assert r.exit_code == 0, r.stderr
    assert open_output(out).status == "complete"
    assert _read(out) == full(suffix)


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_sigkill_never_leaves_a_complete_looking_file_and_resume_recovers(tiny_resnet, many, full, tmp_path, suffix):
    out = tmp_path / f"f{suffix}"
    partial = out.with_name(out.name + ".partial")
    p = _start_and_signal(_cmd(tiny_resnet, out, many), partial, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists() and partial.exists()
    if suffix == ".h5":
        with h5py.File(partial) as f:
            assert f.attrs["status"] == "running" and f.attrs["rows"] > 0
    r = _in_process(tiny_resnet, out, many)
    assert r.exit_code == 3 and "--resume" in r.stderr  # an unfinished run is never silently replaced
    r = _in_process(tiny_resnet, out, many, "--resume", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["already_present"] > 0 and report["done"] + report["already_present"] == N_IMAGES
    assert _read(out) == full(suffix)


def test_damaged_partial_is_reported_and_started_over(tiny_resnet, many, full, tmp_path):
    out = tmp_path / "f.h5"
    out.with_name("f.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 300)
    r = _in_process(tiny_resnet, out, many, "--resume", "--json")
    assert r.exit_code == 0, r.stderr
    notes = json.loads(r.stdout)["notes"]
    assert any("damaged" in n for n in notes)
    assert _read(out) == full(".h5")


def test_extending_a_finished_file_works_on_a_copy(tiny_resnet, many, tmp_path):
    """A kill while extending a finished file must not damage what it already held."""
    out = tmp_path / "f.h5"
    first = sorted(many.iterdir())[:5]
    r = run("extract", "-m", tiny_resnet, "-o", out, "-q", *first)
    assert r.exit_code == 0, r.stderr
    before = _read(out)
    p = _start_and_signal(_cmd(tiny_resnet, out, many, "--resume"), out.with_name("f.h5.partial"), signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    assert _read(out) == before  # the finished file is untouched


def _wait_for_rows(p: subprocess.Popen, partial: Path, rows: int = 2) -> None:
    from bbx.errors import BbxError
    from bbx.formats import open_output

    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        try:
            if partial.exists() and open_output(partial).images >= rows:
                return
        except (BbxError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run ended (or stalled) before writing {rows} rows: {p.poll()}")


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_an_output_another_run_is_writing_is_refused_whatever_the_options(tiny_resnet, many, tmp_path, suffix):
    """A second run on the same output, with --overwrite, --resume or neither, is refused while
    the first writes (it used to unlink the first's live HDF5 .partial), and says why."""
    from bbx.formats import open_output

    out = tmp_path / f"c{suffix}"
    partial = out.with_name(out.name + ".partial")
    other = tmp_path / "other"
    make_photos(other, [(64, 48)] * 3)
    a = subprocess.Popen(_cmd(tiny_resnet, out, many), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_rows(a, partial)
        for extra in ((), ("--overwrite",), ("--resume",), ("--overwrite", "--dry-run")):
            r = run("extract", "-m", tiny_resnet, "-o", out, *extra, other)
            errors = [ln for ln in r.stderr.splitlines() if "being written by another bbx run" in ln]
            assert errors and "unfinished run" not in r.stderr, (extra, r.stderr)
            if "--dry-run" not in extra:
                assert r.exit_code == 3 and r.stderr.count("bbx: error:") == 1, (extra, r.stderr)
            assert a.poll() is None, "the first run must still be writing"
    finally:
        a.send_signal(signal.SIGINT)
        _, err = a.communicate(timeout=60)
    assert a.returncode == 130, err
    kept = open_output(out)
    assert kept.status == "interrupted" and kept.images >= 2
    assert all(Path(p).parent == many for p in kept.paths), "the output holds the first run's rows only"


@pytest.fixture()
def restore_signal_handlers():
    """Tests that send real signals to this process leave bbx's guard installed: put back
    Python's own handlers afterwards."""
    import bbx.extract

    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(bbx.extract, "SignalGuard"):
        bbx.extract.SignalGuard.seen = False


@pytest.mark.parametrize(
    "first,second,code",
    [(None, signal.SIGINT, 130), (signal.SIGINT, signal.SIGINT, 130), (signal.SIGTERM, signal.SIGINT, 143)],
    ids=["during-close", "sigint-twice", "sigterm-then-sigint"],
)
def test_a_signal_during_the_close_is_acknowledged_and_the_close_finishes(
    tiny_resnet, photos, tmp_path, monkeypatch, capfd, restore_signal_handlers, first, second, code
):
    """The first signal stops the run; one that arrives while the output is being closed (a
    second one, or the first once every batch is in) is said on stderr and the close finishes.
    The signals are real and process-directed, with another thread alive to receive them (as
    torch's and the decoders' are): blocking them in the main thread does not hold them back."""
    import os
    import threading

    from bbx.formats import open_output
    from bbx.formats.hdf5 import HDF5Writer

    folder, paths = photos
    out = tmp_path / "f.h5"
    real_write, real_finish = HDF5Writer.write, HDF5Writer.finish
    calls = {"write": 0}

    def write(self, rows, maps):
        real_write(self, rows, maps)
        calls["write"] += 1
        if first is not None and calls["write"] == 2:
            os.kill(os.getpid(), first)
            time.sleep(0.2)  # the handler runs now, in the main thread

    def finish(self, status, reason=None):
        os.kill(os.getpid(), second)
        time.sleep(0.2)  # were it obeyed, it would cut the close here
        return real_finish(self, status, reason)

    monkeypatch.setattr(HDF5Writer, "write", write)
    monkeypatch.setattr(HDF5Writer, "finish", finish)
    stop = threading.Event()
    bystander = threading.Thread(target=stop.wait, daemon=True)
    bystander.start()
    try:
        r = run("extract", "-m", tiny_resnet, "-o", out, "-b", "2", "-j", "0", folder)
    finally:
        stop.set()
    said = capfd.readouterr().err  # the acknowledgement goes straight to the process's stderr
    assert r.exit_code == code, r.stderr
    assert "Traceback" not in r.stderr
    assert "--resume recovers the run" in said and str(out) in said, said
    kept = open_output(out)
    assert not out.with_name("f.h5.partial").exists()
    if first is None:
        assert kept.status == "complete" and kept.images == len(paths)
    else:
        assert kept.status == "interrupted" and kept.images == 4
        assert "--resume continues the run" in r.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_whose_handler_runs_in_a_destructor_still_stops_the_run(
    tiny_resnet, photos, tmp_path, monkeypatch, capfd, restore_signal_handlers, sig, code
):
    """Python runs a signal handler wherever the main thread is; inside a destructor or a weakref
    callback the handler's exception is printed as "Exception ignored" and dropped (seen as a run
    that went on to exit 0 after a SIGINT). The run still stops at the next image, quietly."""
    import os

    from bbx.formats import open_output
    from bbx.formats.hdf5 import HDF5Writer

    folder, paths = photos
    out = tmp_path / "f.h5"
    real_write = HDF5Writer.write
    calls = {"write": 0}

    class SignalledOnDelete:
        def __del__(self):
            os.kill(os.getpid(), sig)
            time.sleep(0.2)  # the handler runs here, inside __del__

    def write(self, rows, maps):
        real_write(self, rows, maps)
        calls["write"] += 1
        if calls["write"] == 2:
            SignalledOnDelete()  # dropped at once: its __del__ runs the handler

    monkeypatch.setattr(HDF5Writer, "write", write)
    r = run("extract", "-m", tiny_resnet, "-o", out, "-b", "2", "-j", "0", folder)
    err = r.stderr + capfd.readouterr().err
    assert r.exit_code == code, err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    kept = open_output(out)
    assert kept.status == "interrupted" and kept.images == 4 < len(paths)
    assert calls["write"] == 2


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)])
def test_two_signals_50_ms_apart_leave_a_valid_interrupted_file(tiny_resnet, many, tmp_path, signals):
    from bbx.formats import open_output

    out = tmp_path / "f.h5"
    p = subprocess.Popen(_cmd(tiny_resnet, out, many), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_rows(p, out.with_name("f.h5.partial"), rows=3)
    p.send_signal(signals[0])
    time.sleep(0.05)
    if p.poll() is None:
        p.send_signal(signals[1])
    _, err = p.communicate(timeout=60)
    err = err.decode()
    assert p.returncode == (130 if signals[0] == signal.SIGINT else 143), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not out.with_name("f.h5.partial").exists()
    assert open_output(out).status == "interrupted"


def test_the_commit_point_is_never_deleted_while_a_signal_can_land(tiny_resnet, photos, tmp_path, monkeypatch):
    """HDF5 attributes are replaced by delete-then-create; a signal between the two left a file
    without its ``rows`` commit point, and the interrupted run's close failed on it. Every batch's
    commit (and a resume's) updates ``rows`` in place: it is never deleted."""
    import h5py

    from bbx.formats import open_output

    folder, paths = photos
    deleted = []
    real = h5py.h5a.delete
    monkeypatch.setattr(h5py.h5a, "delete", lambda loc, name, *a, **k: deleted.append(name) or real(loc, name, *a, **k))
    out = tmp_path / "f.h5"
    first = sorted(folder.iterdir())[:3]
    assert run("extract", "-m", tiny_resnet, "-o", out, "-b", "1", "-q", *first).exit_code == 0
    r = run("extract", "-m", tiny_resnet, "-o", out, "-b", "2", "-q", "--resume", folder)
    assert r.exit_code == 0, r.stderr
    assert open_output(out).images == len(paths)
    assert b"rows" not in deleted and "rows" not in deleted
