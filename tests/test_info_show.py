"""`bbx info` and `bbx show` on real outputs of `bbx extract` (a tiny random-weight ResNet)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbx.formats import open_output
from tests.cli import run
from tests.conftest import make_photos
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)

SIZES = [(96, 72), (72, 96), (80, 80), (120, 64)]


@pytest.fixture(scope="module")
def made(tiny_resnet, tmp_path_factory):
    """Outputs of one set of photos (and one unreadable file) in every layout bbx writes."""
    root = tmp_path_factory.mktemp("outputs")
    photos = make_photos(root / "photos", SIZES, "jpg")
    (root / "photos" / "zz_bad.jpg").write_bytes(b"not an image")
    per_image = 32 * 7 * 7 * 4 + 8 * 56 * 56 * 4
    outs = {}
    for key, name, extra in (
        ("h5", "f.h5", []),
        ("st", "f.safetensors", []),
        ("sharded", "s.safetensors", ["--shard-size", str(per_image * 2)]),
        ("bf16", "b.h5", ["--store-dtype", "bfloat16"]),
        ("pooled", "p.h5", ["--pool", "avg"]),
    ):
        out = root / name
        r = run(
            "extract", "-m", tiny_resnet, "--out-features", "stem,stage4", "-b", "3", "-o", out, *extra, root / "photos"
        )
        assert r.exit_code == 10, r.stderr  # partial success: the bad file is skipped
        outs[key] = out
    outs["photos"] = photos
    outs["root"] = root
    return outs


def _one_line_error(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert r.stdout == "" and r.stderr.startswith("bbx: error: ") and r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


# --- bbx info ---------------------------------------------------------------------------------
def test_info_report(made, tiny_resnet):
    r = run("info", made["h5"])
    assert r.exit_code == 0 and r.stderr == ""
    text = r.stdout
    for needle in (
        "f.h5",
        "hdf5",
        "complete",
        "4 images",
        "on disk",
        str(tiny_resnet),
        "resnet",
        "pretrained weights",
        "224x224",
        "stem",
        "[8, 56, 56]",
        "stage4",
        "[32, 7, 7]",
        "float32",
        "1 failed",
        "zz_bad.jpg",
    ):
        assert needle in text, (needle, text)


def test_info_json_is_the_same_for_every_layout(made):
    reports = {}
    for key in ("h5", "st", "sharded"):
        r = run("info", made[key], "--json")
        assert r.exit_code == 0, r.stderr
        reports[key] = json.loads(r.stdout)
    index = made["sharded"].with_name("s.safetensors.index.json")
    by_index = json.loads(run("info", index, "--json").stdout)
    assert by_index | {"file": "x"} == reports["sharded"] | {"file": "x"}
    h5 = reports["h5"]
    assert h5["stages"] == [
        {"name": "stem", "shape": [8, 56, 56], "dtype": "float32"},
        {"name": "stage4", "shape": [32, 7, 7], "dtype": "float32"},
    ]
    assert h5["images"] == 4 and h5["status"] == "complete" and h5["resume_hint"] is None
    assert [f["path"] for f in h5["failed"]] == [str(made["root"] / "photos" / "zz_bad.jpg")]
    assert h5["failed"][0]["reason"]
    for key, rep in reports.items():
        for fact in ("model", "checkpoint", "architecture", "weights", "input_size", "stages", "images", "failed"):
            assert rep[fact] == h5[fact], (key, fact)
        assert rep["bytes_on_disk"] == sum(Path(f).stat().st_size for f in rep["files"])
    assert reports["st"]["format"] == "safetensors" and reports["st"]["files"] == [str(made["st"])]
    sharded = reports["sharded"]
    assert sharded["format"] == "safetensors-sharded" and len(sharded["files"]) == 3  # 2 shards + index
    assert sharded["files"][-1] == str(index)


def test_info_paths_listing(made):
    want = [str(p) for p in made["photos"]]
    r = run("info", made["sharded"], "--paths")
    assert r.exit_code == 0 and r.stdout.splitlines() == want
    r = run("info", made["h5"], "--paths", "-0")
    assert r.stdout.split("\0")[:-1] == want


def _partial_writers(made, tmp_path):
    """Unfinished outputs as a killed run leaves them: one committed batch, never finished."""
    from bbx.formats import StageLayout, open_output, open_writer

    facts = open_output(made["h5"]).facts.with_(out_features=("stage4",))
    stage = StageLayout("stage4", (32, 7, 7), "float32")
    maps = {"stage4": np.random.default_rng(0).standard_normal((2, 32, 7, 7)).astype(np.float32)}
    outs = []
    for name, fmt in (("u.h5", "hdf5"), ("u.safetensors", "safetensors")):
        w = open_writer(tmp_path / name, fmt, facts=facts, stages=[stage])
        w.write(["a.jpg", "b.jpg"], maps)
        w.fail("c.jpg", "broken")
        w.abort()  # what remains of a killed run: the .partial
        assert not (tmp_path / name).exists() and (tmp_path / f"{name}.partial").exists()
        outs.append(tmp_path / name)
    return outs


def test_info_unfinished_outputs(made, tmp_path):
    for out in _partial_writers(made, tmp_path):
        for named in (out, out.with_name(out.name + ".partial")):
            r = run("info", named)
            assert r.exit_code == 0, r.stderr
            assert "unfinished" in r.stdout and "resume with --resume" in r.stdout, r.stdout
            rep = json.loads(run("info", named, "--json").stdout)
            assert rep["status"] == "unfinished" and rep["images"] == 2
            assert rep["failed"] == [{"path": "c.jpg", "reason": "broken"}]
            assert rep["stages"] == [{"name": "stage4", "shape": [32, 7, 7], "dtype": "float32"}]
            assert rep["bytes_on_disk"] > 2 * 32 * 7 * 7 * 4
    # the HDF5 .partial can be shown; the safetensors staging folder must be finished first
    h5, st = _partial_writers(made, tmp_path / "again")
    assert run("show", h5, "-o", tmp_path / "u.png").exit_code == 0
    _one_line_error(run("show", st, "-o", tmp_path / "v.png"), 3, "unfinished", "--resume")


def test_info_interrupted_output_says_how_to_finish(made, tmp_path):
    import h5py

    out = tmp_path / "i.h5"
    shutil.copyfile(made["h5"], out)
    with h5py.File(out, "r+") as f:
        f.attrs["status"] = "interrupted"
    r = run("info", out)
    assert "interrupted" in r.stdout and "resume with --resume" in r.stdout


def test_info_refuses_what_bbx_did_not_write(made, tiny_resnet, tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 100)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(made["st"].read_bytes()[:-1000])
    cut_h5 = tmp_path / "cut.h5"
    cut_h5.write_bytes(made["h5"].read_bytes()[:5000])
    no_tag = tmp_path / "plain.h5"
    import h5py

    with h5py.File(no_tag, "w") as f:
        f["x"] = np.zeros(3)
    for bad, needle in (
        (junk, "junk.h5"),
        (text, "notes.txt"),
        (tiny_resnet / "model.safetensors", "not a bbx output"),  # model weights, not features
        (cut_st, "damaged"),
        (cut_h5, "cut.h5"),
        (no_tag, "not a bbx output"),
        (tmp_path / "missing.h5", "no such file"),
        (tmp_path, "folder"),
    ):
        _one_line_error(run("info", bad), 3, needle)


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
def test_info_reads_metadata_not_maps(made, tmp_path, suffix):
    """A 16 MB output is reported with a small fraction of that in memory."""
    import tracemalloc

    from bbx.formats import StageLayout, open_output, open_writer

    facts = open_output(made["h5"]).facts.with_(out_features=("big",))
    big = StageLayout("big", (64, 32, 32), "float32")
    out = tmp_path / f"big{suffix}"
    w = open_writer(out, "hdf5" if suffix == ".h5" else "safetensors", facts=facts, stages=[big])
    rows = np.ones((8, 64, 32, 32), dtype=np.float32)
    for k in range(8):
        w.write([f"{k}-{i}.jpg" for i in range(8)], {"big": rows})
    w.finish("complete")
    assert out.stat().st_size > 16 * 10**6
    tracemalloc.start()
    try:
        rep = open_output(out).to_json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep["images"] == 64 and rep["stages"][0]["shape"] == [64, 32, 32]
    assert peak < 2 * 10**6, peak


# --- bbx show ---------------------------------------------------------------------------------
def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_show_pca_picture_size_and_layout(made, tmp_path):
    out = tmp_path / "map.png"
    r = run("show", made["h5"], "--stage", "stage4", "--index", "0", "--index", "1", "--size", "70", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and "map.png" in r.stderr
    pic = _png(out)
    # two rows, each: the input image (70 x 70, the map's aspect) | 4 px | the 7 x 7 map scaled to 70 x 70
    assert pic.shape == (70 + 4 + 70, 70 + 4 + 70, 3)
    # the left tile is the input photo: its mean colour matches the photo's centre crop
    with Image.open(made["photos"][0]) as im:
        want = np.asarray(im.convert("RGB").resize((70, 70))).reshape(-1, 3).mean(0)
    assert np.abs(pic[:70, :70].reshape(-1, 3).mean(0) - want).max() < 25
    # the map is blocky: 10 x 10 pixel cells, each one colour
    cells = pic[:70, 74:144].reshape(7, 10, 7, 10, 3)
    assert (cells == cells[:, :1, :, :1]).all()
    assert len(np.unique(cells[:, 0, :, 0].reshape(-1, 3), axis=0)) > 10  # not one flat colour


def test_show_different_inputs_give_different_pictures(made, tmp_path):
    pics = []
    for i in range(3):
        out = tmp_path / f"p{i}.png"
        r = run("show", made["h5"], "-s", "stem", "-i", str(i), "--no-input", "--size", "56", "-o", out)
        assert r.exit_code == 0, r.stderr
        pics.append(_png(out))
    assert all(p.shape == (56, 56, 3) for p in pics)
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(pics[a].astype(int) - pics[b].astype(int)).mean() > 5, (a, b)
    # the same row is the same picture (deterministic, signs of the components fixed)
    again = tmp_path / "again.png"
    run("show", made["h5"], "-s", "stem", "-i", "0", "--no-input", "--size", "56", "-o", again)
    assert np.array_equal(_png(again), pics[0])


def test_show_grid_mode(made, tmp_path):
    out = tmp_path / "grid.png"
    r = run(
        "show", made["h5"], "-s", "stage4", "-i", "0", "-i", "-1", "--mode", "grid", "--channels", "9",
        "--size", "64", "--no-input", "-o", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    pic = _png(out)
    # 9 channels: a 3 x 3 grid of 20 x 20 tiles (7 x 7 maps) 2 px apart = 64 x 64 per row
    assert pic.shape == (64 + 4 + 64, 64, 3)
    tiles = pic[:20, :20]
    assert (tiles[..., 0] == tiles[..., 1]).all() and (tiles[..., 1] == tiles[..., 2]).all()  # gray
    assert pic[:20, 20:22].min() == 255  # the gap
    assert not np.array_equal(pic[:64], pic[68:])  # first and last image differ


def test_show_missing_input_image_gets_a_placeholder(made, tmp_path, tiny_resnet):
    folder = tmp_path / "photos"
    photos = make_photos(folder, SIZES[:2], "png")
    out = tmp_path / "o.h5"
    assert run("extract", "-m", tiny_resnet, "--out-features", "stage4", "-o", out, folder).exit_code == 0
    photos[1].unlink()
    pic_path = tmp_path / "m.png"
    r = run("show", out, "-i", "0", "-i", "1", "--size", "35", "-o", pic_path)
    assert r.exit_code == 0 and "input image not found" in r.stderr
    pic = _png(pic_path)
    assert pic.shape == (35 + 4 + 35, 35 + 4 + 35, 3)
    assert (pic[39:, :35] == 200).all()  # gray where the vanished photo was
    photos[0].unlink()
    r = run("show", out, "-i", "0", "-i", "1", "--size", "35", "-o", pic_path, "--overwrite")
    assert _png(pic_path).shape == (35 + 4 + 35, 35, 3)  # no inputs at all: maps only


def test_show_reads_bfloat16_and_shards(made, tmp_path):
    h5 = open_output(made["h5"])
    rows = list(range(h5.images))
    full = h5.read(h5.stage("stage4"), rows)
    sharded = open_output(made["sharded"])
    assert sharded.format == "safetensors-sharded"
    assert np.array_equal(sharded.read(sharded.stage("stage4"), rows[::-1]), full[::-1])  # rows from both shards
    single = open_output(made["st"])
    assert np.array_equal(single.read(single.stage("stem"), [2]), h5.read(h5.stage("stem"), [2]))
    bf = open_output(made["bf16"])
    got = bf.read(bf.stage("stage4"), rows)
    assert got.dtype == np.float32 and np.abs(got - full).max() <= 1e-2 * np.abs(full).max()
    for src in (made["bf16"], made["sharded"], made["sharded"].with_name("s.safetensors.index.json")):
        out = tmp_path / f"{src.name}.png"
        r = run("show", src, "-s", "stage4", "-i", "3", "--size", "14", "--no-input", "-o", out)
        assert r.exit_code == 0, r.stderr
        assert _png(out).shape == (14, 14, 3)


def test_show_json_and_default_name(made, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("show", made["sharded"].with_name("s.safetensors.index.json"), "--json", "-i", "1", "--size", "21")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["output"] == "s-stage4-pca.png" and (tmp_path / "s-stage4-pca.png").exists()  # the last stage
    assert rep["width"] == 21 + 4 + 21 and rep["height"] == 21
    assert rep["rows"] == [{"index": 1, "path": str(made["photos"][1]), "input_shown": True}]


def test_show_errors(made, tmp_path):
    png = tmp_path / "x.png"
    _one_line_error(run("show", made["pooled"], "-s", "stage4", "-o", png), 3, "pooled", "--pool none")
    _one_line_error(run("show", made["h5"], "-s", "stage9", "-o", png), 2, "stage9", "stem, stage4")
    _one_line_error(run("show", made["h5"], "-i", "4", "-o", png), 2, "--index 4", "4 images")
    _one_line_error(run("show", made["h5"], "-i", "-5", "-o", png), 2, "--index -5")
    _one_line_error(run("show", made["h5"], "--mode", "tsne", "-o", png), 2, "--mode")
    _one_line_error(run("show", made["h5"], "-o", tmp_path / "x.foo"), 2, "x.foo")
    _one_line_error(run("show", made["h5"], "-o", tmp_path / "nowhere" / "x.png"), 3, "nowhere")
    _one_line_error(run("show", tmp_path / "missing.h5"), 3, "missing.h5")
    assert not png.exists()


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_rows_decode_exactly(made, tmp_path, suffix, dtype):
    """Stored 16-bit rows come back as the float32 values they hold (bfloat16: raw bit patterns)."""
    from bbx.formats import StageLayout, open_output, open_writer

    facts = open_output(made["h5"]).facts.with_(out_features=("m",), store_dtype=dtype)
    values = (np.arange(3 * 4 * 2 * 2, dtype=np.float32).reshape(3, 4, 2, 2) - 20) / 4  # exact in both
    stored = values.astype(np.float16) if dtype == "float16" else (values.view(np.uint32) >> 16).astype(np.uint16)
    out = tmp_path / f"h{suffix}"
    w = open_writer(
        out, "hdf5" if suffix == ".h5" else "safetensors", facts=facts, stages=[StageLayout("m", (4, 2, 2), dtype)]
    )
    w.write(["a", "b", "c"], {"m": stored})
    w.finish("complete")
    o = open_output(out)
    assert o.stage("m").dtype == dtype
    got = o.read(o.stage("m"), [2, 0])
    assert got.dtype == np.float32 and np.array_equal(got, values[[2, 0]])


def test_show_finds_relative_inputs_from_another_folder(tiny_resnet, tmp_path, monkeypatch):
    """Paths stored relative to where extract ran are found from anywhere (the output keeps that folder)."""
    make_photos(tmp_path / "run" / "photos", SIZES[:1], "jpg")
    monkeypatch.chdir(tmp_path / "run")
    assert run("extract", "-m", tiny_resnet, "-o", "f.h5", "photos").exit_code == 0
    monkeypatch.chdir(tmp_path)
    r = run("show", "run/f.h5", "--json", "--size", "14", "-o", "m.png")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["rows"] == [{"index": 0, "path": "photos/img000.jpg", "input_shown": True}] and rep["width"] == 32


def test_the_input_is_shown_as_extraction_saw_it(tiny_resnet, tmp_path):
    """Transparency on white, as the model got it (not Pillow's plain convert, which drops alpha)."""
    from PIL import Image

    from tests.cli import run
    from tests.util import photo

    img = photo(96, 96, seed=4).convert("RGBA")
    img.putpixel((0, 0), (0, 0, 0, 0))
    alpha = Image.new("L", (96, 96), 0)
    alpha.paste(255, (24, 24, 72, 72))
    img.putalpha(alpha)
    src = tmp_path / "cut.png"
    img.save(src)
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "-o", out, src).exit_code == 0
    assert run("show", out, "--stage", "stage4", "-o", tmp_path / "s.png").exit_code == 0
    with Image.open(tmp_path / "s.png") as pic:
        assert pic.convert("RGB").getpixel((1, 1)) == (255, 255, 255)


