"""Renaming checkpoint keys to a family's own: the loop every ``remap`` needs, once."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: (pattern, replacement) pairs, as ``re.sub`` takes them
Rules = Sequence[tuple[re.Pattern[str], str]]


def rename(
    state: Mapping[str, Any],
    rules: Rules,
    *,
    drop: tuple[str, ...] = (),
    strip: tuple[str, ...] = (),
    first_match: bool = False,
    origin: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``state`` with its keys renamed: keys starting with a ``drop`` prefix are left out (task
    heads), the first matching ``strip`` prefix is removed (a head model's wrapper), then the
    ``rules`` are applied: every rule in turn, or only the first that matches (``first_match``).
    Keys no rule matches keep their name, so a strict load reports them. ``origin``, when given,
    receives new key -> checkpoint key (to name a checkpoint's keys in errors)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if drop and key.startswith(drop):
            continue
        k = key
        for prefix in strip:
            if k.startswith(prefix):
                k = k[len(prefix) :]
                break
        for pattern, repl in rules:
            if first_match:
                if pattern.match(k):
                    k = pattern.sub(repl, k, count=1)
                    break
            else:
                k = pattern.sub(repl, k)
        out[k] = value
        if origin is not None:
            origin[k] = key
    return out
