"""The safetensors writer under kills, resumes and odd inputs, driven directly (no model).

Rows are tiny and their values tell which path they belong to, so every check compares both the
paths and the data. Kills are real: a forked child runs the writer and dies (``os._exit``, like
SIGKILL: no cleanup, no finally) just before its k-th file system step, for every k.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bbx.errors import InputError
from bbx.formats import RunFacts, StageLayout, open_output, open_writer
from bbx.formats import safetensors_ as st
from bbx.formats.safetensors_ import SafetensorsWriter, read_journal

STAGES = [StageLayout("a", (2, 2, 2), "float32"), StageLayout("b", (3,), "float16")]
FACTS = RunFacts(out_features=("a", "b"), store_dtype="float32", pool="none")
ROW = sum(s.bytes_per_image for s in STAGES)  # 38 bytes


def _name(i: int) -> str:
    return f"p{i}"


def _maps(ids: Sequence[int]) -> dict[str, np.ndarray]:
    v = np.asarray(ids, dtype=np.float32)
    return {
        "a": np.broadcast_to(v[:, None, None, None], (len(ids), 2, 2, 2)).astype(np.float32),
        "b": np.broadcast_to(v[:, None], (len(ids), 3)).astype(np.float16),
    }


def _writer(path: Path, *, rows_per_shard: int = 1000, **kw) -> SafetensorsWriter:
    return SafetensorsWriter(path, facts=FACTS, stages=STAGES, shard_bytes=rows_per_shard * ROW, **kw)


def _put(w: SafetensorsWriter, ids: Sequence[int], batch: int = 2) -> None:
    ids = list(ids)
    for k in range(0, len(ids), batch):
        chunk = ids[k : k + batch]
        w.write([_name(i) for i in chunk], _maps(chunk))


def _resume_and_finish(path: Path, ids: Sequence[int], *, rows_per_shard: int = 1000, batch: int = 2) -> list[str]:
    """What ``bbx extract --resume`` does: skip what the output holds, write the rest, finish."""
    w = _writer(path, rows_per_shard=rows_per_shard, resume=True)
    have = set(w.existing_paths)
    todo = [i for i in ids if _name(i) not in have]
    w.forget_failed({_name(i) for i in todo})
    _put(w, todo, batch)
    w.finish("complete")
    return w.notes


def _rows(path: Path) -> list[int]:
    """The ids of the output's rows, checking that every row's data is its path's."""
    out = open_output(path)
    assert out.format in ("safetensors", "safetensors-sharded"), out.format
    ids = [int(p[1:]) for p in out.paths]
    a = out.read(out.stage("a"), range(out.images))
    b = out.read(out.stage("b"), range(out.images))
    assert a.shape == (len(ids), 2, 2, 2) and b.shape == (len(ids), 3)
    assert np.array_equal(a, _maps(ids)["a"]) and np.array_equal(b, _maps(ids)["b"].astype(np.float32))
    return ids


def _check_final(path: Path, ids: Sequence[int]) -> None:
    """The output holds exactly ``ids``, every file loads with safetensors alone, and nothing else is left."""
    assert _rows(path) == list(ids)
    out = open_output(path)
    for f in out.files:
        if f.name.endswith(".safetensors"):
            load_file(str(f))
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f.name for f in out.files)


def _looks_complete(path: Path) -> list[int] | None:
    """The rows of what a reader would take for a finished output, None if there is none."""
    if not (path.exists() or st.index_path(path).exists()):
        return None
    return _rows(path)


# --- real kills ------------------------------------------------------------------------------
_KILLED = 86
_STEPS = ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "fsync", "truncate", "ftruncate")


