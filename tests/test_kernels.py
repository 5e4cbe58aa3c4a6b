"""The kernel choice is measured per machine (bbx.nn.kernels): the probe keeps the fastest
candidate of each lever, the choice is cached per CPU and torch, and the layers follow it."""

from __future__ import annotations

import json
import platform
import time
from typing import Any

import pytest
import torch

from bbx.nn import kernels, layers
from tests.parity import photos
from tests.util import rel_err


def _probe_with(dtype: str, slow: set[str]) -> kernels.Choice:
    """probe() with every candidate timed as fast except ``slow`` (lever.mode names, and
    lever.mode@lanes for a candidate timed again in lanes); no candidate runs."""
    return kernels.probe(dtype, measure=lambda name, fn: 100.0 if name in slow else 1.0)


def test_the_probe_picks_another_path_where_fused_bf16_is_slower(monkeypatch):
    """On every CPU: the timings are fake (no candidate runs), so a CPU without fused bf16
    kernels (AMD EPYC, AVX2 only) is told it has them, to make the fused path a candidate."""
    if not layers.onednn_fusion_available():
        pytest.skip("no fused oneDNN kernels in this torch")
    monkeypatch.setattr(layers, "onednn_bf16_available", lambda: True)
    fast = _probe_with("bfloat16", slow={"linear.eager", "linear.float32", "conv.eager", "conv.float32"})
    assert fast.linear == fast.conv == "fused" and fast.source == "probe"
    slow = _probe_with("bfloat16", slow={"linear.fused", "conv.fused", "conv.float32", "linear.float32"})
    assert slow.linear == slow.conv == "eager"
    fp32 = _probe_with("bfloat16", slow={"linear.fused", "conv.fused", "conv.eager", "linear.eager"})
    assert fp32.linear == fp32.conv == "float32"
    assert set(fast.timings) >= {"linear.fused", "linear.eager", "conv.fused", "attention.sdpa"}


def test_the_fp32_bar_is_timed_first_and_a_hopeless_candidate_gives_up_early():
    """A bf16 kernel is measured against the fp32 layer, timed first; a candidate whose first
    timed call is already far over the lever's best is not called again (on a CPU without bf16
    instructions the emulated kernels were most of the probe's time)."""
    order: list[str] = []
    kernels.probe("bfloat16", measure=lambda name, fn: order.append(name) or 1.0)
    linears = [n for n in order if n.startswith("linear.")]
    assert linears[0] == "linear.float32" and "linear.eager" in linears
    assert [n for n in order if n.startswith("conv.")][0] == "conv.float32"

    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.01)

    assert kernels._best_ms(slow, give_up_ms=2.0) >= 10.0 and len(calls) == 2  # warm-up + one
    calls.clear()
    kernels._best_ms(slow, give_up_ms=1000.0)
    assert len(calls) == 5  # the warm-up and four timed calls
    calls.clear()
    kernels._best_ms(slow)
    assert len(calls) == 5


def _conv_calls(monkeypatch):
    # the availability checks and the first probe run the fused ops once (then cached): run them
    # before the spy, so that only the model's calls count whichever test ran first
    layers.onednn_fusion_available(), layers.onednn_bf16_available()
    kernels.choice("float32"), kernels.choice("bfloat16")
    calls = []
    real = torch.ops.mkldnn._convolution_pointwise

    class Spy:
        def __call__(self, *a, **k):
            calls.append("unary")
            return real(*a, **k)

        def binary(self, *a, **k):
            calls.append("binary")
            return real.binary(*a, **k)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", Spy())
    return calls


@pytest.fixture(autouse=True)
def default_levers(monkeypatch):
    """The default kernel choice instead of this machine's probe: these tests set the levers they
    test themselves (a probe of a dtype costs seconds, on two threads more); the probe's own tests
    call it directly, and the cache's test asks for it. Measured choices are restored after."""
    monkeypatch.setenv("BBX_KERNELS", "default")
    kernels._chosen.cache_clear()
    yield
    kernels._chosen.cache_clear()


