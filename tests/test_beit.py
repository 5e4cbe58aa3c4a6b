"""BEiT at parity with transformers' BeitBackbone (BeitModel / the checkpoint's own class for the
final norm, the class token and the pooled output) on the same random weights, in every
checkpoint layout transformers writes, with shared and per-block relative position biases."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.beit import BeitSettings
from bbx.families.beit import model as beit
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.util import randomize_, rel_err, save_checkpoint

TOL = parity.TOL
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 64}
NAMES = ["stem", "stage1", "stage2", "stage3"]
LAYOUTS = {
    "mim": tf.BeitForMaskedImageModeling,
    "classifier": tf.BeitForImageClassification,
    "model": tf.BeitModel,
    "backbone": tf.BeitBackbone,
}
SHARED = {"use_shared_relative_position_bias": True, "use_mask_token": True}  # the pt22k checkpoints
PER_BLOCK = {"use_relative_position_bias": True}  # the ft22k ones


def _checkpoint(tmp_path, config: dict, layout: str, seed: int = 0):
    extra = {"num_labels": 3} if layout == "classifier" else {}
    model = randomize_(LAYOUTS[layout](tf.BeitConfig(**config, **extra)).eval(), seed)
    return save_checkpoint(model, tmp_path / "ckpt", registry.lookup("beit-base-pt22k").preprocessor_dict())


def _saved(tmp_path, config: dict, layout: str):
    """(folder, the transformers model saved there): the model itself is the reference where
    transformers 5.24 would not load its own file back (a masked-image-modelling checkpoint without
    mean pooling has two ``layernorm`` keys, ``beit.layernorm`` and the head's, and from_pretrained
    swaps them)."""
    extra = {"num_labels": 3} if layout == "classifier" else {}
    model = randomize_(LAYOUTS[layout](tf.BeitConfig(**config, **extra)).eval())
    folder = save_checkpoint(model, tmp_path / "ckpt", registry.lookup("beit-base-pt22k").preprocessor_dict())
    return folder, model


@pytest.mark.parametrize(
    ("variant", "layout"),
    [
        (SHARED, "mim"),
        (PER_BLOCK, "classifier"),
        ({**SHARED, **PER_BLOCK, "use_mean_pooling": False}, "model"),
        ({"use_absolute_position_embeddings": True, "layer_scale_init_value": 0.0}, "backbone"),
        ({**PER_BLOCK, "use_absolute_position_embeddings": True, "hidden_act": "gelu_new", "patch_size": 32}, "model"),
        ({**SHARED, "image_size": [64, 96], "layer_norm_eps": 1e-6}, "mim"),
    ],
    ids=[
        "shared-mim",
        "per-block-classifier",
        "both-model",
        "absolute-backbone",
        "absolute-per-block-p32",
        "nonsquare",
    ],
)
def test_small_configs_match_transformers(tmp_path, variant, layout):
    folder = _checkpoint(tmp_path, {**TINY, **variant}, layout)
    for size in (64, 224, 200, (96, 160)):  # the checkpoint's own grid, the default, not a multiple, not square
        parity.compare(folder, size, 2, names=NAMES)


@pytest.mark.parametrize(
    ("variant", "layout", "has_final", "has_embedding"),
    [
        (SHARED, "mim", True, False),  # the head's norm; no pooler
        (PER_BLOCK, "classifier", False, True),  # the pooler's norm of the mean patch
        ({**PER_BLOCK, "use_mean_pooling": False}, "model", True, True),  # BeitModel.layernorm; the class token
        ({**SHARED, "use_mean_pooling": False}, "mim", True, True),  # no pooler, but the normed class token
    ],
    ids=["mim", "classifier", "model-no-mean-pooling", "mim-no-mean-pooling"],
)
def test_final_norm_class_token_and_embedding(tmp_path, variant, layout, has_final, has_embedding):
    folder, outer = _saved(tmp_path, {**TINY, **variant}, layout)
    base = getattr(outer, "beit", outer)
    x = parity.photos((96, 160), 2)
    with torch.no_grad():
        out = base(x, output_hidden_states=True)
        states = out.hidden_states
    if variant.get("use_mean_pooling", True) and layout == "mim":
        norm = outer.layernorm  # the pretraining head's final norm
    else:
        norm = base.layernorm
    raw = bbx.load_backbone(str(folder))
    assert raw.has_embedding == has_embedding and raw.has_class_token
    with torch.no_grad():
        stages = list(raw.iter_stages(x))
        for i, state in enumerate(states):
            assert rel_err(raw.stage_class_token(i, stages[i]), state[:, 0]) <= TOL
        if has_embedding:
            pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
            assert rel_err(raw.embedding(stages[-1]), pooled) <= TOL
    if not has_final:
        with pytest.raises(ModelError, match="final per-token LayerNorm"):
            bbx.load_backbone(str(folder), stage_norm="final")
        return

    def normed(folder, x, names):
        with torch.no_grad():
            maps = [norm(s)[:, 1:] for s in base(x, output_hidden_states=True).hidden_states]
        gh, gw = x.shape[2] // 16, x.shape[3] // 16
        return [m.reshape(len(x), gh, gw, -1).permute(0, 3, 1, 2) for m in maps]

    parity.compare(folder, (96, 160), 2, names=NAMES, stage_norm="final", reference=normed)
    final = bbx.load_backbone(str(folder), stage_norm="final")
    with torch.no_grad():
        stages = list(final.iter_stages(x))
        assert rel_err(final.stage_class_token(3, stages[3]), norm(states[3])[:, 0]) <= TOL


def test_inference_rewrites_stay_at_parity(tmp_path):
    folder = _checkpoint(tmp_path, {**TINY, **SHARED, **PER_BLOCK, "layer_scale_init_value": 0.3}, "model")
    ref = tf.BeitBackbone.from_pretrained(folder, out_features=NAMES).eval()
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert not channels_last and all(b.scale1 is None for b in ours.blocks)
    for size in ((96, 160), 224, (96, 160)):  # the second (96, 160) reuses the cached biases
        x = parity.photos(size, 2)
        with torch.no_grad():
            want, got = ref(x).feature_maps, ours(x)
        for name, a, b in zip(NAMES, got, want):
            assert rel_err(a, b) <= TOL, (name, size)
    assert len(ours._biases) == 2


def test_in_memory_key_names_load_too(tmp_path):
    """transformers 5's in-memory names (layers.N.attention.q_proj, shared_position_bias, ...)."""
    hf = randomize_(tf.BeitForMaskedImageModeling(tf.BeitConfig(**TINY, **SHARED)).eval())
    state = hf.state_dict()
    assert any(".q_proj." in k for k in state) and any("shared_position_bias" in k for k in state)
    config = hf.config.to_dict()
    model = beit.build(config, stage_norm="final")
    model.load_state_dict(beit.remap(state, config), strict=False)
    missing = set(model.state_dict()) - set(beit.remap(state, config))
    assert missing == {"pool_norm.weight", "pool_norm.bias"}
    x = parity.photos(64, 2)
    with torch.no_grad():
        want = hf.layernorm(hf.beit(x).last_hidden_state)[:, 1:]
        got = model.select(out_indices=[-1])(x)[0]
    assert rel_err(got.flatten(2).transpose(1, 2), want) <= TOL


