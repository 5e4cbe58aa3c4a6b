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


# --- vision transformers: maps, class tokens and the image embedding ---------------------------------

#: (folder, x) -> {"maps": [per stage], "cls": [per stage] or None, "embedding": [N, D] or None}
Readouts = Callable[[Path, torch.Tensor], dict[str, Any]]


def hidden_states(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    prefix: int,
    final_norm: torch.nn.Module | None = None,
    embedding: Callable[[Any], torch.Tensor] | None = None,
    **hf_kwargs: Any,
) -> dict[str, Any]:
    """A transformers vision transformer's readouts as the oracle: its raw hidden states
    (``output_hidden_states=True``, ``interpolate_pos_encoding=True``: any input size), with
    ``final_norm`` applied to every token when given; maps of the patch tokens (the first ``prefix``
    tokens dropped), the class tokens (token 0, when there is a prefix) and ``embedding(output)``."""
    with torch.no_grad():
        out = model(x, output_hidden_states=True, interpolate_pos_encoding=True, **hf_kwargs)
        states = [final_norm(h) if final_norm is not None else h for h in out.hidden_states]
        emb = embedding(out) if embedding is not None else None
    patch = model.config.patch_size
    gh, gw = x.shape[2] // patch, x.shape[3] // patch
    maps = [h[:, prefix:].reshape(len(x), gh, gw, -1).permute(0, 3, 1, 2) for h in states]
    return {"maps": maps, "cls": [h[:, 0] for h in states] if prefix else None, "embedding": emb}


def compare_readouts(
    folder: Path,
    size: int | tuple[int, int],
    n: int = 3,
    *,
    reference: Readouts,
    stage_norm: str = "hf",
    optimized: bool = False,
    dtype: torch.dtype | None = None,
    tol: float = TOL,
) -> dict[str, float]:
    """bbx's map of every stage, class token of every stage and image embedding (those the
    reference gives) against ``reference`` on ``n`` photos of ``size``, each within ``tol``;
    ``optimized``: after the inference rewrites ``bbx extract`` runs (fused kernels, folded
    scales); ``dtype``: under autocast to it (as ``bbx extract --dtype``). Returns the relative
    errors by name (``stage3``, ``stage3.cls``, ``embedding``)."""
    from bbx.loading import prepare_for_inference

    model = bbx.load_backbone(str(folder), stage_norm=stage_norm)
    if optimized:
        model, _ = prepare_for_inference(model, "cpu")
    x = photos(size, n)
    want = reference(folder, x)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
    maps, cls, emb = [], [], None
    with torch.inference_mode(), autocast:  # one pass: every readout of every stage
        raw = None
        for i, raw in enumerate(model.iter_stages(x)):
            maps.append(model.stage_map(i, raw))
            if want.get("cls") is not None:
                cls.append(model.stage_class_token(i, raw))
        if want.get("embedding") is not None:
            emb = model.embedding(raw)
    got: dict[str, torch.Tensor] = dict(zip(model.stage_names, maps))
    ref: dict[str, torch.Tensor] = dict(zip(model.stage_names, want["maps"]))
    if cls:
        got |= {f"{s}.cls": t for s, t in zip(model.stage_names, cls)}
        ref |= {f"{s}.cls": t for s, t in zip(model.stage_names, want["cls"])}
    if emb is not None:
        got["embedding"], ref["embedding"] = emb, want["embedding"]
    assert set(got) == set(ref) and len(want["maps"]) == len(maps)
    errors = {}
    for name, a in got.items():
        assert a.shape == ref[name].shape, (name, tuple(a.shape), tuple(ref[name].shape))
        errors[name] = rel_err(a, ref[name])
    assert max(errors.values()) <= tol, {k: v for k, v in errors.items() if v > tol}
    shapes = map_shapes(model, tuple(x.shape[2:]))
    assert [tuple(m.shape[1:]) for m in maps] == shapes
    return errors


def bf16_within_own_error(
    folder: Path, size: int | tuple[int, int], reference: Readouts, n: int = 2
) -> tuple[float, float]:
    """Under bf16 autocast (``bbx extract --dtype bfloat16``: fused kernels, folded scales) bbx's
    error against fp32 transformers is no worse than transformers' own bf16 error (under the same
    autocast) against fp32, over every readout the reference gives: (bbx's, transformers')."""
    x = photos(size, n)
    fp32 = reference(folder, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = reference(folder, x)
    own = [rel_err(a, b) for a, b in zip(bf16["maps"], fp32["maps"])]
    for key in ("cls",):
        if fp32.get(key) is not None:
            own += [rel_err(a, b) for a, b in zip(bf16[key], fp32[key])]
    if fp32.get("embedding") is not None:
        own.append(rel_err(bf16["embedding"], fp32["embedding"]))
    errors = compare_readouts(
        folder, size, n, reference=lambda f, _: fp32, optimized=True, dtype=torch.bfloat16, tol=1.0
    )
    ours, theirs = max(errors.values()), max(own)
    assert theirs > 1e-4, "bf16 did not run"
    assert ours <= 1.5 * theirs + 1e-3, (ours, theirs, errors)
    return ours, theirs


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
