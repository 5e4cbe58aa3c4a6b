"""FocalNet at parity with transformers' FocalNetBackbone (and FocalNetModel for the final norm) on
the same random weights, in every checkpoint layout and block variant; the inference rewrites and
bf16 too. The contract every family keeps is tests/test_families.py."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    FocalNetBackbone,
    FocalNetConfig,
    FocalNetForImageClassification,
    FocalNetForMaskedImageModeling,
    FocalNetModel,
)

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.processors import hf_pixels, hf_processor
from tests.util import hf_backbone, photo, rel_err

NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
# hidden_sizes as a list: FocalNetConfig's tuple default breaks FocalNetBackbone
SMALL = {"embed_dim": 16, "depths": [1, 2, 1, 1], "hidden_sizes": [32, 64, 128, 128]}
LAYOUTS = {
    "classification": FocalNetForImageClassification,
    "model": FocalNetModel,
    "backbone": FocalNetBackbone,
    "simmim": FocalNetForMaskedImageModeling,
}
#: what the large checkpoints switch on (conversion script: conv embedding, post-norm, layer scale)
LARGE_STYLE = {"use_conv_embed": True, "use_post_layernorm": True, "use_layerscale": True, "focal_levels": [3] * 4}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0):
    pre = registry.lookup("focalnet-tiny").preprocessor_dict()
    model = LAYOUTS[layout](FocalNetConfig(**config))
    return parity.checkpoint(tmp_path / f"ckpt-{layout}", model, pre, seed)


def _compare(folder, size, n: int = 3, **kw):
    return parity.compare(folder, size, n, names=NAMES, **kw)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"focal_levels": [3, 3, 3, 3]},
        LARGE_STYLE,
        {"use_layerscale": True, "normalize_modulator": True, "use_post_layernorm_in_modulation": True},
        {"focal_levels": [0, 1, 4, 2], "focal_windows": [3, 5, 1, 7], "hidden_act": "gelu_new"},
        {"patch_size": 2, "mlp_ratio": 2.5},
    ],
    ids=["default", "lrf", "large-style", "normalized-post-ln-modulation", "odd-levels", "patch2"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    _compare(folder, 224)
    _compare(folder, (150, 211), n=2)  # odd grids: the input and every downsample pad


@pytest.mark.parametrize("layout", ["model", "backbone", "simmim"])
def test_other_layouts_load(tmp_path, layout):
    extra = {"out_features": NAMES} if layout == "backbone" else {}
    folder = _checkpoint(tmp_path, {**SMALL, **extra}, layout=layout)
    _compare(folder, 160, n=2)


def _final_norm_reference(folder, x, names):
    """FocalNetModel: the stage maps as its backbone takes them, the last with the final layernorm
    (its last_hidden_state)."""
    model = FocalNetModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    states = list(out.reshaped_hidden_states)
    b, _, h, w = states[-1].shape
    states[-1] = out.last_hidden_state.transpose(1, 2).reshape(b, -1, h, w)
    return [states[NAMES.index(n)] for n in names]


def test_stage_norm_final_is_the_trained_final_norm(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, "layer_norm_eps": 1e-3})
    _compare(folder, (160, 128), n=2, stage_norm="final", reference=_final_norm_reference)
    _compare(folder, (160, 128), n=2, stage_norm="none")  # the same maps as hf: the backbone has no norm
    x = parity.photos(128, 1)
    with torch.no_grad():
        raw = bbx.load_backbone(str(folder), stage_norm="none")(x)[0]
        final = bbx.load_backbone(str(folder), stage_norm="final")(x)[0]
    assert rel_err(final, raw) > 0.01  # the norm changes the map (the test can fail)


def test_inference_rewrites_stay_at_parity(tmp_path):
    """Folded layer scales (into the projection, or the post-norm's affine), fused kernels, row
    slices and channels-last: still within 1e-5 of transformers, for both block kinds."""
    for variant in ({"use_layerscale": True}, LARGE_STYLE):
        folder = _checkpoint(tmp_path, {**SMALL, **variant})
        ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
        assert channels_last and all(b.gamma1 is None for s in ours.stages for b in s.blocks)
        x = parity.photos((200, 176), 3)
        with torch.no_grad():
            got = ours(x.contiguous(memory_format=torch.channels_last))
            want = hf_backbone(folder, out_features=NAMES)(x).feature_maps
        errors = [rel_err(a, b) for a, b in zip(got, want)]
        assert max(errors) <= parity.TOL, (variant, errors)


def test_bfloat16_is_as_close_to_fp32_as_transformers_is(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, "use_layerscale": True})
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    ref = hf_backbone(folder, out_features=NAMES)
    x = parity.photos(192, 3)
    ours_err, hf_err = parity.bf16_errors(
        lambda t: ours(t.contiguous(memory_format=torch.channels_last)), lambda t: ref(t).feature_maps, x
    )
    for name, a, b in zip(NAMES, ours_err, hf_err):
        assert a <= parity.BF16_SLACK * b, (name, a, b)


@pytest.mark.slow
def test_public_tiny_config_matches_transformers(tmp_path):
    row = registry.lookup("focalnet-tiny")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, (192, 256), n=1)


def test_widths_follow_embed_dim_not_hidden_sizes(tmp_path):
    """focalnet-base's hub config keeps FocalNetConfig's default hidden_sizes (192/384/768/768):
    the maps are 128 * 2**k wide, and bbx says so."""
    config = {**SMALL, "embed_dim": 8, "hidden_sizes": [192, 384, 768, 768]}
    folder = _checkpoint(tmp_path, config)
    model = _compare(folder, 96, n=1)
    assert [s.channels for s in model.stage_specs] == [8, 16, 32, 64, 64]
    base = bbx.load_backbone("focalnet-base", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert base.channels == [128, 256, 512, 1024, 1024] and base.strides == [4, 8, 16, 32, 32]


def test_inspect_focalnet_json():
    r = run("inspect", "focalnet-tiny-lrf", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "microsoft/focalnet-tiny-lrf" and data["architecture"] == "focalnet"
    assert data["input_size"] == [224, 224]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [96, 192, 384, 768, 768]
    assert [s["stride"] for s in stages] == [4, 8, 16, 32, 32]
    assert [s["shape"] for s in stages][-1] == [768, 7, 7]


def test_catalog_preprocessing_is_transformers_to_the_bit(tmp_path):
    from bbx import images
    from bbx.preprocess import Preprocess

    row = registry.lookup("focalnet-tiny")
    proc = hf_processor(tmp_path, row.preprocessor_dict(), "focalnet")
    pre = Preprocess.from_config(row.preprocessor_dict(), "focalnet")
    assert pre.resample == 2 and pre.output_size == (224, 224)
    for i, (w, h) in enumerate([(500, 375), (333, 517), (256, 256)]):
        img = photo(w, h, seed=i)
        got = images.normalize(torch.from_numpy(images.prepare(img, pre))[None], pre)
        assert torch.equal(got, hf_pixels(proc, [img]))


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"focal_windows": [3, 4, 3, 3]}, "odd"),
        ({"focal_levels": [2, 2]}, "need an entry"),
        ({"depths": [1] * 13}, "1 to 12 stages"),
        ({"embed_dim": 1 << 19}, "too wide"),
    ],
)
def test_configs_that_do_not_fit_are_one_line(bad, words):
    fam = registry.family_of("focalnet")
    with pytest.raises(ModelError) as e:
        fam.parse({**fam.tiny_config(), **bad})
    assert words in e.value.message and "\n" not in e.value.message


def test_too_small_input_for_the_conv_stem_is_refused():
    fam = registry.family_of("focalnet")
    settings = fam.parse({**fam.tiny_config(), "use_conv_embed": True, "patch_size": 1})
    with pytest.raises(ValueError, match="too small"):
        settings.map_sizes((2, 64))