@pytest.mark.parametrize("mode", ["fused", "eager", "float32"])
def test_the_model_follows_the_choice_at_parity(monkeypatch, mode):
    """Each mode a probe can pick computes the same maps (to bf16 rounding); only "fused" runs
    the fused oneDNN convolutions."""
    if mode == "fused" and not layers.onednn_bf16_available():
        pytest.skip("no fused bf16 kernels on this CPU")
    from bbx.extractor import Extractor

    calls = _conv_calls(monkeypatch)
    ex = Extractor("resnet-18", pretrained=False, dtype="bfloat16", out_indices=[2])
    x = photos(64, 2).contiguous(memory_format=torch.channels_last)
    with (
        kernels.override("bfloat16", conv=mode, linear=mode, lanes=False),
        kernels.override("float32", conv="eager", linear="eager"),
    ):
        (got,) = ex.forward(x)
    with torch.inference_mode(), kernels.override("float32", conv="eager", linear="eager"):
        (want,) = ex.model(x)  # the same weights, fp32, plain eager ops
    assert (len(calls) > 0) == (mode == "fused")
    assert got.dtype == torch.bfloat16 and rel_err(got.float(), want) < 2e-2
    if mode == "float32":  # bf16 convs and linears both slower than fp32: the whole forward is fp32, rounded
        assert torch.equal(got, want.to(torch.bfloat16))


def test_bf16_keeps_autocast_where_only_some_bf16_kernels_are_slower():
    from bbx.extractor import Extractor

    ex = Extractor("resnet-18", pretrained=False, dtype="bfloat16", out_indices=[2])
    x = photos(64, 2).contiguous(memory_format=torch.channels_last)
    with kernels.override("bfloat16", conv="eager", linear="float32"):
        assert not ex._float32_for(x)
        (got,) = ex.forward(x)
    with kernels.override("bfloat16", conv="float32", linear="float32"):
        assert ex._float32_for(x)
        (fp32,) = ex.forward(x)
    assert got.dtype == fp32.dtype == torch.bfloat16 and not torch.equal(got, fp32)  # bf16 convs ran


def test_choices_are_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.delenv("BBX_KERNELS")  # probed (a fake probe) and cached, not the defaults
    monkeypatch.setenv("BBX_CACHE", str(tmp_path))
    kernels._chosen.cache_clear()
    monkeypatch.setattr(kernels, "probe", lambda dtype: kernels.Choice(dtype, "eager", "eager", source="probe"))
    first = kernels.choice("bfloat16")
    assert first.source == "probe" and first.linear == "eager"
    (file,) = tmp_path.glob("kernels-*.json")
    data = json.loads(file.read_text())
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cpu"]
    kernels._chosen.cache_clear()
    monkeypatch.setattr(kernels, "probe", lambda dtype: pytest.fail("probed again"))
    again = kernels.choice("bfloat16")
    assert again.source == "cache" and again.linear == "eager"
    kernels._chosen.cache_clear()


def test_info_system_shows_every_lever_of_the_cached_choice(tmp_path, monkeypatch):
    from tests.cli import run

    monkeypatch.delenv("BBX_KERNELS")
    monkeypatch.setenv("BBX_CACHE", str(tmp_path))
    kernels._chosen.cache_clear()
    picks = {"float32": ("fused", True, False), "bfloat16": ("float32", False, True)}
    monkeypatch.setattr(
        kernels,
        "probe",
        lambda d: kernels.Choice(d, picks[d][0], "eager", row_slices=picks[d][1], lanes=picks[d][2], source="probe"),
    )
    r = run("info", "--system")
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert lines["float32"].endswith("linear fused, conv eager, attention sdpa, row slices, no lanes (probe)")
    assert lines["bfloat16"].endswith("linear float32, conv eager, attention sdpa, no row slices, lanes (probe)")
    kernels._chosen.cache_clear()
    shown = json.loads(run("info", "--system", "--json").stdout)
    assert shown["choices"]["bfloat16"]["lanes"] is True and shown["choices"]["float32"]["source"] == "cache"
    assert str(tmp_path) in shown["cache"]
    kernels._chosen.cache_clear()


def test_bbx_kernels_eager_turns_every_lever_off(monkeypatch):
    monkeypatch.setenv("BBX_KERNELS", "eager")
    kernels._chosen.cache_clear()
    try:
        c = kernels.choice("float32")
        assert (c.linear, c.conv, c.attention, c.row_slices, c.lanes, c.source) == (
            "eager",
            "eager",
            "sdpa",
            False,
            False,
            "eager",
        )
    finally:
        kernels._chosen.cache_clear()