def test_show_names_too_long_for_the_file_system(made, tmp_path, monkeypatch):
    _one_line_error(run("show", made["h5"], "-o", tmp_path / ("p" * 300 + ".png")), 3, "too long")
    long = tmp_path / ("z" * 240 + ".h5")
    shutil.copyfile(made["h5"], long)
    monkeypatch.chdir(tmp_path)
    r = run("show", long, "--json")
    assert r.exit_code == 0, r.stderr
    picture = Path(json.loads(r.stdout)["output"])
    assert picture.is_file() and len(picture.name) < 160 and picture.name.startswith("zzz")


def test_info_says_why_an_output_is_interrupted_or_unfinished(tiny_resnet, tmp_path):
    """--on-error stop at the first input leaves nothing; at a later one, info names the input
    the run stopped at (not a signal); a .partial whose run is gone is 'killed or failed'."""
    folder = tmp_path / "imgs"
    make_photos(folder, [(64, 64)] * 3)
    (folder / "img000.jpg").write_bytes(b"broken")
    out = tmp_path / "f.h5"
    r = run("extract", "-m", tiny_resnet, "-o", out, "--on-error", "stop", "-q", folder)
    assert r.exit_code == 3 and "nothing was written" in r.stderr, r.stderr
    assert not out.exists() and not out.with_name("f.h5.partial").exists()
    assert run("extract", "-m", tiny_resnet, "-o", out, "-q", folder).exit_code == 10  # nothing in the way

    (folder / "img000.jpg").unlink()
    (folder / "img002.jpg").write_bytes(b"broken too")
    for suffix in (".h5", ".safetensors"):
        out = tmp_path / f"g{suffix}"
        r = run("extract", "-m", tiny_resnet, "-o", out, "--on-error", "stop", "-q", folder)
        assert r.exit_code == 3, r.stderr
        text = run("info", out).stdout
        assert "stopped at a bad input (--on-error stop at " in text and "img002.jpg" in text, text
        assert "signal" not in text
        rep = json.loads(run("info", out, "--json").stdout)
        assert rep["interrupted_by"].startswith("--on-error stop at ") and rep["images"] == 1
    shutil.copyfile(tmp_path / "g.h5", tmp_path / "k.h5.partial")  # as a killed run leaves it
    text = run("info", tmp_path / "k.h5").stdout
    assert "unfinished (the run that wrote it was killed or failed): resume with --resume" in text, text


