"""The one parity harness the family tests call: bbx against the oracle (transformers' backbone by
default) on the same checkpoint folder, every stage, fp32, on a batch of photo-like images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bbx
from bbx.family import IMAGENET_MEAN, IMAGENET_STD
from bbx.nn.backbone import map_shapes
from tests.util import hf_backbone, photo, randomize_, rel_err, save_checkpoint

TOL = 1e-5

#: (folder, x, stage names) -> the oracle's maps, one per stage, in order
Reference = Callable[[Path, torch.Tensor, list[str]], Sequence[torch.Tensor]]


def photos(size: int | tuple[int, int], n: int = 3, seed: int = 0) -> torch.Tensor:
    """``n`` photo-like images, ``[n, 3, H, W]``, normalised with ImageNet's mean and std."""
    h, w = (size, size) if isinstance(size, int) else size
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    imgs = [torch.from_numpy(np.asarray(photo(w, h, seed=seed + i)).copy()) for i in range(n)]
    return torch.stack([(t.permute(2, 0, 1).float() / 255 - mean) / std for t in imgs])


def checkpoint(folder: Path, model: torch.nn.Module, preprocessor: dict[str, Any] | None, seed: int = 0) -> Path:
    """``model`` (a transformers model) with every weight and norm statistic randomised, saved
    in the hub layout with ``preprocessor`` as its preprocessor_config.json."""
    return save_checkpoint(randomize_(model.eval(), seed), folder, preprocessor)


def backbone_maps(**hf_kwargs: Any) -> Reference:
    """The oracle: transformers' backbone class for the folder's model_type, ``feature_maps``."""

    def ref(folder: Path, x: torch.Tensor, names: list[str]) -> Sequence[torch.Tensor]:
        with torch.no_grad():
            return hf_backbone(folder, out_features=names)(x, **hf_kwargs).feature_maps

    return ref


def compare(
    folder: Path,
    size: int | tuple[int, int],
    n: int = 3,
    *,
    names: list[str] | None = None,
    stage_norm: str = "hf",
    reference: Reference | None = None,
    tol: float = TOL,
    **hf_kwargs: Any,
) -> torch.nn.Module:
    """bbx's maps of ``names`` (default: every stage) against ``reference`` (default: transformers'
    backbone) on ``n`` photos of ``size``; each stage within ``tol`` (relative error), and the
    size arithmetic behind ``inspect`` equal to the real maps. Returns bbx's model."""
    model = bbx.load_backbone(str(folder), stage_norm=stage_norm)
    names = names or model.stage_names
    model.select(out_features=names)
    x = photos(size, n)
    with torch.no_grad():
        got = model(x)
    want = (reference or backbone_maps(**hf_kwargs))(folder, x, names)
    assert len(got) == len(want) == len(names)
    errors = {}
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, (name, tuple(a.shape), tuple(b.shape))
        errors[name] = rel_err(a, b)
    assert max(errors.values()) <= tol, errors
    shapes = map_shapes(model, tuple(x.shape[2:]))
    assert [tuple(m.shape[1:]) for m in got] == [shapes[model.stage_names.index(s)] for s in names]
    return model


#: how much larger than transformers' own bf16 error (against its fp32 maps) bbx's may be
BF16_SLACK = 1.5


def bf16_errors(
    ours: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    oracle: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    x: torch.Tensor,
) -> tuple[list[float], list[float]]:
    """Relative errors, map by map, of ``ours`` and of ``oracle`` run under CPU bf16 autocast (as
    ``bbx extract --dtype bfloat16`` runs), both against the oracle's fp32 maps: (bbx's, the
    oracle's own)."""
    with torch.no_grad():
        exact = [m.float() for m in oracle(x)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = [m.float() for m in oracle(x)]
            mine = [m.float() for m in ours(x)]
    assert len(mine) == len(theirs) == len(exact)
    return [rel_err(a, e) for a, e in zip(mine, exact)], [rel_err(b, e) for b, e in zip(theirs, exact)]


def compare_to_float64(
    folder: Path,
    size: int | tuple[int, int],
    n: int = 2,
    *,
    names: list[str] | None = None,
    model: torch.nn.Module | None = None,
    factor: float = 2.0,
    floor: float = TOL / 10,
    channels_last: bool = False,
) -> dict[str, tuple[float, float]]:
    """For networks whose fp32 result is ill-conditioned (deep GroupNorm stacks, saturated
    attention scales), where two correct fp32 implementations differ by more than ``TOL``: bbx's
    fp32 maps (``model``, default the loaded backbone) are within ``factor`` times transformers' own
    fp32 error of a float64 run of transformers' backbone, stage by stage (errors below ``floor``
    always pass). Returns ``{stage: (bbx's error, transformers' error)}``."""
    ours = model if model is not None else bbx.load_backbone(str(folder))
    names = names or ours.stage_names
    ours.select(out_features=names)
    ref = hf_backbone(folder, out_features=names)
    x = photos(size, n)
    with torch.no_grad():
        theirs = ref(x).feature_maps
        exact = ref.double()(x.double()).feature_maps
        got = ours(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    errors = {name: (rel_err(a, e), rel_err(t, e)) for name, a, t, e in zip(names, got, theirs, exact)}
    assert all(a <= max(factor * t, floor) for a, t in errors.values()), errors
    return errors


def recipe_maps(folder: Path, paths: Sequence[Path], names: list[str]) -> dict[str, list[torch.Tensor]]:
    """The transformers recipe, image by image: ``AutoImageProcessor`` of the folder, then its
    backbone class, the maps of ``names``."""
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    model = hf_backbone(folder, out_features=names)
    out: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    for p in paths:
        with Image.open(p) as im:
            pixels = processor(im.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            maps = model(pixels).feature_maps
        for s, m in zip(names, maps):
            out[s].append(m[0])
    return out


def extract_matches_recipe(folder: Path, images: tuple[Path, list[Path]], out: Path, *args: str) -> None:
    """``bbx extract`` of ``folder`` on the ``photos`` fixture's images (its ``--json`` stages, in
    batches of 4, ``args`` added) gives the transformers recipe's maps image by image."""
    import json

    from safetensors.torch import load_file

    from tests.cli import run

    image_folder, paths = images
    r = run("extract", "-m", folder, "-o", out, "-b", "4", *args, str(image_folder), "--json")
    assert r.exit_code == 0, r.stderr
    names = [s["name"] for s in json.loads(r.stdout)["stages"]]
    want = recipe_maps(folder, paths, names)
    got = load_file(str(out))
    for s in names:
        for i, p in enumerate(paths):
            assert rel_err(got[s][i], want[s][i]) <= TOL, (s, p, rel_err(got[s][i], want[s][i]))
