"""BiT at parity with transformers' BitBackbone (and BitModel for the final norm) on the same random
weights, in every checkpoint layout and padding/layer layout transformers builds.

The bar is BiT's own (see tests.parity.compare_to_float64): a deep stack of GroupNorms makes fp32
ill-conditioned, so that transformers' fp32 maps of the public config are ~2e-5 from a float64 run
at stage 4. bbx's fp32 maps must be within twice transformers' error of that float64 run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BitBackbone, BitConfig, BitForImageClassification, BitModel

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.bit import model as bit
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.processors import assert_same_pixels
from tests.util import hf_backbone, rel_err

NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
# widths 16..64 with bottlenecks of 8/8/16/16 channels: 4 groups divide them all
SMALL = {"embedding_size": 8, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 2, 1, 1], "num_groups": 4}
HYBRID = {"layer_type": "bottleneck", "global_padding": "SAME", "embedding_dynamic_padding": True}
LAYOUTS = {"classification": BitForImageClassification, "model": BitModel, "backbone": BitBackbone}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0):
    pre = registry.lookup("bit-50").preprocessor_dict()
    return parity.checkpoint(tmp_path / f"ckpt-{layout}", LAYOUTS[layout](BitConfig(**config)), pre, seed)


def _compare(folder, size, n: int = 2, model=None):
    return parity.compare_to_float64(folder, size, n, names=NAMES, model=model)


@pytest.mark.parametrize("layout", ["classification", "model", "backbone"])
def test_small_config_matches_transformers_in_every_layout(tmp_path, layout):
    folder = _checkpoint(tmp_path, SMALL, layout)
    parity.compare(folder, 128, names=NAMES)  # small configs: within 1e-5 as well
    parity.compare(folder, (97, 130), n=2, names=NAMES)
    if layout == "classification":
        _compare(folder, 128)


@pytest.mark.parametrize(
    "variant",
    [
        HYBRID,
        {"global_padding": "same"},
        {"layer_type": "bottleneck"},
        {"layer_type": "bottleneck", "output_stride": 8},
        {"output_stride": 16, "hidden_act": "gelu"},
        {**HYBRID, "width_factor": 2},
        {"hidden_sizes": [20, 40, 60, 64]},
    ],
    ids=["vit-hybrid", "same-static-pool", "bottleneck", "bottleneck-os8", "preact-os16-gelu", "wide", "rounded"],
)
def test_layouts_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    parity.compare(folder, 96, names=NAMES)
    parity.compare(folder, (61, 90), n=2, names=NAMES)  # odd sizes: 'SAME' pads one side more


def test_stage_norms(tmp_path):
    """hf and none are raw (BitBackbone applies no norm); final is BitModel's last_hidden_state
    (its trained GroupNorm + ReLU) on the last stage."""
    folder = _checkpoint(tmp_path, SMALL)
    x = parity.photos(96, 2)
    with torch.no_grad():
        want = hf_backbone(folder, out_features=NAMES)(x).feature_maps
        last = BitModel.from_pretrained(folder)(x).last_hidden_state
        maps = {m: bbx.load_backbone(str(folder), out_features=NAMES, stage_norm=m)(x) for m in ("hf", "none", "final")}
    for mode in ("hf", "none"):
        assert all(torch.equal(a, b) for a, b in zip(maps[mode], want)), mode
    assert all(torch.equal(a, b) for a, b in zip(maps["final"][:-1], want[:-1]))
    assert rel_err(maps["final"][-1], last) <= parity.TOL and rel_err(last, want[-1]) > 0.01


def test_final_norm_missing_is_a_clear_error(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    path = folder / "model.safetensors"
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("bit.norm.")}
    save_file(state, str(path), metadata={"format": "pt"})
    parity.compare(folder, 96, n=1, names=NAMES)
    with pytest.raises(ModelError, match=r"missing keys: final_norm\.weight, final_norm\.bias.*stage norm 'final'"):
        bbx.load_backbone(str(folder), stage_norm="final")


def test_the_bottleneck_layout_has_no_final_norm(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, **HYBRID})
    x = parity.photos(64, 1)
    with torch.no_grad():
        raw = bbx.load_backbone(str(folder), out_features=["stage4"])(x)
        fin = bbx.load_backbone(str(folder), out_features=["stage4"], stage_norm="final")(x)
        last = BitModel.from_pretrained(folder)(x).last_hidden_state
    assert torch.equal(raw[0], fin[0]) and rel_err(fin[0], last) <= parity.TOL


@pytest.mark.parametrize("size", [128, (75, 101)])
def test_inference_rewrites_stay_at_parity(tmp_path, size):
    """extract/bench standardise the kernels once and fuse each conv (the last with the residual
    sum): the same numbers, in NCHW (channels-last would double the error of the public config)."""
    folder = _checkpoint(tmp_path, SMALL, seed=3)
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert not channels_last
    convs = [m for m in ours.modules() if isinstance(m, bit.StdConv)]
    assert convs and all(c.standardized for c in convs)
    x = parity.photos(size, 3)
    with torch.no_grad():
        want = hf_backbone(folder, out_features=NAMES)(x).feature_maps
        got = ours(x)
    for name, a, b in zip(NAMES, got, want):
        assert rel_err(a, b) <= parity.TOL, (name, rel_err(a, b))
    _compare(folder, size, model=ours)


def test_standardising_once_is_standardising_every_time():
    conv = bit.StdConv(6, 4, 3, same=False)
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        before = conv(x)
        conv.freeze(kernels=False)
        after = conv(x)
        conv.freeze(kernels=False)  # idempotent
        again = conv(x)
    assert torch.equal(before, after) and torch.equal(after, again)
    flat = conv.weight.view(4, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(4), atol=1e-5)


def test_bfloat16_is_as_close_to_fp32_as_transformers(tmp_path):
    """Under bf16 autocast (``--dtype bfloat16``) bbx's maps are as far from transformers' fp32
    maps as transformers' own bf16 maps are (a bound of 1.5x theirs and 1e-2 absolute)."""
    folder = _checkpoint(tmp_path, SMALL, seed=4)
    ref = hf_backbone(folder, out_features=NAMES)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos(128, 3)
    with torch.no_grad():
        exact = ref(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x).feature_maps
            got = ours(x)
    for name, a, t, e in zip(NAMES, got, theirs, exact):
        ours_err, their_err = rel_err(a, e), rel_err(t, e)
        assert ours_err <= max(1.5 * their_err, 1e-2), (name, ours_err, their_err)