def _in_child(action: Callable[[], None], kill_at: int | None = None) -> bool:
    """Run ``action`` in a forked child that dies just before its ``kill_at``-th file system step
    (or, with None, after the action, abandoning whatever it has open). True if it was killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            count = 0

            def wrap(fn):
                def step(*a, **kw):
                    nonlocal count
                    count += 1
                    if count == kill_at:
                        os._exit(_KILLED)
                    return fn(*a, **kw)

                return step

            for name in _STEPS:
                setattr(os, name, wrap(getattr(os, name)))
            action()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, _KILLED), f"the writer failed in the child (exit {code}); see its traceback above"
    return code == _KILLED


def _single(path: Path, ids: Sequence[int], rows_per_shard: int = 1000) -> None:
    w = _writer(path, rows_per_shard=rows_per_shard)
    _put(w, ids)
    w.finish("complete")


def _fresh(ids, rows_per_shard):
    def act(path: Path) -> None:
        _single(path, ids, rows_per_shard)

    return act


def _extend(ids, rows_per_shard):
    def act(path: Path) -> None:
        _resume_and_finish(path, ids, rows_per_shard=rows_per_shard)

    return act


def _overwrite(ids, rows_per_shard):
    def act(path: Path) -> None:
        w = _writer(path, rows_per_shard=rows_per_shard, overwrite=True)
        _put(w, ids)
        w.finish("complete")

    return act


OLD = list(range(7))
NEW = list(range(100, 107))
# name: (rows before and the shard rows they were written with, the run, what it aims at, its shard rows[,
# the shard rows of the --resume after the kill])
SCENARIOS = {
    "fresh-single": (None, _fresh, list(range(5)), 1000),
    "fresh-sharded": (None, _fresh, list(range(7)), 3),
    "fresh-single-resumed-with-smaller-shards": (None, _fresh, list(range(5)), 1000, 2),
    "extend-single-stays-single": ((OLD[:3], 1000), _extend, list(range(6)), 1000),
    "extend-single-to-sharded": ((OLD[:3], 1000), _extend, list(range(9)), 3),
    "extend-sharded": ((OLD[:4], 3), _extend, list(range(9)), 3),
    "extend-sharded-resumed-with-smaller-shards": ((OLD[:4], 3), _extend, list(range(9)), 3, 1),
    "overwrite-sharded-same-names": ((OLD, 3), _overwrite, NEW, 3),
    "overwrite-single-by-sharded": ((OLD[:4], 1000), _overwrite, NEW[:5], 2),
    "overwrite-sharded-by-single": ((OLD, 3), _overwrite, NEW[:4], 1000),
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_kill_at_any_step_leaves_nothing_wrong_and_resume_completes(tmp_path, monkeypatch, scenario):
    """Whatever step a kill lands on (while staging, sealing a shard, assembling, replacing an old
    output or cleaning up), what looks finished is the old or the new output, never a mix, and
    --resume then reaches the run's result: no row lost, none twice, every file loadable by
    safetensors, nothing left behind."""
    before, make, ids, rows_per_shard, *later = SCENARIOS[scenario]
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # a kill is no power cut: the steps count, not the disk
    overwrite = make is _overwrite
    for k in range(1, 1000):
        d = tmp_path / f"k{k}"
        d.mkdir()
        path = d / "f.safetensors"
        old: list[int] | None = None
        if before is not None:
            _single(path, before[0], before[1])
            old = list(before[0])
        killed = _in_child(partial(make(ids, rows_per_shard), path), kill_at=k)
        seen = _looks_complete(path)
        new = list(ids) if overwrite or old is None else old + [i for i in ids if i not in old]
        # an overwrite may pass through having no output at all; nothing else is allowed
        assert seen in (old, new) or (overwrite and seen is None), (k, seen)
        if not killed:
            _check_final(path, new)
            assert k > 5
            return
        # the run was killed: --resume completes it
        staged = read_journal(st.staging_dir(path))
        committed_overwrite = overwrite and bool(staged) and "facts" in staged[0]
        want = new if committed_overwrite or not overwrite or seen != old else old + list(ids)
        _resume_and_finish(path, ids, rows_per_shard=later[0] if later else rows_per_shard)
        _check_final(path, want)
        shutil.rmtree(d)
    raise AssertionError("the run never finished")


# --- one bug at a time -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["t1.h5", "t1.safetensors"])
def test_resume_refuses_an_output_of_another_format(tmp_path, name):
    """Resuming an HDF5 output as safetensors used to drop every row it holds."""
    path = tmp_path / name
    w = open_writer(path, "hdf5", facts=FACTS, stages=STAGES)
    w.write(["p1", "p2"], _maps([1, 2]))
    w.finish("complete")
    with pytest.raises(InputError, match="not a safetensors output") as e:
        _writer(path, resume=True)
    assert "\n" not in str(e.value)
    assert open_output(path).paths == ["p1", "p2"]
    assert not st.staging_dir(path).exists()


def test_resume_refuses_an_hdf5_partial_under_the_staging_name(tmp_path):
    """A killed HDF5 run's ``.partial`` file under the staging folder's name is refused, not replayed."""
    path = tmp_path / "t1.safetensors"
    st.staging_dir(path).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(InputError, match="not a safetensors staging folder"):
        _writer(path, resume=True)
    assert st.staging_dir(path).is_file()
    w = _writer(path, overwrite=True)  # --overwrite starts over
    _put(w, [1])
    w.finish("complete")
    _check_final(path, [1])


class _Killed(BaseException):
    pass


def _abandon(w: SafetensorsWriter) -> None:
    """What a kill leaves of a writer: its open files closed, nothing cleaned up."""
    for f in w._raw.values():
        f.close()
    if w._journal is not None:
        w._journal.close()
    lock = getattr(w, "_lock", None)
    if lock is not None:
        lock.close()


def test_kill_after_the_output_is_in_place_duplicates_nothing(tmp_path, monkeypatch):
    """The output is renamed into place, then the run dies before removing its staging folder: the
    next --resume used to replay the folder and add every row a second time."""
    path = tmp_path / "f.safetensors"
    w = _writer(path)
    _put(w, range(4))

    def die(*a, **kw):
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(st.shutil, "rmtree", die)
        with pytest.raises(_Killed):
            w.finish("complete")
    _abandon(w)
    assert _rows(path) == [0, 1, 2, 3]
    _resume_and_finish(path, range(6))
    _check_final(path, list(range(6)))


def test_a_staging_folder_the_output_already_holds_is_dropped(tmp_path):
    """A staging folder whose run token the finished output carries is spent: dropped, not replayed."""
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "f.safetensors"
    w = _writer(path)
    _put(w, range(4))
    spare = tmp_path / "spare"
    shutil.copytree(st.staging_dir(path), spare)
    w.finish("complete")
    assert open_output(path).run == read_journal(spare)[0]["run"]
    shutil.copytree(spare, st.staging_dir(path))  # as if the kill came before the journal went
    notes = _resume_and_finish(path, range(6))
    assert any("finished" in n for n in notes), notes
    _check_final(path, list(range(6)))


def test_a_torn_journal_line_is_cut_before_new_entries(tmp_path):
    """Entries appended after a torn line used to be unreadable: their rows were lost, and a seal
    among them left the replay without its raw files."""
    path = tmp_path / "f.safetensors"
    _in_child(lambda: _put(_writer(path, rows_per_shard=5), range(4)))
    journal = st.staging_dir(path) / "journal.jsonl"
    whole = journal.stat().st_size
    with open(journal, "ab") as f:
        f.write(b'{"rows": ["p4", "p')  # a write cut short (ENOSPC, power loss)
    torn = journal.read_bytes()

    def more() -> None:
        w = _writer(path, rows_per_shard=5, resume=True)
        assert w.existing_paths == ["p0", "p1", "p2", "p3"]
        _put(w, [4, 5, 6])  # seals the first shard

    _in_child(more)
    w = _writer(path, rows_per_shard=5, resume=True)
    assert w.existing_paths == [_name(i) for i in range(7)]
    _put(w, [7])
    w.finish("complete")
    _check_final(path, list(range(8)))
    from bbx.formats.safetensors_ import scan_journal

    journal.parent.mkdir()
    journal.write_bytes(torn)
    entries, end = scan_journal(journal.parent)
    assert end == whole and entries == read_journal(journal.parent) and entries[-1] == {"rows": ["p2", "p3"]}


def test_resume_with_a_smaller_shard_size(tmp_path):
    """More staged rows than the new shard size holds used to make the split negative (rows twice)."""
    path = tmp_path / "f.safetensors"
    _in_child(lambda: _put(_writer(path, rows_per_shard=5), range(4)))
    _resume_and_finish(path, range(7), rows_per_shard=2)
    _check_final(path, list(range(7)))
    shards = json.loads(st.index_path(path).read_text())["metadata"]["shards"]
    assert [s["rows"] for s in shards] == [2, 2, 2, 1]


def test_shards_are_capped_by_the_header_size_of_their_paths(tmp_path, monkeypatch):
    """A file's paths live in its header, which safetensors caps at 100 MB: shards end before."""
    monkeypatch.setattr(st, "HEADER_CAP", 400)
    path = tmp_path / "f.safetensors"
    long = [f"{'x' * 60}{i}" for i in range(12)]
    w = _writer(path)
    for k in range(0, 12, 3):
        w.write([_name(i) + long[i] for i in range(k, k + 3)], _maps(range(k, k + 3)))
    w.finish("complete")
    out = open_output(path)
    assert out.format == "safetensors-sharded" and out.images == 12
    from safetensors import safe_open

    assert len(out.files) > 3  # at least three shards, and the index
    for f in out.files[:-1]:
        with safe_open(str(f), "np") as g:
            assert len(json.dumps(g.metadata()["paths"])) <= 400


