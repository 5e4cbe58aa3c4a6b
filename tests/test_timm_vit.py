"""timm's ViTs (vit_*: AugReg, DINOv2 with and without registers, the SwiGLU giant, CLIP, SigLIP)
at parity with timm on the same random weights, at the checkpoint's size and others (timm then
built with img_size, which resamples its position embeddings)."""

from __future__ import annotations

import pytest

from tests import oracle

SMALL = {"embed_dim": 32, "depth": 3, "num_heads": 2}


def _compare(folder, size, tmp, **kw):
    img = size if isinstance(size, int) else list(size)
    return oracle.compare(folder, size, tmp, img_size=img, **kw)


@pytest.mark.parametrize(
    ("arch", "args"),
    [
        ("vit_small_patch16_224", {}),
        ("vit_small_patch14_dinov2", {"img_size": 98}),
        ("vit_small_patch14_reg4_dinov2", {"img_size": 98}),
        ("vit_giant_patch14_dinov2", {"embed_dim": 48, "num_heads": 2, "depth": 2, "img_size": 56}),
        ("vit_base_patch16_clip_224", {}),
        ("vit_base_patch16_siglip_224", {}),
    ],
    ids=["augreg", "dinov2", "dinov2-registers", "dinov2-giant-swiglu", "clip-pre-norm", "siglip-no-class-token"],
)
def test_small_configs_match_timm(tmp_path, arch, args):
    folder = oracle.make(tmp_path / "ckpt", arch, model_args={**SMALL, **args}, seed=6)
    size = args.get("img_size", 224)
    _compare(folder, size, tmp_path / "a")
    _compare(folder, 160, tmp_path / "b", stage_norm="final")
    _compare(folder, (112, 144), tmp_path / "c", inference=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_base_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_public_configs_match_timm(tmp_path, arch):
    folder = oracle.make(tmp_path / "ckpt", arch, seed=9)
    size = 224 if "224" in arch else 518
    _compare(folder, size, tmp_path / "a", names=["blocks.0", "blocks.5", "blocks.11"])
    _compare(folder, 256 if size == 224 else 224, tmp_path / "b", stage_norm="final", names=["blocks.11"])
