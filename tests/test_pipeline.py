"""Pipeline manners: stdout is data only, closed pipes end quietly, no escape codes where no
terminal is, a progress bar that never takes stdout, and one-line errors with documented codes."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbx import errors
from tests.cli import ROOT, bbx_proc, proc_env, run
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)

ESC = "\x1b["
COLOR = re.compile(r"\x1b\[[0-9;]*[34789][0-9;]*m")  # SGR sequences that set a colour


def _env(**extra: str) -> dict[str, str]:
    env = proc_env(TERM="xterm-256color")
    for k in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "_BBX_COMPLETE", "PYTHONUNBUFFERED"):
        env.pop(k, None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def listing(tmp_path_factory) -> Path:
    """A bbx output with many rows (its path listing is far larger than a pipe's buffer)."""
    from bbx.formats import RunFacts, StageLayout, open_writer

    out = tmp_path_factory.mktemp("listing") / "many.h5"
    facts = RunFacts(model="m", checkpoint="c", out_features=("v",), pool="avg")
    w = open_writer(out, "hdf5", facts=facts, stages=[StageLayout("v", (2,), "float32")])
    n = 20000
    w.write([f"/data/photos/some/long/folder/name/photo-{i:06d}.jpg" for i in range(n)], {"v": np.zeros((n, 2), "f4")})
    w.finish("complete")
    return out


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.parametrize(
    "args",
    [
        ["models", "--json"],
        ["models"],
        ["--version"],
        ["--help"],
        [],
        ["info", "LISTING", "--json"],
        ["info", "LISTING", "--paths"],
    ],
)
def test_closed_pipe_ends_quietly(args, listing, unbuffered):
    """`bbx ... | head -c 10` where head is gone before bbx writes: no traceback, no noise, status 0
    (with stdout buffered as usual, and unbuffered as under PYTHONUNBUFFERED)."""
    args = [str(listing) if a == "LISTING" else a for a in args]
    env = _env(PYTHONUNBUFFERED=unbuffered) if unbuffered else _env()
    p = subprocess.Popen([sys.executable, "-m", "bbx", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader went away
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert err == ""


def test_reader_leaving_mid_stream_ends_quietly(listing):
    """`bbx info many.h5 --paths | head -c 10`: bbx is blocked writing when head leaves."""
    p = subprocess.Popen(
        [sys.executable, "-m", "bbx", "info", str(listing), "--paths"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert p.stdout.read(10) == b"/data/phot"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == ""


@pytest.mark.parametrize("flush", [True, False])
def test_final_flush_at_exit_is_quiet(flush):
    """What is still buffered when bbx ends is flushed by bbx itself, quietly; without that the
    interpreter's own flush would print "Exception ignored ... BrokenPipeError"."""
    code = "import sys\nfrom bbx.cli import _app\nsys.stdout.write('data\\n')\n" + (
        "_app.flush_stdout()\n" if flush else ""
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    if flush:
        assert p.returncode == 0 and err == ""
    else:  # the failure the helper prevents
        assert "BrokenPipeError" in err


def test_no_escape_codes_without_a_terminal(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    (folder / "bad.jpg").write_bytes(b"nope")
    p = bbx_proc("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", folder, env=_env())
    assert p.returncode == errors.EXIT_PARTIAL
    assert "images extracted" in p.stderr and "bad.jpg" in p.stderr and p.stdout == ""
    assert ESC not in p.stderr
    for args in (["info", tmp_path / "f.h5"], ["models"]):
        q = bbx_proc(*args, env=_env())
        assert q.returncode == 0 and q.stdout and ESC not in q.stdout + q.stderr, args
    q = bbx_proc("info", tmp_path / "nothing.h5", env=_env())
    assert q.returncode == errors.EXIT_INPUT and q.stderr.startswith("bbx: error:") and ESC not in q.stderr


def _run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run bbx with stdout a pipe and stderr a pseudo-terminal; (status, stdout, terminal output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "bbx", *map(str, args)], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal closed with the process
                return
            if not data:
                return
            chunks.append(data)

    t = threading.Thread(target=drain)
    t.start()
    out, _ = p.communicate(timeout=120)
    t.join(timeout=10)
    os.close(master)
    return p.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_never_takes_stdout(tiny_resnet, photos, tmp_path):
    """With stderr a terminal the progress bar is drawn there, and --json still goes to stdout."""
    from concurrent.futures import ThreadPoolExecutor

    folder, paths = photos
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: each spends seconds importing torch
        plain, no_color = [
            pool.submit(
                _run_with_tty_stderr, ["extract", "-m", tiny_resnet, "-o", out, "--json", "-b", "2", folder], env
            )
            for out, env in ((tmp_path / "f.h5", _env()), (tmp_path / "g.h5", _env(NO_COLOR="1")))
        ]
        (code, out, tty), (code2, out2, tty2) = plain.result(), no_color.result()
    assert code == 0, tty
    assert json.loads(out)["done"] == len(paths)  # all of stdout is the JSON report
    assert "extracting" in tty and f"{len(paths)}/{len(paths)}" in tty  # the bar, on the terminal
    assert "images/s" in tty and "images/s" in tty2  # with the rate, in colour or not
    assert ESC in tty and ESC not in out
    assert COLOR.search(tty)  # a terminal gets colours ...
    assert code2 == 0 and json.loads(out2)["done"] == len(paths)
    assert "extracting" in tty2 and not COLOR.search(tty2)  # ... unless NO_COLOR says no


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["extract", "photos"], errors.EXIT_USAGE, "--model"),
        (["extract", "-m", "resnet-50", "--bogus"], errors.EXIT_USAGE, "--bogus"),
        (["extract", "-m", "resnet-50", "--batch-size", "many"], errors.EXIT_USAGE, "--batch-size"),
        (["show", "f.h5", "--index", "x"], errors.EXIT_USAGE, "--index"),
        (["shw"], errors.EXIT_USAGE, "shw"),
        (["extract", "-m", "resnet-50", "--pool", "mean", "x"], errors.EXIT_USAGE, "--pool"),
        (["extract", "-m", "resnet-50", "--no-pretrained", "no/such/dir/"], errors.EXIT_INPUT, "no/such/dir"),
        (["info", "nothing-here.h5"], errors.EXIT_INPUT, "nothing-here.h5"),
        (["inspect", "resnet-5O"], errors.EXIT_MODEL, "resnet-5O"),
    ],
)
def test_errors_are_one_line_with_documented_codes(args, code, needle):
    r = run(*args)
    assert r.exit_code == code, (args, r.exit_code, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("bbx: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr


def test_usage_errors_are_one_line_in_a_real_process_too():
    p = bbx_proc("extract", "--dtype", env=_env())
    assert p.returncode == errors.EXIT_USAGE
    assert p.stderr.startswith("bbx: error: ") and p.stderr.count("\n") == 1 and "'--dtype'" in p.stderr


def test_partial_success_has_its_code(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    (folder / "broken.png").write_bytes(b"\x89PNG nope")
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "-q", folder)
    assert r.exit_code == errors.EXIT_PARTIAL and "broken.png" in r.stderr


def test_readme_lists_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Exit status") :]
    documented = {int(c) for c in re.findall(r"^\| (\d+)(?: / \d+)? \|", table, re.M)}
    documented |= {int(c) for c in re.findall(r"^\| \d+ / (\d+) \|", table, re.M)}
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert codes <= documented, codes - documented


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_readme_pipeline_example_runs(tiny_resnet, tmp_path):
    """The README's pipeline, pasted into bash in a folder of photos (with the tiny checkpoint
    standing in for resnet-50, whose weights would need a download)."""
    from tests.conftest import make_photos

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Pipelines") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert [ln.split()[:2] for ln in lines] == [["find", "photos"], ["bbx", "info"], ["bbx", "show"]]
    assert "| bbx extract -0 " in lines[0] and lines[0].endswith(" -")
    make_photos(tmp_path / "photos", [(120, 90), (90, 120), (100, 100)], "jpg")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bbx").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bbx "$@"\n')
    (bin_dir / "bbx").chmod(0o755)
    script = "set -e -o pipefail\n" + block.replace("--model resnet-50", f"--model '{tiny_resnet}'")
    env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "3 images" in p.stdout and "stage4" in p.stdout  # bbx info's report
    with Image.open(tmp_path / "map.png") as im:
        assert im.size == (256 + 4 + 256, 256)  # the input photo beside the stage4 map


def test_the_exit_table_says_what_each_refusal_gives(tiny_resnet, photos, tmp_path, monkeypatch):
    """The cases of the robustness work, run: each gives the status whose README row names it."""
    import json

    import bbx.runtime

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Exit status") :]
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.*) \|$", table, re.M)}
    folder, paths = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "-o", out, "-q", str(paths[0])).exit_code == 0
    damaged = tmp_path / "d.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "config.json").write_text(json.dumps({"model_type": "resnet", "depths": [10**7, 2, 2, 2]}))
    monkeypatch.setattr(bbx.runtime, "machine_memory", lambda: 3 * 10**9)
    cases = [
        (["extract", "-m", tiny_resnet, "-o", out, folder], 3, "an output that exists"),
        (["info", damaged], 3, "damaged"),
        (["extract", "-m", tiny_resnet, "-o", tmp_path / ("x" * 300 + ".h5"), folder], 3, "a name too long"),
        (["inspect", "~nobody-bbx/x"], 3, "missing or unusable input path"),
        (["extract", "-m", tiny_resnet, "-o", tmp_path / "w.h5", "--format", "safetensors", folder], 2, "bad option"),
        (["extract", "-m", "resnet-50", "--no-pretrained", "-b", "4096", "-o", tmp_path / "b.h5", folder], 2, "batch"),
        (["inspect", hostile], 4, "out of range"),
        (["extract", "-m", tiny_resnet, "-o", out, "--dry-run", folder], 3, "an output that exists"),
    ]
    for args, code, words in cases:
        r = run(*args)
        assert r.exit_code == code, (args, r.exit_code, r.stderr)
        assert words in rows[code], (code, words, rows[code])
