"""`bbx models` and `bbx inspect`: tables, JSON on stdout only, one-line errors."""

from __future__ import annotations

import json

from bbx import registry
from tests.cli import bbx_proc, run
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


def test_models_json_lists_every_alias():
    r = run("models", "--json")
    assert r.exit_code == 0 and r.stderr == ""
    rows = json.loads(r.stdout)
    assert [x["alias"] for x in rows] == [c.alias for c in registry.checkpoints()]
    r50 = next(x for x in rows if x["alias"] == "resnet-50")
    assert r50["checkpoint"] == "microsoft/resnet-50"
    assert r50["architecture"] == "resnet" and r50["input_size"] == [224, 224]


def test_models_table():
    r = run("models")
    assert r.exit_code == 0
    for alias in ("resnet-18", "resnet-34", "resnet-50", "resnet-101", "resnet-152"):
        assert alias in r.stdout


def test_inspect_resnet50_json():
    r = run("inspect", "resnet-50", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"] == "resnet-50" and data["checkpoint"] == "microsoft/resnet-50"
    assert data["architecture"] == "resnet" and data["input_size"] == [224, 224]
    assert data["default_selection"] == {"out_features": ["stage4"], "out_indices": [4]}
    stages = data["stages"]
    assert [s["name"] for s in stages] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert [s["channels"] for s in stages] == [64, 256, 512, 1024, 2048]
    assert [s["stride"] for s in stages] == [4, 4, 8, 16, 32]
    assert [s["index"] for s in stages] == [0, 1, 2, 3, 4]
    assert stages[1]["shape"] == [256, 56, 56] and stages[4]["shape"] == [2048, 7, 7]


def test_inspect_image_size_changes_shapes():
    r = run("inspect", "resnet-50", "--image-size", "320", "--json")
    data = json.loads(r.stdout)
    assert data["input_size"] == [320, 320]
    assert data["stages"][-1]["shape"] == [2048, 10, 10]
    assert data["stages"][-1]["stride"] == 32  # the checkpoint's stride does not change


def test_inspect_table_marks_default():
    r = run("inspect", "resnet-18")
    assert r.exit_code == 0
    line = next(ln for ln in r.stdout.splitlines() if "stage4" in ln)
    assert line.lstrip().startswith("*") and "[512, 7, 7]" in line


def test_inspect_folder_reads_its_config(tmp_path):
    cfg = registry.lookup("resnet-18").config_dict()
    cfg["hidden_sizes"] = [32, 64, 128, 256]
    folder = tmp_path / "my-resnet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    r = run("inspect", str(folder), "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["source"] == "folder" and [s["channels"] for s in data["stages"]] == [64, 32, 64, 128, 256]
    assert data["input_size"] == [224, 224]  # no preprocessor file: the family's public recipe


def test_unknown_alias_suggests_close_names():
    r = run("inspect", "resnet50x")
    assert r.exit_code == 4
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "unknown model 'resnet50x'" in r.stderr and "resnet-50" in r.stderr


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = run("inspect", str(tmp_path))
    assert r.exit_code == 4 and "unsupported model_type 'bert'" in r.stderr
    assert "config.json" in r.stderr and "resnet" in r.stderr
    assert r.stderr.count("\n") == 1


def test_missing_folder_is_an_input_error():
    r = run("inspect", "./no/such/folder")
    assert r.exit_code == 3 and "no such checkpoint folder" in r.stderr


def test_bad_image_size():
    r = run("inspect", "resnet-50", "--image-size", "0")
    assert r.exit_code == 2 and r.stderr.startswith("bbx: error:")


def test_module_entry_point_and_version():
    p = bbx_proc("--version")
    assert p.returncode == 0 and p.stdout.startswith("bbx ")
    p = bbx_proc("inspect", "resnet-34", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["stages"][-1]["channels"] == 512


def test_image_size_on_a_shortest_edge_recipe_without_crop_says_why_it_cannot_batch(tiny_resnet, tmp_path):
    """Such a recipe keeps each image's aspect ratio, --image-size or not: the error says so
    instead of asking for the --image-size that was given."""
    import shutil

    from tests.util import write_preprocessor

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_resnet, folder)
    write_preprocessor(folder, {"image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 120}})
    r = run("inspect", folder)
    assert r.exit_code == 2 and "pass --image-size N" in r.stderr
    r = run("inspect", folder, "--image-size", "64")
    assert r.exit_code == 2 and "aspect ratios" in r.stderr and "pass --image-size" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_home_folder_of_nobody_is_no_such_folder(photos):
    """``~nonexist/x``: Python cannot expand it (no such user); it names no checkpoint folder."""
    for args in (("inspect", "~nonexist-bbx-user/x"), ("download", "~nonexist-bbx-user/x")):
        r = run(*args)
        assert r.exit_code == 3, (args, r.stderr)
        assert r.stderr == "bbx: error: no such checkpoint folder: ~nonexist-bbx-user/x\n", r.stderr
    r = run("extract", "-m", "~nonexist-bbx-user/x", "--dry-run", photos[0])
    assert r.exit_code == 3 and "no such checkpoint folder" in r.stderr


def _on_a_terminal(args: list[str], columns: int) -> str:
    """What bbx prints on stdout when it is a terminal of ``columns`` columns."""
    import os
    import pty
    import sys

    from tests.cli import proc_env

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, [sys.executable, "-m", "bbx", *args], proc_env(COLUMNS=str(columns), NO_COLOR="1"))
    out = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    os.waitpid(pid, 0)
    return out.decode().replace("\r\n", "\n")


def test_models_at_80_columns_and_in_a_pipe():
    from bbx import registry

    piped = run("models").stdout.splitlines()
    assert all(line == line.rstrip() for line in piped), "no padding after the last column in a pipe"
    narrow = _on_a_terminal(["models"], 80)
    assert max(len(ln) for ln in narrow.splitlines()) <= 80
    for row in registry.checkpoints():
        assert row.repo_id in narrow and row.alias in narrow  # never cut
    assert "…" not in narrow
    wide = _on_a_terminal(["models"], 200)
    assert "architecture" in wide and all(row.repo_id in wide for row in registry.checkpoints())