def test_a_real_probe_runs_quickly_and_names_every_lever():
    t = time.perf_counter()
    c = kernels.probe("float32")
    assert time.perf_counter() - t < 20
    assert c.linear in kernels.LINEAR_MODES and c.conv in kernels.LINEAR_MODES
    assert {"linear.eager", "conv.eager", "row_slices.whole", "row_slices.sliced"} <= set(c.timings)


@pytest.fixture
def two_threads():
    """torch on two threads (an xdist worker runs on one), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_probe_picks_lanes_only_where_they_are_faster(two_threads):
    faster = _probe_with("float32", slow={"lanes.whole"})
    slower = _probe_with("float32", slow={"lanes.lanes"})
    assert faster.lanes and not slower.lanes
    torch.set_num_threads(1)
    assert "lanes.whole" not in _probe_with("float32", slow=set()).timings  # one thread: no lanes to run


def test_where_lanes_win_the_other_levers_are_chosen_as_lanes_run_them(two_threads):
    """A kernel fastest on all threads can lose when every lane runs it on one thread at once:
    the choice follows the lanes' timings where lanes win, the whole-batch timings elsewhere."""
    if not layers.onednn_fusion_available():
        pytest.skip("no fused oneDNN kernels in this torch")
    in_lanes = _probe_with("float32", slow={"lanes.whole", "linear.fused@lanes", "conv.eager"})
    assert in_lanes.lanes and in_lanes.linear == "eager" and in_lanes.conv == "fused"
    assert {"linear.fused@lanes", "linear.eager@lanes"} <= set(in_lanes.timings)
    assert "conv.eager@lanes" not in in_lanes.timings  # far slower on all threads: not timed again
    whole = _probe_with("float32", slow={"lanes.lanes", "linear.fused@lanes"})
    assert not whole.lanes and whole.linear == "fused" and "linear.fused@lanes" not in whole.timings


def test_a_real_probe_times_lanes_with_two_threads(two_threads):
    c = kernels.probe("float32")
    assert c.timings["lanes.whole"] > 0 and c.timings["lanes.lanes"] > 0
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lanes_give_the_whole_batch_maps_in_order(monkeypatch, two_threads, dtype):
    """A batch run as lanes (each thread its share of the images, one torch thread each) gives
    each image the maps the whole batch gives it, in batch order, under the same compute dtype,
    and leaves torch's thread count as it was."""
    import threading

    from bbx.extractor import Extractor

    ex = Extractor("convnext-tiny", pretrained=False, dtype=dtype, out_indices=[0, -1])
    x = photos(64, 5).contiguous(memory_format=torch.channels_last)
    with kernels.override(dtype, lanes=False):
        assert ex._lanes(x) == 1
        whole = ex.forward(x)
    seen: list[tuple[str, int, int]] = []
    real = ex.model.forward

    def spy(t):
        seen.append((threading.current_thread().name, torch.get_num_threads(), len(t)))
        return real(t)

    monkeypatch.setattr(ex.model, "forward", spy)
    with kernels.override(dtype, lanes=True):
        assert ex._lanes(x) == 2 and ex._lanes(x[:1]) == 1
        laned = ex.forward(x)
    assert sorted(n for _, _, n in seen) == [2, 3] and {t for _, t, _ in seen} == {1}
    assert len({name for name, _, _ in seen}) == 2  # two threads ran the model
    assert torch.get_num_threads() == 2
    for a, b in zip(laned, whole):
        assert a.dtype == b.dtype == getattr(torch, dtype) and a.shape == b.shape
        assert rel_err(a.float(), b.float()) < (1e-5 if dtype == "float32" else 1e-2)
        for i in range(len(x)):  # each image where it was
            assert rel_err(a[i].float(), b[i].float()) < (1e-5 if dtype == "float32" else 1e-2)


def test_an_error_in_a_lane_reaches_the_caller_and_restores_the_threads(two_threads):
    def fn(part):
        if part[0] > 0:
            raise MemoryError("lane out of memory")
        return part

    with pytest.raises(MemoryError, match="lane out of memory"):
        kernels.in_lanes(fn, torch.arange(4), 2)
    assert torch.get_num_threads() == 2
    assert [p.tolist() for p in kernels.in_lanes(lambda p: p * 10, torch.arange(5), 2)] == [[0, 10, 20], [30, 40]]


