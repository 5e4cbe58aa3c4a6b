"""DINOv3 ViT at parity with transformers' DINOv3ViTBackbone (and DINOv3ViTModel for the raw
hidden states, the class token and the image embedding) on the same random weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.dinov3_vit import Dinov3VitSettings
from bbx.families.dinov3_vit import model as dinov3
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.util import randomize_, rel_err, save_checkpoint

TOL = parity.TOL
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}
SIZES = [224, 200, (96, 160)]  # the default, one that is not a multiple of 16, one not square


def _checkpoint(tmp_path, config: dict, *, layout: str = "model", seed: int = 0):
    cls = tf.DINOv3ViTBackbone if layout == "backbone" else tf.DINOv3ViTModel
    model = randomize_(cls(tf.DINOv3ViTConfig(**config)).eval(), seed)
    return save_checkpoint(model, tmp_path / "ckpt", registry.lookup("dinov3-vits16").preprocessor_dict())


def _names(folder) -> list[str]:
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    return ["stem"] + [f"stage{i}" for i in range(1, layers + 1)]


def _reference(folder, names, **overrides):
    ref = tf.DINOv3ViTBackbone.from_pretrained(folder, out_features=names, **overrides).eval()
    ref.config.return_class_token = True  # the class token of every selected stage, as transformers gives it
    return ref


def _hidden_maps(folder, x, names):
    """DINOv3ViTModel's raw hidden states (stem = the embedding output), patch tokens as maps."""
    ref = tf.DINOv3ViTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        states = ref(x, output_hidden_states=True).hidden_states
    skip = 1 + ref.config.num_register_tokens
    gh, gw = x.shape[2] // ref.config.patch_size, x.shape[3] // ref.config.patch_size
    maps = [t[:, skip:].reshape(len(x), gh, gw, -1).permute(0, 3, 1, 2) for t in states]
    return [maps[_names(folder).index(n)] for n in names]


def _compare(folder, size, n: int = 3, *, stage_norm: str = "hf"):
    reference = _hidden_maps if stage_norm == "none" else None
    return parity.compare(folder, size, n, names=_names(folder), stage_norm=stage_norm, reference=reference)


def _compare_tokens(folder, size, n: int = 2):
    """The class token of every stage (stage_norm hf) and the image embedding against transformers'
    cls_tokens and pooler_output."""
    names = _names(folder)
    model = bbx.load_backbone(str(folder))
    x = parity.photos(size, n)
    with torch.no_grad():
        want = _reference(folder, names)(x).cls_tokens
        pooled = tf.DINOv3ViTModel.from_pretrained(folder).eval()(x).pooler_output
        raw = list(model.iter_stages(x))
        got = [model.stage_class_token(i, r) for i, r in enumerate(raw)]
        embedding = model.embedding(raw[-1])
    assert model.has_class_token and model.has_embedding
    errors = [rel_err(a, b) for a, b in zip(got, want)]
    assert len(got) == len(want) and max(errors) <= TOL, errors
    assert embedding.shape == (n, model.stage_specs[-1].channels) and rel_err(embedding, pooled) <= TOL


@pytest.mark.parametrize(
    ("variant", "layout"),
    [
        ({"num_register_tokens": 4}, "model"),
        ({"num_register_tokens": 2, "use_gated_mlp": True, "hidden_act": "silu"}, "model"),
        ({"num_register_tokens": 0, "key_bias": True, "layer_norm_eps": 1e-6, "rope_theta": 50.0}, "backbone"),
        ({"num_register_tokens": 1, "query_bias": False, "value_bias": False, "proj_bias": False}, "model"),
        ({"num_register_tokens": 3, "mlp_bias": False, "use_gated_mlp": True, "layerscale_value": 0.1}, "model"),
        ({"num_register_tokens": 2, "mlp_bias": False, "hidden_act": "gelu_new", "patch_size": 14}, "backbone"),
    ],
    ids=["4-registers", "gated-silu", "no-registers-key-bias", "no-qv-proj-bias", "gated-no-bias", "mlp-no-bias-p14"],
)
def test_small_configs_match_transformers(tmp_path, variant, layout):
    folder = _checkpoint(tmp_path, {**TINY, **variant}, layout=layout)
    for size in SIZES:
        _compare(folder, size)
    _compare_tokens(folder, (96, 160))


def test_stage_norms_and_apply_layernorm(tmp_path):
    """apply_layernorm false: "hf" leaves every stage raw but the last (transformers normalises its
    last stage whatever the flag says); "none" is the raw hidden states; "final" normalises all."""
    folder = _checkpoint(tmp_path, {**TINY, "num_register_tokens": 2, "apply_layernorm": False})
    _compare(folder, 224)
    _compare(folder, (96, 160), stage_norm="none")
    _compare_tokens(folder, 224)
    names = _names(folder)
    normed = _reference(folder, names, apply_layernorm=True)
    x = parity.photos(160, 2)
    with torch.no_grad():
        want = normed(x).feature_maps
        got = bbx.load_backbone(str(folder), out_features=names, stage_norm="final")(x)
        plain = bbx.load_backbone(str(folder), out_features=names)(x)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= TOL
    assert rel_err(plain[-1], want[-1]) <= TOL and all(rel_err(c, b) > 0.1 for c, b in zip(plain[:-1], want[:-1]))


