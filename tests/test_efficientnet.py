"""timm's EfficientNets (efficientnet_b*, the TensorFlow ports tf_efficientnet_b*) at parity with
timm on the same random weights."""

from __future__ import annotations

import pytest

from tests import oracle


@pytest.mark.parametrize(
    "arch", ["efficientnet_b0", "tf_efficientnet_b0", pytest.param("tf_efficientnet_b3", marks=pytest.mark.slow)]
)
def test_configs_match_timm(tmp_path, arch):
    folder = oracle.make(tmp_path / "ckpt", arch, seed=2)
    oracle.compare(folder, 96, tmp_path / "a")
    oracle.compare(folder, (101, 67), tmp_path / "b")  # odd sizes: TensorFlow's asymmetric padding
    oracle.compare(folder, 64, tmp_path / "c", inference=True)


@pytest.mark.slow
def test_public_config_matches_timm(tmp_path):
    folder = oracle.make(tmp_path / "ckpt", "efficientnet_b0", seed=3)
    oracle.compare(folder, 224, tmp_path / "a")
