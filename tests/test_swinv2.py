"""Swin V2 at parity with transformers' Swinv2Backbone (and Swinv2Model for the final norm) on the
same random weights, in every checkpoint layout."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Swinv2Backbone,
    Swinv2Config,
    Swinv2ForImageClassification,
    Swinv2ForMaskedImageModeling,
    Swinv2Model,
)

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.swinv2 import Swinv2Settings
from bbx.families.swinv2 import model as swinv2
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.processors import assert_same_pixels
from tests.util import hf_backbone, randomize_, rel_err, save_checkpoint

TOL = 1e-5
NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
# image 64, patch 4: grids 16/8/4/2, so window 4 shifts in stages 1 and 2 and shrinks to 2 in stage 4
SMALL = {"image_size": 64, "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4], "window_size": 4}
LAYOUTS = {
    "classification": Swinv2ForImageClassification,
    "model": Swinv2Model,
    "backbone": Swinv2Backbone,
    "simmim": Swinv2ForMaskedImageModeling,
}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0, scales: float | None = None):
    """A random-weight checkpoint in ``layout`` (``scales``: every logit scale set to it, e.g. the
    clamp's log(100), where the shifted-window mask must be added exactly as transformers adds it)."""
    model = LAYOUTS[layout](Swinv2Config(**config)).eval()
    randomize_(model, seed)
    if scales is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("logit_scale"):
                    p.fill_(scales)
    pre = registry.lookup("swinv2-tiny").preprocessor_dict()
    return save_checkpoint(model, tmp_path / f"ckpt-{layout}", pre)


def _compare(folder, size: int | tuple[int, int], n: int = 3):
    return parity.compare(folder, size, n, names=NAMES)


@pytest.mark.parametrize("layout", ["classification", "model", "backbone", "simmim"])
def test_small_config_matches_transformers_in_every_layout(tmp_path, layout):
    folder = _checkpoint(tmp_path, SMALL, layout)
    _compare(folder, 64)
    _compare(folder, 56, n=2)  # grid 14: padded to whole windows in stages 1 and 2


@pytest.mark.parametrize(
    "variant",
    [
        {"pretrained_window_sizes": [8, 6, 4, 0]},
        {"qkv_bias": False, "hidden_act": "gelu_new", "layer_norm_eps": 1e-3},
        {"image_size": 128, "window_size": 8, "depths": [2, 2, 3, 1]},
        {"image_size": [64, 96], "patch_size": 2, "depths": [2, 3, 2, 2]},
    ],
    ids=["pretrained-windows", "no-qkv-bias", "window8", "non-square-config"],
)
def test_config_variants_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    _compare(folder, 64, n=2)
    _compare(folder, (61, 90), n=2)  # neither side a multiple of the patch size or the window


def test_saturated_logit_scales_need_the_mask_twice(tmp_path, monkeypatch):
    """At the clamp (scale 100) cosine scores span 200, so the shifted-window mask matters at the
    size transformers gives it: -100 added twice. In float64 bbx is transformers to 1e-12; with the
    mask added once it is not. In fp32 such logits are ill-conditioned: transformers' own fp32 maps
    drift ~2e-4 from float64 at stage 4, and bbx's are held to within twice that."""
    folder = _checkpoint(tmp_path, SMALL, scales=math.log(100.0))
    x = parity.photos(64, 2).double()
    ref = hf_backbone(folder, out_features=NAMES).double()
    with torch.no_grad():
        exact = ref(x).feature_maps
        got = bbx.load_backbone(str(folder), out_features=NAMES).double()(x)
    assert max(rel_err(a, b) for a, b in zip(got, exact)) <= 1e-12
    errors = parity.compare_to_float64(folder, 64, 2, names=NAMES)
    assert errors["stage4"][1] > TOL  # the regime the float64 bar is for

    def mask_once(self, mask):
        n = self.window**2
        table = self.cpb(self.coords.to(self.cpb[0].weight.dtype))
        bias = 16 * torch.sigmoid(table[self.index].view(n, n, self.heads).permute(2, 0, 1))
        if mask is None:
            return bias.unsqueeze(0)
        return (bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1)).reshape(1, -1, n, n)

    monkeypatch.setattr(swinv2.CosineWindowAttention, "attention_bias", mask_once)
    with torch.no_grad():
        once = bbx.load_backbone(str(folder), out_features=NAMES).double()(x)
    assert rel_err(once[-1], exact[-1]) > 1e-6


