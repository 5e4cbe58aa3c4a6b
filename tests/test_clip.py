"""CLIP's image tower at parity with transformers on the same random weights: from a whole
``CLIPModel`` checkpoint (reading only the vision tower's tensors), from ``CLIPVisionModel``,
``CLIPVisionModelWithProjection`` and ``CLIPForImageClassification`` checkpoints; every stage's
map (``stem`` after ``pre_layrnorm``), class token and the image embedding as
``get_image_features`` returns it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers as tf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import bbx
from bbx import hub, registry
from bbx.families.clip import ClipSettings
from bbx.preprocess import Preprocess
from tests import parity
from tests.cli import ROOT, proc_env
from tests.processors import assert_same_pixels, hf_pixels, hf_processor
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
#: layout -> the transformers class saved (and read back as the oracle)
_LAYOUTS = {
    "clip": tf.CLIPModel,
    "vision": tf.CLIPVisionModel,
    "projection": tf.CLIPVisionModelWithProjection,
    "classifier": tf.CLIPForImageClassification,
}
PRE = registry.lookup("clip-vit-base-patch32").preprocessor_dict()


def _model(layout: str, vision: dict, *, text: dict = TEXT, projection_dim: int = 24):
    if layout in ("clip", "classifier"):
        config = tf.CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim, num_labels=3)
    else:
        config = tf.CLIPVisionConfig(**vision, projection_dim=projection_dim)
    return _LAYOUTS[layout](config).eval()


def _checkpoint(tmp_path, layout: str = "clip", vision: dict = VISION, seed: int = 0, **kw):
    return save_checkpoint(randomize_(_model(layout, vision, **kw), seed), tmp_path / f"ckpt-{layout}", PRE)


def reference(layout: str = "clip", stage_norm: str = "hf"):
    """The transformers model of ``layout``: its vision tower's raw hidden states (or
    ``post_layernorm`` on every token), class tokens, and the image embedding:
    ``get_image_features`` (a whole CLIP), ``image_embeds`` (with projection) or ``pooler_output``."""

    def readouts(folder, x):
        model = _LAYOUTS[layout].from_pretrained(folder).eval()
        tower = model if layout == "vision" else model.vision_model
        norm = tower.post_layernorm if stage_norm == "final" else None

        def embedding(out):
            if layout in ("clip", "projection"):  # get_image_features, without a second pass (see below)
                return model.visual_projection(out.pooler_output)
            return out.pooler_output

        return parity.hidden_states(tower, x, prefix=1, final_norm=norm, embedding=embedding)

    return readouts


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_small_configs_match_transformers(tmp_path, layout):
    folder = _checkpoint(tmp_path, layout)
    for stage_norm in ("hf", "final"):
        ref = reference(layout, stage_norm)
        parity.compare_readouts(folder, 64, reference=ref, stage_norm=stage_norm)
        parity.compare_readouts(folder, 64, n=2, reference=ref, stage_norm=stage_norm, optimized=True)
    parity.compare_readouts(folder, (48, 96), n=2, reference=reference(layout), optimized=True)  # not square
    parity.compare_readouts(folder, 100, n=2, reference=reference(layout))  # not a multiple of the patch
    emb = registry.family_of("clip").parse(json.loads((folder / "config.json").read_text())).embedding_dim
    assert emb == (32 if layout in ("vision", "classifier") else 24)  # projected where the checkpoint projects


def test_embedding_is_get_image_features(tmp_path):
    folder = _checkpoint(tmp_path, "clip")
    model = tf.CLIPModel.from_pretrained(folder).eval()
    ours = bbx.load_backbone(str(folder)).readout(embedding=True)
    for size in (64, (48, 80)):
        x = parity.photos(size, 2)
        with torch.no_grad():
            want = model.get_image_features(x, interpolate_pos_encoding=True).pooler_output
            *_, got = ours(x)
        assert got.shape == (2, 24) and parity.rel_err(got, want) <= parity.TOL
        assert float(got.norm(dim=-1).sub(1).abs().max()) > 0.01  # not L2-normalised


def test_gelu_tower_and_stem_after_pre_layrnorm(tmp_path):
    """Another activation and eps; and stem is hidden_states[0], after pre_layrnorm."""
    folder = _checkpoint(tmp_path, "clip", {**VISION, "hidden_act": "gelu", "layer_norm_eps": 1e-6})
    parity.compare_readouts(folder, 64, reference=reference("clip"), optimized=True)
    model = bbx.load_backbone(str(folder), out_features=["stem"])
    hf = tf.CLIPModel.from_pretrained(folder).eval().vision_model
    x = parity.photos(64, 2)
    with torch.no_grad():
        before = hf.embeddings(x)[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
        (stem,) = model(x)
    assert parity.rel_err(stem, before) > 0.1  # the norm is applied


def test_bfloat16_within_transformers_own_error(tmp_path):
    folder = _checkpoint(tmp_path, "clip")
    parity.bf16_within_own_error(folder, 64, reference("clip"))


@pytest.mark.slow
def test_public_base_patch32_config_matches_transformers(tmp_path):
    """openai/clip-vit-base-patch32's image tower (a small text tower beside it), at 224 and at a
    non-square 160 x 256."""
    row = registry.lookup("clip-vit-base-patch32")
    vision = {k: v for k, v in row.config_dict()["vision_config"].items() if k != "model_type"}
    folder = _checkpoint(tmp_path, "clip", vision, seed=1, projection_dim=512)
    parity.compare_readouts(folder, 224, n=2, reference=reference("clip"), optimized=True)
    parity.compare_readouts(folder, (160, 256), n=1, reference=reference("clip", "final"), stage_norm="final")


def test_only_the_vision_tower_is_read(tmp_path):
    """From a whole CLIP checkpoint the format seam selects the image tower's tensors (and the
    visual projection) and nothing of the text tower, the text projection or the logit scale."""
    folder = _checkpoint(tmp_path, "clip")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    ref = hub.resolve(str(folder))
    assert ref.model_type == "clip" and ref.config["projection_dim"] == 24 and ref.config["hidden_size"] == 32
    chosen = ref.spec.backbone_keys(keys)
    assert set(chosen) == {k for k in keys if k.startswith(("vision_model.", "visual_projection."))}
    assert any(k.startswith("text_model.") for k in keys) and "logit_scale" in keys
    from bbx.weights import read_state_dict

    assert set(read_state_dict(folder, select=ref.spec.backbone_keys)) == set(chosen.values())


_PEAK = """
import json, resource, sys
import torch, bbx
from bbx import hub, loading
ref = hub.resolve(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = loading.load_pretrained(ref)
for t in model.state_dict().values():  # every weight read once (a lazily mapped file counts then)
    float(t.float().sum())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tower = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"peak_kb": after - before, "tower_bytes": tower}))
