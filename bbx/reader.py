"""``bbx.open(path)``: read features back, for users who load what ``bbx extract`` wrote.

Every output kind ``bbx info`` reads opens the same way: an HDF5 file, a safetensors file, a
shard set (its ``.index.json`` or base name), an unfinished ``.partial``::

    with bbx.open("feats.h5") as f:
        f.paths            # input paths, row order
        f.stages           # ["stage1", "stage4"]
        f.facts            # the run facts (model, checkpoint, revision, sizes, dtypes, ...)
        f.failed           # [(path, reason), ...]
        maps = f["stage4"]             # array-like: shape, dtype, len
        maps[0], maps[10:20], maps[[3, 1, 4]]   # numpy; only those rows are read

Rows come back as numpy float32 for bfloat16 outputs (numpy has no bfloat16) and in their stored
dtype otherwise; ``f["stage4"].raw[...]`` returns what is stored, bfloat16 as its raw uint16
patterns (``dtypes.to_float32`` decodes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bbx.errors import UsageError
from bbx.formats import Output, RunFacts, StageLayout, open_output


class StageArray:
    """One stored stage as a read-only, lazily read array ``[rows, *shape]``."""

    def __init__(self, output: Output, layout: StageLayout, *, raw: bool = False) -> None:
        self._out = output
        self.layout = layout
        self._raw = raw

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._out.images, *self.layout.shape)

    @property
    def dtype(self) -> Any:
        """The numpy dtype of what indexing returns (float32 for bfloat16, unless ``raw``)."""
        import numpy as np

        if self._raw:
            return np.dtype(self.layout.storage)
        return np.dtype("float32") if self.layout.dtype == "bfloat16" else np.dtype(self.layout.storage)

    @property
    def stored_dtype(self) -> str:
        """float32, float16 or bfloat16: what the file stores."""
        return self.layout.dtype

    @property
    def raw(self) -> StageArray:
        """The same stage read as stored (bfloat16 as uint16 patterns)."""
        return StageArray(self._out, self.layout, raw=True)

    def __len__(self) -> int:
        return self._out.images

    def __repr__(self) -> str:
        return f"<bbx stage {self.name} {list(self.shape)} {self.stored_dtype}>"

    def _decode(self, a: Any) -> Any:
        from bbx import dtypes

        if self._raw or self.layout.dtype != "bfloat16":
            return a
        return dtypes.to_float32(a, "bfloat16")

    def __getitem__(self, key: int | slice | Sequence[int] | Any) -> Any:
        n = len(self)
        if isinstance(key, tuple):
            first, *rest = key
            return self[first][(slice(None), *rest) if not isinstance(first, int) else tuple(rest)]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._decode(self._out.read_raw(self.layout, start, max(start, stop)))
            return self._decode(self._out.read_rows(self.layout, range(start, stop, step)))
        if hasattr(key, "__index__") and not hasattr(key, "__len__"):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"row {i} is out of range for {n} rows")
            i %= n
            return self._decode(self._out.read_raw(self.layout, i, i + 1)[0])
        rows = [int(r) for r in key]
        bad = [r for r in rows if not -n <= r < n]
        if bad:
            raise IndexError(f"rows {bad} are out of range for {n} rows")
        return self._decode(self._out.read_rows(self.layout, [r % n for r in rows]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


class Features:
    """An opened output (see the module docstring); a context manager that closes its files."""

    def __init__(self, output: Output) -> None:
        self.output = output

    @property
    def path(self) -> Path:
        return self.output.path

    @property
    def paths(self) -> list[str]:
        return list(self.output.paths)

    @property
    def stages(self) -> list[str]:
        return [s.name for s in self.output.stages]

    @property
    def facts(self) -> RunFacts:
        return self.output.facts

    @property
    def failed(self) -> list[tuple[str, str]]:
        return list(self.output.failed)

    def sources(self, rows: Sequence[int] | None = None) -> tuple[Any, Any] | None:
        """Where rows came from: (image sizes ``[k, 2]`` (height, width), boxes ``[k, 4]``
        (top, left, bottom, right) in the image's pixels, the region the model input covered),
        for ``rows`` (default: all), or None for an output written before bbx recorded them."""
        return self.output.read_sources(range(len(self)) if rows is None else rows)

    @property
    def status(self) -> str:
        """complete, interrupted or unfinished."""
        return self.output.state

    def __len__(self) -> int:
        return self.output.images

    def __contains__(self, stage: object) -> bool:
        return stage in self.stages

    def __getitem__(self, stage: str) -> StageArray:
        for s in self.output.stages:
            if s.name == stage:
                return StageArray(self.output, s)
        raise KeyError(f"{self.path} holds no stage {stage!r}; it has: {', '.join(self.stages)}")

    def close(self) -> None:
        self.output.close()

    def __enter__(self) -> Features:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<bbx features {self.path}: {len(self)} images, stages {', '.join(self.stages)}>"


def open_features(path: str | Path) -> Features:
    """Open any bbx output for reading (InputError, one line, if it is not one or is damaged)."""
    if not isinstance(path, (str, Path)):
        raise UsageError(f"bbx.open takes a path, got {type(path).__name__}")
    return Features(open_output(Path(path)))
