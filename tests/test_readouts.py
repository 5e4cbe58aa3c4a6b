"""Class tokens (``--pool cls``) and the model's own image embedding (``--embedding``) from the
command line to the file and back: what ``bbx extract`` stores equals ``bbx.Extractor`` and the
transformers recipe, ``bbx info`` / ``bbx.open`` / ``--resume`` know the embedding, and a model
without a class token or an embedding is refused in one line before any weights are read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import bbx
from bbx.errors import UsageError
from tests.cli import run
from tests.util import checkpoint_fixture, rel_err

tiny_vit = checkpoint_fixture("vit", seed=3)
tiny_resnet = checkpoint_fixture("resnet", seed=3)


def _hf_readouts(folder, paths, stages: list[int]):
    """The transformers recipe: the checkpoint's image processor, ViTModel's raw hidden states'
    class tokens, and the normed class token of the last block."""
    from transformers import AutoImageProcessor, ViTModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    with torch.no_grad():
        pixels = processor(images, return_tensors="pt")["pixel_values"]  # 224: positions resampled from 64
        out = model(pixels, output_hidden_states=True, interpolate_pos_encoding=True)
    return [out.hidden_states[i][:, 0] for i in stages], out.last_hidden_state[:, 0]


@pytest.mark.parametrize("fmt", ["h5", "safetensors"])
def test_class_tokens_and_embedding_end_to_end(tiny_vit, photos, tmp_path, fmt):
    folder, paths = photos
    out = tmp_path / f"f.{fmt}"
    args = ["extract", "-m", tiny_vit, "--out-indices", "1,-1", "--pool", "cls", "--embedding", "-b", "4", "-o", out]
    r = run(*args, folder)
    assert r.exit_code == 0, r.stderr
    cls, emb = _hf_readouts(tiny_vit, paths, [1, 3])
    ex = bbx.Extractor(str(tiny_vit), out_indices=[1, -1], pool="cls", embedding=True)
    assert ex.outputs == ["stage1", "stage3", "embedding"]
    with bbx.open(out) as f:
        assert f.stages == ["stage1", "stage3", "embedding"] and f.facts.embedding and f.facts.pool == "cls"
        assert f["stage1"].shape == (7, 32) and f["embedding"].shape == (7, 32)
        assert rel_err(torch.from_numpy(f["stage1"][:]), cls[0]) <= 1e-5
        assert rel_err(torch.from_numpy(f["stage3"][:]), cls[1]) <= 1e-5
        assert rel_err(torch.from_numpy(f["embedding"][:]), emb) <= 1e-5
        for start in range(0, 7, 4):  # the run's batches, to the bit
            got = ex(paths[start : start + 4])
            assert list(got) == ex.outputs
            for name in ex.outputs:
                assert np.array_equal(got[name].numpy(), f[name][start : start + 4]), name
    info = run("info", out)
    assert info.exit_code == 0 and "embedding" in info.stdout and "[32]" in info.stdout, info.stderr
    data = json.loads(run("info", out, "--json").stdout)
    assert data["embedding"] is True and [s["name"] for s in data["stages"]] == ["stage1", "stage3", "embedding"]
    # a resume must match, embedding included; with it, rows are added
    r = run("extract", "-m", tiny_vit, "--out-indices", "1,-1", "--pool", "cls", "-o", out, "--resume", folder)
    assert r.exit_code == 2 and "embedding" in r.stderr, r.stderr
    more = tmp_path / "more"
    more.mkdir()
    Image.open(paths[0]).save(more / "again.png")
    r = run(*args, "--resume", folder, more)
    assert r.exit_code == 0, r.stderr
    with bbx.open(out) as f:
        assert len(f) == 8 and f["embedding"].shape == (8, 32)


def test_embedding_alone_beside_an_early_stage(tiny_vit, photos, tmp_path):
    """--embedding with an early stage runs to the last block; the maps stay maps."""
    folder, paths = photos
    out = tmp_path / "f.h5"
    r = run("extract", "-m", tiny_vit, "--out-indices", "1", "--embedding", "-o", out, "--json", folder)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["stages"][0]["shape"] == [32, 14, 14] and report["embedding"]["shape"] == [32]
    assert report["bytes_per_image"] == (32 * 14 * 14 + 32) * 4
    _, emb = _hf_readouts(tiny_vit, paths, [])
    with bbx.open(out) as f:
        assert f.stages == ["stage1", "embedding"] and f["stage1"].shape == (7, 32, 14, 14)
        assert rel_err(torch.from_numpy(f["embedding"][:]), emb) <= 1e-5
    r = run("show", out, "-o", tmp_path / "pic.png")  # the default stage is a map, not the embedding
    assert r.exit_code == 0, r.stderr


def test_the_forward_runs_to_the_last_block_for_the_embedding(tiny_vit):
    model = bbx.load_backbone(str(tiny_vit), out_indices=[1])
    ran: list[int] = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (stage1,) = model(x)
        assert ran == [0]
        ran.clear()
        stage1_again, emb = model.readout(embedding=True)(x)
        cls1, emb_again = model.readout(cls=True, embedding=True)(x)
    assert ran == [0, 1, 2, 0, 1, 2]
    assert torch.equal(stage1, stage1_again) and torch.equal(emb, emb_again) and emb.shape == (2, 32)
    assert cls1.shape == (2, 32)


def test_models_without_them_are_refused_before_the_weights(tiny_resnet, photos, tmp_path):
    """A convnet has neither: one line (exit 2) pointing to --pool avg, from the plan alone: the
    weights file here is garbage, and reading it would fail differently."""
    folder, _ = photos
    broken = tmp_path / "resnet"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_bytes((tiny_resnet / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    for extra, words in ((["--pool", "cls"], "has no class token"), (["--embedding"], "defines no image embedding")):
        for dry in ([], ["--dry-run"]):
            r = run("extract", "-m", broken, *extra, *dry, "-o", tmp_path / "x.h5", folder)
            assert r.exit_code == 2, r.stderr
            assert words in r.stderr and "--pool avg" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.glob("x.h5*"))
    with pytest.raises(UsageError, match="has no class token"):
        bbx.Extractor(str(broken), pool="cls")
    with pytest.raises(UsageError, match="defines no image embedding"):
        bbx.Extractor(str(broken), embedding=True)
    data = json.loads(run("inspect", broken, "--json").stdout)
    assert data["class_token"] is False and data["embedding"] is None


def test_pool_cls_for_dinov2_with_registers_reads_the_class_token():
    """Registers follow the class token; --pool cls reads token 0 under DINOv2's stage norm."""
    ex = bbx.Extractor("dinov2-small-reg", pretrained=False, out_indices=[2, -1], pool="cls", embedding=True)
    model = ex.model
    x = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        stages = list(model.iter_stages(x))
        (tokens, _), (last, _) = stages[2], stages[-1]
        got = ex.forward(x)
        want = [model.norm(tokens[:, 0]), model.norm(last[:, 0])]
    assert len(got) == 3 and got[0].shape == (1, 384)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
    assert torch.allclose(got[2], want[1], atol=1e-5)  # the embedding: Dinov2Model's pooler_output
