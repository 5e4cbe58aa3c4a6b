"""``bbx extract --engine ray`` on a local Ray cluster (2 CPUs, no dashboard, no usage
statistics): the merged output equals a single run bit for bit, an actor killed mid-unit is
restarted and its unit resumes from its ``.partial``, and a driver stopped after two units
reruns only the rest. Ray costs several seconds per start, so these are few."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbx.engines.ray import plan_resources
from bbx.errors import BbxError
from bbx.formats import open_output
from bbx.shards import Shard
from tests.cli import proc_env, run
from tests.conftest import make_photos
from tests.test_shards import _raw
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray[data] is not installed")
N_IMAGES = 12


def test_actors_leave_a_cpu_to_the_pipeline_but_use_every_core():
    r = plan_resources(cpus=2, gpus=0, nodes=1, node_cpus=2, actors=None, device="auto")
    assert (r.actors, r.cpus, r.gpus, r.threads) == (1, 1.0, 0.0, 2)
    r = plan_resources(cpus=16, gpus=0, nodes=2, node_cpus=8, actors=4, device="cpu")
    assert r.actors == 4 and r.cpus * 4 <= 15 and r.threads == 4
    r = plan_resources(cpus=32, gpus=4, nodes=1, node_cpus=32, actors=None, device="auto")
    assert (r.actors, r.gpus, r.threads) == (4, 1.0, None)
    with pytest.raises(BbxError):
        plan_resources(cpus=8, gpus=0, nodes=1, node_cpus=8, actors=None, device="cuda")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_resnet):
    """Photos, a bad file, and the single run's output to compare with."""
    folder = tmp_path_factory.mktemp("raycorpus")
    seeds = make_photos(tmp_path_factory.mktemp("seeds"), [(640, 480), (480, 640)] * 2, "jpg")
    for i in range(N_IMAGES):
        os.link(seeds[i % len(seeds)], folder / f"img{i:03d}.jpg")
    (folder / "img005b.jpg").write_bytes(b"\xff\xd8\xff not really")
    single = tmp_path_factory.mktemp("single") / "single.h5"
    # a local Ray's actors run torch on every core (plan_resources), whatever OMP_NUM_THREADS this
    # (xdist) worker has: the reference runs on as many threads, so that it reads the same measured
    # kernel choice and sums in the same order as the actors (one thread differed in the last bits)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        assert run("extract", "-m", tiny_resnet, "-o", single, "-b", "1", folder).exit_code == 10
    finally:
        torch.set_num_threads(before)
    return folder, _raw(single)


def _driver(ckpt: Path, out: Path, folder: Path, home: Path, **env: str) -> list:
    cmd = [sys.executable, "-m", "bbx", "extract", "-m", str(ckpt), "-o", str(out), "-b", "1", "-j", "0"]
    cmd += ["--engine", "ray", "--unit-size", "2", "--json", str(folder)]
    return [cmd, proc_env(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **env)]


def _actors() -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::") and b"_UnitWorker" in cmdline:
                pids.append(int(d))
    return pids


def _wait(p: subprocess.Popen, until, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        try:
            if until():
                return True
        except (BbxError, OSError):
            pass
        time.sleep(0.05)
    return False


def _units(out: Path) -> Path:
    return out.with_name(out.name + ".units")


def _running_with_rows(partial: Path) -> bool:
    o = open_output(partial)
    return o.images >= 1 and o.status == "running"


class _Stepper:
    """Runs the actors in short slices once their units have begun, each check made while they are
    paused: a tiny model finishes a unit faster than a poll, so a free-running actor can slip past
    the moment a test waits for (caught on an idle CI machine)."""

    def __init__(self, out: Path, slice_s: float = 0.003):
        self.out, self.slice_s, self.paused = out, slice_s, []

    def pause(self) -> list[int]:
        """The actors, paused (once their units folder exists; [] before)."""
        if not _units(self.out).is_dir():
            return []
        if self.paused:
            for pid in self.paused:
                os.kill(pid, signal.SIGCONT)
            time.sleep(self.slice_s)
        self.paused = _actors()
        for pid in self.paused:
            os.kill(pid, signal.SIGSTOP)
        return self.paused

    def resume(self) -> None:
        for pid in self.paused:
            os.kill(pid, signal.SIGCONT)
        self.paused = []


@needs_ray
def test_an_actor_killed_mid_unit_is_restarted_and_its_unit_resumes(tiny_resnet, corpus, tmp_path):
    folder, want = corpus
    out = tmp_path / "ray.h5"
    home = tmp_path / "home"
    home.mkdir()
    cmd, env = _driver(tiny_resnet, out, folder, home)
    env.pop("RAY_AUTH_MODE", None)  # bbx's own handling of Ray's token authentication
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def half_done() -> list[Path]:
        units = _units(out)
        if not units.is_dir():
            return []
        # rows committed and the unit still running (not one whose last batch is written, awaiting its rename)
        return [f for f in units.iterdir() if f.name.endswith(".partial") and _running_with_rows(f)]

    stepper = _Stepper(out)

    def stopped_mid_unit() -> bool:
        """The actor, paused (SIGSTOP) while a unit of its has committed rows and is not finished."""
        victims = stepper.pause()
        if not victims:
            return False
        assert len(victims) == 1
        if half_done():
            stopped_mid_unit.pid = victims[0]
            return True
        return False

    try:
        assert _wait(p, stopped_mid_unit), p.communicate()[1]
    except BaseException:
        stepper.resume()
        raise
    os.kill(stopped_mid_unit.pid, signal.SIGKILL)  # once
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 10, stderr
    assert "Traceback" not in stderr
    report = json.loads(stdout)
    assert any("recovered" in n for n in report["notes"]), report  # resumed from its .partial
    assert report["done"] + report["already_present"] == N_IMAGES + 1 - len(report["skipped"])
    assert _raw(out) == want
    assert not _units(out).exists()
    assert not (home / ".ray" / "auth_token").exists()  # no token written into the home folder


@needs_ray
def test_a_driver_stopped_after_two_units_reruns_only_the_rest(tiny_resnet, corpus, tmp_path):
    folder, want = corpus
    out = tmp_path / "ray.safetensors"
    cmd, env = _driver(tiny_resnet, out, folder, tmp_path, RAY_AUTH_MODE="disabled")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finished() -> list[Path]:
        units = _units(out)
        if not units.is_dir():
            return []
        return [
            f
            for f in units.iterdir()
            if f.name.endswith(".safetensors") and not f.with_name(f.name + ".partial").exists()
        ]

    stepper = _Stepper(out)

    def paused_after_two() -> bool:
        # checked while the actors are paused: no further unit may finish before the driver is stopped
        return bool(stepper.pause()) and len(finished()) >= 2

    try:
        assert _wait(p, paused_after_two), p.communicate()[1]
    except BaseException:
        stepper.resume()
        raise
    p.send_signal(signal.SIGTERM)  # the driver shuts its cluster down, the paused actor with it
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, stderr
    assert not out.exists()
    kept = [f.name for f in finished()]
    assert len(kept) >= 2
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 10, r.stderr
    report = json.loads(r.stdout)
    assert any(f"{len(kept)} of 7 units finished by an earlier run are kept" in n for n in report["notes"])
    # only the rest was extracted: the kept units' inputs (and what a stopped unit had committed) were not
    kept_inputs = sum(b - a for a, b in (Shard(int(n.split("-")[1]), 7).bounds(N_IMAGES + 1) for n in kept))
    assert report["already_present"] >= kept_inputs
    assert report["done"] + report["already_present"] + len(report["skipped"]) == N_IMAGES + 1
    assert _raw(out) == want
