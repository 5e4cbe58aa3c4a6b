"""What a demanding user hits at the edges of `bbx extract`: failing disks, signals before the
first batch, odd inputs, resumes from elsewhere, dry runs that foresee refusals."""

from __future__ import annotations

import errno
import json
import os
import pickle

import h5py
import pytest

import bbx.extract
import bbx.extractor
from bbx.errors import Terminated
from tests.cli import proc_env, run
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


def _one_line(r, code: int, *needles: str) -> None:
    """Exit ``code`` and one error line (the last on stderr; a shape report may come before it)."""
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("bbx: error: ")]
    assert len(errors) == 1 and r.stderr.endswith(errors[0] + "\n"), r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])


def test_a_full_disk_is_one_line_and_resume_recovers_every_committed_batch(tiny_resnet, photos, tmp_path, monkeypatch):
    folder, paths = photos
    out = tmp_path / "f.h5"
    calls = {"n": 0}
    real_flush = h5py.File.flush

    def flaky_flush(self):
        calls["n"] += 1
        if calls["n"] == 4:  # creation flushes once; each batch flushes its data, then the commit point
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_flush(self)

    monkeypatch.setattr(h5py.File, "flush", flaky_flush)
    r = run("extract", "-m", tiny_resnet, "-o", out, "-b", "2", folder)
    _one_line(r, 3, "cannot write", "no space left on device", "--resume")
    monkeypatch.setattr(h5py.File, "flush", real_flush)
    partial = out.with_name("f.h5.partial")
    with h5py.File(partial) as f:
        rows = int(f.attrs["rows"])
        # the second batch's data never reached the disk: it is not committed, whatever is in the file
        assert rows == 2 and all(p for p in f["paths"][:rows])
    r = run("extract", "-m", tiny_resnet, "-o", out, "-b", "2", "--resume", folder, "--json")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        stored = [p.decode() for p in f["paths"][:]]
        assert f.attrs["rows"] == len(stored) == len(paths) == len(f["features/stage4"])
        assert sorted(stored) == sorted(str(p) for p in paths)


def test_an_interrupt_inside_a_write_leaves_no_half_rows(tiny_resnet, photos, tmp_path, monkeypatch):
    from bbx.formats.hdf5 import HDF5Writer

    folder, _ = photos
    out = tmp_path / "f.h5"
    real_write = HDF5Writer.write
    calls = {"n": 0}

    def write(self, paths, maps):
        calls["n"] += 1
        if calls["n"] == 2:
            ds = self._f["features/stage4"]
            ds.resize(len(ds) + len(paths), axis=0)  # part of the batch is already on its way
            raise KeyboardInterrupt
        return real_write(self, paths, maps)

    monkeypatch.setattr(HDF5Writer, "write", write)
    r = run("extract", "-m", tiny_resnet, "-o", out, "-b", "3", folder)
    assert r.exit_code == 130
    with h5py.File(out) as f:
        assert f.attrs["status"] == "interrupted" and f.attrs["rows"] == 3
        assert len(f["features/stage4"]) == len(f["paths"]) == 3


def test_sigterm_before_the_first_batch_is_143_and_leaves_nothing(tiny_resnet, photos, tmp_path, monkeypatch):
    folder, _ = photos

    def terminated(*a, **k):
        raise Terminated()

    monkeypatch.setattr(bbx.extractor.Extractor, "__init__", terminated)
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", folder)
    assert r.exit_code == 143 and "Traceback" not in r.stderr
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()
    monkeypatch.undo()
    assert run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", folder).exit_code == 0


def test_on_error_stop_keeps_what_came_before_as_an_interrupted_output(tiny_resnet, tmp_path):
    from tests.conftest import make_photos

    folder = tmp_path / "imgs"
    make_photos(folder, [(64, 64)] * 3)
    (folder / "img001.jpg").write_bytes(b"broken")
    out = tmp_path / "f.h5"
    r = run("extract", "-m", tiny_resnet, "-o", out, "--on-error", "stop", folder)
    _one_line(r, 3, "img001.jpg", "--on-error stop")
    with h5py.File(out) as f:
        assert f.attrs["status"] == "interrupted"
        assert [p.decode() for p in f["paths"][:]] == [str(folder / "img000.jpg")]


