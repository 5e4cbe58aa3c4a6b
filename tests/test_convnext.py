"""ConvNeXt at parity with transformers' ConvNextBackbone (and ConvNextModel for the other stage
norms) on the same random weights, in the three checkpoint layouts transformers writes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ConvNextBackbone, ConvNextConfig, ConvNextForImageClassification, ConvNextModel

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.convnext import model as convnext
from tests import parity
from tests.cli import run
from tests.util import photo_batch, randomize_, rel_err, save_checkpoint

TOL = 1e-5
NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
SMALL = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 2, 1]}
LAYOUTS = {"classification": ConvNextForImageClassification, "base": ConvNextModel, "backbone": ConvNextBackbone}


def _checkpoint(tmp_path, config: dict, layout: str = "classification", seed: int = 0, **extra):
    """A random-weight checkpoint (norms randomised too) in ``layout``; returns (folder, model)."""
    model = randomize_(LAYOUTS[layout](ConvNextConfig(**config, **extra)).eval(), seed)
    row = registry.lookup("convnext-tiny")
    return save_checkpoint(model, tmp_path / "ckpt", row.preprocessor_dict()), model


def _compare(folder, size, n: int = 3, names: list[str] = NAMES):
    """Every stage of bbx vs ConvNextBackbone (stage_norm "hf")."""
    return parity.compare(folder, size, n, names=names)


def _raw_states(model: torch.nn.Module, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.nn.Module]:
    """ConvNextModel's hidden states (stem, stage1..) and its final LayerNorm."""
    base = model.convnext if isinstance(model, ConvNextForImageClassification) else model
    with torch.no_grad():
        return base(x, output_hidden_states=True).hidden_states, base.layernorm


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"layer_scale_init_value": 0.0},
        {"hidden_act": "gelu_new", "drop_path_rate": 0.3},
        {"patch_size": 2},
    ],
    ids=["default", "no-layer-scale", "gelu_new-drop-path", "patch2"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder, _ = _checkpoint(tmp_path, {**SMALL, **variant})
    _compare(folder, 224)
    _compare(folder, 200)  # not a multiple of 32: every downsampling floors


def test_layer_scale_zero_has_no_parameter(tmp_path):
    folder, _ = _checkpoint(tmp_path, {**SMALL, "layer_scale_init_value": 0.0})
    model = bbx.load_backbone(str(folder))
    assert not any(k.endswith("gamma") for k in model.state_dict())
    with_scale = convnext.build({**SMALL, "model_type": "convnext"})
    assert sum(k.endswith("gamma") for k in with_scale.state_dict()) == sum(SMALL["depths"])


def test_three_stages(tmp_path):
    folder, _ = _checkpoint(tmp_path, {"hidden_sizes": [8, 16, 24], "depths": [1, 2, 1], "num_stages": 3})
    assert bbx.load_backbone(str(folder)).stage_names == NAMES[:4]
    _compare(folder, 96, names=NAMES[:4])


def test_base_model_layout_loads(tmp_path):
    """ConvNextModel checkpoints (no `convnext.` prefix, no head) load as well."""
    folder, _ = _checkpoint(tmp_path, SMALL, layout="base")
    _compare(folder, 160, n=2)


def test_backbone_layout_loads_its_stage_norms(tmp_path):
    """A saved ConvNextBackbone carries trained (here: random) stage norms: they are used."""
    folder, _ = _checkpoint(tmp_path, SMALL, layout="backbone", out_features=NAMES)
    _compare(folder, 160, n=2)
    norms = bbx.load_backbone(str(folder)).stage_norms
    assert not torch.equal(norms["stage2"].weight, torch.ones_like(norms["stage2"].weight))


def test_backbone_layout_with_some_stage_norms(tmp_path):
    """Only the stages it was saved with have norms; the others are fresh (1, 0) on both sides."""
    folder, _ = _checkpoint(tmp_path, SMALL, layout="backbone", out_features=["stage2", "stage4"])
    keys = set(json.loads((folder / "config.json").read_text())["out_features"])
    assert keys == {"stage2", "stage4"}
    _compare(folder, 128, n=2)


@pytest.mark.parametrize("layout", ["classification", "base"])
def test_stage_norm_none_and_final_match_convnext_model(tmp_path, layout):
    # an eps far from the default shows that the final norm takes the config's layer_norm_eps
    folder, model = _checkpoint(tmp_path, {**SMALL, "layer_norm_eps": 1e-3}, layout=layout)
    x = photo_batch(160, 2)
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


def test_strict_load_reports_unknown_and_missing_keys():
    model = convnext.build({**SMALL, "model_type": "convnext"}, stage_norm="hf")
    state = convnext.remap({f"convnext.{k}": v for k, v in _hf_state(SMALL).items()}, {})
    from bbx import weights

    bad = dict(state)
    bad["encoder.stages.0.layers.0.bogus.weight"] = torch.zeros(1)
    del bad["stages.2.blocks.1.mlp.fc2.weight"]
    with pytest.raises(ModelError) as e:
        weights.load_strict(model, bad, source="test")
    assert "encoder.stages.0.layers.0.bogus.weight" in str(e.value)
    assert "stages.2.blocks.1.mlp.fc2.weight" in str(e.value)
    weights.load_strict(model, state, source="test")


def _hf_state(config: dict) -> dict[str, torch.Tensor]:
    return ConvNextModel(ConvNextConfig(**config)).state_dict()


def test_remap_drops_the_head_and_maps_every_key():
    state = {f"convnext.{k}": v for k, v in _hf_state(SMALL).items()}
    state["classifier.weight"] = torch.zeros(2, 32)
    state["classifier.bias"] = torch.zeros(2)
    out = convnext.remap(state, {})
    model = convnext.build({**SMALL, "model_type": "convnext"})
    expected = set(model.state_dict()) - {k for k in model.optional_keys if k.startswith("stage_norms.")}
    assert set(out) == expected


@pytest.mark.slow
def test_public_tiny_config_matches_transformers(tmp_path):
    row = registry.lookup("convnext-tiny")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder, _ = _checkpoint(tmp_path, config, seed=1)
    model = bbx.load_backbone(str(folder))
    assert model.stage_names == list(row.stage_names)
    _compare(folder, 224, n=2)
    _compare(folder, 256, n=2)


@pytest.mark.slow
def test_base_widths_match_transformers(tmp_path):
    """convnext-base's widths (depth reduced to stay fast: the blocks are the same)."""
    config = {**registry.lookup("convnext-base").config_dict(), "depths": [1, 1, 3, 1]}
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    folder, _ = _checkpoint(tmp_path, config, seed=2)
    _compare(folder, 224, n=2)
    _compare(folder, 200, n=2)


def test_public_channels_and_strides():
    model = bbx.load_backbone("convnext-tiny", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert model.channels == [96, 96, 192, 384, 768]
    assert model.strides == [4, 4, 8, 16, 32]


def test_map_sizes_refuses_too_small_inputs():
    model = convnext.build({**SMALL, "model_type": "convnext"})
    with pytest.raises(ValueError, match="too small"):
        model.map_sizes((31, 64))
    assert model.map_sizes((32, 35)) == [(8, 8), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_only_the_selected_stage_norms_run():
    model = bbx.load_backbone("convnext-tiny", out_indices=[2], pretrained=False)
    ran: list[str] = []
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda *_, i=i: ran.append(f"stage{i + 1}"))
    for name, norm in model.stage_norms.items():
        norm.register_forward_hook(lambda *_, name=name: ran.append(f"norm:{name}"))
    with torch.no_grad():
        (m,) = model(torch.zeros(1, 3, 64, 64))
    assert ran == ["stage1", "stage2", "norm:stage2"] and m.shape[1] == 192


def test_inspect_convnext_tiny_json():
    r = run("inspect", "convnext-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "facebook/convnext-tiny-224" and data["architecture"] == "convnext"
    assert data["input_size"] == [224, 224]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [96, 96, 192, 384, 768]
    assert [s["stride"] for s in stages] == [4, 4, 8, 16, 32]
    assert [s["shape"] for s in stages][-1] == [768, 7, 7]


def test_catalog_384_rows_use_384():
    for row in registry.family_of("convnext").catalog:
        want = 384 if "-384" in row.repo_id else 224
        assert row.preprocessor["size"] == want == row.config["image_size"], row.alias
