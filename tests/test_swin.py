"""Swin at parity with transformers' SwinBackbone (and SwinModel for the other stage norms) on the
same random weights, in every checkpoint layout."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    SwinBackbone,
    SwinConfig,
    SwinForImageClassification,
    SwinForMaskedImageModeling,
    SwinModel,
)

import bbx
from bbx import hub, registry
from bbx.errors import ModelError
from bbx.loading import build
from tests import parity
from tests.cli import run
from tests.util import photo_batch, randomize_, rel_err, save_checkpoint

TOL = 1e-5
NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
# every stage has a shifted block; stage widths 16/32/64/128 with 2/2/4/4 heads
SMALL = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4], "window_size": 7}
LAYOUTS = {
    "classification": SwinForImageClassification,
    "model": SwinModel,
    "backbone": SwinBackbone,
    "simmim": SwinForMaskedImageModeling,
}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0, **extra):
    cfg = SwinConfig(**config, **extra)
    model = randomize_(LAYOUTS[layout](cfg).eval(), seed)
    row = registry.lookup("swin-tiny")
    return save_checkpoint(model, tmp_path / f"ckpt-{layout}", row.preprocessor_dict())


def _check(got, want, what):
    assert len(got) == len(want), what
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, (what, name, a.shape, b.shape)
        assert rel_err(a, b) <= TOL, (what, name, rel_err(a, b))


def _compare(folder, size: int | tuple[int, int], n: int = 3, **hf_kwargs):
    """bbx (stage norm hf) vs transformers' SwinBackbone, every stage; returns bbx's model."""
    return parity.compare(folder, size, n, names=NAMES, **hf_kwargs)


def _hf_model_maps(folder, x):
    """transformers' SwinModel run as its backbone runs it: raw stage maps (before patch merging)
    and last_hidden_state (the trained final norm on the last stage) as a map."""
    ref = SwinModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = ref(x, always_partition=True, output_hidden_states_before_downsampling=True, output_hidden_states=True)
    raw = list(out.reshaped_hidden_states)
    b, c, h, w = raw[-1].shape
    final = out.last_hidden_state.view(b, h, w, c).permute(0, 3, 1, 2)
    return raw, final


@pytest.mark.parametrize("layout", ["classification", "model", "backbone"])
def test_small_config_matches_transformers_in_every_layout(tmp_path, layout):
    # A backbone saved for some stages carries trained norms for those (they must load) and
    # none for the others (they must be created as transformers creates them).
    extra = {"out_features": ["stem", "stage2", "stage4"]} if layout == "backbone" else {}
    folder = _checkpoint(tmp_path, SMALL, layout, **extra)
    _compare(folder, 224)
    _compare(folder, 200)  # 50x50 patches: not a multiple of the window at any stage


def test_simmim_layout_drops_decoder_and_mask_token(tmp_path):
    folder = _checkpoint(tmp_path, SMALL, "simmim")
    assert any(k.startswith("decoder.") for k in load_file(str(folder / "model.safetensors")))
    _compare(folder, 224, n=2)


def test_non_square_input(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    _compare(folder, (173, 301), n=2)  # neither side a multiple of the patch size


def test_stage_norm_none_and_final_match_swin_model(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    for size in (224, 200):
        x = photo_batch(size, 2)
        raw, final = _hf_model_maps(folder, x)
        with torch.no_grad():
            none = bbx.load_backbone(str(folder), out_features=NAMES, stage_norm="none")(x)
            fin = bbx.load_backbone(str(folder), out_features=NAMES, stage_norm="final")(x)
        _check(none, raw, "none")
        # final: the trained final norm on the last stage only, the other stages raw
        _check(fin, [*raw[:-1], final], "final")
        assert rel_err(fin[-1], none[-1]) > 0.01


def test_final_norm_missing_is_a_clear_error(tmp_path):
    """A backbone saved by transformers 4 has no final `layernorm`: fine for hf/none, refused for final."""
    folder = _checkpoint(tmp_path, SMALL, "backbone", out_features=NAMES)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    assert {"swin.layernorm.weight", "swin.layernorm.bias"} <= set(state)
    state = {k: v for k, v in state.items() if not k.startswith("swin.layernorm.")}
    save_file(state, str(path), metadata={"format": "pt"})
    _compare(folder, 224, n=2)
    with pytest.raises(ModelError, match=r"missing keys: final_norm\.weight, final_norm\.bias.*stage norm 'final'"):
        bbx.load_backbone(str(folder), stage_norm="final")


def _edit(folder, fn):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_relative_position_index_keys_are_checked_and_dropped(tmp_path):
    """Checkpoints saved by transformers 4 (all hub ones) carry the index tables: accepted when
    they match the window size, refused otherwise."""
    folder = _checkpoint(tmp_path, SMALL)
    ref = SwinModel(SwinConfig(**SMALL))
    index = ref.encoder.layers[0].blocks[0].attention.relative_position_bias.relative_position_index.view(49, 49)

    def add(state, table):
        for i, depth in enumerate(SMALL["depths"]):
            for j in range(depth):
                state[f"swin.encoder.layers.{i}.blocks.{j}.attention.self.relative_position_index"] = table.clone()

    _edit(folder, lambda s: add(s, index))
    _compare(folder, 224, n=2)
    _edit(folder, lambda s: add(s, index.t().contiguous()))
    with pytest.raises(ModelError, match=r"relative_position_index does not match window_size 7"):
        bbx.load_backbone(str(folder))


def test_strict_loading_names_problems(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    extra = "encoder.layers.0.blocks.0.attention.self.extra.weight"
    _edit(folder, lambda s: s.update({f"swin.{extra}": torch.zeros(2)}))
    with pytest.raises(ModelError, match=f"unexpected keys: {re.escape(extra)}"):
        bbx.load_backbone(str(folder))
    folder = _checkpoint(tmp_path / "b", SMALL)
    _edit(folder, lambda s: s.pop("swin.encoder.layers.1.blocks.0.attention.self.key.weight"))
    with pytest.raises(ModelError, match=r"missing keys: stages\.1\.blocks\.0\.attn\.qkv\.weight.*unexpected keys"):
        bbx.load_backbone(str(folder))


def test_absolute_position_embeddings(tmp_path):
    cfg = {**SMALL, "use_absolute_embeddings": True, "image_size": 64}
    folder = _checkpoint(tmp_path, cfg)
    _compare(folder, 64, n=2)
    # other sizes: resized as transformers does with interpolate_pos_encoding=True
    _compare(folder, 96, n=2, interpolate_pos_encoding=True)
    _compare(folder, (96, 128), n=2, interpolate_pos_encoding=True)


@pytest.mark.slow
def test_swin_tiny_config_matches_transformers(tmp_path):
    row = registry.lookup("swin-tiny")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, 250, n=2)


@pytest.mark.slow
def test_window_12_config_matches_transformers(tmp_path):
    """swin-base-384's layout (window 12, 384 input), narrower and shallower to stay fast."""
    config = {k: v for k, v in registry.lookup("swin-base-384").config_dict().items() if k != "architectures"}
    assert config.pop("model_type") == "swin" and config["window_size"] == 12
    config.update(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[2, 4, 8, 8])
    folder = _checkpoint(tmp_path, config, "model", seed=2)
    _compare(folder, 384, n=2)
    _compare(folder, 200, n=2)


