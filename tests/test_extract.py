"""`bbx extract` end to end: parity with the transformers recipe, outputs, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.cli import run
from tests.conftest import make_photos
from tests.util import checkpoint_fixture, hf_backbone, rel_err

tiny_resnet = checkpoint_fixture("resnet", seed=3)


def _hf_maps(folder: Path, paths: list[Path], stages: list[str]) -> dict[str, list[torch.Tensor]]:
    """The transformers recipe: the checkpoint's image processor, then its backbone."""
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    model = hf_backbone(folder, out_features=stages)
    out: dict[str, list[torch.Tensor]] = {s: [] for s in stages}
    for p in paths:
        with Image.open(p) as im:
            pixels = processor(im.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            maps = model(pixels).feature_maps
        for s, m in zip(stages, maps):
            out[s].append(m[0])
    return out


def test_maps_equal_the_transformers_recipe_image_by_image(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "feats.h5"
    r = run("extract", "--model", tiny_resnet, "--out-indices", "1", "-o", out, "-b", "3", folder)
    assert r.exit_code == 0, r.stderr
    want = _hf_maps(tiny_resnet, paths, ["stage1"])
    with h5py.File(out) as f:
        assert [p.decode() for p in f["paths"][:]] == [str(p) for p in paths]
        got = f["features/stage1"][:]
    for i, p in enumerate(paths):
        assert rel_err(torch.from_numpy(got[i]), want["stage1"][i]) <= 1e-5, p


def _small_checkpoint(kind: str, folder: Path) -> Path:
    """A small random-weight checkpoint of each family, in the layout its public repos use, with
    the family's public preprocessing."""
    import transformers

    from bbx import registry
    from tests.util import randomize_, save_checkpoint

    if kind == "swin":
        cfg = transformers.SwinConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2], window_size=7)
        model, alias = transformers.SwinForImageClassification(cfg), "swin-tiny"
    elif kind == "convnext":
        cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])
        model, alias = transformers.ConvNextForImageClassification(cfg), "convnext-tiny"
    elif kind == "dinov2":
        cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=518)
        model, alias = transformers.Dinov2Model(cfg), "dinov2-small"
    else:
        cfg = transformers.Dinov2WithRegistersConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=518,
            patch_size=14,
            num_register_tokens=4,
        )
        model, alias = transformers.Dinov2WithRegistersModel(cfg), "dinov2-small-reg"
    randomize_(model.eval(), seed=5)
    return save_checkpoint(model, folder, registry.lookup(alias).preprocessor_dict())


@pytest.mark.parametrize("kind", ["swin", "convnext", "dinov2", "dinov2_with_registers"])
def test_every_family_end_to_end_equals_the_transformers_recipe(kind, photos, tmp_path):
    _assert_extract_equals_the_recipe(kind, photos, tmp_path)


def _assert_extract_equals_the_recipe(kind: str, photos, tmp_path: Path) -> None:
    """`bbx extract` of three stages of a small ``kind`` checkpoint, in batches of 4, gives the
    transformers recipe's maps image by image."""
    folder, paths = photos
    ckpt = _small_checkpoint(kind, tmp_path / kind)
    out = tmp_path / "f.safetensors"
    r = run("extract", "-m", ckpt, "--out-indices", "0,1,-1", "-o", out, "-b", "4", folder, "--json")
    assert r.exit_code == 0, r.stderr
    stages = [s["name"] for s in json.loads(r.stdout)["stages"]]
    want = _hf_maps(ckpt, paths, stages)
    got = load_file(str(out))
    for s in stages:
        for i, p in enumerate(paths):
            assert rel_err(got[s][i], want[s][i]) <= 1e-5, (kind, s, p)


