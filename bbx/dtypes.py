"""The one table of the floating-point dtypes bbx computes in and stores (no torch, no numpy at
import): their names on the command line, sizes, and how each format stores them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bbx.errors import UsageError


@dataclass(frozen=True)
class DType:
    name: str  # as on the command line and in outputs: float32 | float16 | bfloat16
    itemsize: int
    #: the numpy dtype of the stored values: bfloat16 has none, and is stored as its raw 16-bit
    #: patterns in uint16 (``(x.astype(np.uint32) << 16).view(np.float32)`` decodes them)
    storage: str
    safetensors: str  # safetensors' dtype tag

    def torch(self) -> Any:
        import torch

        return getattr(torch, self.name)


DTYPES: dict[str, DType] = {
    "float32": DType("float32", 4, "<f4", "F32"),
    "float16": DType("float16", 2, "<f2", "F16"),
    "bfloat16": DType("bfloat16", 2, "<u2", "BF16"),
}
NAMES = tuple(DTYPES)
BY_SAFETENSORS = {d.safetensors: d for d in DTYPES.values()}


def get(name: str, option: str = "dtype") -> DType:
    """The dtype called ``name``; UsageError naming ``--option`` and the choices otherwise."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise UsageError(f"--{option} must be one of {', '.join(NAMES)}, got {name!r}") from None


def to_float32(values: Any, name: str) -> Any:
    """Stored values (a numpy array in ``DTYPES[name].storage``) as float32 numpy."""
    import numpy as np

    a = np.asarray(values)
    if name == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def to_storage(tensor: Any) -> Any:
    """A CPU torch tensor of a stored dtype as numpy in that dtype's storage (bfloat16: its raw bits)."""
    import numpy as np
    import torch

    t = tensor.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
