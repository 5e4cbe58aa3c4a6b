"""Strict, safe weight loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ResNetConfig, ResNetForImageClassification

import bbx
from bbx.errors import ModelError
from tests.util import randomize_, save_checkpoint

SMALL = {"embedding_size": 8, "hidden_sizes": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "layer_type": "basic"}


@pytest.fixture()
def ckpt(tmp_path):
    model = randomize_(ResNetForImageClassification(ResNetConfig(**SMALL)).eval())
    return save_checkpoint(model, tmp_path / "ckpt")


def _edit(folder, fn):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_missing_key_is_named(ckpt):
    _edit(ckpt, lambda s: s.pop("resnet.encoder.stages.1.layers.0.layer.0.convolution.weight"))
    with pytest.raises(ModelError, match=r"missing keys: stages\.1\.0\.convs\.0\.conv\.weight"):
        bbx.load_backbone(str(ckpt))


def test_unexpected_key_is_named(ckpt):
    _edit(ckpt, lambda s: s.update({"resnet.extra.weight": torch.zeros(3)}))
    with pytest.raises(ModelError, match=r"unexpected keys: extra\.weight"):
        bbx.load_backbone(str(ckpt))


def test_wrong_shape_is_named(ckpt):
    def grow(s):
        s["resnet.embedder.embedder.convolution.weight"] = torch.zeros(8, 3, 5, 5)

    _edit(ckpt, grow)
    with pytest.raises(ModelError, match=r"wrong shapes.*stem\.conv\.weight \(8, 3, 5, 5\) vs \(8, 3, 7, 7\)"):
        bbx.load_backbone(str(ckpt))


def test_config_that_does_not_match_weights(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hidden_sizes"] = [8, 16, 16, 64]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not fit"):
        bbx.load_backbone(str(ckpt))


def test_sharded_safetensors(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    keys = sorted(state)
    half = len(keys) // 2
    parts = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in parts.items():
        save_file({k: state[k] for k in ks}, str(ckpt / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    single = bbx.load_backbone(str(ckpt))
    (ckpt / "model.safetensors").unlink()
    sharded = bbx.load_backbone(str(ckpt))
    for (k, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), k


def test_bin_checkpoint_loads_with_weights_only(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    torch.save(state, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    model = bbx.load_backbone(str(ckpt))
    assert torch.equal(model.stem.conv.weight, state["resnet.embedder.embedder.convolution.weight"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (ckpt / "model.safetensors").unlink()
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"resnet.embedder.embedder.convolution.weight": _Evil()}, f)
    with pytest.raises(ModelError, match="refused to load"):
        bbx.load_backbone(str(ckpt))
    assert not (tmp_path / "PWNED").exists()


def test_no_weights_at_all(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        bbx.load_backbone(str(ckpt))


def test_random_weights_need_no_files(ckpt):
    (ckpt / "model.safetensors").unlink()
    model = bbx.load_backbone(str(ckpt), pretrained=False, out_indices=[0, -1])
    assert model.out_indices == [0, 4] and model.out_features == ["stem", "stage4"]
