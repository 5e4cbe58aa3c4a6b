"""SigLIP's image tower at parity with transformers on the same random weights: from a whole
``SiglipModel`` checkpoint (reading only the vision tower's tensors) and from ``SiglipVisionModel``
checkpoints; every stage's map (every token is a patch) and the attention-pooling head's
embedding. No class token: ``--pool cls`` is refused before any weights are loaded."""

from __future__ import annotations

import json

import pytest
import transformers as tf
from safetensors import safe_open

from bbx import hub, registry
from bbx.families.siglip import SiglipSettings
from tests import parity
from tests.cli import run
from tests.processors import assert_same_pixels
from tests.util import photo, randomize_, save_checkpoint

VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 64,
    "patch_size": 16,
}
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
_LAYOUTS = {"siglip": tf.SiglipModel, "vision": tf.SiglipVisionModel}
PRE = registry.lookup("siglip-base-patch16-224").preprocessor_dict()


def _checkpoint(tmp_path, layout: str = "siglip", vision: dict = VISION, seed: int = 0):
    if layout == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(vision_config=vision, text_config=TEXT))
    else:
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**vision))
    return save_checkpoint(randomize_(model.eval(), seed), tmp_path / f"ckpt-{layout}", PRE)


def reference(layout: str = "siglip", stage_norm: str = "hf"):
    """The vision tower's raw hidden states (or ``post_layernorm`` on every token) and its
    ``pooler_output`` (the attention-pooling head; what ``get_image_features`` returns)."""

    def readouts(folder, x):
        model = _LAYOUTS[layout].from_pretrained(folder).eval()
        tower = model.vision_model if layout == "siglip" else model
        norm = tower.post_layernorm if stage_norm == "final" else None
        head = tower.config.vision_use_head
        return parity.hidden_states(
            tower, x, prefix=0, final_norm=norm, embedding=(lambda out: out.pooler_output) if head else None
        )

    return readouts


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_small_configs_match_transformers(tmp_path, layout):
    folder = _checkpoint(tmp_path, layout)
    for stage_norm in ("hf", "final"):
        ref = reference(layout, stage_norm)
        parity.compare_readouts(folder, 64, reference=ref, stage_norm=stage_norm)
        parity.compare_readouts(folder, 64, n=2, reference=ref, stage_norm=stage_norm, optimized=True)
    parity.compare_readouts(folder, (80, 48), n=2, reference=reference(layout), optimized=True)  # not square
    parity.compare_readouts(folder, 100, n=2, reference=reference(layout))  # not a multiple of the patch


def test_tower_without_pooling_head(tmp_path):
    folder = _checkpoint(tmp_path, "vision", {**VISION, "vision_use_head": False, "hidden_act": "gelu"})
    parity.compare_readouts(folder, 64, reference=reference("vision"), optimized=True)
    assert SiglipSettings.from_config(json.loads((folder / "config.json").read_text())).embedding_dim is None
    photo(64, 64).save(tmp_path / "a.png")
    r = run("extract", "-m", str(folder), "--embedding", "--dry-run", str(tmp_path / "a.png"))
    assert r.exit_code == 2 and "defines no image embedding" in r.stderr and "\n" not in r.stderr.strip()


def test_bfloat16_within_transformers_own_error(tmp_path):
    folder = _checkpoint(tmp_path, "siglip")
    parity.bf16_within_own_error(folder, 64, reference("siglip"))


@pytest.mark.slow
def test_public_base_config_matches_transformers(tmp_path):
    """google/siglip-base-patch16-224's image tower (a small text tower beside it), at 224 and at
    a non-square 192 x 288."""
    row = registry.lookup("siglip-base-patch16-224")
    vision = {k: v for k, v in row.config_dict()["vision_config"].items() if k != "model_type"}
    folder = _checkpoint(tmp_path, "siglip", vision, seed=1)
    parity.compare_readouts(folder, 224, n=2, reference=reference("siglip"), optimized=True)
    parity.compare_readouts(folder, (192, 288), n=1, reference=reference("siglip", "final"), stage_norm="final")


def test_only_the_vision_tower_is_read(tmp_path):
    folder = _checkpoint(tmp_path, "siglip")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    ref = hub.resolve(str(folder))
    assert ref.model_type == "siglip" and ref.config["hidden_size"] == 32
    assert set(ref.spec.backbone_keys(keys)) == {k for k in keys if k.startswith("vision_model.")}


def test_no_class_token(tmp_path):
    folder = _checkpoint(tmp_path, "vision")
    photo(64, 64).save(tmp_path / "a.png")
    r = run("extract", "-m", str(folder), "--pool", "cls", "-o", str(tmp_path / "x.h5"), str(tmp_path / "a.png"))
    assert r.exit_code == 2, r.stderr
    assert "has no class token" in r.stderr and "--pool avg" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()
    r = run("inspect", "siglip-base-patch16-224")
    assert r.exit_code == 0 and "--pool cls" not in r.stdout and "--embedding" in r.stdout
    # an alias is refused from its embedded config: nothing is downloaded (there is no network here)
    r = run("extract", "-m", "siglip-base-patch16-224", "--pool", "cls", str(tmp_path / "a.png"))
    assert r.exit_code == 2 and "siglip-base-patch16-224 (SigLIP) has no class token" in r.stderr, r.stderr


@pytest.mark.parametrize("alias", [r.alias for r in registry.family_of("siglip").catalog])
def test_catalog_preprocessing_matches_transformers(tmp_path, alias):
    assert_same_pixels(tmp_path, registry.lookup(alias).preprocessor_dict(), "siglip")


def test_config_reading():
    s = SiglipSettings.from_config(registry.lookup("siglip-so400m-patch14-384").config_dict())
    assert (s.hidden_size, s.num_hidden_layers, s.intermediate_size, s.patch_size, s.grid) == (1152, 27, 4304, 14, 27)
    assert s.hidden_act == "gelu_pytorch_tanh" and s.layer_norm_eps == 1e-6 and not s.class_token
    base = SiglipSettings.from_config(registry.lookup("siglip-base-patch16-224").config_dict())
    assert (base.hidden_size, base.num_hidden_layers, base.image_size, base.embedding_dim) == (768, 12, 224, 768)


def test_a_hub_checkpoint_is_refused_before_its_weights_are_fetched(hub_server, tmp_path):
    from tests.cli import bbx_proc

    folder = _checkpoint(tmp_path, "siglip")
    hub_server.add_repo("org/siglip", folder)
    photo(64, 64).save(tmp_path / "a.png")
    p = bbx_proc("extract", "-m", "org/siglip", "--pool", "cls", str(tmp_path / "a.png"), env=hub_server.env())
    assert p.returncode == 2 and "org/siglip (SigLIP) has no class token" in p.stderr, p.stderr
    assert hub_server.transfers("model.safetensors") == []
