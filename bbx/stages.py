"""Stage selection: ``out_indices`` / ``out_features`` with the transformers backbone rules.

A backbone has named stages (``stem``, ``stage1``, ...). A selection names some of them by index
(negative counts from the end) or by name; when both are given they must name the same stages;
neither means the last stage. Duplicates, out-of-range indices, unknown names and selections out
of stage order are refused. The result is always in stage order with non-negative indices. A
checkpoint may bring its own default (a task model's taps: :attr:`bbx.checkpoints.Checkpoint.default_stages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bbx.errors import UsageError


@dataclass(frozen=True)
class Selection:
    """A validated selection: names and non-negative indices, aligned, in stage order."""

    out_features: tuple[str, ...]
    out_indices: tuple[int, ...]


def _valid(stage_names: Sequence[str]) -> str:
    return "valid stages: " + ", ".join(f"{i}={n}" for i, n in enumerate(stage_names))


def select_stages(
    stage_names: Sequence[str],
    out_indices: Sequence[int] | None = None,
    out_features: Sequence[str] | None = None,
    default: Sequence[int] | None = None,
) -> Selection:
    """Validate and align a stage selection; raise :class:`UsageError` with one line if invalid.
    ``default``: the stages (indices) chosen when neither is given (the ones a task model taps);
    None: the last stage."""
    names = list(stage_names)
    n = len(names)
    if n == 0:
        raise UsageError("this backbone has no stages")
    indices: list[int] | None = None
    features: list[str] | None = None

    if out_indices is not None:
        raw = list(out_indices)
        if not raw:
            raise UsageError(f"out_indices is empty; {_valid(names)}")
        for i in raw:
            if isinstance(i, bool) or not isinstance(i, int):
                raise UsageError(f"out_indices must be integers, got {i!r}; {_valid(names)}")
        bad = [i for i in raw if not -n <= i < n]
        if bad:
            raise UsageError(
                f"out_indices {bad} out of range for {n} stages (use 0..{n - 1} or -{n}..-1); {_valid(names)}"
            )
        indices = [i % n for i in raw]
        if len(set(indices)) != len(indices):
            raise UsageError(f"out_indices {raw} name a stage twice; {_valid(names)}")
        if indices != sorted(indices):
            raise UsageError(f"out_indices {raw} are not in stage order (expected {sorted(indices)}); {_valid(names)}")

    if out_features is not None:
        features = list(out_features)
        if not features:
            raise UsageError(f"out_features is empty; {_valid(names)}")
        unknown = [f for f in features if f not in names]
        if unknown:
            raise UsageError(f"unknown stage name(s) {', '.join(map(str, unknown))}; {_valid(names)}")
        if len(set(features)) != len(features):
            raise UsageError(f"out_features {features} name a stage twice; {_valid(names)}")
        ordered = [s for s in names if s in features]
        if features != ordered:
            raise UsageError(f"out_features {features} are not in stage order (expected {ordered}); {_valid(names)}")

    if indices is not None and features is not None:
        if [names[i] for i in indices] != features:
            raise UsageError(
                f"out_indices {list(out_indices or [])} and out_features {features} do not name the same "
                f"stages ({[names[i] for i in indices]} vs {features}); {_valid(names)}"
            )
    if indices is None and features is None:
        indices = sorted({i % n for i in default if -n <= i < n}) if default else []
        indices = indices or [n - 1]
    if indices is None:
        assert features is not None
        indices = [names.index(f) for f in features]
    return Selection(out_features=tuple(names[i] for i in indices), out_indices=tuple(indices))