def test_bfloat16_stays_within_transformers_own_error(tmp_path):
    folder = _checkpoint(tmp_path, {**TINY, **PER_BLOCK}, "classifier")
    ref = tf.BeitBackbone.from_pretrained(folder, out_features=NAMES).eval()
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos(224, 2)
    with torch.no_grad():
        want = ref(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x).feature_maps
            got = ours(x)
    for a, b, c in zip(got, want, theirs):
        assert rel_err(a, b) <= max(2 * rel_err(c, b), 1e-3), (rel_err(a, b), rel_err(c, b))


@pytest.mark.slow
def test_public_base_config_matches_transformers(tmp_path):
    row = registry.lookup("beit-base-pt22k-ft22k")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, "classifier", seed=1)
    names = list(row.stage_names)
    ours = bbx.load_backbone(str(folder), out_features=names)
    assert ours.stage_names == names
    ref = tf.BeitBackbone.from_pretrained(folder, out_features=names).eval()
    for size in (224, (128, 192)):  # one model of each, both sizes: loading 86M weights twice is the cost
        x = parity.photos(size, 1)
        with torch.no_grad():
            errors = [rel_err(a, b) for a, b in zip(ours(x), ref(x).feature_maps)]
        assert len(errors) == len(names) and max(errors) <= TOL, (size, errors)


def test_strict_loading_names_what_does_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _checkpoint(tmp_path, {**TINY, **PER_BLOCK}, "classifier")
    path = folder / "model.safetensors"
    state = load_file(path)
    gone = "beit.encoder.layer.1.attention.attention.relative_position_bias.relative_position_bias_table"
    broken = {k: v for k, v in state.items() if k != gone}
    save_file(broken | {"beit.encoder.layer.0.extra.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError) as e:
        bbx.load_backbone(str(folder))
    assert "blocks.1.bias.table" in str(e.value) and "blocks.0.extra.weight" in str(e.value)
    # the relative_position_index buffers older checkpoints carry are not weights
    index = beit.relative_position_index(4, 4)
    save_file(state | {"beit.encoder.layer.0.attention.attention.relative_position_index": index}, path)
    bbx.load_backbone(str(folder))


def test_relative_position_index_is_transformers():
    for grid in ((4, 4), (3, 5)):
        want = tf.models.beit.modeling_beit.BeitRelativePositionBias.generate_relative_position_index(grid)
        assert torch.equal(beit.relative_position_index(*grid), want)


def test_config_checks():
    assert BeitSettings.from_config({"image_size": [224, 320]}).grid == (14, 20)
    for bad, match in [
        ({"hidden_size": 100, "num_attention_heads": 3}, "multiple"),
        ({"reshape_hidden_states": False}, "reshape_hidden_states"),
        ({"use_absolute_position_embeddings": True, "image_size": [224, 320]}, "square"),
        ({"image_size": 8}, "smaller"),
        ({"image_size": 1 << 20, "patch_size": 1}, "too large"),
    ]:
        with pytest.raises(ValueError, match=match):
            BeitSettings.from_config(bad)


def test_inspect_json():
    r = run("inspect", "beit-large-pt22k", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "microsoft/beit-large-patch16-224-pt22k" and data["architecture"] == "beit"
    assert data["input_size"] == [224, 224]
    assert [s["name"] for s in data["stages"]] == ["stem"] + [f"stage{i}" for i in range(1, 25)]
    assert all(s["shape"] == [1024, 14, 14] for s in data["stages"])