@pytest.mark.parametrize("pool, output_dtype", [("none", "float32"), ("avg", "bfloat16")])
def test_a_laned_run_gives_what_a_whole_run_gives(two_threads, pool, output_dtype):
    """Extractor.run in lanes (each lane normalises, runs, pools and lays out its share) returns
    the whole batch's tensors: same names, shapes, dtypes and layout, to rounding."""
    import numpy as np

    from bbx.extractor import Extractor

    ex = Extractor("resnet-18", pretrained=False, out_indices=[1, -1], pool=pool, output_dtype=output_dtype)
    h, w = ex.input_size
    batch = np.random.default_rng(0).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    with kernels.override("float32", lanes=False):
        whole = ex.run(batch)
    with kernels.override("float32", lanes=True):
        assert ex._lanes(torch.as_tensor(batch)) == 2
        laned = ex.run(batch)
    assert list(laned) == list(whole) == ["stage1", "stage4"]
    for name in whole:
        a, b = laned[name], whole[name]
        assert a.dtype == b.dtype == getattr(torch, output_dtype) and a.shape == b.shape and a.is_contiguous()
        assert rel_err(a.float(), b.float()) < (1e-5 if output_dtype == "float32" else 1e-2)


_FAULTS = """
import ctypes, json, resource
from bbx import runtime

applied = runtime.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]


def tensor():  # as torch's CPU allocator does: 64-byte aligned memory, written, freed
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, 32 << 20) == 0
    ctypes.memset(p, 1, 32 << 20)
    libc.free(p)


for _ in range(10):  # the first few 32 MiB blocks fault their pages in either way
    tensor()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    tensor()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_tensors_are_reused_without_page_faults():
    """A CPU Extractor keeps the memory its forwards free (runtime.keep_freed_memory): a 32 MiB
    tensor allocated and freed again and again faults its 8192 pages in at the first few times only,
    not at every allocation;
    BBX_MALLOC=default, or the user's own malloc settings, keep glibc's behaviour."""
    import subprocess
    import sys

    from tests.cli import proc_env

    def run(**env: str) -> dict:
        e = {k: v for k, v in proc_env().items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        e.update(env)
        p = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=e, check=True)
        return json.loads(p.stdout)

    kept, default, own = run(), run(BBX_MALLOC="default"), run(MALLOC_ARENA_MAX="2")
    assert kept["applied"] and not default["applied"] and not own["applied"]
    assert default["faults"] > 20 * 8192 * 0.9  # every allocation maps fresh pages
    assert kept["faults"] < 8192  # all reused
    assert own["faults"] > 20 * 8192 * 0.9


# --- the model trial: the machine's choice against plain eager on the model's own batches ---------


class _Model:
    """A stand-in batch for ModelTrial: each call costs its candidate's ms per image on a fake
    clock, and records which kernels were in force (as the layers would see them)."""

    def __init__(self, costs: dict[str, float]):
        self.costs, self.now, self.ran = costs, 0.0, []

    def clock(self) -> float:
        return self.now

    def batch(self, trial: kernels.ModelTrial, images: int) -> Any:
        def fn() -> str:
            c = kernels.choice("float32")
            modes = kernels._modes(c)
            name = next((n for n, k in trial.candidates.items() if kernels._modes(k) == modes), "machine")
            self.ran.append(name)
            self.now += self.costs.get(name, 1.0) * images / 1000.0
            return name

        return trial.run(images, fn)


@pytest.fixture
def probed(tmp_path, monkeypatch):
    """This machine's choice is the fused kernels in lanes (a fake probe), cached under tmp_path."""
    monkeypatch.delenv("BBX_KERNELS")
    monkeypatch.delenv("BBX_LANES", raising=False)
    monkeypatch.delenv("BBX_MODEL_TRIAL", raising=False)  # the suite turns the trials off elsewhere
    monkeypatch.setenv("BBX_CACHE", str(tmp_path))
    kernels._chosen.cache_clear()
    monkeypatch.setattr(kernels, "probe", lambda d: kernels.Choice(d, "fused", "fused", lanes=True, source="probe"))
    yield tmp_path
    kernels._chosen.cache_clear()


