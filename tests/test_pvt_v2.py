"""PVT v2 at parity with transformers' PvtV2Backbone (and its encoder's pre-norm states for the other
stage norms) on the same random weights, spatial-reduction and linear attention, every checkpoint
layout; the inference rewrites, bf16 and the preprocessing too. The contract every family keeps is
tests/test_families.py."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model

import bbx
from bbx import images, registry
from bbx.errors import ModelError
from bbx.loading import prepare_for_inference
from bbx.preprocess import Preprocess
from tests import parity
from tests.cli import run
from tests.processors import hf_pixels, hf_processor
from tests.util import hf_backbone, photo, rel_err

NAMES = ["stage1", "stage2", "stage3", "stage4"]
SMALL = {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 2, 1, 1], "num_attention_heads": [1, 2, 3, 4]}
LAYOUTS = {"classification": PvtV2ForImageClassification, "model": PvtV2Model, "backbone": PvtV2Backbone}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0):
    pre = registry.lookup("pvt-v2-b0").preprocessor_dict()
    return parity.checkpoint(tmp_path / f"ckpt-{layout}", LAYOUTS[layout](PvtV2Config(**config)), pre, seed)


def _compare(folder, size, n: int = 3, names: list[str] = NAMES, **kw):
    return parity.compare(folder, size, n, names=names, **kw)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"linear_attention": True},
        {"patch_sizes": [4, 2, 3, 5], "sr_ratios": [4, 2, 2, 1], "mlp_ratios": [2, 3, 4, 4]},  # even kernels
        {"qkv_bias": False, "hidden_act": "gelu_new", "layer_norm_eps": 1e-3},
    ],
    ids=["default", "linear", "even-patches", "no-qkv-bias"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    _compare(folder, 224)
    _compare(folder, (150, 211), n=2)


def test_three_stages(tmp_path):
    config = {"num_encoder_blocks": 3, "hidden_sizes": [8, 16, 24], "depths": [1, 1, 1], "sr_ratios": [4, 2, 1]}
    config |= {"num_attention_heads": [1, 2, 3], "patch_sizes": [7, 3, 3], "strides": [4, 2, 2]}
    config["mlp_ratios"] = [4, 4, 4]
    folder = _checkpoint(tmp_path, config)
    assert bbx.load_backbone(str(folder)).stage_names == NAMES[:3]
    _compare(folder, 96, names=NAMES[:3])


@pytest.mark.parametrize("layout", ["model", "backbone"])
def test_other_layouts_load(tmp_path, layout):
    extra = {"out_features": NAMES} if layout == "backbone" else {}
    folder = _checkpoint(tmp_path, {**SMALL, **extra}, layout=layout)
    _compare(folder, 160, n=2)


def _encoder_states(mode: str):
    """The oracle for stage norms none / final: PvtV2Model's encoder, each stage's tokens taken
    before its LayerNorm (the input of ``layers[i].layer_norm``), the last after it for final."""

    def ref(folder, x, names):
        model = PvtV2Model.from_pretrained(folder).eval()
        before: list[torch.Tensor] = []
        hooks = [
            layer.layer_norm.register_forward_hook(lambda _m, args, _out: before.append(args[0]))
            for layer in model.encoder.layers
        ]
        with torch.no_grad():
            after = model(x, output_hidden_states=True).hidden_states
        for h in hooks:
            h.remove()
        maps = [t.transpose(1, 2).reshape(a.shape) for t, a in zip(before, after)]
        if mode == "final":
            maps[-1] = after[-1]
        return [maps[NAMES.index(n)] for n in names]

    return ref


@pytest.mark.parametrize("mode", ["none", "final"])
def test_stage_norms_none_and_final(tmp_path, mode):
    folder = _checkpoint(tmp_path, SMALL)
    _compare(folder, (160, 128), n=2, stage_norm=mode, reference=_encoder_states(mode))
    x = parity.photos(128, 1)
    with torch.no_grad():
        raw = bbx.load_backbone(str(folder), stage_norm=mode)(x)[0]
        normed = bbx.load_backbone(str(folder), stage_norm="hf")(x)[0]
    changed = rel_err(raw, normed) > 0.01
    assert changed == (mode == "none")  # final: the last stage is normed as in hf


def test_inference_rewrites_stay_at_parity(tmp_path):
    """Fused linear + activation / residual kernels, the fused depthwise conv and channels-last:
    still within 1e-5 of transformers, with and without linear attention."""
    for variant in ({}, {"linear_attention": True}):
        folder = _checkpoint(tmp_path, {**SMALL, **variant})
        ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
        assert channels_last and all(b.mlp.fused for s in ours.stages for b in s.blocks)
        x = parity.photos((200, 176), 3)
        with torch.no_grad():
            got = ours(x.contiguous(memory_format=torch.channels_last))
            want = hf_backbone(folder, out_features=NAMES)(x).feature_maps
        errors = [rel_err(a, b) for a, b in zip(got, want)]
        assert max(errors) <= parity.TOL, (variant, errors)


def test_bfloat16_is_as_close_to_fp32_as_transformers_is(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    ref = hf_backbone(folder, out_features=NAMES)
    x = parity.photos(192, 3)
    ours_err, hf_err = parity.bf16_errors(
        lambda t: ours(t.contiguous(memory_format=torch.channels_last)), lambda t: ref(t).feature_maps, x
    )
    for name, a, b in zip(NAMES, ours_err, hf_err):
        assert a <= parity.BF16_SLACK * b, (name, a, b)


def _public(alias: str) -> dict:
    return {k: v for k, v in registry.lookup(alias).config_dict().items() if k not in ("model_type", "architectures")}


@pytest.mark.slow
def test_public_b0_config_matches_transformers(tmp_path):
    folder = _checkpoint(tmp_path, _public("pvt-v2-b0"), seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(registry.lookup("pvt-v2-b0").stage_names)
    _compare(folder, (192, 256), n=2)


@pytest.mark.slow
def test_b2_linear_widths_match_transformers(tmp_path):
    """pvt_v2_b2_linear's widths and linear attention (depth reduced: the blocks are the same)."""
    folder = _checkpoint(tmp_path, {**_public("pvt-v2-b2-linear"), "depths": [1, 1, 2, 1]}, seed=2)
    _compare(folder, 224, n=2)
    _compare(folder, (160, 288), n=1)


