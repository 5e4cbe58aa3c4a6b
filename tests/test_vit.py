"""ViT (and DINO and DeiT without distillation, which are ViT checkpoints) at parity with
transformers' ``ViTModel`` on the same random weights: every stage's map, every stage's class
token and the image embedding, at the checkpoint's size and others (non-square, not a multiple of
the patch), plain and with the inference rewrites, fp32 and bf16."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import bbx
from bbx import registry
from bbx.errors import ModelError
from bbx.families.vit import VitSettings
from tests import parity
from tests.cli import run
from tests.processors import assert_same_pixels
from tests.util import randomize_, rel_err, save_checkpoint

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
_LAYOUTS = {"model": tf.ViTModel, "classifier": tf.ViTForImageClassification}


def _checkpoint(tmp_path, config: dict, *, layout: str = "model", seed: int = 0, alias: str = "vit-base-patch16"):
    model = randomize_(_LAYOUTS[layout](tf.ViTConfig(**config)).eval(), seed)
    return save_checkpoint(model, tmp_path / "ckpt", registry.lookup(alias).preprocessor_dict())


def reference(stage_norm: str = "hf"):
    """transformers' ViTModel: raw hidden states ("hf", "none"), or its final layernorm on every
    token ("final"); the embedding is ``last_hidden_state[:, 0]``."""

    def readouts(folder, x):
        model = tf.ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
        norm = model.layernorm if stage_norm == "final" else None
        return parity.hidden_states(
            model, x, prefix=1, final_norm=norm, embedding=lambda out: out.last_hidden_state[:, 0]
        )

    return readouts


@pytest.mark.parametrize(
    ("layout", "variant"),
    [
        ("model", {"image_size": 64, "patch_size": 16}),
        ("classifier", {"image_size": 64, "patch_size": 16, "num_labels": 5}),
        ("model", {"image_size": 48, "patch_size": 8, "qkv_bias": False, "layer_norm_eps": 1e-6}),
        ("model", {"image_size": 64, "patch_size": 16, "hidden_act": "gelu_new", "intermediate_size": 40}),
    ],
    ids=["model", "classifier-layout", "patch8-no-qkv-bias", "gelu-new"],
)
def test_small_configs_match_transformers(tmp_path, layout, variant):
    folder = _checkpoint(tmp_path, {**TINY, **variant}, layout=layout)
    size = variant["image_size"]
    for stage_norm in ("hf", "final"):
        parity.compare_readouts(folder, size, reference=reference(stage_norm), stage_norm=stage_norm)
    parity.compare_readouts(folder, (48, 80), n=2, reference=reference())  # not square
    parity.compare_readouts(folder, 100, n=2, reference=reference(), optimized=True)  # not a multiple of the patch


def test_inference_rewrites_stay_at_parity(tmp_path):
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 64, "patch_size": 16})
    for size in (64, (80, 48)):
        for stage_norm in ("hf", "none", "final"):
            ref = reference("final" if stage_norm == "final" else "hf")
            parity.compare_readouts(folder, size, reference=ref, stage_norm=stage_norm, optimized=True)


def test_final_norm_matters(tmp_path):
    """The final layernorm is applied under "final" only, so the comparisons above mean something."""
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 64, "patch_size": 16})
    x = parity.photos(64, 2)
    raw = bbx.load_backbone(str(folder), stage_norm="hf").select(out_indices=[0, 3])
    normed = bbx.load_backbone(str(folder), stage_norm="final").select(out_indices=[0, 3])
    with torch.no_grad():
        for a, b in zip(raw(x), normed(x)):
            assert rel_err(a, b) > 0.1


@pytest.mark.slow
def test_public_base_config_matches_transformers(tmp_path):
    """google/vit-base-patch16-224's config (ViT-B/16), at 224 and at a non-square 160 x 240."""
    row = registry.lookup("vit-base-patch16")
    config = {k: v for k, v in row.config_dict().items() if k not in ("model_type", "architectures")}
    folder = _checkpoint(tmp_path, config, layout="classifier", seed=1)
    errors = parity.compare_readouts(folder, 224, n=2, reference=reference(), optimized=True)
    assert len(errors) == 2 * 13 + 1
    parity.compare_readouts(folder, (160, 240), n=1, reference=reference("final"), stage_norm="final")


def test_bfloat16_within_transformers_own_error(tmp_path):
    """Under bf16 autocast (bbx extract --dtype bfloat16), bbx's error against fp32 transformers is
    no worse than transformers' own bf16 error."""
    folder = _checkpoint(tmp_path, {**TINY, "image_size": 64, "patch_size": 16})
    parity.bf16_within_own_error(folder, 64, reference())


@pytest.mark.parametrize("alias", [r.alias for r in registry.family_of("vit").catalog])
def test_catalog_preprocessing_matches_transformers(tmp_path, alias):
    assert_same_pixels(tmp_path, registry.lookup(alias).preprocessor_dict(), "vit")


def test_inspect_and_dry_run_follow_the_image_size(tmp_path):
    r = run("inspect", "vit-base-patch16", "--image-size", "384", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["input_size"] == [384, 384] and data["architecture"] == "vit"
    assert all(s["shape"] == [768, 24, 24] and s["stride"] == 16 for s in data["stages"])
    assert data["class_token"] is True and data["embedding"] == {"shape": [768]}
    r = run("inspect", "dino-vitb8")
    assert r.exit_code == 0 and "[768, 28, 28]" in r.stdout and "--pool cls" in r.stdout, r.stderr
    (tmp_path / "a.png").write_bytes(b"")
    r = run(
        "extract", "-m", "deit-base", "--image-size", "160", "--pool", "cls", "--embedding", "--dry-run", "--json",
        "-o", str(tmp_path / "x.h5"), str(tmp_path),
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["input_size"] == [160, 160] and plan["stages"][0]["shape"] == [768]
    assert plan["embedding"]["shape"] == [768] and plan["embedding"]["name"] == "embedding"
    assert plan["bytes_per_image"] == 2 * 768 * 4


def test_strict_loading_names_what_does_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _checkpoint(tmp_path, {**TINY, "image_size": 64, "patch_size": 16})
    weights = folder / "model.safetensors"
    state = load_file(weights)
    del state["encoder.layer.1.attention.attention.key.weight"]
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(ModelError) as e:
        bbx.load_backbone(str(folder))
    message = str(e.value)
    assert "encoder.layer.1.attention.attention.query.weight" in message  # a q/k/v set with a part missing
    assert "blocks.1.attn.qkv.weight" in message and "blocks.0.extra.weight" in message


def test_config_checks():
    assert VitSettings.from_config({"model_type": "vit", "image_size": [384, 384]}).grid == 24
    for bad, match in [
        ({"image_size": [224, 160]}, "square"),
        ({"hidden_size": 100, "num_attention_heads": 3}, "multiple"),
        ({"image_size": 8, "patch_size": 16}, "smaller"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
    ]:
        with pytest.raises(ValueError, match=match):
            VitSettings.from_config({"model_type": "vit", **bad})
    model = bbx.load_backbone("vit-base-patch16", pretrained=False)
    with pytest.raises(ValueError, match="16x16"):
        model.map_sizes((15, 224))