def test_a_model_trial_keeps_plain_eager_where_it_runs_the_model_faster(probed):
    """The first full batches take turns (warm-up, then two timed each); the fastest per image is
    kept and cached for that model and batch size, so the next run uses it from its first batch."""
    fake = _Model({"chosen": 10.0, "unfused": 9.0, "eager": 8.0})
    model = {"family": "convnext", "config": {"depths": [3, 3, 9, 3]}}
    trial = kernels.ModelTrial(model, "float32", clock=fake.clock)
    for _ in range(9):
        fake.batch(trial, 4)
    assert fake.ran == ["chosen", "unfused", "eager"] * 3
    assert trial.picked == "eager" and trial.source == "trial"
    assert kernels._modes(trial.pick) == kernels._modes(kernels.plain("float32"))
    state = trial.state()
    assert state["source"] == "trial" and state["ms_per_image"]["chosen"] == [10.0, 10.0, 10.0]
    assert fake.batch(trial, 4) == "eager"  # decided: every batch of its size runs it; a last, shorter
    assert fake.batch(trial, 3) == "chosen"  # batch the pick cached for its size, else the machine's choice
    assert kernels.choice("float32").linear == "fused"  # outside its batches, the machine's choice

    (file,) = probed.glob("kernels-*.json")
    record = json.loads(file.read_text())
    assert record["choices"]["float32"]["linear"] == "fused"  # the machine's choice is kept beside it
    (entry,) = record["models"].values()
    assert entry["pick"] == "eager" and entry["batch"] == 4 and entry["modes"]["lanes"] is False

    again = kernels.ModelTrial(model, "float32", clock=fake.clock)
    fake.ran.clear()
    fake.batch(again, 4)
    assert again.source == "cache" and again.picked == "eager" and again.state()["source"] == "cache"
    with kernels.override("float32", linear="fused", lanes=True):  # kernels set by hand win over a pick
        assert again.run(4, lambda: kernels.choice("float32").linear) == "fused"
    assert again.run(4, lambda: kernels.choice("float32").linear) == "eager"
    other = kernels.ModelTrial(model, "float32", clock=fake.clock)
    fake.batch(other, 8)  # another batch size: a trial of its own
    assert other.source == "machine" and other.state()["source"] == "trying"

    from tests.cli import run

    assert "model trials 1 model tried on their own batches, kept: 1 eager" in run("info", "--system").stdout
    assert json.loads(run("info", "--system", "--json").stdout)["models"] == record["models"]


def test_a_model_trial_prefers_the_machine_choice_on_a_tie_and_drops_a_far_slower_candidate(probed):
    fake = _Model({"chosen": 5.0, "unfused": 5.0, "eager": 50.0})
    trial = kernels.ModelTrial({"family": "resnet"}, "float32", clock=fake.clock)
    for _ in range(8):
        fake.batch(trial, 2)
    # eager's first timed batch was ten times the best: not timed again, so the trial ends a turn early
    assert fake.ran == ["chosen", "unfused", "eager", "chosen", "unfused", "eager", "chosen", "unfused"]
    assert trial.picked == "chosen" and trial.pick.linear == "fused" and trial.pick.lanes


def test_a_model_trial_times_full_batches_only_and_only_where_the_machine_chooses(probed, monkeypatch):
    fake = _Model({"chosen": 2.0, "unfused": 1.0, "eager": 3.0})
    trial = kernels.ModelTrial({"family": "vit"}, "float32", clock=fake.clock)
    fake.batch(trial, 4)
    assert fake.batch(trial, 1) == "chosen"  # a short batch: the machine's choice, untimed
    assert [len(v) for v in trial.ms_per_image.values()] == [1, 0, 0]

    for setting in ({"BBX_KERNELS": "default"}, {"BBX_LANES": "1"}, {"BBX_MODEL_TRIAL": "0"}):
        with monkeypatch.context() as m:
            for k, v in setting.items():
                m.setenv(k, v)
            kernels._chosen.cache_clear()
            off = kernels.ModelTrial({"family": "vit"}, "float32", clock=fake.clock)
            fake.ran.clear()
            for _ in range(9):
                fake.batch(off, 4)
            assert set(fake.ran) == {"machine"} and off.state()["source"] == "machine"
    kernels._chosen.cache_clear()
    # bf16 this CPU computes in fp32 (its bf16 kernels, eager ones too, measured slower): no trial
    monkeypatch.setattr(kernels, "probe", lambda d: kernels.Choice(d, "float32", "float32", source="probe"))
    bf16 = kernels.ModelTrial({"family": "vit"}, "bfloat16", clock=fake.clock)
    bf16.run(4, lambda: None)
    assert bf16.candidates == {} and bf16.state()["source"] == "machine"


