"""The Python API: ``bbx.Extractor`` (the per-batch path every runner uses) gives what ``bbx extract``
writes, to the bit, and ``bbx.open`` reads every output kind ``bbx info`` reads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bbx
from bbx.errors import InputError, UsageError
from tests.cli import ROOT, run
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fmt", ["h5", "safetensors"])
def test_extractor_equals_what_extract_writes(tiny_resnet, photos, tmp_path, dtype, fmt):
    folder, paths = photos
    out = tmp_path / f"f.{fmt}"
    store = "bfloat16" if dtype == "bfloat16" else "float32"
    args = ["extract", "-m", tiny_resnet, "--out-features", "stem,stage2,stage4", "-b", "4", "-o", out]
    r = run(*args, "--dtype", dtype, "--store-dtype", store, *map(str, paths))
    assert r.exit_code == 0, r.stderr
    ex = bbx.Extractor(str(tiny_resnet), out_features=["stem", "stage2", "stage4"], dtype=dtype, output_dtype=store)
    assert ex.stages == ["stem", "stage2", "stage4"] and ex.input_size == (224, 224)
    with bbx.open(out) as f:
        assert f.paths == [str(p) for p in paths] and f.stages == ex.stages
        for start in range(0, len(paths), 4):  # the same batches as the run
            maps = ex(paths[start : start + 4])
            for name in ex.stages:
                got = maps[name]
                assert got.dtype == getattr(torch, store) and got.device.type == "cpu"
                want = f[name].raw[start : start + 4]
                assert np.array_equal(bbx.dtypes.to_storage(got), want), (name, start)


def test_extractor_takes_paths_pil_images_and_uint8_batches(tiny_resnet, photos):
    _, paths = photos
    ex = bbx.Extractor(str(tiny_resnet), out_indices=[1, -1], pool="avg")
    by_path = ex(paths[:2])
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
        by_pil = ex([a.convert("RGB"), b.convert("RGB")])
    batch = np.stack([ex.load(p) for p in paths[:2]])
    by_batch = ex(batch)
    for name in ex.stages:
        assert by_path[name].shape == (2, by_path[name].shape[1])  # pooled: [N, C]
        assert torch.equal(by_path[name], by_batch[name]) and torch.equal(by_path[name], by_pil[name])
    assert list(by_path) == ["stage1", "stage4"]


def test_extractor_errors_are_one_line(tiny_resnet, tmp_path):
    ex = bbx.Extractor(str(tiny_resnet))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.jpg: not an image"):
        ex([bad])
    with pytest.raises(UsageError, match="uint8"):
        ex(np.zeros((1, 224, 224, 3), dtype=np.float32))
    with pytest.raises(UsageError, match="takes 224x224"):
        ex(np.zeros((1, 100, 100, 3), dtype=np.uint8))
    with pytest.raises(UsageError, match="pool"):
        bbx.Extractor(str(tiny_resnet), pool="median")


def _outputs(tiny_resnet, photos, tmp_path):
    """One output of every kind bbx info reads."""
    from bbx.formats import open_writer

    folder, paths = photos
    made = {}
    for name, extra in (
        ("a.h5", []),
        ("b.safetensors", []),
        ("c.safetensors", ["--shard-size", "30kB"]),
    ):
        r = run("extract", "-m", tiny_resnet, "--out-indices", "0,4", "-o", tmp_path / name, *extra, folder)
        assert r.exit_code == 0, r.stderr
        made[name] = tmp_path / name
    made["c.safetensors.index.json"] = tmp_path / "c.safetensors.index.json"
    facts = bbx.open(made["a.h5"]).facts
    for name, fmt in (("u.h5", "hdf5"), ("u.safetensors", "safetensors")):
        with bbx.open(made["a.h5"]) as src:
            w = open_writer(tmp_path / name, fmt, facts=facts, stages=src.output.stages)
            w.write(src.paths[:2], {s: src[s].raw[:2] for s in src.stages})
            w.abort()  # what a killed run leaves
        made[name + ".partial"] = tmp_path / (name + ".partial")
    return made


def test_open_reads_every_output_kind(tiny_resnet, photos, tmp_path):
    made = _outputs(tiny_resnet, photos, tmp_path)
    with bbx.open(made["a.h5"]) as ref:
        want = {s: ref[s][:] for s in ref.stages}
        assert set(want) == {"stem", "stage4"}
    assert (tmp_path / "c-00001-of-00002.safetensors").exists() or len(list(tmp_path.glob("c-*.safetensors"))) > 1
    for name, path in made.items():
        with bbx.open(path) as f:
            assert f.stages == ["stem", "stage4"], name
            if name.endswith(".safetensors.partial"):
                assert f.status == "unfinished" and len(f) == 2
                continue
            n = len(f)
            assert f.facts.architecture == "resnet" and f.facts.out_features == ("stem", "stage4")
            arr = f["stage4"]
            assert arr.shape == (n, 32, 7, 7) and len(arr) == n and arr.dtype == np.float32
            assert np.array_equal(arr[0], want["stage4"][0]), name
            assert np.array_equal(arr[-1], want["stage4"][n - 1]), name
            assert np.array_equal(arr[1:3], want["stage4"][:n][1:3]), name
            assert np.array_equal(arr[[1, 0, 1]], want["stage4"][[1, 0, 1]]), name
            assert np.array_equal(arr[::2], want["stage4"][:n:2]), name
            assert np.array_equal(np.asarray(f["stem"]), want["stem"][:n]), name
            with pytest.raises(IndexError):
                arr[n]
            with pytest.raises(KeyError, match="stage4"):
                f["stage9"]


def test_open_keeps_bfloat16_raw_and_decodes_it(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    out = tmp_path / "bf.h5"
    assert run("extract", "-m", tiny_resnet, "--store-dtype", "bfloat16", "-o", out, folder).exit_code == 0
    with bbx.open(out) as f:
        arr = f["stage4"]
        assert arr.stored_dtype == "bfloat16" and arr.dtype == np.float32 and arr.raw.dtype == np.uint16
        raw = arr.raw[0:2]
        assert np.array_equal((raw.astype(np.uint32) << 16).view(np.float32), arr[0:2])


def test_open_refuses_what_is_not_an_output(tmp_path):
    junk = tmp_path / "x.h5"
    junk.write_text("hello")
    with pytest.raises(InputError):
        bbx.open(junk)
    with pytest.raises(InputError, match="no such file"):
        bbx.open(tmp_path / "missing.h5")


def test_importing_bbx_and_open_need_no_torch(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "-o", out, folder).exit_code == 0
    code = f"import bbx, sys; f = bbx.open({str(out)!r}); f['stage4'][0]; print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert p.stdout.strip() == "False", p.stderr