def test_public_channels_and_strides():
    model = bbx.load_backbone("pvt-v2-b5", out_indices=[0, 1, 2, 3], pretrained=False)
    assert model.channels == [64, 128, 320, 512] and model.strides == [4, 8, 16, 32]
    assert model.stages[2].blocks[0].mlp.fc1.out_features == 4 * 320  # b5's MLP ratio 4


def test_inspect_pvt_v2_json_and_image_size():
    r = run("inspect", "pvt_v2_b2_linear", "--json", "--image-size", "320")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "OpenGVLab/pvt_v2_b2_linear" and data["architecture"] == "pvt_v2"
    assert data["input_size"] == [320, 320]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [64, 128, 320, 512]
    assert [s["stride"] for s in stages] == [4, 8, 16, 32]
    assert [s["shape"] for s in stages][-1] == [512, 10, 10]


def test_too_small_an_image_size_is_one_line():
    r = run("inspect", "pvt-v2-b0", "--image-size", "28")
    assert r.exit_code != 0
    message = r.stderr.strip()
    assert "spatial reduction 8" in message and "\n" not in message and "Traceback" not in message
    assert run("inspect", "pvt-v2-b0", "--image-size", "29").exit_code == 0
    assert run("inspect", "pvt-v2-b2-linear", "--image-size", "8").exit_code == 0  # linear: no reduction conv


@pytest.mark.parametrize("n", [None, 288])
def test_catalog_preprocessing_is_transformers_to_the_bit(tmp_path, n):
    row = registry.lookup("pvt-v2-b0")
    proc = hf_processor(tmp_path, row.preprocessor_dict(), "pvt_v2")
    pre = Preprocess.from_config(row.preprocessor_dict(), "pvt_v2")
    assert pre.resample == 2 and pre.output_size == (224, 224)
    kwargs = {}
    if n is not None:
        pre = pre.with_image_size(n)
        kwargs = {"size": {"height": n, "width": n}}
    for i, (w, h) in enumerate([(500, 375), (333, 517), (224, 224)]):
        img = photo(w, h, seed=i)
        got = images.normalize(torch.from_numpy(images.prepare(img, pre))[None], pre)
        assert torch.equal(got, hf_pixels(proc, [img], **kwargs))


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"hidden_sizes": [8, 16, 25, 32]}, "cannot have 3 attention heads"),
        ({"depths": [1, 1, 1]}, "num_encoder_blocks is 4"),
        ({"sr_ratios": [8, 4]}, "sr_ratios must have an entry"),
        ({"mlp_ratios": [2.5, 4, 4, 4]}, "integer"),
    ],
)
def test_configs_that_do_not_fit_are_one_line(bad, words):
    fam = registry.family_of("pvt_v2")
    with pytest.raises(ModelError) as e:
        fam.parse({**fam.tiny_config(), **bad})
    assert words in e.value.message and "\n" not in e.value.message
