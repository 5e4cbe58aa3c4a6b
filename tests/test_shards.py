"""Sharded runs: the slices, ``--shard auto`` from Slurm and torchrun, shard outputs, resuming a
killed shard, and ``bbx merge`` (bit-for-bit equal to a single run, either format, refusals,
resume, flat memory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bbx import merge as merge_mod
from bbx.errors import InputError, UsageError
from bbx.formats import RunFacts, StageLayout, open_output, open_writer
from bbx.shards import Shard, digest, from_environment, parse
from tests.cli import proc_env, run
from tests.conftest import make_photos
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


# --- the slices and where they come from ---------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17, 1000])
@pytest.mark.parametrize("count", [1, 3, 4, 16])
def test_shards_concatenate_to_the_whole_in_order(n, count):
    items = list(range(n))
    parts = [Shard(k, count).take(items) for k in range(count)]
    assert [x for p in parts for x in p] == items
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_k_of_n_and_its_output_names():
    s = parse("3/16")
    assert (s.index, s.count) == (3, 16)
    assert s.output(Path("out/feats.h5")) == Path("out/feats.shard-00003-of-00016.h5")
    assert s.output(Path("v.safetensors")).name == "v.shard-00003-of-00016.safetensors"
    for bad in ("16/16", "-1/4", "3", "a/b", "0/0", "1/100000"):
        with pytest.raises(UsageError):
            parse(bad)


def test_shard_auto_reads_slurm_arrays_srun_and_torchrun():
    # --array=1-7:2: ids 1, 3, 5, 7 are shards 0..3 of 4
    array = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    got = [from_environment({**array, "SLURM_ARRAY_TASK_ID": str(i)}) for i in (1, 3, 5, 7)]
    assert [(s.index, s.count) for s in got] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert "Slurm array task 5" in got[2].describe()
    srun = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    s = from_environment(srun)
    assert (s.index, s.count, s.local_rank) == (2, 4, 1) and "srun" in s.source
    # an array of 3 tasks, each running srun with 4 tasks: array task 1, srun task 2 -> 1*4+2 of 12
    both = {**srun, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "3"}
    s = from_environment(both)
    assert (s.index, s.count) == (6, 12) and "x srun" in s.source
    s = from_environment({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (s.index, s.count, s.local_rank) == (5, 8, 1) and "torchrun" in s.source
    # a batch script with --ntasks but no srun step is not sharded by its task count
    with pytest.raises(UsageError, match="no Slurm job array"):
        from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})


@pytest.mark.parametrize(
    "env,words",
    [
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2"}, "MIN + k*STEP"),
        ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "3"}, "gaps"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "not a number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "does not exist"),
        ({}, "no Slurm job array"),
    ],
)
def test_shard_auto_refusals_are_one_line(env, words):
    with pytest.raises(UsageError) as e:
        from_environment(env)
    assert words in e.value.message and "\n" not in e.value.message


# --- sharded runs end to end ---------------------------------------------------------------------


def _raw(path: Path) -> tuple[list[str], list[tuple[str, str]], dict[str, tuple[str, tuple, bytes]]]:
    """(paths, failures, {stage: (stored dtype, shape, bytes)}) of any output, as stored."""
    out = open_output(path)
    try:
        arrays = {}
        for s in out.stages:
            a = out.read_raw(s, 0, out.images)
            arrays[s.name] = (s.dtype, a.shape, a.tobytes())
        return out.paths, out.failed, arrays
    finally:
        out.close()


@pytest.fixture()
def corpus(photos):
    folder, _ = photos
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "more" / "zero.png").write_bytes(b"")
    return folder


def _extract(ckpt: Path, out: Path, folder: Path, *extra: str):
    r = run(
        "extract",
        "-m",
        ckpt,
        "--out-indices",
        "1,-1",
        "--store-dtype",
        "bfloat16",
        "-b",
        "2",
        "-o",
        out,
        folder,
        *extra,
    )
    assert r.exit_code in (0, 10), r.stderr
    return r


def test_shards_merged_equal_a_single_run_bit_for_bit_either_format(tiny_resnet, corpus, tmp_path):
    single = tmp_path / "single.h5"
    _extract(tiny_resnet, single, corpus)
    want = _raw(single)
    assert want[1] and all(d == "bfloat16" for d, _, _ in want[2].values())  # failures, bf16 kept
    for shard_suffix, merged_suffix in ((".h5", ".safetensors"), (".safetensors", ".h5")):
        shards = tmp_path / f"shards{shard_suffix}"
        for k in range(4):
            r = _extract(tiny_resnet, shards / f"feats{shard_suffix}", corpus, "--shard", f"{k}/4", "--json")
            report = json.loads(r.stdout)
            assert report["shard"].startswith(f"shard {k}/4") and report["output"].endswith(
                f"feats.shard-0000{k}-of-00004{shard_suffix}"
            )
        merged = tmp_path / f"merged{merged_suffix}"
        r = run("merge", "-o", merged, shards)
        assert r.exit_code == 0, r.stderr
        assert _raw(merged) == want
        assert open_output(merged).facts.shard_index is None  # a whole run again


def _sources(path: Path):
    out = open_output(path)
    try:
        size, box = out.read_sources(range(out.images))
        return dict(zip(out.paths, zip(size.tolist(), box.tolist())))
    finally:
        out.close()


def test_merge_carries_every_rows_source_and_keeps_the_shards_compression(tiny_resnet, photos, tmp_path):
    """Where each row came from (image size, box) survives bbx merge in either format, and an
    HDF5 merge of compressed shards is compressed the same way (safetensors has no compression)."""
    import h5py

    folder, _ = photos
    single = tmp_path / "single.h5"
    _extract(tiny_resnet, single, folder, "--resize", "pad")
    want = _sources(single)
    assert want and all(s[0][0] > 0 for s in want.values())
    shards = tmp_path / "shards"
    for k in range(3):
        _extract(
            tiny_resnet, shards / "feats.h5", folder, "--resize", "pad", "--shard", f"{k}/3", "--compression", "gzip"
        )
    for suffix in (".h5", ".safetensors"):
        merged = tmp_path / f"merged{suffix}"
        r = run("merge", "-o", merged, shards)
        assert r.exit_code == 0, r.stderr
        got = _sources(merged)
        assert got.keys() == want.keys()
        for key, (size, box) in want.items():
            assert got[key][0] == size and np.allclose(got[key][1], box, atol=0.01), key
    assert open_output(tmp_path / "merged.h5").facts.compression == "gzip"
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert {f["features"][n].compression for n in f["features"]} == {"gzip"}
    assert open_output(tmp_path / "merged.safetensors").facts.compression == "none"


def test_a_shard_records_its_place_and_info_shows_it(tiny_resnet, corpus, tmp_path):
    out = tmp_path / "f.h5"
    _extract(tiny_resnet, out, corpus, "--shard", "1/3")
    shard = tmp_path / "f.shard-00001-of-00003.h5"
    f = open_output(shard).facts
    names = [str(p) for p in sorted(corpus.rglob("*")) if p.is_file()]
    assert (f.shard_index, f.shard_count, f.input_count) == (1, 3, len(names))
    assert f.input_digest == digest(names)
    r = run("info", shard)
    assert r.exit_code == 0 and f"1 of 3, of {len(names)} inputs" in r.stdout
    info = json.loads(run("info", shard, "--json").stdout)
    assert info["shard"] == {"index": 1, "count": 3, "input_count": len(names), "input_digest": f.input_digest}
    # resuming the shard with another input list would mix rows of two slicings: refused
    (corpus / "new.jpg").write_bytes((corpus / "img000.jpg").read_bytes())
    r = run(
        "extract", "-m", tiny_resnet, "--out-indices", "1,-1", "--store-dtype", "bfloat16", "-o", out, "--resume",
        "--shard", "1/3", corpus,
    )  # fmt: skip
    assert r.exit_code == 2 and "same inputs in the same order" in r.stderr


def test_sigkilled_shard_resumes_and_the_merge_equals_a_single_run(tiny_resnet, tmp_path):
    folder = tmp_path / "big"
    seeds = make_photos(tmp_path / "seeds", [(1024, 768), (768, 1024)] * 2, "jpg")
    folder.mkdir()
    for i in range(24):
        os.link(seeds[i % len(seeds)], folder / f"img{i:03d}.jpg")
    base = [sys.executable, "-m", "bbx", "extract", "-m", str(tiny_resnet), "-b", "1", "-j", "0", "-q", str(folder)]
    out = tmp_path / "s" / "f.h5"
    for k in (0, 2):
        assert run(*base[3:], "-o", out, "--shard", f"{k}/3").exit_code == 0
    kept = {k: os.stat(out.with_name(f"f.shard-0000{k}-of-00003.h5")) for k in (0, 2)}
    victim = out.with_name("f.shard-00001-of-00003.h5")
    p = subprocess.Popen([*base, "-o", str(out), "--shard", "1/3"], env=proc_env(), stderr=subprocess.PIPE)
    partial = victim.with_name(victim.name + ".partial")
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        try:
            if partial.exists() and open_output(partial).images >= 2:
                break
        except (InputError, OSError):
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not victim.exists() and partial.exists()
    r = run("merge", "-o", tmp_path / "m.h5", out.parent)
    assert r.exit_code == 3 and "shard 1 of 3" in r.stderr and "--resume" in r.stderr
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.partial").exists()
    r = run(*base[3:], "-o", out, "--shard", "1/3", "--resume", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["already_present"] >= 2 and report["done"] + report["already_present"] == 8
    for k, st in kept.items():  # the other shards were not touched
        now = os.stat(out.with_name(f"f.shard-0000{k}-of-00003.h5"))
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert run("merge", "-o", tmp_path / "m.h5", out.parent).exit_code == 0
    single = tmp_path / "single.h5"
    assert run(*base[3:], "-o", single).exit_code == 0
    assert _raw(tmp_path / "m.h5") == _raw(single)


# --- bbx merge on shards made by the writers directly --------------------------------------------

STAGES = [StageLayout("stage1", (2, 3, 3), "bfloat16"), StageLayout("stage4", (4,), "float32")]
NAMES = [f"imgs/{i:03d}.jpg" for i in range(10)]
FACTS = RunFacts(
    model="m",
    checkpoint="org/m",
    revision="abc",
    architecture="resnet",
    weights="pretrained",
    out_features=("stage1", "stage4"),
    out_indices=(1, 4),
    input_size=(8, 8),
    store_dtype="bfloat16",
    preprocessing={"kind": "crop_pct"},
    cwd="/data",
    input_count=len(NAMES),
    input_digest=digest(NAMES),
)


def _rows(ids: list[int], stages=STAGES) -> dict[str, np.ndarray]:
    out = {}
    for s in stages:
        v = np.arange(int(np.prod(s.shape)), dtype=np.uint32).reshape(1, *s.shape)
        v = v + np.asarray(ids, dtype=np.uint32).reshape(-1, *([1] * len(s.shape))) * 1000
        out[s.name] = v.astype(np.uint16) if s.dtype == "bfloat16" else v.astype(np.float32)
    return out


def make_shard(folder: Path, k: int, n: int, *, suffix=".h5", finish="complete", stages=STAGES, names=NAMES, **facts):
    start, stop = Shard(k, n).bounds(len(names))
    path = folder / f"feats.shard-{k:05d}-of-{n:05d}{suffix}"
    fmt = "hdf5" if suffix == ".h5" else "safetensors"
    f = FACTS.with_(shard_index=k, shard_count=n, **facts)
    if "out_features" in facts:
        stages = [StageLayout(name, s.shape, s.dtype) for name, s in zip(facts["out_features"], stages)]
    w = open_writer(path, fmt, facts=f, stages=stages)
    ids = list(range(start, stop))
    good = [i for i in ids if i % 4 != 3]
    for i in ids:
        if i % 4 == 3:
            w.fail(names[i], f"bad {i}")
    if good:
        w.write([names[i] for i in good], _rows(good, stages))
    if finish == "abort":
        w.abort()  # killed: its .partial stays
    else:
        w.finish(finish)
    return path


@pytest.fixture()
def shard_dir(tmp_path):
    folder = tmp_path / "shards"
    for k in range(3):
        make_shard(folder, k, 3, suffix=".h5" if k != 1 else ".safetensors")
    return folder


def test_merge_of_mixed_format_shards_keeps_rows_dtypes_and_failures(shard_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    r = run("merge", "-o", out, shard_dir, "--json")
    assert r.exit_code == 0, r.stderr
    m = open_output(out)
    good = [i for i in range(10) if i % 4 != 3]
    assert m.paths == [NAMES[i] for i in good]
    assert m.failed == [(NAMES[i], f"bad {i}") for i in range(10) if i % 4 == 3]
    for s in STAGES:
        got = m.read_raw(m.stage(s.name), 0, m.images)
        assert got.dtype == np.dtype(s.storage) and got.tobytes() == _rows(good)[s.name].tobytes()
    assert json.loads(r.stdout)["rows"] == len(good)
    # the default output name is the shards' base name, beside them
    r = run("merge", shard_dir)
    assert r.exit_code == 0 and open_output(shard_dir / "feats.h5").paths == m.paths


def _refused(args, *, code, words, tmp_path):
    out = tmp_path / "m.h5"
    r = run("merge", "-o", out, *args)
    assert r.exit_code == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bbx: error:") and words in lines[0], r.stderr
    assert not out.exists() and not out.with_name("m.h5.partial").exists()  # nothing written


@pytest.mark.parametrize(
    "facts,words",
    [
        ({"checkpoint": "org/other"}, "another model"),
        ({"revision": "def"}, "another model"),
        ({"out_features": ("stage1", "stage3")}, "another stages"),
        ({"preprocessing": {"kind": "shortest_edge"}}, "another preprocessing"),
        ({"store_dtype": "float16"}, "another store dtype"),
        ({"input_digest": digest(NAMES[::-1])}, "another input list"),
        ({"input_count": 11}, "list of 11 inputs"),
        ({"cwd": "/elsewhere"}, "same folder"),
    ],
)
def test_merge_refuses_shards_of_different_runs(shard_dir, tmp_path, facts, words):
    (shard_dir / "feats.shard-00002-of-00003.h5").unlink()
    make_shard(shard_dir, 2, 3, **facts)
    _refused([shard_dir], code=2, words=words, tmp_path=tmp_path)


def test_merge_refuses_other_shapes(shard_dir, tmp_path):
    other = [StageLayout("stage1", (2, 4, 4), "bfloat16"), StageLayout("stage4", (4,), "float32")]
    (shard_dir / "feats.shard-00002-of-00003.h5").unlink()
    make_shard(shard_dir, 2, 3, stages=other)
    _refused([shard_dir], code=2, words="other shapes", tmp_path=tmp_path)


def test_merge_refuses_missing_doubled_unfinished_and_repeated(shard_dir, tmp_path):
    files = sorted(shard_dir.iterdir())
    _refused(files[:2], code=3, words="shard 2 of 3 is missing", tmp_path=tmp_path)
    copy = tmp_path / "copy"
    make_shard(copy, 1, 3)
    _refused([*files, copy], code=2, words="both claim shard 1 of 3", tmp_path=tmp_path)
    (shard_dir / "feats.shard-00002-of-00003.h5").unlink()
    make_shard(shard_dir, 2, 3, finish="abort")
    _refused([shard_dir], code=3, words="shard 2 of 3", tmp_path=tmp_path)
    (shard_dir / "feats.shard-00002-of-00003.h5.partial").unlink()
    make_shard(shard_dir, 2, 3, finish="interrupted")
    _refused([shard_dir], code=3, words="interrupted", tmp_path=tmp_path)
    (shard_dir / "feats.shard-00002-of-00003.h5").unlink()
    make_shard(shard_dir, 2, 3, names=NAMES[:7] + NAMES[1:4])  # rows 7..9 repeat paths of shards 0, 1
    _refused([shard_dir], code=3, words="a merged output holds each path once", tmp_path=tmp_path)
    _refused([tmp_path / "nothing-here"], code=3, words="no such file", tmp_path=tmp_path)
    plain = tmp_path / "plain.h5"
    w = open_writer(plain, "hdf5", facts=FACTS, stages=STAGES)
    w.finish("complete")
    _refused([plain], code=3, words="not a shard", tmp_path=tmp_path)


def test_merge_complete_only_leaves_out_missing_and_unfinished_shards(shard_dir, tmp_path):
    (shard_dir / "feats.shard-00002-of-00003.h5").unlink()
    make_shard(shard_dir, 2, 3, finish="abort")
    (shard_dir / "feats.shard-00001-of-00003.safetensors").unlink()
    out = tmp_path / "m.h5"
    r = run("merge", "-o", out, "--complete-only", shard_dir)
    assert r.exit_code == 10, r.stderr
    assert "left out shard 1 of 3: missing" in r.stderr and "left out shard 2 of 3" in r.stderr
    assert open_output(out).paths == [NAMES[i] for i in range(3) if i % 4 != 3]


def test_a_killed_merge_resumes_where_it_stopped(shard_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    paths = merge_mod.find([shard_dir])
    with pytest.raises(KeyboardInterrupt):
        merge_mod.merge(paths, out, chunk_bytes=1, progress=stop_after_two)  # one row per chunk
    assert not out.exists() and open_output(out).images == 2  # the staging folder kept both chunks
    r = run("merge", "-o", out, shard_dir)
    assert r.exit_code == 3 and "--resume" in r.stderr
    r = run("merge", "-o", out, "--resume", "--json", shard_dir)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["resumed_rows"] == 2
    fresh = tmp_path / "fresh.safetensors"
    assert run("merge", "-o", fresh, shard_dir).exit_code == 0
    assert _raw(out) == _raw(fresh)


def test_merge_reads_a_chunk_of_rows_at_a_time(shard_dir, tmp_path, monkeypatch):
    seen = []
    for cls in {type(open_output(p)) for p in merge_mod.find([shard_dir])}:
        original = cls.read_raw

        def spy(self, stage, start, stop, _original=original):
            seen.append(stop - start)
            return _original(self, stage, start, stop)

        monkeypatch.setattr(cls, "read_raw", spy)
    row = sum(s.row_bytes for s in STAGES)
    merge_mod.merge(merge_mod.find([shard_dir]), tmp_path / "m.h5", chunk_bytes=2 * row)
    assert seen and max(seen) == 2  # never more than a chunk in memory


def test_merge_of_no_shards_or_a_folder_of_two_runs_is_refused(shard_dir, tmp_path):
    assert run("merge", "-o", tmp_path / "m.h5").exit_code == 2
    make_shard(shard_dir, 0, 2, suffix=".safetensors").rename(shard_dir / "other.shard-00000-of-00002.safetensors")
    r = run("merge", "-o", tmp_path / "m.h5", shard_dir)
    assert r.exit_code == 3 and "more than one run" in r.stderr


def test_resume_of_an_unsharded_run_by_a_shard_is_refused_by_facts():
    a = FACTS.with_(shard_index=None, shard_count=None, input_count=None, input_digest=None)
    with pytest.raises(UsageError, match="same --shard"):
        a.check_resumable(FACTS.with_(shard_index=0, shard_count=2), Path("x.h5"))
