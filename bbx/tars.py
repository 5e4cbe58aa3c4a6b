"""Webdataset inputs: ``.tar`` shards (img2dataset's output: ``key.jpg`` beside ``key.json``).

A ``.tar`` named on the command line (or in a list on stdin, or by a brace range such as
``data/{00000..00099}.tar``) is read with the standard library's :mod:`tarfile`: its headers are
listed once, in archive order, and each image member's bytes are read at its offset when it is
decoded (nothing is extracted to disk, one member in memory per decoding thread). A sample is a
key (the member name less its extension); its image is the first member with an image extension
(``.jpg .jpeg .png .webp .bmp .gif .tif .tiff``), the other members (``.json``, ``.txt``, ...)
are left alone. Rows are named ``<tar path as given>#<key>``; the bytes are decoded by bbx's own
decoder (:func:`bbx.images.decode`), so a corrupt member is skipped and listed like a corrupt file.

No torch, no numpy.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bbx.errors import UsageError

#: ``{00000..00099}`` (zero-padded widths kept) and ``{a,b,c}``
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")
#: the most names one brace pattern may expand to
MAX_EXPANSION = 1_000_000


def is_tar(path: str | Path) -> bool:
    return str(path).lower().endswith(".tar")


def expand_braces(pattern: str) -> list[str]:
    """``data/{00000..00002}.tar`` -> the three names; ``{a,b}`` lists too; nested and several
    groups expand left to right. A pattern without braces is itself."""
    found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m is not None]
    if not found:
        return [pattern]
    m = min(found, key=lambda x: x.start())  # the leftmost group varies slowest
    head, tail = pattern[: m.start()], pattern[m.end() :]
    if m.re is _RANGE:
        lo, hi = m.group(1), m.group(2)
        a, b = int(lo), int(hi)
        width = max(len(lo), len(hi)) if (lo.startswith("0") or hi.startswith("0")) else 0
        if abs(b - a) + 1 > MAX_EXPANSION:
            raise UsageError(f"{pattern}: the range expands to more than {MAX_EXPANSION} names")
        step = 1 if b >= a else -1
        parts = [str(i).zfill(width) if i >= 0 else "-" + str(-i).zfill(width) for i in range(a, b + step, step)]
    else:
        parts = m.group(1).split(",")
    out: list[str] = []
    for part in parts:
        out.extend(expand_braces(head + part + tail))
        if len(out) > MAX_EXPANSION:
            raise UsageError(f"{pattern}: expands to more than {MAX_EXPANSION} names")
    return out


def has_braces(arg: str) -> bool:
    return bool(_RANGE.search(arg) or _LIST.search(arg))


@dataclass(frozen=True)
class TarMember:
    """One sample of a webdataset tar: its image member's bytes lie at ``offset`` (``size``
    bytes) in ``tar`` (the path as given). ``str()`` is its row name, ``<tar>#<key>``."""

    tar: str
    key: str
    member: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.tar}#{self.key}"

    def read(self) -> bytes:
        """The image member's bytes (OSError when the tar cannot be read, or is cut short)."""
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.tar}: member {self.member} is cut short (the tar is truncated)")
        return data


def _image_ext(name: str) -> bool:
    from bbx.inputs import IMAGE_EXTENSIONS

    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _key(name: str) -> str:
    """The sample key of a member: its name less its extension."""
    return os.path.splitext(name)[0]


def members(tar: str) -> tuple[list[TarMember], str | None]:
    """The samples of ``tar`` with an image, in archive order, and why the listing stopped early
    (a damaged or truncated archive: the samples before the damage are kept), or None."""
    found: list[TarMember] = []
    seen: set[str] = set()
    problem = None
    try:
        with tarfile.open(tar, mode="r:") as archive:
            while True:
                try:
                    info = archive.next()
                except tarfile.ReadError as e:
                    problem = f"truncated or damaged tar: listing stopped after {len(found)} samples ({e})"
                    break
                if info is None:
                    break
                if not info.isreg() or not _image_ext(info.name):
                    continue
                key = _key(info.name)
                if key in seen:  # a second image for the same sample: the first one is the sample's
                    continue
                seen.add(key)
                found.append(TarMember(tar, key, info.name, info.offset_data, info.size))
    except tarfile.ReadError as e:
        problem = f"not a readable tar archive ({e})"
    except OSError as e:
        problem = f"cannot read tar: {e.strerror or e}"
    end = os.path.getsize(tar) if problem is None and os.path.exists(tar) else None
    if end is not None and found and found[-1].offset + found[-1].size > end:
        problem = f"truncated tar: member {found[-1].member} is cut short"
    return found, problem


def expand(units: Sequence[Path]) -> tuple[list[Path | TarMember], list[tuple[str, str]]]:
    """Units (files and ``.tar`` files) -> the inputs to extract, in order: files as they are,
    each tar's samples in archive order; and the tars that could not be (wholly) read, with why."""
    items: list[Path | TarMember] = []
    failures: list[tuple[str, str]] = []
    for unit in units:
        if is_tar(unit):
            found, problem = members(str(unit))
            items.extend(found)
            if problem is not None:
                failures.append((str(unit), problem))
        else:
            items.append(unit)
    return items, failures


def row_names(items: Iterable[Path | TarMember]) -> list[str]:
    return [str(i) for i in items]
