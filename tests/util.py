"""Shared test helpers: random-weight checkpoints in the hub layout, photo-like images, errors.

transformers is imported only here and in tests: it is the parity oracle, never a bbx dependency.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

# ---------------------------------------------------------------------------------------------
# numbers


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    assert a64.shape == b64.shape, (a64.shape, b64.shape)
    return float(torch.linalg.vector_norm(a64 - b64) / torch.linalg.vector_norm(b64).clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# checkpoints


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float parameter and buffer a random value of a sensible scale, norm
    statistics included (so that a forgotten or misplaced norm changes the numbers)."""
    g = torch.Generator().manual_seed(seed)
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name, t in sorted(tensors.items()):
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            new = torch.rand(t.shape, generator=g) * 1.5 + 0.5
        elif leaf == "running_mean":
            new = torch.randn(t.shape, generator=g) * 0.2
        elif "bias" in leaf:
            new = torch.randn(t.shape, generator=g) * 0.1
        elif t.dim() <= 1:
            new = torch.rand(t.shape, generator=g) + 0.5
        else:
            fan_in = max(1, t[0].numel())
            new = torch.randn(t.shape, generator=g) / math.sqrt(fan_in)
        t.copy_(new.to(t.dtype))
    return model


def write_preprocessor(folder: Path, preprocessor: dict[str, Any]) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))


def save_checkpoint(model: Any, folder: Path, preprocessor: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` (safetensors, hub layout) plus a ``preprocessor_config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if preprocessor is not None:
        write_preprocessor(folder, preprocessor)
    return folder


def hf_backbone(folder: Path, out_features: list[str] | None = None, **kwargs: Any) -> torch.nn.Module:
    """transformers' backbone for a local checkpoint folder, its class picked from the config by
    transformers' own backbone table (``AutoBackbone.from_pretrained`` on a folder asks the hub
    first in transformers 5)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

    config = json.loads((folder / "config.json").read_text())
    cls = getattr(transformers, MODEL_FOR_BACKBONE_MAPPING_NAMES[config["model_type"]])
    if out_features is not None:
        kwargs["out_features"] = out_features
    return cls.from_pretrained(folder, **kwargs).eval()


def hf_model(model_type: str, config: dict[str, Any], *, head: bool = True) -> torch.nn.Module:
    """A transformers model of ``model_type`` built from ``config`` (with its image-classification
    head when the type has one and ``head``), random weights, eval mode."""
    import transformers

    cfg = transformers.AutoConfig.for_model(model_type, **config)
    if head:
        try:
            return transformers.AutoModelForImageClassification.from_config(cfg).eval()
        except ValueError:  # a type without a classification model
            pass
    try:
        return transformers.AutoModel.from_config(cfg).eval()
    except ValueError:  # a type that only exists as a backbone (inside task models)
        from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

        return getattr(transformers, MODEL_FOR_BACKBONE_MAPPING_NAMES[model_type])(cfg).eval()


def tiny_checkpoint(folder: Path, model_type: str, *, seed: int = 0, head: bool = True, **overrides: Any) -> Path:
    """A random-weight checkpoint in the hub layout of the family's tiny config (plus
    ``overrides``), with the preprocessing of the family's first public checkpoint."""
    from bbx import registry

    fam = registry.family_of(model_type)
    config = {k: v for k, v in fam.tiny_config(model_type).items() if k != "model_type"} | overrides
    model = randomize_(hf_model(model_type, config, head=head), seed=seed)
    return save_checkpoint(model, folder, registry.default_preprocessor(model_type))


_FIXTURES: dict[tuple[Any, ...], Path] = {}


def checkpoint_fixture(model_type: str, *, seed: int = 0, **overrides: Any) -> Any:
    """A session-wide fixture giving the folder of :func:`tiny_checkpoint`, for a test
    module to bind: ``tiny_net = checkpoint_fixture("<model_type>", seed=3)``."""
    import pytest

    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory: Any) -> Path:
        key = (model_type, seed, json.dumps(overrides, sort_keys=True))
        if key not in _FIXTURES or not _FIXTURES[key].exists():
            folder = tmp_path_factory.mktemp("ckpt") / f"tiny-{model_type}"
            _FIXTURES[key] = tiny_checkpoint(folder, model_type, seed=seed, **overrides)
        return _FIXTURES[key]

    return fixture


def all_stage_names(folder: Path) -> list[str]:
    import transformers

    config = json.loads((folder / "config.json").read_text())
    cfg = transformers.AutoConfig.for_model(**config)
    return list(cfg.stage_names)


# ---------------------------------------------------------------------------------------------
# images


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A photo-like picture: a smooth sky-to-ground gradient, soft-edged shapes, texture and
    sensor noise, then blurred a little like a lens would. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(20, 200, 3)
    base = top[None, None, :] * (1 - y[..., None]) + bottom[None, None, :] * y[..., None]
    base = base + 25 * np.sin(2 * math.pi * (x[..., None] * rng.uniform(1, 4) + rng.uniform(0, 1)))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(0.6, min(width, height) / 300)))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (height, width, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def photo_batch(size: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    """``n`` photo-like images as a normalised ``[n, 3, size, size]`` float batch (ImageNet
    mean/std), for model-only parity tests."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    out = []
    for i in range(n):
        img = photo(size, size, seed=seed + i)
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
        out.append((t - mean) / std)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# memory


class LivePeak:
    """The peak of the bytes held by the tensors created while the context is open (inputs and
    weights made before it are not counted): a ``TorchDispatchMode`` that follows every op's
    outputs until the last tensor sharing their storage is freed. Works on any device."""

    def __init__(self) -> None:
        self.peak = 0
        self._now = 0
        self._bytes: dict[int, int] = {}
        self._refs: dict[int, int] = {}
        self._mode: Any = None

    def __enter__(self) -> LivePeak:
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        def drop(key: int) -> None:
            tracker._refs[key] -= 1
            if tracker._refs[key] == 0:
                tracker._now -= tracker._bytes.pop(key)
                del tracker._refs[key]

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if not isinstance(t, torch.Tensor):
                        continue
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key == 0:
                        continue
                    if key not in tracker._refs:
                        tracker._refs[key] = 0
                        tracker._bytes[key] = storage.nbytes()
                        tracker._now += storage.nbytes()
                        tracker.peak = max(tracker.peak, tracker._now)
                    tracker._refs[key] += 1
                    weakref.finalize(t, drop, key)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def state_numbers(model: torch.nn.Module) -> int:
    """How many numbers a module's state holds (parameters and persistent buffers)."""
    return sum(t.numel() for t in model.state_dict().values())
