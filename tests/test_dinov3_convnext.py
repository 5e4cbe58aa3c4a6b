"""DINOv3 ConvNeXt at parity with transformers' DINOv3ConvNextBackbone (DINOv3ConvNextModel for the
final norm and the image embedding) on the same random weights, in both checkpoint layouts."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from safetensors import safe_open

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.dinov3_convnext import Dinov3ConvNextSettings
from bbx.families.dinov3_convnext import model as dinov3
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.util import randomize_, rel_err, save_checkpoint

TOL = parity.TOL
NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
SMALL = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 2, 1]}


def _checkpoint(tmp_path, config: dict, *, layout: str = "model", seed: int = 0):
    cls = tf.DINOv3ConvNextBackbone if layout == "backbone" else tf.DINOv3ConvNextModel
    model = randomize_(cls(tf.DINOv3ConvNextConfig(**config)).eval(), seed)
    return save_checkpoint(model, tmp_path / "ckpt", registry.lookup("dinov3-convnext-tiny").preprocessor_dict())


def _final(folder, x, names):
    """The last stage through DINOv3ConvNextModel's final norm, the others raw."""
    ref = tf.DINOv3ConvNextModel.from_pretrained(folder).eval()
    with torch.no_grad():
        states = list(ref(x, output_hidden_states=True).hidden_states)
        states[-1] = ref.layer_norm(states[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return [states[NAMES.index(n)] for n in names]


@pytest.mark.parametrize(
    ("variant", "layout"),
    [
        ({}, "model"),
        ({"layer_norm_eps": 1e-5, "layer_scale_init_value": 0.2, "hidden_act": "gelu_new"}, "model"),
        ({"layer_scale_init_value": 0.0}, "backbone"),
    ],
    ids=["default", "eps-scale-gelu_new", "backbone-layout-zero-scale"],
)
def test_small_configs_match_transformers(tmp_path, variant, layout):
    folder = _checkpoint(tmp_path, {**SMALL, **variant}, layout=layout)
    for size in (224, 200, (96, 160)):
        parity.compare(folder, size, names=NAMES)
    parity.compare(folder, 160, names=NAMES, stage_norm="none")


def test_final_norm_and_embedding(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    parity.compare(folder, (128, 96), names=NAMES, stage_norm="final", reference=_final)
    model = bbx.load_backbone(str(folder))
    x = parity.photos((96, 160), 3)
    with torch.no_grad():
        want = tf.DINOv3ConvNextModel.from_pretrained(folder).eval()(x).pooler_output
        got = model.embedding(list(model.iter_stages(x))[-1])
    assert model.has_embedding and not model.has_class_token
    assert got.shape == want.shape and rel_err(got, want) <= TOL


def test_backbone_checkpoints_have_no_final_norm(tmp_path):
    folder = _checkpoint(tmp_path, SMALL, layout="backbone")
    model = bbx.load_backbone(str(folder))
    assert not model.has_embedding
    with pytest.raises(ValueError, match="no final norm"):
        model.embedding(torch.zeros(1, 32, 2, 2))
    with pytest.raises(ModelError, match="layer_norm"):
        bbx.load_backbone(str(folder), stage_norm="final")


def test_hub_and_in_memory_key_names(tmp_path):
    """The hub file has ``stages.N``; transformers 5 keeps ``model.stages.N`` in memory."""
    folder = _checkpoint(tmp_path, SMALL)
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("stages.0.") for k in keys) and not any(k.startswith("model.") for k in keys)
    hf = tf.DINOv3ConvNextModel.from_pretrained(folder).eval()
    state = hf.state_dict()
    assert any(k.startswith("model.stages.0.") for k in state)
    config = json.loads((folder / "config.json").read_text())
    model = dinov3.build(config)
    model.load_state_dict(dinov3.remap(state, config), strict=True)
    x = parity.photos(64, 2)
    with torch.no_grad():
        want = hf(x, output_hidden_states=True).hidden_states
        got = model.select(out_features=NAMES)(x)
    assert all(rel_err(a, b) <= TOL for a, b in zip(got, want))


def test_inference_rewrites_stay_at_parity(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, "layer_scale_init_value": 0.3})
    ref = tf.DINOv3ConvNextBackbone.from_pretrained(folder, out_features=NAMES).eval()
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert channels_last and all(b.gamma is None for s in ours.stages for b in s.blocks)
    x = parity.photos(200, 3)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x.contiguous(memory_format=torch.channels_last))
    for name, a, b in zip(NAMES, got, want):
        assert a.is_contiguous() and rel_err(a, b) <= TOL, (name, rel_err(a, b))


def test_bfloat16_stays_within_transformers_own_error(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    ref = tf.DINOv3ConvNextBackbone.from_pretrained(folder, out_features=NAMES).eval()
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos(224, 2)
    with torch.no_grad():
        want = ref(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x).feature_maps
            got = ours(x.contiguous(memory_format=torch.channels_last))
    for a, b, c in zip(got[1:], want[1:], theirs[1:]):
        assert rel_err(a, b) <= max(2 * rel_err(c, b), 1e-3), (rel_err(a, b), rel_err(c, b))


@pytest.mark.slow
def test_public_tiny_config_matches_transformers(tmp_path):
    row = registry.lookup("dinov3-convnext-tiny")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = parity.compare(folder, 224, n=2, names=NAMES)
    assert model.stage_names == list(row.stage_names)
    parity.compare(folder, (128, 192), n=2, names=NAMES)


def test_config_checks_and_sizes():
    s = Dinov3ConvNextSettings.from_config({})
    assert [(st.name, st.channels, st.stride) for st in s.stages()] == [
        ("stem", 3, 1),
        ("stage1", 96, 4),
        ("stage2", 192, 8),
        ("stage3", 384, 16),
        ("stage4", 768, 32),
    ]
    with pytest.raises(ValueError, match="same length"):
        Dinov3ConvNextSettings.from_config({"hidden_sizes": [8, 16], "depths": [1, 1, 1]})
    with pytest.raises(ValueError, match="too small"):
        s.map_sizes((31, 64))


def test_inspect_json():
    r = run("inspect", "dinov3-convnext-base", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "facebook/dinov3-convnext-base-pretrain-lvd1689m"
    shapes = [s["shape"] for s in data["stages"]]
    assert shapes == [[3, 224, 224], [128, 56, 56], [256, 28, 28], [512, 14, 14], [1024, 7, 7]]