def test_resume_with_another_compute_dtype_is_refused(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.h5"
    run("extract", "-m", tiny_resnet, "-o", out, str(paths[0]))
    r = run("extract", "-m", tiny_resnet, "-o", out, "--resume", "--dtype", "bfloat16", folder)
    _one_line(r, 2, "compute_dtype")


def test_resume_from_another_folder_duplicates_nothing(tiny_resnet, photos, tmp_path, monkeypatch):
    folder, paths = photos
    out = tmp_path / "f.h5"
    monkeypatch.chdir(tmp_path)
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert run("extract", "-m", tiny_resnet, "-o", out, *rel[:2]).exit_code == 0
    monkeypatch.chdir(folder)
    r = run("extract", "-m", tiny_resnet, "-o", out, "--resume", *[os.path.relpath(p, folder) for p in paths[:3]])
    assert r.exit_code == 0, r.stderr
    monkeypatch.chdir(tmp_path)
    r = run("extract", "-m", tiny_resnet, "-o", out, "--resume", "--json", *rel)
    assert json.loads(r.stdout)["already_present"] == 3
    with h5py.File(out) as f:
        stored = [p.decode() for p in f["paths"][:]]
    assert len(stored) == len(paths)
    # the row written from the other folder is absolute, so it still names its file from here
    assert stored[:2] == rel[:2] and os.path.isabs(stored[2]) and os.path.samefile(stored[2], paths[2])


def test_file_names_that_are_not_utf8_are_refused_up_front(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(odd, "wb") as f:
        f.write(paths[0].read_bytes())
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", folder)
    _one_line(r, 3, "not valid UTF-8", "caf\\xe9.jpg")


def test_fifos_and_hidden_files_in_folders_are_left_out(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    os.mkfifo(folder / "pipe.jpg")
    (folder / "._img000.jpg").write_bytes(b"AppleDouble resource fork")
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "--json", folder)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["done"] == len(paths)
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "g.h5", folder / "pipe.jpg")
    _one_line(r, 3, "not a regular file")


def test_nothing_to_extract_and_closed_stdin(tiny_resnet, tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line(run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", tmp_path / "empty"), 3, "no image files")
    r = run("extract", "-m", tiny_resnet, "-0", "-o", tmp_path / "f.h5", tmp_path / "empty")
    _one_line(r, 2, "-0/--null")


def test_output_paths_that_cannot_be_files(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    (tmp_path / "dir.h5").mkdir()
    _one_line(run("extract", "-m", tiny_resnet, "-o", tmp_path / "dir.h5", "--overwrite", folder), 3, "is a folder")
    (tmp_path / "file").write_text("x")
    _one_line(run("extract", "-m", tiny_resnet, "-o", tmp_path / "file" / "x.h5", folder), 3, "is not a folder")
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "x.h5", "--shard-size", "1GB", folder)
    _one_line(r, 2, "--shard-size")


def test_dry_run_says_what_the_run_would_refuse(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.h5"
    run("extract", "-m", tiny_resnet, "-o", out, str(paths[0]))
    rep = json.loads(run("extract", "-m", tiny_resnet, "-o", out, "--dry-run", "--json", folder).stdout)
    assert any("--overwrite" in w for w in rep["warnings"])
    rep = json.loads(run("extract", "-m", tiny_resnet, "-o", out, "--dry-run", "--json", "--resume", folder).stdout)
    assert rep["warnings"] == [] and rep["todo"] == len(paths) - 1
    r = run("extract", "-m", tiny_resnet, "-o", out, "--dry-run", "--resume", "--out-indices", "1", folder)
    assert r.exit_code == 2 and "would be refused" in r.stderr and "out_features" in r.stderr


def test_dry_run_exits_with_the_status_the_real_run_would_give(tiny_resnet, photos, tmp_path, monkeypatch):
    """So that a script can check first: the dry run's status is the real run's refusal's."""
    import bbx.plan

    folder, paths = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "-o", out, "--dry-run", folder).exit_code == 0
    run("extract", "-m", tiny_resnet, "-o", out, str(paths[0]))
    cases = [
        ((), 3),  # the output exists
        (("--resume", "--out-indices", "1"), 2),  # a resume with other settings
        (("--resume",), 0),
        (("--overwrite", "--resume"), 2),
    ]
    for extra, code in cases:
        dry = run("extract", "-m", tiny_resnet, "-o", out, "--dry-run", *extra, folder)
        assert dry.exit_code == code, (extra, dry.stderr)
        if code:
            real = run("extract", "-m", tiny_resnet, "-o", out, *extra, folder)
            assert real.exit_code == code, (extra, real.stderr)
    monkeypatch.setattr(bbx.plan, "free_space", lambda output: 10)
    rep = run("extract", "-m", tiny_resnet, "-o", tmp_path / "g.h5", "--dry-run", "--json", folder)
    assert rep.exit_code == 3 and json.loads(rep.stdout)["exit_code"] == 3


def test_a_malicious_pickle_message_gives_no_advice_to_disable_the_safety(tmp_path, tiny_resnet):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_resnet, ckpt)
    (ckpt / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=2)
    r = run("inspect", ckpt)  # inspect reads no weights: fine
    assert r.exit_code == 0
    r = run("bench", ckpt, "--pretrained", "--iters", "1", "--warmup", "0", "-b", "1", "--image-size", "32")
    _one_line(r, 4, "refused to load", "system")
    assert "weights_only` set to False" not in r.stderr and "Re-running" not in r.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_no_color_on_a_terminal_gives_progress_without_escape_codes(tiny_resnet, photos, tmp_path):
    import subprocess
    import sys

    folder, _ = photos
    master, slave = os.openpty()
    env = proc_env(NO_COLOR="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "bbx", "extract", "-m", str(tiny_resnet), "-o", str(tmp_path / "f.h5"), str(folder)],
        stderr=slave,
        stdout=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=120)
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0
    assert "extracting" in err and "\x1b" not in err


def test_hdf5_next_to_an_unfinished_safetensors_run_of_the_same_name(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    out = tmp_path / "f.out"
    (tmp_path / "f.out.partial").mkdir()  # what a safetensors run leaves
    (tmp_path / "f.out.partial" / "journal.jsonl").write_text("")
    r = run("extract", "-m", tiny_resnet, "-o", out, "--format", "hdf5", "--resume", folder)
    _one_line(r, 3, "unfinished safetensors run")
    r = run("extract", "-m", tiny_resnet, "-o", out, "--format", "hdf5", "--overwrite", folder)
    assert r.exit_code == 0, r.stderr
    assert h5py.is_hdf5(out) and not (tmp_path / "f.out.partial").exists()


def test_a_suffix_that_contradicts_the_format_is_refused(tiny_resnet, photos, tmp_path, monkeypatch):
    folder, _ = photos
    for name, fmt in (("weird.h5", "safetensors"), ("weird.hdf5", "safetensors"), ("w.safetensors", "hdf5")):
        _one_line(run("extract", "-m", tiny_resnet, "-o", tmp_path / name, "--format", fmt, folder), 2, name, fmt)
        assert not list(tmp_path.glob("w*"))
    # a suffix bbx does not know takes --format; agreeing ones and the default name are fine
    assert (
        run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.out", "--format", "safetensors", "-q", folder).exit_code
        == 0
    )
    assert run("extract", "-m", tiny_resnet, "-o", tmp_path / "g.h5", "--format", "h5", "-q", folder).exit_code == 0
    monkeypatch.chdir(tmp_path)
    r = run("extract", "-m", tiny_resnet, "--format", "safetensors", "--dry-run", "--json", folder)
    assert json.loads(r.stdout)["output"].endswith("_stage4.safetensors")


def test_report_times_nest_load_first_batch_whole_run(tiny_resnet, photos, tmp_path):
    """``seconds`` is the whole run, so the model load and the first batch lie within it."""
    folder, paths = photos
    rep = json.loads(run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "-b", "2", "--json", folder).stdout)
    assert 0 < rep["load_s"] <= rep["first_batch_s"] <= rep["seconds"], rep
    assert rep["images_per_s"] == pytest.approx(len(paths) / (rep["seconds"] - rep["load_s"]), rel=0.02)