def test_show_never_replaces_a_file_without_overwrite(made, tmp_path, monkeypatch):
    photo = tmp_path / "mine.jpg"
    photo.write_bytes(b"a photo of mine")
    _one_line_error(run("show", made["h5"], "-o", photo), 3, "exists", "--overwrite")
    assert photo.read_bytes() == b"a photo of mine"
    monkeypatch.chdir(tmp_path)
    assert run("show", made["h5"], "-q").exit_code == 0  # the default picture ...
    again = run("show", made["h5"], "-q")  # ... is not rewritten silently either
    _one_line_error(again, 3, "f-stage4-pca.png exists")
    assert run("show", made["h5"], "-q", "--overwrite").exit_code == 0
    assert run("show", made["h5"], "-o", photo, "--overwrite", "-q").exit_code == 0
    assert Image.open(photo).format == "JPEG"


def test_show_index_takes_comma_lists_like_extract(made, tmp_path):
    one = run("show", made["h5"], "-i", "0,-1", "--json", "-o", tmp_path / "a.png")
    two = run("show", made["h5"], "-i", "0", "--index", "-1", "--json", "-o", tmp_path / "b.png")
    assert one.exit_code == two.exit_code == 0, one.stderr
    assert (
        [r["index"] for r in json.loads(one.stdout)["rows"]]
        == [0, 3]
        == [r["index"] for r in json.loads(two.stdout)["rows"]]
    )
    _one_line_error(run("show", made["h5"], "-i", "0,x"), 2, "--index takes integers")


