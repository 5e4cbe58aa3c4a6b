"""timm's ConvNeXts (convnext_*, the 1x1-conv-MLP small ones included) at parity with timm on the
same random weights."""

from __future__ import annotations

import pytest

from tests import oracle

SMALL = {"depths": [1, 1, 2, 1], "dims": [16, 24, 32, 40]}


@pytest.mark.parametrize(
    ("arch", "args"),
    [("convnext_tiny", {}), ("convnext_atto", {}), ("convnext_xxlarge", {"dims": [8, 16, 24, 32]})],
    ids=["linear-mlp", "conv-mlp", "norm-eps-1e-5"],
)
def test_small_configs_match_timm(tmp_path, arch, args):
    folder = oracle.make(tmp_path / "ckpt", arch, model_args={**SMALL, **args}, seed=4)
    oracle.compare(folder, 224, tmp_path / "a")
    oracle.compare(folder, (131, 97), tmp_path / "b")
    oracle.compare(folder, 96, tmp_path / "c", inference=True)


@pytest.mark.slow
def test_public_config_matches_timm(tmp_path):
    folder = oracle.make(tmp_path / "ckpt", "convnext_tiny", seed=5)
    oracle.compare(folder, 224, tmp_path / "a")
    oracle.compare(folder, 160, tmp_path / "b", stage_norm="final")
