"""RegNet at parity with transformers' RegNetModel hidden states (transformers has no RegNet backbone
class) on the same random weights, X and Y blocks, both checkpoint layouts; the inference rewrites
and bf16 too. The contract every family keeps is tests/test_families.py."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import RegNetConfig, RegNetForImageClassification, RegNetModel

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.regnet.model import SqueezeExcite
from bbx.loading import prepare_for_inference
from tests import parity
from tests.cli import run
from tests.processors import hf_pixels, hf_processor
from tests.util import photo

NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]
SMALL = {"embedding_size": 16, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 2, 1, 1], "groups_width": 8}


def _checkpoint(tmp_path, config: dict, head: bool = True, seed: int = 0, alias: str = "regnet-y-040"):
    cls = RegNetForImageClassification if head else RegNetModel
    pre = registry.lookup(alias).preprocessor_dict()
    return parity.checkpoint(tmp_path / "ckpt", cls(RegNetConfig(**config)), pre, seed)


def _hidden_states(folder, x, names):
    """The oracle: RegNetModel's hidden states (embedder output, then every stage) of ``names``."""
    model = RegNetModel.from_pretrained(folder).eval()
    with torch.no_grad():
        states = model(x, output_hidden_states=True).hidden_states
    return [states[NAMES.index(n)] for n in names]


def _compare(folder, size, n: int = 3, **kw):
    return parity.compare(folder, size, n, names=NAMES, reference=_hidden_states, **kw)


@pytest.mark.parametrize(
    "variant",
    [
        {"layer_type": "y"},
        {"layer_type": "x"},
        {"layer_type": "y", "downsample_in_first_stage": False},
        {"layer_type": "x", "hidden_act": "gelu"},
        {"layer_type": "y", "groups_width": 64},  # fewer channels than a group: one group (a dense 3x3)
        {"layer_type": "y", "embedding_size": 6, "hidden_sizes": [10, 16, 24, 32], "groups_width": 2},
    ],
    ids=["y", "x", "no-first-downsample", "x-gelu", "one-group", "odd-se-widths"],
)
def test_small_configs_match_transformers(tmp_path, variant):
    folder = _checkpoint(tmp_path, {**SMALL, **variant})
    _compare(folder, 224)
    _compare(folder, (150, 211), n=2)  # odd sides: every stride-2 conv rounds up


def test_base_model_layout_loads(tmp_path):
    """RegNetModel checkpoints (no `regnet.` prefix, no head, as the SEER pretrained ones) load too."""
    folder = _checkpoint(tmp_path, SMALL, head=False)
    _compare(folder, 160, n=2)


@pytest.mark.parametrize("mode", ["none", "final"])
def test_every_stage_norm_mode_gives_the_same_maps(tmp_path, mode):
    folder = _checkpoint(tmp_path, SMALL)
    _compare(folder, 128, n=2, stage_norm=mode)


def test_inference_rewrites_stay_at_parity(tmp_path):
    """extract/bench fold BatchNorm into the convs, fuse conv + activation (+ residual) and run
    channels-last: still within 1e-5 of transformers."""
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "y"})
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    assert channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    x = parity.photos((200, 176), 3)
    with torch.no_grad():
        got = ours(x.contiguous(memory_format=torch.channels_last))
    want = _hidden_states(folder, x, NAMES)
    errors = [parity.rel_err(a, b) for a, b in zip(got, want)]
    assert max(errors) <= parity.TOL, errors


def test_bfloat16_is_as_close_to_fp32_as_transformers_is(tmp_path):
    folder = _checkpoint(tmp_path, {**SMALL, "layer_type": "y"})
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    ref = RegNetModel.from_pretrained(folder).eval()
    x = parity.photos(192, 3)
    ours_err, hf_err = parity.bf16_errors(
        lambda t: ours(t.contiguous(memory_format=torch.channels_last)),
        lambda t: ref(t, output_hidden_states=True).hidden_states,
        x,
    )
    for name, a, b in zip(NAMES, ours_err, hf_err):
        assert a <= parity.BF16_SLACK * b, (name, a, b)


@pytest.mark.slow
def test_public_y040_config_matches_transformers(tmp_path):
    row = registry.lookup("regnet-y-040")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, seed=1)
    model = _compare(folder, 224, n=2)
    assert model.stage_names == list(row.stage_names)
    _compare(folder, (192, 256), n=1)


@pytest.mark.slow
def test_seer_widths_match_transformers(tmp_path):
    """regnet-y-320-seer-in1k's widths and groups (depth reduced: the blocks are the same), at its
    own 384 and at 224."""
    row = registry.lookup("regnet-y-320-seer-in1k")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, {**config, "depths": [1, 1, 1, 1]}, seed=2, alias=row.alias)
    _compare(folder, 384, n=1)
    _compare(folder, 224, n=1)


def test_public_channels_and_strides():
    model = bbx.load_backbone("regnet-y-040", out_indices=[0, 1, 2, 3, 4], pretrained=False)
    assert model.channels == [32, 128, 192, 512, 1088]
    assert model.strides == [2, 4, 8, 16, 32]
    assert sum(isinstance(m, SqueezeExcite) for m in model.modules()) == 22  # every Y block has one
    x = bbx.load_backbone("regnet-x-040", pretrained=False)
    assert not any(isinstance(m, SqueezeExcite) for m in x.modules())


def test_inspect_regnet_json():
    r = run("inspect", "regnet-y-320-seer-in1k", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "facebook/regnet-y-320-seer-in1k" and data["architecture"] == "regnet"
    assert data["input_size"] == [384, 384]
    stages = data["stages"]
    assert [s["name"] for s in stages] == NAMES
    assert [s["channels"] for s in stages] == [32, 232, 696, 1392, 3712]
    assert [s["stride"] for s in stages] == [2, 4, 8, 16, 32]
    assert [s["shape"] for s in stages][-1] == [3712, 12, 12]


@pytest.mark.parametrize("alias", ["regnet-y-040", "regnet-y-320-seer-in1k", "regnet-x-040"])
def test_catalog_preprocessing_is_transformers_to_the_bit(tmp_path, alias):
    from bbx import images
    from bbx.preprocess import Preprocess

    row = registry.lookup(alias)
    proc = hf_processor(tmp_path, row.preprocessor_dict(), "regnet")
    pre = Preprocess.from_config(row.preprocessor_dict(), "regnet")
    for i, (w, h) in enumerate([(500, 375), (333, 517), (384, 384)]):
        img = photo(w, h, seed=i)
        got = images.normalize(torch.from_numpy(images.prepare(img, pre))[None], pre)
        assert torch.equal(got, hf_pixels(proc, [img]))


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"hidden_sizes": [16, 25, 48, 64], "groups_width": 8}, "cannot be split into 3 groups"),
        ({"layer_type": "z"}, "layer_type"),
        ({"embedding_size": 2}, "squeeze-excitation"),
        ({"depths": [1, 1]}, "same length"),
    ],
)
def test_configs_that_do_not_fit_are_one_line(bad, words):
    fam = registry.family_of("regnet")
    with pytest.raises(ModelError) as e:
        fam.parse({**fam.tiny_config(), **SMALL, **bad})
    assert words in e.value.message and "\n" not in e.value.message