# --- where each map came from ------------------------------------------------------------------


def _expected_sources(made, ckpt):
    """The image size and box of every stored row, computed from the photos themselves."""
    from bbx import hub
    from bbx.preprocess import Preprocess

    pre = Preprocess.from_checkpoint(hub.resolve(str(ckpt), weights=False).spec)
    out = open_output(made["h5"])
    sizes, boxes = [], []
    for p in out.paths:
        with Image.open(p) as im:
            w, h = im.size
        sizes.append((h, w))
        boxes.append(pre.geometry(h, w))
    return np.array(sizes), np.array(boxes, dtype=np.float32)


@pytest.mark.parametrize("key", ["h5", "st", "sharded", "bf16"])
def test_every_row_records_the_image_size_and_the_box_it_came_from(made, tiny_resnet, key):
    import bbx

    want_sizes, want_boxes = _expected_sources(made, tiny_resnet)
    with bbx.open(made[key]) as f:
        sizes, boxes = f.sources()
    assert np.array_equal(sizes, want_sizes)
    assert np.allclose(boxes, want_boxes, atol=0.01)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= sizes[:, 0] + 0.01).all()  # a crop lies inside
    rep = json.loads(run("info", made[key], "--json").stdout)
    assert rep["sources_recorded"] == rep["images"] == len(want_sizes)
    assert "sources      4 of 4 images" in run("info", made[key]).stdout


