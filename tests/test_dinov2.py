"""DINOv2 (with and without registers) at parity with transformers' Dinov2Backbone /
Dinov2WithRegistersBackbone on the same random weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.dinov2 import Dinov2Settings
from tests import parity
from tests.cli import run
from tests.util import hf_backbone, randomize_, rel_err, save_checkpoint

TOL = 1e-5
TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "patch_size": 14}

_CLASSES = {
    # (registers, layout) -> transformers class
    (False, "model"): (tf.Dinov2Config, tf.Dinov2Model),
    (False, "backbone"): (tf.Dinov2Config, tf.Dinov2Backbone),
    (False, "classifier"): (tf.Dinov2Config, tf.Dinov2ForImageClassification),
    (True, "model"): (tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersModel),
    (True, "backbone"): (tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersBackbone),
    (True, "classifier"): (tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersForImageClassification),
}


def _checkpoint(tmp_path, config: dict, *, registers: bool = False, layout: str = "model", seed: int = 0):
    config_cls, model_cls = _CLASSES[(registers, layout)]
    model = randomize_(model_cls(config_cls(**config)).eval(), seed)
    row = registry.lookup("dinov2-small-reg" if registers else "dinov2-small")
    return save_checkpoint(model, tmp_path / "ckpt", row.preprocessor_dict())


def _stage_names(folder) -> list[str]:
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    return ["stem"] + [f"stage{i}" for i in range(1, layers + 1)]


def _raw_hidden_states(folder, x, names):
    """transformers' raw hidden states (the layer outputs before any norm), reduced to the patch
    tokens, as maps."""
    ref = hf_backbone(folder, out_features=names)
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
    skip = 1 + getattr(ref.config, "num_register_tokens", 0)
    h, w = x.shape[2] // ref.config.patch_size, x.shape[3] // ref.config.patch_size
    return [t[:, skip:].reshape(len(x), h, w, -1).permute(0, 3, 1, 2) for t in out.hidden_states]


def _compare(folder, size: int | tuple[int, int], n: int = 3, *, stage_norm: str = "hf"):
    """Every stage of bbx against transformers' backbone; with stage_norm="none" against its raw
    hidden states."""
    reference = _raw_hidden_states if stage_norm == "none" else None
    return parity.compare(folder, size, n, names=_stage_names(folder), stage_norm=stage_norm, reference=reference)


def _batch(size: int | tuple[int, int], n: int = 3) -> torch.Tensor:
    return parity.photos(size, n)


# image_size 518 (the public 37x37 grid) resamples down at 224; 56 (a 4x4 grid) resamples up.
@pytest.mark.parametrize(
    ("registers", "layout", "variant"),
    [
        (False, "model", {"image_size": 518}),
        (False, "model", {"image_size": 56, "use_swiglu_ffn": True}),
        (False, "backbone", {"image_size": 518, "qkv_bias": False, "layer_norm_eps": 1e-5}),
        (False, "classifier", {"image_size": 56, "num_labels": 5}),
        (False, "model", {"image_size": 56, "mlp_ratio": 2, "layerscale_value": 0.1, "hidden_act": "gelu_new"}),
        (True, "model", {"image_size": 518}),
        (True, "model", {"image_size": 56, "use_swiglu_ffn": True, "num_register_tokens": 2}),
        (True, "backbone", {"image_size": 56}),
        (True, "classifier", {"image_size": 518, "use_swiglu_ffn": True, "num_labels": 5}),
    ],
    ids=[
        "518",
        "56-swiglu",
        "backbone-layout-no-qkv-bias",
        "classifier-layout",
        "switches",
        "reg-518",
        "reg-56-swiglu-2-registers",
        "reg-backbone-layout",
        "reg-classifier-layout-swiglu",
    ],
)
def test_small_configs_match_transformers(tmp_path, registers, layout, variant):
    folder = _checkpoint(tmp_path, {**TINY, **variant}, registers=registers, layout=layout)
    _compare(folder, 224)
    _compare(folder, 230)  # not a multiple of 14: the convolution drops the remainder
    _compare(folder, (182, 252), n=2)  # not square


@pytest.mark.parametrize("registers", [False, True], ids=["dinov2", "registers"])
def test_checkpoint_grid_and_raw_hidden_states(tmp_path, registers):
    """At the checkpoint's own grid the table is used as is; stage_norm none gives transformers'
    raw hidden states, stem included."""
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 56}, registers=registers)
    _compare(folder, 56)
    _compare(folder, 56, stage_norm="none")
    _compare(folder, 98, stage_norm="none")


def test_apply_layernorm_false_and_final_norm(tmp_path):
    """apply_layernorm false: "hf" has no norm (as transformers), "final" applies the trained one
    (what transformers gives with apply_layernorm true on the same weights)."""
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 518, "apply_layernorm": False}, registers=True)
    _compare(folder, 224)
    names = _stage_names(folder)
    normed = tf.Dinov2WithRegistersBackbone.from_pretrained(folder, out_features=names, apply_layernorm=True).eval()
    ours = bbx.load_backbone(str(folder), out_features=names, stage_norm="final")
    raw = bbx.load_backbone(str(folder), out_features=names, stage_norm="hf")
    x = _batch(224, 2)
    with torch.no_grad():
        want, got, plain = normed(x).feature_maps, ours(x), raw(x)
    for a, b, c in zip(got, want, plain):
        assert rel_err(a, b) <= TOL
        assert rel_err(c, b) > 0.1  # the norm matters, so the comparison above means something


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["dinov2-small", "dinov2-small-reg"])
def test_public_small_configs_match_transformers(tmp_path, alias):
    row = registry.lookup(alias)
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, registers=alias.endswith("-reg"), seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, 280, n=2)


@pytest.mark.slow
def test_giant_width_swiglu_matches_transformers(tmp_path):
    """The giant's width, heads and SwiGLU (hidden 4096 after the rounding) with two blocks."""
    config = {k: v for k, v in registry.lookup("dinov2-giant-reg").config_dict().items() if k != "architectures"}
    config = {k: v for k, v in config.items() if k != "model_type"} | {"num_hidden_layers": 2}
    folder = _checkpoint(tmp_path, config, registers=True, seed=2)
    model = _compare(folder, 224, n=2)
    assert model.blocks[0].mlp.fc1.weight.shape == (2 * 4096, 1536)
    _compare(folder, (168, 238), n=2)