def test_a_failed_assembly_leaves_no_temporary_file(tmp_path):
    """A failure while writing a file used to leave its ``.tmp`` behind."""
    path = tmp_path / "f.safetensors"
    w = _writer(path)
    _put(w, range(4))
    for raw in st.staging_dir(path).glob("stage-a.*.raw"):
        os.truncate(raw, 10)
    with pytest.raises(OSError, match="shorter"):
        w.finish("complete")
    _abandon(w)
    assert not list(tmp_path.glob("*.tmp")) and not path.exists()


def test_extending_a_single_file_keeps_it_single_when_it_fits(tmp_path):
    """A resume used to turn a small single file into a shard set (``load_file`` then failed)."""
    path = tmp_path / "f.safetensors"
    _single(path, range(3), rows_per_shard=10)
    _resume_and_finish(path, range(7), rows_per_shard=10)
    _check_final(path, list(range(7)))
    assert not st.index_path(path).exists()
    t = load_file(str(path))
    assert t["a"].shape == (7, 2, 2, 2) and list(t["b"][:, 0]) == list(range(7))
    _resume_and_finish(path, range(12), rows_per_shard=10)  # beyond the shard size: shards
    _check_final(path, list(range(12)))
    assert st.index_path(path).exists() and not path.exists()


def test_a_second_run_on_the_same_staging_folder_is_refused(tmp_path):
    """Two runs on one staging folder used to interleave their writes."""
    path = tmp_path / "f.safetensors"
    w = _writer(path)
    _put(w, range(2))
    for kw in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(InputError, match="being written by another bbx run") as e:
            _writer(path, **kw)
        assert "\n" not in str(e.value)
    _put(w, range(2, 4))
    w.finish("complete")
    _check_final(path, list(range(4)))


def test_write_checks_row_shapes_against_the_stage_layout(tmp_path):
    """A map of another shape or itemsize would silently shift every later row: an internal error."""
    path = tmp_path / "f.safetensors"
    w = _writer(path)
    bad = _maps([0, 1])
    bad["b"] = bad["b"].astype(np.float32)
    with pytest.raises(RuntimeError, match="stage b maps"):
        w.write(["p0", "p1"], bad)
    bad = _maps([0, 1])
    bad["a"] = bad["a"][:, :1]
    with pytest.raises(RuntimeError, match="stage a maps"):
        w.write(["p0", "p1"], bad)
    with pytest.raises(RuntimeError):
        w.write(["p0"], _maps([0, 1]))
    w.abort()


def test_forget_failed_journals_only_the_paths_it_drops(tmp_path):
    path = tmp_path / "f.safetensors"
    w = _writer(path)
    w.fail("x.jpg", "broken")
    w.forget_failed({"x.jpg", "y.jpg", "z.jpg"})
    entries = read_journal(st.staging_dir(path))
    assert entries[-1] == {"forget": ["x.jpg"]}
    w.abort()
