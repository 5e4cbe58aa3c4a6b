"""Webdataset ``.tar`` inputs: samples named ``<tar>#<key>``, decoded from the member bytes by
bbx's decoder, a corrupt member skipped and listed, brace ranges, the tar as the unit of
``--shard``; and ``--devices cpu,cpu`` (one worker per device, merged)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bbx import images
from bbx.errors import InputError
from bbx.formats import open_output
from bbx.inputs import discover
from bbx.tars import expand, expand_braces, members
from tests.cli import run
from tests.conftest import make_photos
from tests.test_shards import _raw
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


def _tar(path: Path, samples: list[tuple[str, bytes | None, str]]) -> Path:
    """An img2dataset-like shard: ``key.<ext>`` (the image) beside ``key.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as t:
        for key, data, ext in samples:
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.json", json.dumps({"key": key}).encode())):
                if payload is None:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture()
def webdataset(tmp_path, photos):
    _, paths = photos
    blobs = [p.read_bytes() for p in paths]
    corrupt = blobs[0][: len(blobs[0]) // 3]  # a truncated JPEG
    data = tmp_path / "data"
    _tar(
        data / "00000.tar",
        [("000000000", blobs[0], "jpg"), ("000000001", corrupt, "jpg"), ("000000002", blobs[1], "jpg")],
    )
    _tar(
        data / "00001.tar", [("000000003", blobs[4], "png"), ("000000004", None, "jpg"), ("000000005", blobs[2], "jpg")]
    )
    return data, paths


def test_brace_ranges_expand_like_webdataset():
    assert expand_braces("data/{00000..00002}.tar") == ["data/00000.tar", "data/00001.tar", "data/00002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_samples_keep_their_keys_and_a_corrupt_member_is_skipped_and_listed(tiny_resnet, webdataset, tmp_path):
    data, paths = webdataset
    pattern = str(data / "{00000..00001}.tar")
    out = tmp_path / "f.h5"
    r = run("extract", "-m", tiny_resnet, "-o", out, pattern, "-b", "2")
    assert r.exit_code == 10, r.stderr
    t0, t1 = str(data / "00000.tar"), str(data / "00001.tar")
    got = open_output(out)
    assert got.paths == [f"{t0}#000000000", f"{t0}#000000002", f"{t1}#000000003", f"{t1}#000000005"]
    assert [p for p, _ in got.failed] == [f"{t0}#000000001"] and "truncated" in got.failed[0][1]
    assert f"{t0}#000000001" in r.stderr
    # the same images as files give the same maps, bit for bit
    files = tmp_path / "files.h5"
    assert run("extract", "-m", tiny_resnet, "-o", files, paths[0], paths[1], paths[4], paths[2]).exit_code == 0
    assert _raw(out)[2] == _raw(files)[2]
    # with --shard the unit is the tar: shard 1 of 2 holds the second tar's samples
    r = run("extract", "-m", tiny_resnet, "-o", tmp_path / "s.h5", "--shard", "1/2", pattern)
    assert r.exit_code == 0, r.stderr
    shard = open_output(tmp_path / "s.shard-00001-of-00002.h5")
    assert shard.paths == got.paths[2:] and shard.facts.input_count == 2
    # resuming recomputes nothing and keeps the failure listed once
    r = run("extract", "-m", tiny_resnet, "-o", out, pattern, "--resume", "--json")
    assert json.loads(r.stdout)["already_present"] == 4 and len(open_output(out).failed) == 1


def test_a_damaged_tar_keeps_the_samples_before_the_damage(webdataset, tmp_path):
    data, _ = webdataset
    cut = tmp_path / "cut.tar"
    raw = (data / "00000.tar").read_bytes()
    last = members(str(data / "00000.tar"))[0][-1]
    cut.write_bytes(raw[: last.offset + last.size // 2])  # into the last image's data
    found, problem = members(str(cut))
    assert [m.key for m in found][:2] == ["000000000", "000000001"] and "truncated" in (problem or "")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive" * 40)
    items, failures = expand([junk])
    assert items == [] and failures[0][0] == str(junk) and "tar" in failures[0][1]


def test_a_missing_tar_in_a_brace_range_is_an_input_error(webdataset):
    data, _ = webdataset
    with pytest.raises(InputError, match="00002.tar"):
        discover([str(data / "{00000..00002}.tar")])


def test_decode_takes_bytes_and_file_objects(photos):
    _, paths = photos
    want = images.decode(paths[0])
    data = paths[0].read_bytes()
    assert images.decode(data).tobytes() == want.tobytes()
    assert images.decode(io.BytesIO(data)).tobytes() == want.tobytes()
    with pytest.raises(images.ImageError, match="not an image"):
        images.decode(b"hello, world")
    with pytest.raises(images.ImageError, match="empty"):
        images.decode(b"")


def test_devices_cpu_cpu_equals_a_single_run_and_leaves_no_units(tiny_resnet, photos, tmp_path):
    folder, _ = photos
    make_photos(folder / "extra", [(300, 200)] * 3, "jpg", start_seed=40)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    single = tmp_path / "single.safetensors"
    assert run("extract", "-m", tiny_resnet, "-o", single, "--out-indices", "1,-1", folder).exit_code == 10
    out = tmp_path / "dev.h5"
    r = run("extract", "-m", tiny_resnet, "-o", out, "--out-indices", "1,-1", "--devices", "cpu,cpu", folder, "--json")
    assert r.exit_code == 10, r.stderr
    report = json.loads(r.stdout)
    assert report["device"] == "cpu,cpu" and report["done"] == len(open_output(single).paths)
    assert _raw(out) == _raw(single)
    assert not (tmp_path / "dev.h5.units").exists()
    r = run("extract", "-m", tiny_resnet, "-o", out, "--devices", "cpu,cpu", folder)
    assert r.exit_code == 3 and "--overwrite" in r.stderr
    assert run("extract", "-m", tiny_resnet, "-o", out, "--devices", "cpu,auto", folder).exit_code == 2
