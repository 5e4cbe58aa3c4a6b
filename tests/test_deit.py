"""Distilled DeiT at parity with transformers' ``DeiTModel`` on the same random weights: maps of the
patch tokens only, the class token (never the distillation token) and the image embedding."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import bbx
from bbx import registry
from tests import parity
from tests.processors import assert_same_pixels
from tests.util import randomize_, rel_err, save_checkpoint

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
_LAYOUTS = {
    "model": tf.DeiTModel,
    "teacher": tf.DeiTForImageClassificationWithTeacher,
    "classifier": tf.DeiTForImageClassification,
}


def _checkpoint(tmp_path, config: dict, *, layout: str = "model", seed: int = 0):
    model = randomize_(_LAYOUTS[layout](tf.DeiTConfig(**config)).eval(), seed)
    return save_checkpoint(model, tmp_path / "ckpt", registry.lookup("deit-base-distilled").preprocessor_dict())


def reference(stage_norm: str = "hf"):
    def readouts(folder, x):
        model = tf.DeiTModel.from_pretrained(folder, add_pooling_layer=False).eval()
        norm = model.layernorm if stage_norm == "final" else None
        return parity.hidden_states(
            model, x, prefix=2, final_norm=norm, embedding=lambda out: out.last_hidden_state[:, 0]
        )

    return readouts


@pytest.mark.parametrize("layout", ["model", "teacher", "classifier"])
def test_small_configs_match_transformers(tmp_path, layout):
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 64, "patch_size": 16, "num_labels": 3}, layout=layout)
    for stage_norm in ("hf", "final"):
        ref = reference(stage_norm)
        parity.compare_readouts(folder, 64, reference=ref, stage_norm=stage_norm)
        parity.compare_readouts(folder, 64, n=2, reference=ref, stage_norm=stage_norm, optimized=True)
    parity.compare_readouts(folder, (96, 48), n=2, reference=reference(), optimized=True)  # not square
    parity.compare_readouts(folder, 90, n=2, reference=reference())  # not a multiple of the patch


def test_class_token_is_not_the_distillation_token(tmp_path):
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 64, "patch_size": 16})
    model = tf.DeiTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    x = parity.photos(64, 2)
    with torch.no_grad():
        states = model(x, output_hidden_states=True).hidden_states
    ours = bbx.load_backbone(str(folder)).readout(cls=True).select(out_indices=[1, 3])
    with torch.no_grad():
        got = ours(x)
    for a, h in zip(got, (states[1], states[3])):
        assert rel_err(a, h[:, 0]) <= parity.TOL and rel_err(a, h[:, 1]) > 0.1


@pytest.mark.slow
def test_public_base_config_matches_transformers(tmp_path):
    """facebook/deit-base-distilled-patch16-224's config, at 224 and at 256 x 192."""
    row = registry.lookup("deit-base-distilled")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, layout="teacher", seed=1)
    parity.compare_readouts(folder, 224, n=2, reference=reference(), optimized=True)
    parity.compare_readouts(folder, (256, 192), n=1, reference=reference("final"), stage_norm="final")


@pytest.mark.parametrize("alias", [r.alias for r in registry.family_of("deit").catalog])
def test_catalog_preprocessing_matches_transformers(tmp_path, alias):
    assert_same_pixels(tmp_path, registry.lookup(alias).preprocessor_dict(), "deit")