def test_stage_norms_hf_and_none_are_raw_and_final_is_the_model_norm(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    ref = Swinv2Model.from_pretrained(folder).eval()
    backbone = hf_backbone(folder, out_features=NAMES)
    ours = {m: bbx.load_backbone(str(folder), out_features=NAMES, stage_norm=m) for m in ("hf", "none", "final")}
    for size in (64, (50, 77)):
        x = parity.photos(size, 2)
        with torch.no_grad():
            out = ref(x, output_hidden_states=True)
            want = backbone(x).feature_maps
            maps = {m: model(x) for m, model in ours.items()}
        b, c, h, w = want[-1].shape
        last = out.last_hidden_state.view(b, h, w, c).permute(0, 3, 1, 2)
        for mode in ("hf", "none"):
            assert all(rel_err(a, e) <= TOL for a, e in zip(maps[mode], want)), mode
        fin = maps["final"]
        assert all(rel_err(a, e) <= TOL for a, e in zip(fin[:-1], want[:-1]))
        assert rel_err(fin[-1], last) <= TOL and rel_err(last, want[-1]) > 0.01


def test_final_norm_missing_is_a_clear_error(tmp_path):
    """Swinv2Backbone has no final layernorm: fine for hf/none, refused for final."""
    folder = _checkpoint(tmp_path, SMALL, "backbone")
    assert not any("layernorm." in k and "layers" not in k for k in load_file(str(folder / "model.safetensors")))
    _compare(folder, 64, n=2)
    with pytest.raises(ModelError, match=r"missing keys: final_norm\.weight, final_norm\.bias.*stage norm 'final'"):
        bbx.load_backbone(str(folder), stage_norm="final")


def test_strict_loading_names_problems(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    state.pop("swinv2.encoder.layers.1.blocks.0.attention.self.key.weight")
    state["swinv2.encoder.layers.0.blocks.0.attention.self.extra.weight"] = torch.zeros(2)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelError) as e:
        bbx.load_backbone(str(folder))
    msg = str(e.value)
    assert re.search(r"missing keys: stages\.1\.blocks\.0\.attn\.qkv\.weight", msg)
    assert "encoder.layers.0.blocks.0.attention.self.extra.weight" in msg and "\n" not in msg


def test_computed_tables_in_a_checkpoint_are_dropped(tmp_path):
    """Files holding the coordinate and index tables (older transformers wrote buffers) still load."""
    folder = _checkpoint(tmp_path, SMALL)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    ref = Swinv2Model(Swinv2Config(**SMALL)).encoder.layers[0].blocks[0].attention.self
    state["swinv2.encoder.layers.0.blocks.0.attention.self.relative_coords_table"] = ref.relative_coords_table
    state["swinv2.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = ref.relative_position_index
    save_file(state, str(path), metadata={"format": "pt"})
    _compare(folder, 64, n=1)


@pytest.mark.parametrize(("window", "pretrained"), [(8, 0), (12, 0), (24, 12), (6, 6), (2, 8), (1, 0)])
def test_coordinate_tables_are_transformers(window, pretrained):
    cfg = Swinv2Config(window_size=window)
    ref = swinv2_attention(cfg, window, pretrained)
    got = swinv2.relative_coords_table(window, pretrained)
    assert torch.equal(got, ref.relative_coords_table.view(-1, 2))
    assert torch.equal(swinv2.relative_position_index(window), ref.relative_position_index.view(-1))


def swinv2_attention(cfg, window, pretrained):
    from transformers.models.swinv2.modeling_swinv2 import Swinv2SelfAttention

    return Swinv2SelfAttention(cfg, 8, 2, window, [pretrained, pretrained])


@pytest.mark.parametrize("size", [64, (77, 50)])
def test_inference_rewrites_stay_at_parity(tmp_path, size):
    """extract/bench cache the attention biases per grid and fuse the MLP kernels: within 1e-5,
    and the cache is reused at the next batch of that size."""
    folder = _checkpoint(tmp_path, SMALL, seed=3)
    ref = hf_backbone(folder, out_features=NAMES)
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert not channels_last
    x = parity.photos(size, 3)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x)
        again = ours(x)
    for name, a, b, c in zip(NAMES, got, want, again):
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
        assert torch.equal(a, c)
    caches = [b.bias_cache for s in ours.stages for b in s.blocks]
    assert all(c is not None and len(c) == 1 for c in caches)


def test_bfloat16_is_as_close_to_fp32_as_transformers(tmp_path):
    """Under bf16 autocast (``--dtype bfloat16``) bbx's maps are as far from transformers' fp32
    maps as transformers' own bf16 maps are (a bound of 1.5x theirs and 1e-2 absolute)."""
    folder = _checkpoint(tmp_path, SMALL, seed=4)
    ref = hf_backbone(folder, out_features=NAMES)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos(64, 3)
    with torch.no_grad():
        exact = ref(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x).feature_maps
            got = ours(x)
    for name, a, t, e in zip(NAMES, got, theirs, exact):
        ours_err, their_err = rel_err(a, e), rel_err(t, e)
        assert ours_err <= max(1.5 * their_err, 1e-2), (name, ours_err, their_err)


@pytest.mark.slow
def test_swinv2_tiny_config_matches_transformers(tmp_path):
    row = registry.lookup("swinv2-tiny")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = _compare(folder, 256, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, 200, n=2)


@pytest.mark.slow
def test_fine_tuned_large_layout_matches_transformers(tmp_path):
    """swinv2-large-384's layout (window 24 over a 384 input, position MLPs pre-trained at windows
    12/12/12/6), narrower and shallower to stay fast."""
    config = {k: v for k, v in registry.lookup("swinv2-large-384").config_dict().items() if k != "architectures"}
    assert config.pop("model_type") == "swinv2"
    config.update(embed_dim=24, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
    folder = _checkpoint(tmp_path, config, "model", seed=2)
    _compare(folder, 384, n=1)
    _compare(folder, 300, n=1)


def test_catalog_windows():
    """Each row's stage windows (from its own image size) and their shifts."""
    want = {
        "swinv2-tiny": [(8, 4), (8, 4), (8, 4), (8, 0)],
        "swinv2-small": [(16, 8), (16, 8), (16, 0), (8, 0)],
        "swinv2-base-22k": [(12, 6), (12, 6), (12, 0), (6, 0)],
        "swinv2-large-384": [(24, 12), (24, 12), (24, 0), (12, 0)],
    }
    for row in registry.family_of("swinv2").catalog:
        s = Swinv2Settings.from_config(row.config)
        assert s.windows() == want[row.alias], row.alias
        assert f"window{row.config['window_size']}" in row.repo_id or "to24" in row.repo_id
        assert row.preprocessor["size"] == {"height": s.image_size[0], "width": s.image_size[1]}
        model = swinv2.build(row.config_dict()) if row.alias == "swinv2-tiny" else None
        if model is not None:
            windows = [(b.window, b.shift) for st in model.stages for b in st.blocks]
            assert windows == [(8, 0), (8, 4), (8, 0), (8, 4), *[(8, 0), (8, 4)] * 3, (8, 0), (8, 0)]


def test_transformers_windows_are_the_settings_windows():
    for alias in ("swinv2-small", "swinv2-large-384"):
        cfg = Swinv2Config(**{k: v for k, v in registry.lookup(alias).config_dict().items() if k != "model_type"})
        with torch.device("meta"):
            ref = Swinv2Model(cfg)
        got = [(layer.blocks[1].window_size, layer.blocks[1].shift_size) for layer in ref.encoder.layers]
        assert got == Swinv2Settings.from_config(registry.lookup(alias).config).windows()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"use_absolute_embeddings": True}, "use_absolute_embeddings"),
        ({"pretrained_window_sizes": [0, 0, 0]}, "pretrained_window_sizes has 3 entries"),
        ({"pretrained_window_sizes": [1, 0, 0, 0]}, "divides"),
        ({"image_size": 16}, "empty grid"),
        ({"num_heads": [3, 3, 4, 4]}, "heads"),
    ],
)
def test_configs_that_cannot_run_are_one_line(change, words):
    fam = registry.family_of("swinv2")
    with pytest.raises(ModelError, match=words) as e:
        fam.parse({**fam.tiny_config(), **change})
    assert "\n" not in str(e.value)


