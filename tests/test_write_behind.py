"""The HDF5 writer's write-behind: committed batches go to the disk while the run goes on and leave
the page cache (:class:`bbx.formats.base.WriteBehind`); advice, so nothing it does can lose data."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bbx.formats import RunFacts, StageLayout, open_output, open_writer
from bbx.formats.base import WriteBehind

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and fadvise are Linux calls")


def resident_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore on a shared read-only map)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _written(path: Path, nbytes: int) -> int:
    """``path`` filled with ``nbytes`` and synced to the disk (clean pages, still cached); its pages."""
    with open(path, "wb") as f:
        f.write(os.urandom(nbytes))
        f.flush()
        os.fsync(f.fileno())
    return resident_pages(path)


@linux_only
def test_pages_on_disk_leave_the_page_cache(tmp_path):
    control = tmp_path / "control.bin"
    cached = _written(control, 8 << 20)
    fd = os.open(control, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if cached == 0 or resident_pages(control) > cached // 4:
        pytest.skip("this file system keeps its pages whatever the advice (tmpfs)")
    target = tmp_path / "out.bin"
    assert _written(target, 8 << 20) > (8 << 20) // mmap.PAGESIZE // 2
    behind = WriteBehind(target)
    thread = behind._thread
    behind.kick()
    behind.close()  # after the advice asked for
    assert resident_pages(target) <= cached // 4
    assert not thread.is_alive() and behind._fd is None


@linux_only
def test_dirty_pages_are_never_dropped(tmp_path):
    """Advice given while the data is still only in memory loses nothing: the file reads back whole."""
    target = tmp_path / "out.bin"
    data = os.urandom(4 << 20)
    with open(target, "wb") as f:
        behind = WriteBehind(target)
        for i in range(0, len(data), 1 << 20):
            f.write(data[i : i + (1 << 20)])
            f.flush()
            behind.kick()
        behind.close()
    assert target.read_bytes() == data


def _writer(out: Path):
    """An HDF5 writer of one stage ``v`` of (8, 16, 16) maps."""
    facts = RunFacts(model="m", checkpoint="c", out_features=("v",))
    return open_writer(out, "hdf5", facts=facts, stages=[StageLayout("v", (8, 16, 16), "float32")])


def _fill(w, batches: list[np.ndarray]) -> None:
    for b, maps in enumerate(batches):
        w.write([f"img-{b}-{i}.jpg" for i in range(len(maps))], {"v": maps})


def _batches(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((4, 8, 16, 16)).astype("f4") for _ in range(n)]


def _rows(out: Path) -> np.ndarray:
    o = open_output(out)
    return np.asarray(o.read(o.stages[0], range(o.images)))


@linux_only
def test_the_hdf5_writer_advises_on_its_partial_after_each_batch_and_stops(tmp_path, monkeypatch):
    out = tmp_path / "feats.h5"
    real, seen = os.posix_fadvise, []

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        seen.append((os.fstat(fd).st_ino, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    partial = out.with_name(out.name + ".partial")
    batches = _batches()
    w = _writer(out)
    inode = partial.stat().st_ino
    _fill(w, batches)
    thread = w._behind._thread
    assert thread is not None and thread.is_alive()
    w.finish("complete")
    assert not thread.is_alive() and w._behind is None
    assert seen and all(s == (inode, 0, 0, os.POSIX_FADV_DONTNEED) for s in seen)
    np.testing.assert_array_equal(_rows(out), np.concatenate(batches))


@linux_only
def test_refused_advice_changes_nothing(tmp_path, monkeypatch):
    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    out = tmp_path / "feats.h5"
    batches = _batches()
    w = _writer(out)
    thread = w._behind._thread
    for b, maps in enumerate(batches):
        w.write([f"img-{b}-{i}.jpg" for i in range(len(maps))], {"v": maps})
        thread.join(timeout=10)  # the first refusal ends the thread: no advice is asked again
        assert not thread.is_alive()
    w.finish("complete")
    np.testing.assert_array_equal(_rows(out), np.concatenate(batches))


def test_an_aborted_run_stops_the_thread_and_keeps_its_batches(tmp_path):
    out = tmp_path / "feats.h5"
    batches = _batches(2)
    w = _writer(out)
    _fill(w, batches)
    thread = w._behind._thread
    w.abort()
    assert not thread.is_alive() and w._behind is None
    partial = out.with_name(out.name + ".partial")
    assert partial.exists() and not out.exists()
    kept = open_output(partial)
    assert kept.images == 8
    np.testing.assert_array_equal(kept.read(kept.stages[0], range(8)), np.concatenate(batches))


def test_a_thread_that_cannot_start_leaves_the_run_without_the_advice(tmp_path, monkeypatch):
    import threading

    def no_thread(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    out = tmp_path / "feats.h5"
    batches = _batches(2)
    w = _writer(out)
    assert w._behind._thread is None and w._behind._fd is None
    _fill(w, batches)
    w.finish("complete")
    np.testing.assert_array_equal(_rows(out), np.concatenate(batches))