def test_catalog_windows_follow_the_input_size():
    rows = registry.family_of("swin").catalog
    assert {r.alias for r in rows} >= {"swin-tiny", "swin-small", "swin-base", "swin-large"}
    assert {"swin-base-384", "swin-large-384"} <= {r.alias for r in rows}
    for row in rows:
        model = build(hub.resolve(row.alias, weights=False), device="meta")  # shapes only
        c = row.config["embed_dim"]
        assert [s.channels for s in model.stage_specs] == [c, c, 2 * c, 4 * c, 8 * c], row.alias
        assert [s.stride for s in model.stage_specs] == [4, 4, 8, 16, 32]
        size = row.preprocessor["size"]
        assert row.config["window_size"] == (7 if size == 224 else 12)
        assert f"window{row.config['window_size']}-{size}" in row.repo_id


def test_inspect_swin_tiny_json():
    r = run("inspect", "swin-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "microsoft/swin-tiny-patch4-window7-224"
    assert data["architecture"] == "swin" and data["input_size"] == [224, 224]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [96, 96, 192, 384, 768]
    assert [s["stride"] for s in stages] == [4, 4, 8, 16, 32]
    assert stages[1]["shape"] == [96, 56, 56] and stages[4]["shape"] == [768, 7, 7]
    r = run("inspect", "swin-base-384", "--image-size", "200", "--json")
    assert [s["shape"] for s in json.loads(r.stdout)["stages"]] == [
        [128, 50, 50],
        [128, 50, 50],
        [256, 25, 25],
        [512, 13, 13],
        [1024, 7, 7],
    ]


def test_training_after_an_inference_run_can_backpropagate():
    """The window tables are cached across calls: one made under inference_mode must not poison
    a later forward that autograd tracks."""
    model = bbx.load_backbone("swin-tiny", pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    model.train()
    model(x)[-1].sum().backward()
    assert model.patch_embed.proj.weight.grad is not None