def test_inspect_swinv2_tiny_json():
    r = run("inspect", "swinv2-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "microsoft/swinv2-tiny-patch4-window8-256"
    assert data["architecture"] == "swinv2" and data["input_size"] == [256, 256]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [96, 96, 192, 384, 768]
    assert [s["stride"] for s in stages] == [4, 4, 8, 16, 32]
    assert stages[1]["shape"] == [96, 64, 64] and stages[4]["shape"] == [768, 8, 8]
    r = run("inspect", "swinv2-tiny", "--image-size", "200", "--json")
    assert [s["shape"] for s in json.loads(r.stdout)["stages"]][-1] == [768, 7, 7]


@pytest.mark.parametrize("alias", ["swinv2-tiny", "swinv2-base-22k", "swinv2-large-384"])
def test_preprocessing_is_transformers_to_the_bit(tmp_path, alias):
    pre = registry.lookup(alias).preprocessor_dict()
    assert_same_pixels(tmp_path / "a", pre, "swinv2")
    assert_same_pixels(tmp_path / "b", {**pre, "size": {"height": 200, "width": 200}}, "swinv2")


def test_training_after_an_inference_run_can_backpropagate():
    """The window tables are cached across calls: one made under inference_mode must not poison
    a later forward that autograd tracks."""
    fam = registry.family_of("swinv2")
    model = fam.build(fam.tiny_config())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    model.train()
    model(x)[-1].sum().backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_extract_equals_the_transformers_recipe(tmp_path, photos):
    """`bbx extract` (preprocessing to 256, windows padded from the config's 64, cached biases)
    against AutoImageProcessor and Swinv2Backbone, image by image."""
    folder = _checkpoint(tmp_path, SMALL, seed=6)
    parity.extract_matches_recipe(folder, photos, tmp_path / "f.safetensors", "--out-indices", "0,2,-1")