def test_extract_reports_the_trial_and_the_next_run_starts_from_its_pick(probed, tmp_path):
    """A real model: the trial's batches give the maps of the picked kernels to rounding, the
    report names the pick, and the second run reads it from the cache."""
    import h5py

    from tests.cli import run
    from tests.util import photo

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(20):
        photo(96 + 8 * i, 80, seed=i).save(folder / f"p{i:02d}.jpg")
    maps = []
    for n in range(2):
        out = tmp_path / f"f{n}.h5"
        args = ("extract", "-m", "resnet-18", "--no-pretrained", "-b", "2", "--image-size", "64", "--out-indices", "2")
        r = run(*args, "-o", str(out), "--json", "-q", str(folder))
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)["kernels"]
        assert rep["dtype"] == "float32" and rep["source"] == ("trial", "cache")[n]
        assert rep["pick"] in ("chosen", "unfused", "eager")
        with h5py.File(out) as f:
            maps.append(torch.from_numpy(f["features/stage2"][:]))
    assert rel_err(maps[0], maps[1]) < 1e-5  # the trial's batches ran other kernels: rounding only
    # the terminal summary says once, on the run that decided, what the trial kept (another input size: a new trial)
    args = ("extract", "-m", "resnet-18", "--no-pretrained", "-b", "2", "--image-size", "72", "--out-indices", "2")
    r = run(*args, "-o", str(tmp_path / "f2.h5"), str(folder))
    assert r.exit_code == 0 and "kernels: tried on this model's first batches (chosen " in r.stderr, r.stderr
    r = run(*args, "-o", str(tmp_path / "f3.h5"), str(folder))
    assert r.exit_code == 0 and "kernels:" not in r.stderr, r.stderr
    # the Python API starts from that pick too, and by default never runs a trial itself
    import numpy as np

    from bbx.extractor import Extractor

    ex = Extractor("resnet-18", pretrained=False, image_size=64, out_indices=[2])
    batch = np.stack([ex.load(p) for p in sorted(folder.iterdir())[:2]])
    assert torch.equal(ex.run(batch)["stage2"], maps[1][:2])
    assert ex.kernels["source"] == "cache" and ex.kernels["pick"] == rep["pick"]
    other = Extractor("resnet-18", pretrained=False, image_size=64, out_indices=[1])
    first = other.run(batch)["stage1"]
    for _ in range(9):
        assert torch.equal(other.run(batch)["stage1"], first)
    assert other.kernels["source"] == "machine" and "pick" not in other.kernels


def test_a_trial_pick_holds_in_its_own_thread_and_lanes_only(probed, two_threads):
    """Two models in two threads keep their own kernels; lanes started under a pick run it."""
    import threading

    eager = kernels.plain("float32")
    seen: dict[str, Any] = {}
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait(5)
        seen["other thread"] = kernels.choice("float32").linear
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with kernels._running(eager):
        inside.set()
        release.wait(5)
        seen["lanes"] = kernels.in_lanes(lambda part: kernels.choice("float32").linear, torch.zeros(4), 2)
    t.join()
    assert seen == {"other thread": "fused", "lanes": ["eager", "eager"]}
    assert kernels.choice("float32").linear == "fused"


def test_a_failed_batch_leaves_its_turn_to_be_taken_again(probed):
    fake = _Model({"chosen": 1.0, "unfused": 2.0, "eager": 3.0})
    trial = kernels.ModelTrial({"family": "resnet"}, "float32", clock=fake.clock)
    fake.batch(trial, 2)

    def fail() -> None:
        raise RuntimeError("a bad batch")

    with pytest.raises(RuntimeError):
        trial.run(2, fail)
    assert kernels.choice("float32").linear == "fused"  # the candidate's kernels are not left behind
    for _ in range(8):
        fake.batch(trial, 2)
    assert fake.ran == ["chosen", "unfused", "eager"] * 3 and trial.picked == "chosen"


def test_a_damaged_cache_section_is_dropped_not_trusted(probed):
    kernels.choice("float32")  # writes the machine's record
    (file,) = probed.glob("kernels-*.json")
    record = json.loads(file.read_text())
    record["models"] = ["not", "a", "mapping"]
    file.write_text(json.dumps(record))
    fake = _Model({"chosen": 2.0, "unfused": 1.0, "eager": 3.0})
    trial = kernels.ModelTrial({"family": "vit"}, "float32", clock=fake.clock)
    for _ in range(9):
        fake.batch(trial, 2)
    assert trial.picked == "unfused" and isinstance(json.loads(file.read_text())["models"], dict)
