"""ResNet at parity with transformers' ResNetBackbone on the same random weights."""

from __future__ import annotations

import pytest
import torch
from bbx.nn.backbone import map_shapes
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

import bbx
from bbx import registry
from tests.util import hf_backbone, photo_batch, randomize_, rel_err, save_checkpoint

TOL = 1e-5
SMALL = {
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 48, 64],
    "depths": [1, 2, 1, 1],
}


def _checkpoint(tmp_path, config: dict, head: bool = True, seed: int = 0):
    cls = ResNetForImageClassification if head else ResNetModel
    model = randomize_(cls(ResNetConfig(**config)).eval(), seed)
    row = registry.lookup("resnet-50")
    return save_checkpoint(model, tmp_path / "ckpt", row.preprocessor_dict())


def _compare(folder, size: int, n: int = 3):
    names = ["stem", "stage1", "stage2", "stage3", "stage4"]
    ref = hf_backbone(folder, out_features=names)
    ours = bbx.load_backbone(str(folder), out_features=names)
    x = photo_batch(size, n)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x)
    assert len(got) == len(want) == 5
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
    # the size arithmetic behind `inspect` agrees with the real maps
    assert [tuple(m.shape[1:]) for m in got] == map_shapes(ours, (size, size))
    return ours


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
    _compare(folder, 224)
    _compare(folder, 173)


def test_base_model_layout_loads(tmp_path):
    """ResNetModel checkpoints (no `resnet.` prefix, no head) load as well."""
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "bottleneck"}, head=False)
    _compare(folder, 160, n=2)


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["resnet-18", "resnet-50"])
def test_public_configs_match_transformers(tmp_path, alias):
    row = registry.lookup(alias)
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, 288, n=2)


def test_channels_and_strides_declared_match_forward():
    model = bbx.load_backbone("resnet-50", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert model.channels == [64, 256, 512, 1024, 2048]
    assert model.strides == [4, 4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, 224, 224))
    for m, c, s in zip(maps, model.channels, model.strides):
        assert m.shape[1] == c and m.shape[2] == 224 // s


def test_forward_stops_after_last_selected_stage(monkeypatch):
    model = bbx.load_backbone("resnet-18", out_indices=[1], pretrained=False)
    ran = []
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda *_, i=i: ran.append(i))
    with torch.no_grad():
        (m,) = model(torch.zeros(1, 3, 64, 64))
    assert ran == [0] and m.shape[1] == 64


def test_no_classification_head():
    model = bbx.load_backbone("resnet-50", pretrained=False)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_inference_rewrites_stay_at_parity(tmp_path):
    """extract/bench fold BatchNorm into the convs and run channels-last: still within 1e-5."""
    from bbx.loading import prepare_for_inference

    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "bottleneck"})
    names = ["stem", "stage1", "stage2", "stage3", "stage4"]
    ref = hf_backbone(folder, out_features=names)
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=names), "cpu")
    assert channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    x = photo_batch(200, 3)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x.contiguous(memory_format=torch.channels_last))
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