"""


def test_loading_the_tower_costs_the_tower_not_the_text_tower(tmp_path):
    """The peak memory of loading grows by about the tower's size, not by the text tower's
    (200 MB of token embeddings here, never read): measured in a fresh process."""
    text = {**TEXT, "hidden_size": 1024, "intermediate_size": 64, "num_attention_heads": 8, "vocab_size": 49408}
    vision = {**VISION, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
    folder = _checkpoint(tmp_path, "clip", vision, text=text)
    file_bytes = (folder / "model.safetensors").stat().st_size
    p = subprocess.run(
        [sys.executable, "-c", _PEAK, str(folder)], capture_output=True, text=True, env=proc_env(), cwd=ROOT
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    text_bytes = file_bytes - got["tower_bytes"]
    assert text_bytes > 190e6 and got["tower_bytes"] < 15e6
    # the tower's weights once (assigned, never initialised on the side), plus allocator slack
    assert got["peak_kb"] * 1024 < got["tower_bytes"] * 2 + 30e6 < text_bytes / 2, got


def test_transformers_4_vision_model_prefix(tmp_path):
    """CLIPVisionModel checkpoints saved by transformers 4 keep their keys under ``vision_model.``."""
    folder = _checkpoint(tmp_path, "vision")
    weights = folder / "model.safetensors"
    save_file({f"vision_model.{k}": v for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    parity.compare_readouts(folder, 64, n=2, reference=lambda f, x: _vision_reference(f, x))


def _vision_reference(folder, x):
    model = tf.CLIPVisionModel(tf.CLIPVisionConfig.from_pretrained(folder)).eval()
    state = {k.removeprefix("vision_model."): v for k, v in load_file(folder / "model.safetensors").items()}
    model.load_state_dict(state)
    return parity.hidden_states(model, x, prefix=1, embedding=lambda out: out.pooler_output)


@pytest.mark.parametrize("alias", [r.alias for r in registry.family_of("clip").catalog])
def test_catalog_preprocessing_matches_transformers(tmp_path, alias):
    assert_same_pixels(tmp_path, registry.lookup(alias).preprocessor_dict(), "clip")


@pytest.mark.parametrize("n", [112, 336])
def test_image_size_scales_the_shortest_edge_and_the_crop(tmp_path, n):
    proc = hf_processor(tmp_path, PRE)
    pre = Preprocess.from_config(PRE, "clip").with_image_size(n)
    imgs = [photo(333, 517, seed=1), photo(700, 90, seed=2)]
    want = hf_pixels(proc, imgs, size={"shortest_edge": n}, crop_size={"height": n, "width": n})
    from bbx import images

    got = images.normalize(torch.stack([torch.from_numpy(images.prepare(i, pre)) for i in imgs]), pre)
    assert torch.equal(got, want)


def test_config_reading():
    row = registry.lookup("clip-vit-large-patch14-336")
    s = ClipSettings.from_config(row.config_dict())
    assert (s.hidden_size, s.num_hidden_layers, s.patch_size, s.image_size, s.grid) == (1024, 24, 14, 336, 24)
    assert s.has_projection and s.embedding_dim == 768 and s.hidden_act == "quick_gelu"
    assert ClipSettings.from_config({"model_type": "clip"}).patch_size == 32  # CLIPConfig's defaults
    vision = ClipSettings.from_config({"model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"]})
    assert not vision.has_projection and vision.embedding_dim == 768
    with pytest.raises(ValueError, match="vision_config"):
        ClipSettings.from_config({"model_type": "clip", "vision_config": [1]})
