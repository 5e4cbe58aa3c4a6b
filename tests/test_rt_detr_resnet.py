"""RT-DETR's ResNet-vd at parity with transformers' RTDetrResNetBackbone on the same random weights,
bottleneck and basic blocks, odd input sizes (the average-pool shortcuts round up), and through the
inference rewrites (BatchNorm folded, fused kernels, channels-last). The contract every family keeps
is tests/test_families.py; RT-DETR checkpoints themselves are tested in tests/test_tasks.py."""

from __future__ import annotations

import pytest
import torch
from transformers import RTDetrResNetBackbone, RTDetrResNetConfig

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.loading import prepare_for_inference
from tests import parity
from tests.util import rel_err

NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
SMALL = {"embedding_size": 16, "hidden_sizes": [16, 32, 48, 64], "depths": [2, 2, 1, 2]}


def _checkpoint(tmp_path, config: dict, seed: int = 0):
    model = RTDetrResNetBackbone(RTDetrResNetConfig(**config, out_features=NAMES))
    return parity.checkpoint(tmp_path / "ckpt", model, None, seed)


@pytest.mark.parametrize(
    "variant",
    [
        {"layer_type": "bottleneck"},
        {"layer_type": "basic"},
        {"layer_type": "bottleneck", "downsample_in_bottleneck": True},
        {"layer_type": "bottleneck", "downsample_in_first_stage": True, "hidden_act": "gelu"},
        {"layer_type": "basic", "hidden_sizes": [16, 16, 32, 32]},  # first blocks of the same width
    ],
    ids=["bottleneck", "basic", "v1-stride", "first-downsample-gelu", "basic-same-width"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    parity.compare(folder, 224, names=NAMES)
    parity.compare(folder, (97, 131), n=2, names=NAMES)  # odd at every stage


def test_inference_rewrites_stay_at_parity(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "bottleneck"})
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    x = parity.photos((150, 211), 2)
    with torch.no_grad():
        got = ours(x.contiguous(memory_format=torch.channels_last))
        want = RTDetrResNetBackbone.from_pretrained(folder).eval()(x).feature_maps
    assert max(rel_err(a, b) for a, b in zip(got, want)) <= parity.TOL


def test_configs_that_do_not_fit_are_one_line():
    fam = registry.family_of("rt_detr_resnet")
    for bad, words in [({"layer_type": "wide"}, "layer_type"), ({"depths": [1, 1]}, "same length")]:
        with pytest.raises(ModelError) as e:
            fam.parse({**fam.tiny_config(), **bad})
        assert words in e.value.message and "\n" not in e.value.message


@pytest.mark.slow
def test_r50vd_config_matches_transformers(tmp_path):
    row = registry.lookup("rtdetr-r50vd")
    config = {k: v for k, v in row.config_dict()["backbone_config"].items() if k not in ("model_type", "out_features")}
    config.pop("out_indices")
    folder = _checkpoint(tmp_path, config, seed=1)
    parity.compare(folder, 224, n=1, names=NAMES)
    parity.compare(folder, (161, 203), n=1, names=NAMES)


def test_bfloat16_is_as_close_to_fp32_as_transformers_is(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "bottleneck"})
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    ref = RTDetrResNetBackbone.from_pretrained(folder).eval()
    ours_err, hf_err = parity.bf16_errors(
        lambda t: ours(t.contiguous(memory_format=torch.channels_last)),
        lambda t: ref(t).feature_maps,
        parity.photos(160, 2),
    )
    for name, a, b in zip(NAMES, ours_err, hf_err):
        assert a <= parity.BF16_SLACK * b, (name, a, b)
