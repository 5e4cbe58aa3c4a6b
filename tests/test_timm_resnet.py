"""timm's ResNets (resnet*, the deep-stem c/d/s/t variants) at parity with timm on the same random
weights, in the timm hub layout and transformers' TimmBackbone layout."""

from __future__ import annotations

import pytest

from tests import oracle

SMALL = {"channels": [8, 16, 24, 32], "layers": [1, 2, 1, 1]}


@pytest.mark.parametrize(
    ("arch", "args"),
    [
        ("resnet18", {}),
        ("resnet50", {"layers": [1, 1, 2, 1]}),
        ("resnet50d", {"layers": [1, 1, 1, 1]}),
        ("resnet26t", {"layers": [1, 1, 1, 1]}),
        ("resnet50c", {"layers": [1, 1, 1, 1]}),
        ("resnet50s", {"layers": [1, 1, 1, 1], "stem_width": 16}),
    ],
    ids=["basic", "bottleneck", "d-deep-stem-avg-down", "t-tiered-stem", "c-deep-stem", "s-wide-stem"],
)
def test_small_configs_match_timm(tmp_path, arch, args):
    folder = oracle.make(tmp_path / "ckpt", arch, model_args={**SMALL, **args}, seed=1)
    oracle.compare(folder, 224, tmp_path / "a")
    oracle.compare(folder, (173, 211), tmp_path / "b")
    oracle.compare(folder, 97, tmp_path / "c", inference=True)


@pytest.mark.slow
def test_public_config_matches_timm(tmp_path):
    folder = oracle.make(tmp_path / "ckpt", "resnet50", seed=2)
    oracle.compare(folder, 224, tmp_path / "a")
    oracle.compare(folder, 288, tmp_path / "b", inference=True)


def test_negative_indices_are_timms(tmp_path):
    """timm's out_indices=(-2, -1) and bbx's are the same stages."""
    import bbx

    folder = oracle.make(tmp_path / "ckpt", "resnet18", model_args=SMALL, seed=1)
    model = bbx.load_backbone(str(folder), out_indices=[-2, -1])
    assert model.out_features == ["layer3", "layer4"]
    oracle.compare(folder, 128, tmp_path / "a", names=model.out_features)
    _, reply = oracle.timm_maps(folder, __import__("torch").zeros(1, 3, 64, 64), tmp_path / "b", out_indices=[-2, -1])
    assert reply["feature_info"]["module"] == ["layer3", "layer4"]
