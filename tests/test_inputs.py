"""Input discovery: files, folders, stdin lists, order, dedupe, missing paths."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bbx.errors import InputError, UsageError
from bbx.inputs import discover, read_list


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_is_searched_recursively_by_extension_case_insensitive_in_sorted_order(tmp_path):
    names = ["b.JPG", "a.png", "sub/c.jpeg", "sub/deeper/d.WebP", "e.bmp", "f.gif", "g.tif", "h.TIFF", "notes.txt"]
    for n in names:
        _touch(tmp_path / n)
    found = [p.relative_to(tmp_path).as_posix() for p in discover([str(tmp_path)])]
    assert found == sorted(n for n in names if not n.endswith(".txt"))


def test_explicit_files_keep_their_order_and_any_extension(tmp_path):
    a, b = _touch(tmp_path / "z.jpg"), _touch(tmp_path / "a.data")
    assert discover([str(a), str(b)]) == [a, b]


def test_stdin_lines_and_nul_lists(tmp_path):
    a, b = _touch(tmp_path / "x y.jpg"), _touch(tmp_path / "b.png")
    lines = io.BytesIO(f"{b}\n\n{a}\r\n".encode())
    assert discover(["-"], stdin=lines) == [b, a]
    nul = io.BytesIO(f"{a}\0{b}\0".encode())
    assert discover(["-"], stdin=nul, null=True) == [a, b]


def test_nul_list_without_flag_is_refused():
    with pytest.raises(UsageError, match="-0"):
        read_list(io.BytesIO(b"a.jpg\0b.jpg\0"), null=False)


def test_missing_path_is_an_error_before_any_work(tmp_path):
    a = _touch(tmp_path / "a.jpg")
    with pytest.raises(InputError, match="no such file or folder: .*missing.jpg"):
        discover([str(a), str(tmp_path / "missing.jpg")])
    with pytest.raises(InputError):
        discover(["-"], stdin=io.BytesIO(f"{tmp_path / 'gone.png'}\n".encode()))


def test_duplicates_are_extracted_once_at_first_position(tmp_path):
    a, b = _touch(tmp_path / "d" / "a.jpg"), _touch(tmp_path / "d" / "b.jpg")
    same_a = tmp_path / "d" / ".." / "d" / "a.jpg"
    got = discover([str(b), str(tmp_path / "d"), str(same_a)])
    assert got == [b, a]


def test_no_inputs_is_a_usage_error():
    with pytest.raises(UsageError):
        discover([])


def test_a_file_named_twice_through_a_symlink_is_said_once(tmp_path):
    import os

    real = _touch(tmp_path / "photos" / "a.jpg")
    _touch(tmp_path / "photos" / "b.jpg")
    os.symlink(real, tmp_path / "link.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "folder-link")
    notes: list[str] = []
    found = discover([str(tmp_path / "photos"), str(tmp_path / "link.jpg"), str(real)], notes=notes)
    assert found == [real, tmp_path / "photos" / "b.jpg"]
    said = f"{tmp_path / 'link.jpg'} is the same file as {real} and 1 more"
    assert notes == [f"{said}: each file is extracted once, at its first place"]
    # in a folder, links to files are followed and links to folders are not descended into
    (tmp_path / "top").mkdir()
    os.symlink(real, tmp_path / "top" / "l.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "top" / "sub")
    assert discover([str(tmp_path / "top")]) == [tmp_path / "top" / "l.jpg"]