@pytest.mark.slow
def test_public_config_matches_transformers(tmp_path):
    """google/bit-50's config at its 448 input and at 288, eager and as extract runs it."""
    row = registry.lookup("bit-50")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = bbx.load_backbone(str(folder))
    assert model.stage_names == list(row.stage_names)
    errors = parity.compare_to_float64(folder, 448, 1, names=NAMES, model=model)
    assert errors["stage4"][1] > parity.TOL  # the regime the float64 bar is for
    fast, _ = prepare_for_inference(model, "cpu")
    parity.compare_to_float64(folder, 288, 1, names=NAMES, model=fast)


def test_public_channels_strides_and_inspect():
    model = bbx.load_backbone("bit-50", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert model.channels == [64, 256, 512, 1024, 2048]
    assert model.strides == [4, 4, 8, 16, 32]
    r = run("inspect", "google/bit-50", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "google/bit-50" and data["architecture"] == "bit"
    assert data["input_size"] == [448, 448]
    assert [s["shape"] for s in data["stages"]] == [
        [64, 112, 112],
        [256, 112, 112],
        [512, 56, 56],
        [1024, 28, 28],
        [2048, 14, 14],
    ]
    r = run("inspect", "bit-50", "--image-size", "225", "--json")
    assert [s["shape"] for s in json.loads(r.stdout)["stages"]][-1] == [2048, 8, 8]


def test_preprocessing_is_transformers_to_the_bit(tmp_path):
    """bilinear shortest edge 448, center crop 448, mean and std 0.5; and at --image-size 300."""
    pre = registry.lookup("bit-50").preprocessor_dict()
    assert_same_pixels(tmp_path / "a", pre, "bit")
    assert_same_pixels(
        tmp_path / "b", {**pre, "size": {"shortest_edge": 300}, "crop_size": {"height": 300, "width": 300}}, "bit"
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"global_padding": "valid"}, "VALID"),
        ({"global_padding": "reflect"}, "global_padding"),
        ({"layer_type": "basic"}, "layer_type"),
        ({"num_groups": 3}, "groups"),
        ({"width_factor": 2}, "final norm"),
        ({"hidden_sizes": [16, 32, 48]}, "same length"),
    ],
)
def test_configs_that_cannot_run_are_one_line(change, words):
    fam = registry.family_of("bit")
    with pytest.raises(ModelError, match=words) as e:
        fam.parse({**fam.tiny_config(), **change})
    assert "\n" not in str(e.value)


def test_the_unpadded_stem_pool_needs_a_few_pixels():
    fam = registry.family_of("bit")
    config = {**fam.tiny_config(), "global_padding": "SAME"}
    settings = fam.parse(config)
    model = fam.build(config).select(out_indices=[0, 1, 2, 3, 4])
    for size in ((5, 9), (37, 50)):
        with torch.no_grad():
            maps = model(torch.randn(1, 3, *size))
        assert [tuple(m.shape[2:]) for m in maps] == settings.map_sizes(size)
    assert settings.map_sizes((5, 9))[0] == (1, 2)
    with pytest.raises(ValueError, match="too small"):
        settings.map_sizes((4, 9))
    assert fam.parse(fam.tiny_config()).map_sizes((1, 1)) == [(1, 1)] * 5


def test_extract_equals_the_transformers_recipe(tmp_path, photos):
    """`bbx extract` (bilinear shortest edge and crop at --image-size 160, standardised kernels)
    against AutoImageProcessor and BitBackbone, image by image."""
    folder = _checkpoint(tmp_path, SMALL, seed=6)
    pre = registry.lookup("bit-50").preprocessor_dict()
    pre.update(size={"shortest_edge": 160}, crop_size={"height": 160, "width": 160})
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    parity.extract_matches_recipe(folder, photos, tmp_path / "f.safetensors", "--out-indices", "0,2,-1")
