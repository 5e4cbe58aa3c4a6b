"""Checkpoint tensors -> a bbx backbone, strictly.

Weights are read from safetensors (single file or shards through their index). A checkpoint
that only has ``pytorch_model.bin`` is read with ``torch.load(..., weights_only=True)``, which
refuses anything but tensors and plain containers: nothing from a checkpoint is ever executed.

Loading is strict: after the family's pure key remap, every key the model expects must be there
with the right shape and no key may be left over; otherwise a :class:`ModelError` names them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from bbx.download import WEIGHT_CHOICES, shard_names
from bbx.errors import ModelError


def weight_files(folder: Path) -> list[Path]:
    """The files holding a checkpoint's tensors, in the order of preference the hub download
    uses (:data:`bbx.download.WEIGHT_CHOICES`); ModelError when none."""
    for single, index in WEIGHT_CHOICES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return [folder / n for n in shard_names(folder / index, str(folder))]
    names = ", ".join(n for pair in WEIGHT_CHOICES for n in pair)
    raise ModelError(f"no weights in {folder}: expected one of {names}")


#: chooses the tensors to read from a file's keys: {key in the file: name to give it}
Select = Callable[[list[str]], Mapping[str, str]]


def _read_one(path: Path, select: Select | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"weights file missing: {path}")
    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
                keys = list(f.keys())
                chosen = select(keys) if select is not None else {k: k for k in keys}
                # only the chosen tensors are read: a task checkpoint's heads never reach memory
                return {new: f.get_tensor(k) for k, new in chosen.items()}
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{path}: unreadable safetensors file ({e})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            obj = _torch_load(path)
    except Exception as e:  # the unpickler refuses anything but tensors (UnpicklingError and others)
        raise ModelError(f"{path}: refused to load: {_refusal(e)}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    if select is None:
        return dict(obj)
    return {new: obj[k] for k, new in select([str(k) for k in obj]).items()}


def _torch_load(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # the legacy (pre-zip) serialization cannot be memory-mapped; still weights_only
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _refusal(e: Exception) -> str:
    """Why torch's weights-only unpickler refused a file, without its advice to turn the safety off."""
    text = " ".join(str(e).split())
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return f"it holds {found.group(1)}, and bbx accepts only tensors from .bin files (weights_only)"
    first = text.split(". ")[0] if text else type(e).__name__
    return f"{first} (bbx accepts only tensors from .bin files: weights_only)"


def read_state_dict(folder: Path, select: Select | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint in ``folder``: all of them, or those ``select`` picks from
    each file's keys, renamed as it says (for safetensors, the others are never read)."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        state.update(_read_one(f, select))
    return state


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    expected: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Load ``state`` into ``model`` (possibly built on the meta device) or raise ModelError.
    ``expected``: the state dict of the whole network when ``model`` is a truncated one: the
    checkpoint is checked against it, and only what ``model`` keeps is loaded.

    Keys listed in ``model.optional_keys`` and BatchNorm's ``num_batches_tracked`` may be absent:
    they get the family's fill value. A model's ``explain_missing(missing)`` may add why missing keys
    matter to the error. Tensors are assigned, so a meta-device model costs no
    second copy of the weights.
    """
    kept = model.state_dict(keep_vars=True)
    expected = dict(expected) if expected is not None else kept
    optional: Mapping[str, float] = getattr(model, "optional_keys", {})
    state = dict(state)
    missing = []
    for key, ref in expected.items():
        if key in state:
            continue
        fill = optional.get(key)
        if fill is None and key.endswith("num_batches_tracked"):
            fill = 0
        if fill is None:
            missing.append(key)
        else:
            state[key] = torch.full(ref.shape, fill, dtype=ref.dtype, device="cpu")
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
        explain = getattr(model, "explain_missing", None)
        note = explain(missing) if callable(explain) else ""
        if note:
            problems.append(note)
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes (checkpoint vs model): {_names(wrong, 3)}")
    if problems:
        raise ModelError(f"weights in {source} do not fit the architecture: " + "; ".join(problems))
    state = {k: v for k, v in state.items() if k in kept}
    for key, ref in kept.items():
        if state[key].dtype != ref.dtype and ref.dtype.is_floating_point:
            state[key] = state[key].to(ref.dtype)
    model.load_state_dict(state, strict=True, assign=True)
