"""ConvNeXt V2 at parity with transformers' ConvNextV2Backbone (and ConvNextV2Model for the other
stage norms) on the same random weights, in the three checkpoint layouts transformers writes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ConvNextV2Backbone, ConvNextV2Config, ConvNextV2ForImageClassification, ConvNextV2Model

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.convnextv2 import model as convnextv2
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.processors import assert_same_pixels
from tests.util import hf_backbone, rel_err, save_checkpoint

TOL = 1e-5
NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
SMALL = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 2, 1]}
LAYOUTS = {"classification": ConvNextV2ForImageClassification, "base": ConvNextV2Model, "backbone": ConvNextV2Backbone}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0, **extra):
    """A random-weight checkpoint (norms and GRN randomised too) in ``layout``; returns (folder, model)."""
    model = LAYOUTS[layout](ConvNextV2Config(**config, **extra))
    pre = registry.lookup("convnextv2-tiny").preprocessor_dict()
    folder = parity.checkpoint(tmp_path / f"ckpt-{layout}", model, pre, seed)
    return folder, model


def _compare(folder, size, n: int = 3, names: list[str] = NAMES):
    """Every stage of bbx vs ConvNextV2Backbone (stage_norm "hf")."""
    return parity.compare(folder, size, n, names=names)


def _raw_states(model: torch.nn.Module, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.nn.Module]:
    """ConvNextV2Model's hidden states (stem, stage1..) and its final LayerNorm."""
    base = model.convnextv2 if isinstance(model, ConvNextV2ForImageClassification) else model
    with torch.no_grad():
        return base(x, output_hidden_states=True).hidden_states, base.layernorm