def test_inference_rewrites_stay_at_parity(tmp_path):
    """Layer scales folded into the projections, fused kernels: still within 1e-5, class tokens too."""
    folder = _checkpoint(tmp_path, {**TINY, "num_register_tokens": 4, "use_gated_mlp": True, "layerscale_value": 0.3})
    names = _names(folder)
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=names), "cpu")
    assert not channels_last and all(bool((b.scale1.detach() == 1).all()) for b in ours.blocks)
    x = parity.photos((128, 96), 3)
    ref = _reference(folder, names)
    with torch.no_grad():
        out = ref(x)
        got = ours(x)
        raw = list(ours.iter_stages(x))
    for name, a, b in zip(names, got, out.feature_maps):
        assert rel_err(a, b) <= TOL, name
    for i, c in enumerate(out.cls_tokens):
        assert rel_err(ours.stage_class_token(i, raw[i]), c) <= TOL


def test_in_memory_key_names_load_too(tmp_path):
    """transformers 5 keeps the blocks under ``model.layer.N`` in memory (the hub: ``layer.N``)."""
    hub = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(**TINY, num_register_tokens=2)).eval()
    state = hub.state_dict()
    assert any(k.startswith("model.layer.0.") for k in state)
    config = {**hub.config.to_dict(), "model_type": "dinov3_vit"}
    model = dinov3.build(config)
    model.load_state_dict(dinov3.remap(state, config), strict=True)
    x = parity.photos(64, 2)
    with torch.no_grad():
        want = hub(x).last_hidden_state[:, 3:]
        got = model.select(out_indices=[-1])(x)[0]
    assert rel_err(got.flatten(2).transpose(1, 2), want) <= TOL


def test_bfloat16_stays_within_transformers_own_error(tmp_path):
    folder = _checkpoint(tmp_path, {**TINY, "num_register_tokens": 4})
    names = _names(folder)
    x = parity.photos(224, 2)
    ref = _reference(folder, names)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=names), "cpu")
    with torch.no_grad():
        want = ref(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x).feature_maps
            got = ours(x)
    for a, b, c in zip(got, want, theirs):
        assert rel_err(a, b) <= max(2 * rel_err(c, b), 1e-3), (rel_err(a, b), rel_err(c, b))


@pytest.mark.slow
def test_public_small_config_matches_transformers(tmp_path):
    row = registry.lookup("dinov3-vits16")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, (160, 288), n=2)
    _compare_tokens(folder, 224)


def test_strict_loading_names_what_does_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _checkpoint(tmp_path, {**TINY, "num_register_tokens": 2})
    path = folder / "model.safetensors"
    state = load_file(path)
    broken = {k: v for k, v in state.items() if k != "layer.1.attention.k_proj.weight"}
    save_file(broken | {"layer.0.extra.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError) as e:
        bbx.load_backbone(str(folder))
    message = str(e.value)
    assert "layer.1.attention.q_proj.weight" in message and "blocks.1.attn.qkv.weight" in message
    assert "blocks.0.extra.weight" in message
    # a key bias in a checkpoint whose config has none is not silently used
    save_file(state | {"layer.0.attention.k_proj.bias": torch.zeros(32)}, path)
    with pytest.raises(ModelError, match="k_proj.bias"):
        bbx.load_backbone(str(folder))


def test_config_checks():
    assert Dinov3VitSettings.from_config({"image_size": [224, 320]}).image_size == (224, 320)
    for bad, match in [
        ({"hidden_size": 30, "num_attention_heads": 3}, "multiple of 4"),
        ({"hidden_size": 100, "num_attention_heads": 3}, "multiple"),
        ({"reshape_hidden_states": False}, "reshape_hidden_states"),
        ({"patch_size": [16, 8]}, "square"),
        ({"hidden_act": "mish"}, "hidden_act"),
    ]:
        with pytest.raises(ValueError, match=match):
            Dinov3VitSettings.from_config(bad)


def test_inspect_json():
    r = run("inspect", "dinov3-vitb16", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "facebook/dinov3-vitb16-pretrain-lvd1689m" and data["architecture"] == "dinov3_vit"
    assert data["input_size"] == [224, 224]
    stages = data["stages"]
    assert [s["name"] for s in stages] == ["stem"] + [f"stage{i}" for i in range(1, 13)]
    assert all(s["channels"] == 768 and s["stride"] == 16 and s["shape"] == [768, 14, 14] for s in stages)
    r = run("inspect", "dinov3-vitl16", "--image-size", "320", "--json")
    assert json.loads(r.stdout)["stages"][-1]["shape"] == [1024, 20, 20]