def test_an_output_from_before_sources_gets_them_for_new_rows_only(made, tiny_resnet, tmp_path):
    import h5py

    import bbx

    old = tmp_path / "old.h5"
    shutil.copyfile(made["h5"], old)
    with h5py.File(old, "r+") as f:
        del f["source"]  # as bbx wrote outputs before it recorded sources
    extra = make_photos(tmp_path / "more", [(90, 60)], "jpg", start_seed=40)
    r = run("extract", "-m", tiny_resnet, "--out-features", "stem,stage4", "-o", old, "--resume", *map(str, extra))
    assert r.exit_code == 0, r.stderr
    with bbx.open(old) as f:
        sizes, boxes = f.sources()
    assert (sizes[:4] == -1).all() and np.isnan(boxes[:4]).all() and tuple(sizes[4]) == (60, 90)
    assert json.loads(run("info", old, "--json").stdout)["sources_recorded"] == 1


def test_show_overlay_draws_each_map_over_its_whole_photo(made, tmp_path):
    out = tmp_path / "o.png"
    r = run("show", made["h5"], "-i", "0,3", "--overlay", "--size", "120", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert all(row["input_shown"] for row in rep["rows"])
    pic = _png(out)
    # row 0 is a 96 x 72 photo: 120 x 90 at this size; row 3 is 120 x 64: 120 x 64
    assert pic.shape == (90 + 4 + 64, 120, 3)
    _one_line_error(run("show", made["h5"], "--overlay", "--mode", "grid", "-o", tmp_path / "g.png"), 2, "--overlay")