def test_bfloat16_stays_close_to_transformers(tmp_path):
    """In bf16 the input is cast to the weights' dtype and the table resampled in float32, as in
    transformers; results agree to bf16 precision."""
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 518}, registers=True)
    names = _stage_names(folder)
    ref = hf_backbone(folder, out_features=names).to(torch.bfloat16)
    ours = bbx.load_backbone(str(folder), out_features=names).to(torch.bfloat16)
    x = _batch(224, 2)
    with torch.no_grad():
        want, got = ref(x).feature_maps, ours(x)
    for a, b in zip(got, want):
        assert a.dtype == torch.bfloat16
        assert rel_err(a, b) <= 2e-2


def test_inspect_dinov2_small_json():
    r = run("inspect", "dinov2-small", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "facebook/dinov2-small" and data["architecture"] == "dinov2"
    assert data["input_size"] == [224, 224]
    stages = data["stages"]
    assert [s["name"] for s in stages] == ["stem"] + [f"stage{i}" for i in range(1, 13)]
    assert all(s["channels"] == 384 and s["stride"] == 14 and s["shape"] == [384, 16, 16] for s in stages)
    assert data["default_selection"] == {"out_features": ["stage12"], "out_indices": [12]}


def test_no_head_no_dropout():
    model = bbx.load_backbone("dinov2-small-reg", pretrained=False)
    kinds = {type(m).__name__ for m in model.modules()}
    assert not kinds & {"Dropout", "Identity"}
    assert not hasattr(model, "mask_token")


def test_strict_loading_names_what_does_not_fit(tmp_path):
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 56})
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = load_file(weights)
    broken = dict(state)
    del broken["encoder.layer.1.attention.attention.key.weight"]
    broken["encoder.layer.0.extra.weight"] = torch.zeros(2)
    save_file(broken, weights)
    with pytest.raises(ModelError) as e:
        bbx.load_backbone(str(folder))
    message = str(e.value)
    assert "encoder.layer.1.attention.attention.query.weight" in message  # a q/k/v set with a part missing
    assert "blocks.1.attn.qkv.weight" in message and "blocks.0.extra.weight" in message
    # registers in a plain dinov2 checkpoint are not silently ignored
    save_file(state | {"embeddings.register_tokens": torch.zeros(1, 4, 32)}, weights)
    with pytest.raises(ModelError, match="register_tokens"):
        bbx.load_backbone(str(folder))


def test_config_checks():
    assert Dinov2Settings.from_config({"model_type": "dinov2_with_registers"}).patch_size == 16
    assert Dinov2Settings.from_config({"model_type": "dinov2_with_registers"}).num_register_tokens == 4
    assert Dinov2Settings.from_config({"model_type": "dinov2", "image_size": [518, 518]}).grid == 37
    assert Dinov2Settings.from_config({"hidden_size": 1536, "use_swiglu_ffn": True}).mlp_hidden == 4096
    for bad, match in [
        ({"reshape_hidden_states": False}, "reshape_hidden_states"),
        ({"num_register_tokens": 4}, "register"),
        ({"image_size": [518, 532]}, "square"),
        ({"hidden_size": 100, "num_attention_heads": 3}, "multiple"),
    ]:
        with pytest.raises(ValueError, match=match):
            Dinov2Settings.from_config({"model_type": "dinov2", **bad})


def test_too_small_input_is_refused():
    model = bbx.load_backbone("dinov2-small", pretrained=False)
    with pytest.raises(ValueError, match="14x14"):
        model.map_sizes((13, 224))


def _readouts(registers: bool, stage_norm: str):
    """transformers' Dinov2(WithRegisters)Model: hidden states (layernormed under "hf", as the
    backbone's apply_layernorm), class token 0 (registers follow it), pooler_output."""

    def readouts(folder, x):
        model = _CLASSES[(registers, "model")][1].from_pretrained(folder).eval()
        norm = model.layernorm if stage_norm == "hf" else None
        out = parity.hidden_states(model, x, prefix=1 + model.config.num_register_tokens if registers else 1,
                                   final_norm=norm, embedding=lambda o: o.pooler_output)  # fmt: skip
        return out

    return readouts


@pytest.mark.parametrize("registers", [False, True], ids=["dinov2", "registers"])
def test_class_tokens_and_embedding_match_transformers(tmp_path, registers):
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 518}, registers=registers)
    for stage_norm in ("hf", "none"):
        ref = _readouts(registers, stage_norm)
        parity.compare_readouts(folder, 56, reference=ref, stage_norm=stage_norm, optimized=True)
    parity.compare_readouts(folder, (42, 70), n=2, reference=_readouts(registers, "hf"))