def test_hdf5_layout_and_attributes(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.hdf5"
    r = run("extract", "-m", tiny_resnet, "--out-features", "stem,stage4", "-o", out, folder)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        a = dict(f.attrs)
        assert f["features/stem"].shape == (len(paths), 8, 56, 56)
        assert f["features/stage4"].shape == (len(paths), 32, 7, 7)
        assert f["features/stem"].chunks == (1, 8, 56, 56)  # one image per chunk
        assert f["features/stem"].dtype == np.float32
        assert len(f["paths"]) == len(paths) and len(f["failed/paths"]) == 0
    assert a["status"] == "complete" and a["rows"] == len(paths)
    assert a["checkpoint"] == str(tiny_resnet.resolve()) and a["architecture"] == "resnet"
    assert json.loads(a["out_features"]) == ["stem", "stage4"] and json.loads(a["out_indices"]) == [0, 4]
    assert json.loads(a["input_size"]) == [224, 224] and a["compute_dtype"] == "float32"
    assert json.loads(a["preprocessing"])["kind"] == "crop_pct"
    assert a["bbx_version"] and a["model"] == str(tiny_resnet)
    assert not out.with_name(out.name + ".partial").exists()


def test_safetensors_single_file_loadable_alone(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.safetensors"
    r = run("extract", "-m", tiny_resnet, "--out-indices", "2,-1", "-o", out, folder)
    assert r.exit_code == 0, r.stderr
    tensors = load_file(str(out))
    assert set(tensors) == {"stage2", "stage4"}
    assert tensors["stage2"].shape == (len(paths), 16, 28, 28)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["paths"]) == [str(p) for p in paths]
    assert json.loads(meta["out_features"]) == ["stage2", "stage4"] and meta["status"] == "complete"
    assert json.loads(meta["failed"]) == []
    h5 = tmp_path / "same.h5"
    run("extract", "-m", tiny_resnet, "--out-indices", "2,-1", "-o", h5, folder)
    with h5py.File(h5) as f:
        assert np.array_equal(f["features/stage4"][:], tensors["stage4"].numpy())


def test_safetensors_shards_follow_the_hub_convention(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.safetensors"
    per_image = 32 * 7 * 7 * 4
    r = run("extract", "-m", tiny_resnet, "-o", out, "--shard-size", str(per_image * 3), "-b", "2", folder)
    assert r.exit_code == 0, r.stderr
    index = json.loads((tmp_path / "f.safetensors.index.json").read_text())
    shards = index["metadata"]["shards"]
    assert [s["file"] for s in shards] == [f"f-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]
    assert sum(s["rows"] for s in shards) == len(paths)
    assert index["metadata"]["total_size"] == per_image * len(paths)
    chunks, got_paths = [], []
    for k, s in enumerate(shards, start=1):
        assert index["weight_map"][f"stage4.{k:05d}"] == s["file"]
        t = load_file(str(tmp_path / s["file"]))
        chunks.append(t[f"stage4.{k:05d}"])
        from safetensors import safe_open

        with safe_open(str(tmp_path / s["file"]), "pt") as f:
            got_paths += json.loads(f.metadata()["paths"])
    assert got_paths == [str(p) for p in paths]
    assert not out.exists() and not (tmp_path / "f.safetensors.partial").exists()
    single = tmp_path / "single.h5"
    run("extract", "-m", tiny_resnet, "-o", single, "-b", "2", folder)
    with h5py.File(single) as f:
        assert np.array_equal(torch.cat(chunks).numpy(), f["features/stage4"][:])


@pytest.mark.parametrize("store", ["float16", "bfloat16"])
def test_store_dtype(tiny_resnet, photos, tmp_path, store):
    folder, paths = photos
    ref, out, st = tmp_path / "ref.h5", tmp_path / "o.h5", tmp_path / "o.safetensors"
    run("extract", "-m", tiny_resnet, "-o", ref, folder)
    assert run("extract", "-m", tiny_resnet, "-o", out, "--store-dtype", store, folder).exit_code == 0
    assert run("extract", "-m", tiny_resnet, "-o", st, "--store-dtype", store, folder).exit_code == 0
    with h5py.File(ref) as f:
        full = torch.from_numpy(f["features/stage4"][:])
    with h5py.File(out) as f:
        ds = f["features/stage4"]
        assert ds.attrs["dtype"] == store
        raw = ds[:]
    if store == "float16":
        got = torch.from_numpy(raw).float()
    else:
        got = (torch.from_numpy(raw.astype(np.int32) << 16)).view(torch.float32)
    assert rel_err(got, full) < 1e-2
    tensors = load_file(str(st))
    assert tensors["stage4"].dtype == getattr(torch, store)
    assert torch.equal(tensors["stage4"].float(), got)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_pooling(tiny_resnet, photos, tmp_path, pool):
    folder, paths = photos
    maps, vecs = tmp_path / "maps.h5", tmp_path / "vecs.h5"
    run("extract", "-m", tiny_resnet, "--out-indices", "3,4", "-o", maps, folder)
    r = run("extract", "-m", tiny_resnet, "--out-indices", "3,4", "--pool", pool, "-o", vecs, folder, "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["stages"][0]["shape"] == [24]
    with h5py.File(maps) as a, h5py.File(vecs) as b:
        for s in ("stage3", "stage4"):
            m = torch.from_numpy(a[f"features/{s}"][:])
            want = m.mean(dim=(2, 3)) if pool == "avg" else m.amax(dim=(2, 3))
            assert b[f"features/{s}"].shape == (len(paths), m.shape[1])
            assert rel_err(torch.from_numpy(b[f"features/{s}"][:]), want) < 1e-6


def test_existing_output_needs_overwrite_or_resume(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "-o", out, folder).exit_code == 0
    before = out.stat().st_mtime_ns
    r = run("extract", "-m", tiny_resnet, "-o", out, folder)
    assert r.exit_code == 3 and "--overwrite" in r.stderr and out.stat().st_mtime_ns == before
    assert run("extract", "-m", tiny_resnet, "-o", out, folder, "--overwrite").exit_code == 0


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_resume_adds_only_new_paths(tiny_resnet, photos, tmp_path, suffix):
    folder, paths = photos
    out = tmp_path / f"f{suffix}"
    first = [str(p) for p in paths[:3]]
    assert run("extract", "-m", tiny_resnet, "-o", out, *first).exit_code == 0
    r = run("extract", "-m", tiny_resnet, "-o", out, "--resume", folder, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["done"] == len(paths) - 3 and report["already_present"] == 3
    full = tmp_path / f"full{suffix}"
    run("extract", "-m", tiny_resnet, "-o", full, folder)
    assert _read(out) == _read(full)


def _read(path: Path) -> tuple[list[str], bytes]:
    """(paths, bytes of the stage4 maps in row order) of any output."""
    from bbx.formats import open_output

    out = open_output(path)
    return out.paths, out.read(out.stage("stage4"), range(out.images)).tobytes()


def test_resume_with_other_settings_is_refused(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.h5"
    run("extract", "-m", tiny_resnet, "-o", out, str(paths[0]))
    r = run("extract", "-m", tiny_resnet, "-o", out, "--resume", "--out-indices", "1", folder)
    assert r.exit_code == 2 and "out_features" in r.stderr


def test_bad_inputs_are_skipped_listed_and_never_shift_rows(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    good = (folder / "img000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    out = tmp_path / "f.h5"
    r = run("extract", "-m", tiny_resnet, "-o", out, folder)
    assert r.exit_code == 10, r.stderr
    assert "zero.jpg" in r.stderr and "text.png" in r.stderr and "truncated.jpg" in r.stderr
    assert "Traceback" not in r.stderr
    clean = tmp_path / "clean.h5"
    run("extract", "-m", tiny_resnet, "-o", clean, *map(str, paths))
    with h5py.File(out) as f, h5py.File(clean) as g:
        failed = sorted(p.decode() for p in f["failed/paths"][:])
        assert failed == sorted(str(folder / n) for n in ("zero.jpg", "text.png", "truncated.jpg"))
        assert all(x for x in f["failed/reasons"][:])
        rows = {p.decode(): i for i, p in enumerate(f["paths"][:])}
        for j, p in enumerate(g["paths"][:]):
            assert np.array_equal(f["features/stage4"][rows[p.decode()]], g["features/stage4"][j])


def test_on_error_stop(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    (folder / "a_bad.jpg").write_bytes(b"nope")
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "--on-error", "stop", folder)
    assert r.exit_code == 3 and "a_bad.jpg" in r.stderr


def test_json_report_is_the_only_stdout(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "--json", "--out-indices", "0,1", folder)
    assert r.exit_code == 0
    rep = json.loads(r.stdout)
    assert rep["done"] == len(paths) and rep["skipped"] == [] and rep["images_per_s"] > 0
    assert [s["name"] for s in rep["stages"]] == ["stem", "stage1"]
    assert rep["stages"][1]["shape"] == [8, 56, 56] and rep["bytes_per_image"] == 2 * 8 * 56 * 56 * 4


def test_dry_run_reads_no_weights(tiny_resnet, photos, tmp_path):
    import shutil

    folder, paths = photos
    ckpt = tmp_path / "noweights"
    shutil.copytree(tiny_resnet, ckpt)
    (ckpt / "model.safetensors").unlink()
    r = run("extract", "-m", ckpt, "--dry-run", "--json", "--image-size", "320", "-o", tmp_path / "x.h5", folder)
    assert r.exit_code == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["inputs"] == len(paths) and p["input_size"] == [320, 320]
    assert p["stages"][0]["shape"] == [32, 10, 10]
    assert p["projected_bytes"] == len(paths) * 32 * 10 * 10 * 4
    assert not (tmp_path / "x.h5").exists()
    r = run("extract", "-m", ckpt, "--dry-run", folder)
    assert r.exit_code == 0 and "projected" in r.stderr and r.stdout == ""


def test_not_enough_disk_space_is_refused_unless_forced(tiny_resnet, photos, tmp_path, monkeypatch):
    import collections
    import shutil

    folder, _ = photos
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", folder)
    assert r.exit_code == 3 and "exceeds" in r.stderr and "--force" in r.stderr
    assert run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "--force", folder).exit_code == 0


def test_image_size_override(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "--image-size", "160", "-o", out, folder).exit_code == 0
    with h5py.File(out) as f:
        assert f["features/stage4"].shape == (len(paths), 32, 5, 5)
        assert json.loads(f.attrs["input_size"]) == [160, 160]


def test_order_does_not_depend_on_workers(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    outs = []
    for w in (0, 3):
        out = tmp_path / f"w{w}.h5"
        assert run("extract", "-m", tiny_resnet, "-j", str(w), "-b", "2", "-o", out, folder).exit_code == 0
        outs.append(_read(out))
    assert outs[0] == outs[1]


def test_stdin_list_nul_separated(tiny_resnet, photos, tmp_path):
    folder, paths = photos
    listing = "\0".join(str(p) for p in reversed(paths)) + "\0"
    out = tmp_path / "f.h5"
    r = run("extract", "-0", "-m", tiny_resnet, "-o", out, "-", input=listing.encode())
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        assert [p.decode() for p in f["paths"][:]] == [str(p) for p in reversed(paths)]


def test_default_output_name_is_printed(tiny_resnet, photos, tmp_path, monkeypatch):
    folder, _ = photos
    monkeypatch.chdir(tmp_path)
    r = run("extract", "-m", tiny_resnet, folder)
    assert r.exit_code == 0
    assert (tmp_path / "tiny-resnet_stage4.h5").exists() and "tiny-resnet_stage4.h5" in r.stderr


def test_random_weights_from_an_alias_run_offline(photos, tmp_path):
    folder, paths = photos
    out = tmp_path / "r.h5"
    r = run("extract", "--model", "resnet-18", "--no-pretrained", "--image-size", "64", "-o", out, str(paths[0]))
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        assert f["features/stage4"].shape == (1, 512, 2, 2) and f.attrs["weights"] == "random (seed 0)"


def test_usage_errors_are_one_line(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    for args, needle in (
        (["--out-indices", "9"], "out of range"),
        (["--out-indices", "x"], "integers"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
        (["--dtype", "int8"], "--dtype"),
        (["--pool", "mean"], "--pool"),
        (["-o", str(tmp_path / "f.npz")], "format"),
    ):
        r = run("extract", "-m", tiny_resnet, *args, folder)
        assert r.exit_code == 2, (args, r.stderr)
        assert needle in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


def test_many_formats_of_images(tiny_resnet, tmp_path):
    folder = tmp_path / "mixed"
    for fmt in ("jpg", "png", "webp", "bmp", "gif", "tiff"):
        make_photos(folder / fmt, [(120, 90)], fmt)
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", folder, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 6


@pytest.mark.slow
def test_compiled_model_gives_the_same_maps(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    plain, compiled = tmp_path / "plain.h5", tmp_path / "compiled.h5"
    assert run("extract", "-m", tiny_resnet, "-o", plain, "--image-size", "96", folder).exit_code == 0
    r = run("extract", "-m", tiny_resnet, "-o", compiled, "--image-size", "96", "--compile", folder)
    assert r.exit_code == 0, r.stderr
    with h5py.File(plain) as a, h5py.File(compiled) as b:
        assert rel_err(torch.from_numpy(b["features/stage4"][:]), torch.from_numpy(a["features/stage4"][:])) <= 1e-5


@pytest.mark.parametrize("kind", ["swin", "convnext"])
def test_blocks_run_in_row_slices_stay_at_parity(kind, photos, tmp_path, monkeypatch):
    """On big batches the MLP blocks run over slices of rows (bbx.nn.layers.in_row_slices);
    a tiny cache budget makes these small ones slice too: still the transformers recipe's maps."""
    import importlib

    from bbx.nn import layers

    # where the block calls it: the shared shifted-window block (Swin), ConvNeXt's shared block
    family = importlib.import_module({"swin": "bbx.nn.windows", "convnext": "bbx.nn.blocks"}[kind])
    slices = []

    def spy(fn, x, *more, width):
        return layers.in_row_slices(
            lambda *a: slices.append(a[0].shape[0]) or fn(*a), x, *more, width=width, force=True
        )

    monkeypatch.setattr(layers, "SLICE_BYTES_PER_THREAD", 8)
    from bbx.nn import blocks

    for module in (family, blocks):  # wherever the family's blocks live (ConvNeXt's: bbx.nn.blocks)
        if hasattr(module, "in_row_slices"):
            monkeypatch.setattr(module, "in_row_slices", spy)
    _assert_extract_equals_the_recipe(kind, photos, tmp_path)
    assert len(slices) > 4 * len(photos[1]) and min(slices) < 4 * 56 * 56  # it did slice


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_hdf5_holds_the_same_maps_and_reports_its_ratio(tiny_resnet, photos, tmp_path, compression):
    folder, paths = photos
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    stages = ("--out-features", "stem,stage4")
    assert run("extract", "-m", tiny_resnet, "-o", plain, *stages, "-q", folder).exit_code == 0
    r = run("extract", "-m", tiny_resnet, "-o", packed, *stages, "--compression", compression, "--json", folder)
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["compression"] == compression and rep["stored_bytes"] < rep["map_bytes"]
    assert rep["compression_ratio"] == pytest.approx(rep["map_bytes"] / rep["stored_bytes"], rel=1e-3)
    assert rep["compression_ratio"] > 1.2 and rep["write_s"] > 0
    with h5py.File(plain) as a, h5py.File(packed) as b:
        for s in ("stem", "stage4"):
            assert b[f"features/{s}"].compression == compression and b[f"features/{s}"].shuffle
            assert b[f"features/{s}"].chunks[0] == 1  # still one image per chunk
            assert np.array_equal(a[f"features/{s}"][:], b[f"features/{s}"][:])
        assert b.attrs["compression"] == compression
    info = json.loads(run("info", packed, "--json").stdout)["compression"]
    assert info["filter"] == compression and info["ratio"] > 1.2
    assert f"stored       {compression}" in run("info", packed).stdout
    dry = run("extract", "-m", tiny_resnet, "-o", tmp_path / "d.h5", "--compression", compression, "--dry-run", folder)
    assert f"compression {compression} (with byte shuffling): the projected size is before it" in dry.stderr


def test_compression_is_for_hdf5_only(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.safetensors", "--compression", "gzip", folder)
    assert r.exit_code == 2 and "--compression applies to HDF5 output only" in r.stderr
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "f.h5", "--compression", "zstd", folder)
    assert r.exit_code == 2 and "--compression must be none, gzip or lzf" in r.stderr


def test_non_square_sizes_and_resize_modes_end_to_end(tiny_resnet, photos, tmp_path):
    import bbx

    folder, paths = photos
    out = tmp_path / "p.h5"
    r = run("extract", "-m", tiny_resnet, "-o", out, "--image-size", "96x128", "--resize", "pad", "--json", folder)
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["input_size"] == [96, 128] and rep["stages"][0]["shape"] == [32, 3, 4]
    info = json.loads(run("info", out, "--json").stdout)
    assert info["input_size"] == [96, 128] and info["preprocessing"]["resize_mode"] == "pad"
    r = run("extract", "-m", tiny_resnet, "-o", out, "--image-size", "96x128", "--resume", folder)
    assert r.exit_code == 2 and "preprocessing" in r.stderr  # the run of another recipe does not mix in
    ex = bbx.Extractor(str(tiny_resnet), image_size=(96, 128), resize="pad")
    with h5py.File(out) as f:
        rows, written = [p.decode() for p in f["paths"][:]], f["features/stage4"][:]
    # the same batch, to the bit (another batch size may pick other conv algorithms: last bits)
    assert np.array_equal(ex(rows)["stage4"].numpy(), written)
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "q.h5", "--image-size", "96x", folder)
    assert r.exit_code == 2 and "--image-size takes N or HxW" in r.stderr
