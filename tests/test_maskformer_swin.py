"""MaskFormer-Swin at parity with transformers' MaskFormerSwinBackbone on the same random weights,
in its backbone and base-model layouts, every stage norm mode, and through the inference rewrites.
The contract every family keeps is tests/test_families.py; MaskFormer checkpoints themselves are
tested in tests/test_tasks.py."""

from __future__ import annotations

import pytest
import torch
from transformers import MaskFormerSwinBackbone, MaskFormerSwinConfig, MaskFormerSwinModel

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.loading import prepare_for_inference
from tests import parity
from tests.util import rel_err

NAMES = ["stage1", "stage2", "stage3", "stage4"]
SMALL = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4], "window_size": 7}


def _checkpoint(tmp_path, config: dict, layout: str = "backbone", seed: int = 0):
    cfg = MaskFormerSwinConfig(**config, out_features=NAMES)
    model = (MaskFormerSwinBackbone if layout == "backbone" else MaskFormerSwinModel)(cfg)
    return parity.checkpoint(tmp_path / f"ckpt-{layout}", model, None, seed)


def test_small_config_matches_transformers(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    parity.compare(folder, 224, names=NAMES)
    parity.compare(folder, 200, names=NAMES)  # 50x50 patches: not a multiple of the window anywhere
    parity.compare(folder, (173, 301), n=2, names=NAMES)


def test_window_12_and_small_grids(tmp_path):
    """Windows larger than the late stages' grids keep their size (padded), as transformers pads."""
    folder = _checkpoint(tmp_path, {**SMALL, "window_size": 12})
    parity.compare(folder, 160, n=2, names=NAMES)


def test_stage_norms_none_and_final(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    ref = MaskFormerSwinBackbone.from_pretrained(folder).eval()
    x = parity.photos(96, 2)
    with torch.no_grad():
        out = ref.model(x, output_hidden_states=True)
        hf = ref(x).feature_maps
        none = bbx.load_backbone(str(folder), out_features=NAMES, stage_norm="none")(x)
        final = bbx.load_backbone(str(folder), out_features=NAMES, stage_norm="final")(x)
    for i, (ours, theirs) in enumerate(zip(none, hf)):
        raw = out.hidden_states[i + 1][-1]  # the stage's last block, before the merging
        want = raw.transpose(1, 2).reshape(theirs.shape)
        assert rel_err(ours, want) <= parity.TOL
    last = out.last_hidden_state  # after the final layernorm
    assert rel_err(final[-1], last.transpose(1, 2).reshape(hf[-1].shape)) <= parity.TOL
    assert all(rel_err(a, b) <= parity.TOL for a, b in zip(final[:-1], none[:-1]))


def test_base_model_layout_gets_fresh_stage_norms(tmp_path):
    """MaskFormerSwinModel checkpoints have no stage norms: they load as transformers creates them."""
    folder = _checkpoint(tmp_path, SMALL, layout="model")
    ours = bbx.load_backbone(str(folder), out_features=NAMES)
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in ours.stage_norms)


def test_inference_rewrites_stay_at_parity(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    x = parity.photos((160, 224), 2)
    with torch.no_grad():
        got = ours(x)
    want = MaskFormerSwinBackbone.from_pretrained(folder).eval()(x).feature_maps
    assert max(rel_err(a, b) for a, b in zip(got, want)) <= parity.TOL


def test_no_stem_and_no_absolute_embeddings():
    fam = registry.family_of("maskformer-swin")
    assert fam.stage_names(fam.tiny_config()) == NAMES
    with pytest.raises(ModelError, match="use_absolute_embeddings"):
        fam.parse({**fam.tiny_config(), "use_absolute_embeddings": True})


@pytest.mark.slow
def test_swin_base_384_config_matches_transformers(tmp_path):
    """maskformer-swin-base-ade's backbone (window 12, 384 pretraining), shallower to stay fast."""
    row = registry.lookup("maskformer-swin-base-ade")
    config = {k: v for k, v in row.config_dict()["backbone_config"].items() if k not in ("model_type", "out_features")}
    config.pop("out_indices")
    folder = _checkpoint(tmp_path, {**config, "depths": [2, 2, 2, 2]}, seed=1)
    parity.compare(folder, 256, n=1, names=NAMES)
    parity.compare(folder, (192, 320), n=1, names=NAMES)


def test_bfloat16_is_as_close_to_fp32_as_transformers_is(tmp_path):
    folder = _checkpoint(tmp_path, SMALL)
    ours, _ = prepare_for_inference(bbx.load_backbone(str(folder), out_features=NAMES), "cpu")
    ref = MaskFormerSwinBackbone.from_pretrained(folder).eval()
    ours_err, hf_err = parity.bf16_errors(ours, lambda t: ref(t).feature_maps, parity.photos(160, 2))
    for name, a, b in zip(NAMES, ours_err, hf_err):
        assert a <= parity.BF16_SLACK * b, (name, a, b)
