"""Which files to extract: positional paths, folders and ``-`` (a list on stdin).

* A file is taken as given (if it is not an image, decoding skips it and says why).
* A folder is searched recursively for image files by extension, case-insensitively, in sorted
  path order.
* ``-`` reads a list of paths from stdin, one per line, or NUL-separated (``-0``, for
  ``find -print0``); they keep the order given, and listed folders are searched as above.

Every path must exist before any work starts; the same file named twice (by two spellings or
through a folder and directly) is extracted once, at its first position.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from bbx.errors import InputError, UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def is_image_name(path: str | Path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[Path]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".bbx-")]
        found.extend(os.path.join(root, f) for f in files if is_image_name(f))
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


def discover(args: Sequence[str], *, stdin: BinaryIO | None = None, null: bool = False) -> list[Path]:
    """The files to extract, in order, without duplicates; InputError if a path does not exist."""
    if not args:
        raise UsageError("no inputs: give image files, folders, or - to read a list of paths from stdin")
    named: list[str] = []
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise UsageError("- given but there is no stdin to read paths from")
            named.extend(read_list(stdin, null=null))
        else:
            named.append(arg)
    missing = [p for p in named if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"no such file or folder: {missing[0]}{more}")
    files: list[Path] = []
    for p in named:
        path = Path(p)
        files.extend(_walk(path) if path.is_dir() else [path])
    return list(dedupe(files))


def dedupe(paths: Iterable[Path]) -> Iterable[Path]:
    seen: set[str] = set()
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            continue
        seen.add(key)
        yield Path(os.path.normpath(p))
