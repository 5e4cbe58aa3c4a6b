"""ResNet at parity with transformers' ResNetBackbone on the same random weights (the contract every
family keeps is tests/test_families.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

import bbx
from bbx import registry
from bbx.loading import prepare_for_inference
from tests import parity
from tests.util import hf_backbone, rel_err

SMALL = {
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 48, 64],
    "depths": [1, 2, 1, 1],
}


def _checkpoint(tmp_path, config: dict, head: bool = True, seed: int = 0):
    cls = ResNetForImageClassification if head else ResNetModel
    pre = registry.lookup("resnet-50").preprocessor_dict()
    return parity.checkpoint(tmp_path / "ckpt", cls(ResNetConfig(**config)), pre, seed)


@pytest.mark.parametrize(
    "variant",
    [
        {"layer_type": "basic"},
        {"layer_type": "bottleneck"},
        {"layer_type": "bottleneck", "downsample_in_bottleneck": True},
        {"layer_type": "basic", "downsample_in_first_stage": True},
        {"layer_type": "bottleneck", "hidden_act": "gelu"},
    ],
    ids=["basic", "bottleneck", "v1-bottleneck", "first-stage-downsample", "gelu"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    parity.compare(folder, 224)
    parity.compare(folder, 173)
    parity.compare(folder, (150, 211), n=2)


def test_base_model_layout_loads(tmp_path):
    """ResNetModel checkpoints (no `resnet.` prefix, no head) load as well."""
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "bottleneck"}, head=False)
    parity.compare(folder, 160, n=2)


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["resnet-18", "resnet-50"])
def test_public_configs_match_transformers(tmp_path, alias):
    row = registry.lookup(alias)
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = parity.compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    parity.compare(folder, 288, n=2)


def test_public_channels_and_strides():
    model = bbx.load_backbone("resnet-50", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert model.channels == [64, 256, 512, 1024, 2048]
    assert model.strides == [4, 4, 8, 16, 32]


def test_inference_rewrites_stay_at_parity(tmp_path):
    """extract/bench fold BatchNorm into the convs and run channels-last: still within 1e-5."""
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "bottleneck"})
    names = ["stem", "stage1", "stage2", "stage3", "stage4"]
    ref = hf_backbone(folder, out_features=names)
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=names), "cpu")
    assert channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    x = parity.photos(200, 3)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x.contiguous(memory_format=torch.channels_last))
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) <= parity.TOL, (name, rel_err(a, b))
