"""Which files to extract: positional paths, folders and ``-`` (a list on stdin).

* A file is taken as given (if it is not an image, decoding skips it and says why).
* A folder is searched recursively for image files by extension, case-insensitively, in sorted
  path order; hidden files and folders (a leading ``.``, such as macOS's ``._name`` resource files)
  and anything that is not a regular file (a FIFO would block a reader forever) are left out.
* ``-`` reads a list of paths from stdin, one per line, or NUL-separated (``-0``, for
  ``find -print0``); they keep the order given, and listed folders are searched as above.
* A ``.tar`` file named (not found in a folder) is a webdataset shard (:mod:`bbx.tars`); a name
  with a brace range that does not exist as written (``data/{00000..00099}.tar``) stands for the
  names it expands to.

Every path must exist before any work starts; the same file named twice (by two spellings, a
symbolic link, or through a folder and directly) is extracted once, at its first position, and
said once. Inside folders, symbolic links to image files are followed; links to folders are not
descended into (a link cycle cannot loop, and a tree is read once).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from bbx.errors import InputError, UsageError
from bbx.tars import expand_braces, has_braces

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def is_image_name(path: str | Path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[Path]:
    found: list[str] = []

    def unreadable(e: OSError) -> None:
        raise InputError(f"cannot read folder {e.filename}: {e.strerror or e}")

    for root, dirs, files in os.walk(folder, followlinks=False, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith(".") or not is_image_name(f):
                continue
            full = os.path.join(root, f)
            if os.path.isfile(full):  # follows links; leaves out FIFOs, sockets and devices
                found.append(full)
    return [Path(p) for p in sorted(found)]


def read_list(stream: BinaryIO, *, null: bool) -> list[str]:
    """Paths listed on a stream: NUL-separated with ``null``, else one per line."""
    data = stream.read()
    if not null and b"\0" in data:
        raise UsageError("the path list on stdin contains NUL bytes: pass -0/--null for `find -print0` lists")
    parts = data.split(b"\0") if null else data.splitlines()
    out = []
    for raw in parts:
        if not null:
            raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        out.append(os.fsdecode(raw))
    return out


def discover(
    args: Sequence[str], *, stdin: BinaryIO | None = None, null: bool = False, notes: list[str] | None = None
) -> list[Path]:
    """The files to extract, in order, without duplicates. InputError (before any work) if a path
    does not exist, is not a file or folder, or cannot be stored as UTF-8; or if nothing is found.
    ``notes`` receives one line when some files were named more than once (two spellings, a
    symbolic link, a folder and the file)."""
    if not args:
        raise UsageError("no inputs: give image files, folders, or - to read a list of paths from stdin")
    if null and "-" not in args:
        raise UsageError("-0/--null applies to a list of paths on stdin: add - to the inputs")
    named: list[str] = []
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise UsageError("- given but stdin is closed: there is no list of paths to read")
            named.extend(read_list(stdin, null=null))
        elif has_braces(arg) and not os.path.lexists(arg):
            named.extend(expand_braces(arg))  # data/{00000..00099}.tar, as webdataset names shards
        else:
            named.append(arg)
    modes: list[tuple[str, int]] = []  # one stat per named path (a list on stdin may be long)
    missing: list[str] = []
    for p in named:
        try:
            modes.append((p, os.stat(p).st_mode))
        except OSError:  # as os.path.exists: whatever cannot be stat'ed is not there for us
            missing.append(p)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"no such file or folder: {missing[0]}{more}")
    files: list[Path] = []
    for p, mode in modes:
        if stat.S_ISDIR(mode):
            files.extend(_walk(Path(p)))
        elif stat.S_ISREG(mode):
            files.append(Path(p))
        else:
            raise InputError(f"{p} is not a regular file or a folder")
    for f in files:
        try:
            str(f).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"file name is not valid UTF-8 (outputs store paths as UTF-8): {os.fsencode(f)!r}; rename it"
            ) from None
    if not files:
        raise InputError(
            f"no image files found in {', '.join(args)} (searched for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    twice: list[tuple[Path, Path]] = []
    unique = list(dedupe(files, twice))
    if twice and notes is not None:
        again, first = twice[0]
        more = f" and {len(twice) - 1} more" if len(twice) > 1 else ""
        notes.append(f"{again} is the same file as {first}{more}: each file is extracted once, at its first place")
    return unique


def dedupe(paths: Iterable[Path], twice: list[tuple[Path, Path]] | None = None) -> Iterable[Path]:
    """``paths`` without a second name for a file already given (``twice`` collects the pairs)."""
    seen: dict[str, Path] = {}
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            if twice is not None:
                twice.append((p, seen[key]))
            continue
        seen[key] = p
        yield p