@pytest.mark.parametrize(
    "variant",
    [{}, {"hidden_act": "gelu_new", "drop_path_rate": 0.3}, {"patch_size": 2}],
    ids=["default", "gelu_new-drop-path", "patch2"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder, _ = _checkpoint(tmp_path, {**SMALL, **variant})
    _compare(folder, 224)
    _compare(folder, 200)  # not a multiple of 32: every downsampling floors
    _compare(folder, (97, 161), n=2)


def test_the_global_response_norm_matters(tmp_path):
    """The GRN is part of what parity checks: zeroing its trained scale and shift moves every map."""
    folder, _ = _checkpoint(tmp_path, SMALL)
    model = bbx.load_backbone(str(folder), out_features=NAMES[1:])
    x = parity.photos(96, 2)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if isinstance(m, convnextv2.GRN):
                m.weight.zero_()
                m.bias.zero_()
        after = model(x)
    assert all(rel_err(a, b) > 0.01 for a, b in zip(after, before))


def test_three_stages(tmp_path):
    folder, _ = _checkpoint(tmp_path, {"hidden_sizes": [8, 16, 24], "depths": [1, 2, 1], "num_stages": 3})
    assert bbx.load_backbone(str(folder)).stage_names == NAMES[:4]
    _compare(folder, 96, names=NAMES[:4])


def test_base_model_layout_loads(tmp_path):
    """ConvNextV2Model checkpoints (no `convnextv2.` prefix, no head) load as well."""
    folder, _ = _checkpoint(tmp_path, SMALL, layout="base")
    _compare(folder, 160, n=2)


def test_backbone_layout_loads_its_stage_norms(tmp_path):
    """A saved ConvNextV2Backbone carries trained (here: random) stage norms for the stages it was
    saved with: they are used; the others are created fresh (1, 0) on both sides."""
    folder, _ = _checkpoint(tmp_path, SMALL, layout="backbone", out_features=["stem", "stage2", "stage4"])
    _compare(folder, 160, n=2)
    norms = bbx.load_backbone(str(folder)).stage_norms
    assert not torch.equal(norms["stage2"].weight, torch.ones_like(norms["stage2"].weight))
    assert torch.equal(norms["stage1"].weight, torch.ones_like(norms["stage1"].weight))


@pytest.mark.parametrize("layout", ["classification", "base"])
def test_stage_norm_none_and_final_match_the_model(tmp_path, layout):
    # an eps far from the default shows that the final norm takes the config's layer_norm_eps
    folder, model = _checkpoint(tmp_path, {**SMALL, "layer_norm_eps": 1e-3}, layout=layout)
    x = parity.photos(160, 2)
    states, final_norm = _raw_states(model, x)
    with torch.no_grad():
        last = final_norm(states[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    for mode, want in (("none", states), ("final", (*states[:-1], last))):
        ours = bbx.load_backbone(str(folder), out_features=NAMES, stage_norm=mode)
        with torch.no_grad():
            got = ours(x)
        for name, a, b in zip(NAMES, got, want):
            assert rel_err(a, b) <= TOL, (mode, name, rel_err(a, b))
    assert rel_err(last, states[-1]) > 0.01  # the final norm changes the map (the test can fail)


def test_stage_norm_final_without_final_norm_is_a_clear_error(tmp_path):
    folder, _ = _checkpoint(tmp_path, SMALL, layout="backbone", out_features=NAMES)
    with pytest.raises(ModelError) as e:
        bbx.load_backbone(str(folder), stage_norm="final")
    msg = str(e.value)
    assert "final_norm.weight" in msg and "layernorm.weight" in msg and "stage_norm 'final'" in msg
    assert "\n" not in msg
    bbx.load_backbone(str(folder), stage_norm="none")  # the other modes do not need it


def test_remap_drops_the_head_and_maps_every_key():
    state = {f"convnextv2.{k}": v for k, v in ConvNextV2Model(ConvNextV2Config(**SMALL)).state_dict().items()}
    state["classifier.weight"] = torch.zeros(2, 32)
    state["classifier.bias"] = torch.zeros(2)
    out = convnextv2.remap(state, {})
    model = convnextv2.build({**SMALL, "model_type": "convnextv2"})
    expected = set(model.state_dict()) - {k for k in model.optional_keys if k.startswith("stage_norms.")}
    assert set(out) == expected


def _projections(model) -> set[str]:
    """Which ways the blocks apply the GRN scale in the forwards to come (see Block._project):
    on fc2's weights when a map has at least as many positions as fc2 has outputs."""
    seen: set[str] = set()

    def hook(block, args, out):
        positions = args[0].shape[2] * args[0].shape[3]
        seen.add("weights" if positions >= block.fc2.out_features else "rows")

    for m in model.modules():
        if isinstance(m, convnextv2.Block):
            m.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("size", [224, 64, (75, 130)])
def test_inference_rewrites_stay_at_parity(tmp_path, size):
    """extract/bench run channels-last, fold the GRN bias into fc2 and use the fused kernels, the
    GRN scale on fc2's weights (large maps) or on the activations (small ones): within 1e-5."""
    folder, _ = _checkpoint(tmp_path, SMALL, seed=3)
    ref = hf_backbone(folder, out_features=NAMES)
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert channels_last
    seen = _projections(ours)
    x = parity.photos(size, 3)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x.contiguous(memory_format=torch.channels_last))
    for name, a, b in zip(NAMES, got, want):
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
    assert seen == ({"weights"} if size == 224 else {"weights", "rows"})
    assert all(b.frozen for b in ours.modules() if isinstance(b, convnextv2.Block))


def test_sliced_expansion_stays_at_parity(tmp_path, monkeypatch):
    """Large maps run fc1 image by image in row slices, the GRN's sums of squares taken slice by
    slice (a tiny slice budget makes these small maps take that path): still within 1e-5."""
    folder, _ = _checkpoint(tmp_path, SMALL, seed=5)
    monkeypatch.setattr(convnextv2, "SLICE_BYTES_PER_THREAD", 64)
    slices = []
    real = convnextv2.linear_act

    def spy(x, *args, **kwargs):
        if x.dim() == 2:  # a slice of one image's rows
            slices.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(convnextv2, "linear_act", spy)
    ref = hf_backbone(folder, out_features=NAMES)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos((150, 230), 2)
    with torch.no_grad():
        want = ref(x).feature_maps
        got = ours(x.contiguous(memory_format=torch.channels_last))
    for name, a, b in zip(NAMES, got, want):
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
    assert slices and max(slices) == 256 and min(slices) < 256  # whole slices and the remainder of a map


def test_bfloat16_is_as_close_to_fp32_as_transformers(tmp_path):
    """Under bf16 autocast (``--dtype bfloat16``) bbx's maps are as far from transformers' fp32
    maps as transformers' own bf16 maps are (a bound of 1.5x theirs and 1e-2 absolute)."""
    folder, _ = _checkpoint(tmp_path, SMALL, seed=4)
    ref = hf_backbone(folder, out_features=NAMES)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos(160, 3)
    with torch.no_grad():
        exact = ref(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x).feature_maps
            got = ours(x.contiguous(memory_format=torch.channels_last))
    for name, a, t, e in zip(NAMES, got, theirs, exact):
        ours_err, their_err = rel_err(a, e), rel_err(t, e)
        assert ours_err <= max(1.5 * their_err, 1e-2), (name, ours_err, their_err)


@pytest.mark.slow
def test_public_tiny_config_matches_transformers(tmp_path):
    row = registry.lookup("convnextv2-tiny")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder, _ = _checkpoint(tmp_path, config, seed=1)
    model = bbx.load_backbone(str(folder))
    assert model.stage_names == list(row.stage_names)
    _compare(folder, 224, n=2)
    _compare(folder, 200, n=2)


@pytest.mark.slow
def test_huge_widths_match_transformers(tmp_path):
    """convnextv2-huge's widths (depth reduced to stay fast: the blocks are the same) at 512."""
    config = {**registry.lookup("convnextv2-huge-22k-512").config_dict(), "depths": [1, 1, 1, 1]}
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    folder, _ = _checkpoint(tmp_path, config, seed=2)
    _compare(folder, 256, n=1)


def test_public_channels_and_strides():
    model = bbx.load_backbone("convnextv2-tiny", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert model.channels == [96, 96, 192, 384, 768]
    assert model.strides == [4, 4, 8, 16, 32]
    atto = bbx.load_backbone("facebook/convnextv2-atto-1k-224", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert atto.channels == [40, 40, 80, 160, 320]


def test_map_sizes_refuses_too_small_inputs():
    model = convnextv2.build({**SMALL, "model_type": "convnextv2"})
    with pytest.raises(ValueError, match="too small"):
        model.map_sizes((31, 64))
    assert model.map_sizes((32, 35)) == [(8, 8), (8, 8), (4, 4), (2, 2), (1, 1)]
    r = run("inspect", "convnextv2-tiny", "--image-size", "16")
    assert r.exit_code != 0 and "too small" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_inspect_convnextv2_json():
    r = run("inspect", "convnextv2-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "facebook/convnextv2-tiny-1k-224" and data["architecture"] == "convnextv2"
    assert data["input_size"] == [224, 224]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [96, 96, 192, 384, 768]
    assert [s["stride"] for s in stages] == [4, 4, 8, 16, 32]
    assert stages[-1]["shape"] == [768, 7, 7]
    r = run("inspect", "convnextv2-huge-22k-512", "--image-size", "300", "--json")
    assert r.exit_code == 0, r.stderr
    assert [s["shape"] for s in json.loads(r.stdout)["stages"]][-1] == [2816, 9, 9]


def test_catalog_rows_follow_their_names():
    rows = registry.family_of("convnextv2").catalog
    assert [r.repo_id for r in rows] == [
        "facebook/convnextv2-atto-1k-224",
        "facebook/convnextv2-tiny-1k-224",
        "facebook/convnextv2-tiny-22k-224",
        "facebook/convnextv2-base-22k-224",
        "facebook/convnextv2-large-22k-384",
        "facebook/convnextv2-huge-22k-512",
    ]
    for row in rows:
        assert row.preprocessor["size"]["shortest_edge"] == int(row.repo_id.rsplit("-", 1)[1]), row.alias
        assert row.config["image_size"] == 224  # the hub configs keep the default, whatever the resolution


@pytest.mark.parametrize("edge", [224, 384, 512])
def test_preprocessing_is_transformers_to_the_bit(tmp_path, edge):
    """The catalog's preprocessing (crop_pct below 384, a warp from 384 up) against
    AutoImageProcessor, with and without --image-size."""
    row = next(r for r in registry.family_of("convnextv2").catalog if r.preprocessor["size"]["shortest_edge"] == edge)
    pre = row.preprocessor_dict()
    assert_same_pixels(tmp_path / "a", pre, "convnextv2")
    assert_same_pixels(tmp_path / "b", {**pre, "size": {"shortest_edge": 288}}, "convnextv2")


def test_a_checkpoint_folder_without_preprocessing_gets_the_public_recipe(tmp_path):
    model = ConvNextV2ForImageClassification(ConvNextV2Config(**SMALL))
    folder = save_checkpoint(model, tmp_path / "bare")
    r = run("inspect", str(folder), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["input_size"] == [224, 224]


def test_extract_equals_the_transformers_recipe(tmp_path, photos):
    """`bbx extract` (preprocessing, inference rewrites, writer) against AutoImageProcessor and
    ConvNextV2Backbone, image by image."""
    folder, _ = _checkpoint(tmp_path, SMALL, seed=6)
    parity.extract_matches_recipe(folder, photos, tmp_path / "f.safetensors", "--out-indices", "0,2,-1")
