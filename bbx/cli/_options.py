"""Every option more than one command takes, declared once (as ``Annotated`` types), and the
parsers of their values. Commands use them as ``dtype: Dtype = "float32"``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bbx.cli import _complete
from bbx.errors import UsageError

Model = Annotated[
    str,
    typer.Argument(
        help="Alias (see `bbx models`), checkpoint folder or hub id org/name.", autocompletion=_complete.complete_model
    ),
]
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="Alias, checkpoint folder or hub id org/name.",
        autocompletion=_complete.complete_model,
    ),
]
OutIndices = Annotated[
    Optional[list[str]],  # noqa: UP045 (typer needs Optional on 3.10)
    typer.Option(
        "--out-indices", metavar="I,...", help="Stages by index: 1,3 or -1 (repeatable). Default: the last stage."
    ),
]
OutFeatures = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--out-features",
        metavar="NAME,...",
        help="Stages by name: stage1,stage3 (repeatable).",
        autocompletion=_complete.complete_out_features,
    ),
]
ImageSize = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--image-size",
        metavar="N|HxW",
        help="Input size: N (NxN pixels) or HxW (height x width) instead of the checkpoint's.",
    ),
]
Resize = Annotated[
    str,
    typer.Option(
        "--resize",
        metavar="crop|squash|pad",
        help="crop: the checkpoint's own recipe; squash: the whole image to the input size; "
        "pad: the whole image fitted inside it, padded with black.",
        autocompletion=_complete.RESIZE_MODES,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="auto, cpu, cuda, cuda:N or mps (auto: CUDA when present).",
        autocompletion=_complete.DEVICES,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="Compute dtype: float32, float16 or bfloat16 (autocast).",
        autocompletion=_complete.DTYPES,
    ),
]
StageNorm = Annotated[
    str,
    typer.Option(
        "--stage-norm",
        metavar="hf|none|final",
        help="Stage norms: hf (transformers' backbone), none (raw), final (the trained final norm).",
        autocompletion=_complete.STAGE_NORMS,
    ),
]
Revision = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--revision", metavar="REV", help="Hub branch, tag or commit sha (for an alias: that revision's config)."
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", metavar="N", help="Images per batch.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else there).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Compile = Annotated[
    bool,
    typer.Option("--compile", help="torch.compile the model: slow to start (tens of seconds), faster for long runs."),
]
OutputFile = Annotated[
    Path,
    typer.Argument(
        help="An output of bbx extract: .h5, .safetensors, a shard set's .index.json, or a .partial.",
        show_default=False,
    ),
]

#: the batch size of extract and bench when none is given
BATCH_SIZE = 32


def parse_indices(values: list[str] | None, option: str = "--out-indices") -> tuple[int, ...] | None:
    """``--out-indices 1,3`` / repeated options / negatives -> a tuple of ints."""
    if not values:
        return None
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise UsageError(f"{option} takes integers (e.g. 1,3 or -1), got {part!r}") from None
    return tuple(out)


def parse_image_size(value: str | None) -> int | tuple[int, int] | None:
    """``--image-size 448`` -> 448, ``448x672`` -> (448, 672)."""
    if value is None:
        return None
    parts = value.lower().replace(" ", "").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers, default=0) < 1:
        raise UsageError(f"--image-size takes N or HxW in pixels (448, 448x672), got {value!r}")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def parse_names(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: str | None, option: str = "--shard-size") -> int | None:
    """``500MB``, ``2GB``, ``1.5GiB`` -> bytes."""
    if value is None:
        return None
    v = value.strip().lower().replace(" ", "")
    num = v.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = v[len(num) :]
    try:
        n = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise UsageError(f"{option} takes a size such as 500MB or 2GB, got {value!r}") from None
    if n < 1:
        raise UsageError(f"{option} must be positive, got {value!r}")
    return int(n)
