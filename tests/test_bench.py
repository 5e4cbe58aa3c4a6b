"""`bbx bench` reports model-only throughput (what it measures, not how fast it is)."""

from __future__ import annotations

import json

from tests.cli import run
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


def test_bench_json_fields(tiny_resnet):
    r = run(
        "bench",
        tiny_resnet,
        "-b",
        "2",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--image-size",
        "64",
        "--json",
        "--out-indices",
        "1",
    )
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["batch_size"] == 2 and rep["input_size"] == [64, 64] and rep["out_features"] == ["stage1"]
    assert len(rep["ms_per_batch"]) == 3 and rep["images_per_s"] > 0
    assert abs(rep["images_per_s"] - 2 * 1000 / rep["median_ms_per_batch"]) < 0.05 * rep["images_per_s"]


def test_bench_alias_offline_table():
    r = run("bench", "resnet-18", "-b", "1", "--iters", "1", "--warmup", "0", "--image-size", "32")
    assert r.exit_code == 0, r.stderr
    assert "images/s" in r.stdout and "resnet-18" in r.stdout


def test_bench_bad_options():
    assert run("bench", "resnet-18", "--dtype", "int4").exit_code == 2
    assert run("bench", "resnet-18", "--iters", "0").exit_code == 2
