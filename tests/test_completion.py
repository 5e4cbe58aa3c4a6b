"""Tab completion, driven through the protocol the shell scripts use (bash, zsh and fish), and the
scripts in completions/ kept up to date."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bbx import registry
from bbx.cli._complete import stage_names_of_config
from tests.cli import ROOT, proc_env
from tests.util import checkpoint_fixture

tiny_resnet = checkpoint_fixture("resnet", seed=3)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in proc_env().items() if k not in ("COMP_WORDS", "COMP_CWORD", "_TYPER_COMPLETE_ARGS")}
    return env | extra


def bash(line: str, cwd: Path | None = None) -> list[str]:
    """What bash's completion function gets for ``line`` (the cursor at its end)."""
    words = line.split(" ")
    env = _env(_BBX_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
    p = subprocess.run([sys.executable, "-m", "bbx"], env=env, capture_output=True, text=True, cwd=cwd)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return [ln for ln in p.stdout.splitlines() if ln]


def zsh(line: str) -> str:
    env = _env(_BBX_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS=line)
    p = subprocess.run([sys.executable, "-m", "bbx"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def fish(line: str, action: str = "get-args") -> subprocess.CompletedProcess:
    env = _env(_BBX_COMPLETE="complete_fish", _TYPER_COMPLETE_ARGS=line, _TYPER_COMPLETE_FISH_ACTION=action)
    return subprocess.run([sys.executable, "-m", "bbx"], env=env, capture_output=True, text=True)


def test_model_completes_aliases():
    got = bash("bbx extract --model resnet-1")
    assert got == ["resnet-18", "resnet-101", "resnet-152"]
    assert "swin-tiny" in bash("bbx extract -m ")
    assert "dinov2-small-reg" in bash("bbx inspect dinov2-s")  # inspect's MODEL argument
    assert bash("bbx inspect microsoft/resnet-5") == ["microsoft/resnet-50"]  # aliased hub ids once typed


def test_model_completes_folders_when_it_looks_like_a_path(tiny_resnet, tmp_path):
    (tmp_path / "ckpts").mkdir()
    shutil.copytree(tiny_resnet, tmp_path / "ckpts" / "tiny")
    (tmp_path / "ckpts" / "notes").mkdir()
    got = bash("bbx extract --model ./ckpts/", cwd=tmp_path)
    assert got == ["./ckpts/notes/", "./ckpts/tiny"]  # a checkpoint folder is a final answer
    assert bash("bbx inspect ckpts/t", cwd=tmp_path) == ["ckpts/tiny"]


def test_out_features_completes_the_chosen_models_stages(tiny_resnet):
    assert bash("bbx extract --model swin-tiny --out-features ") == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert bash("bbx extract --model dinov2-small --out-features stage1")[:4] == [
        "stage1",
        "stage10",
        "stage11",
        "stage12",
    ]
    # the model's folder: its config.json says which stages it has
    assert bash(f"bbx extract -m {tiny_resnet} --out-features stage") == ["stage1", "stage2", "stage3", "stage4"]
    # no model typed yet, or a hub id that would need a download: nothing to offer
    assert bash("bbx extract --out-features ") == []


def test_out_features_completes_the_last_item_of_a_comma_list():
    assert bash("bbx extract -m resnet-50 --out-features stem,sta") == [
        "stem,stage1",
        "stem,stage2",
        "stem,stage3",
        "stem,stage4",
    ]
    # stages must come in order: only those after the ones chosen are offered
    assert bash("bbx extract -m resnet-50 --out-features stage1,stage3,") == ["stage1,stage3,stage4"]


@pytest.mark.parametrize(
    "option,want",
    [
        ("--device", ["auto", "cpu", "cuda", "mps"]),
        ("--dtype", ["float32", "float16", "bfloat16"]),
        ("--store-dtype", ["float32", "float16", "bfloat16"]),
        ("--format", ["hdf5", "safetensors"]),
        ("--pool", ["none", "avg", "max", "cls"]),
        ("--stage-norm", ["hf", "none", "final"]),
        ("--on-error", ["skip", "stop"]),
    ],
)
def test_choices(option, want):
    assert bash(f"bbx extract {option} ") == want


def test_choices_filter_by_prefix():
    assert bash("bbx extract --dtype bf") == ["bfloat16"]
    assert bash("bbx inspect resnet-50 --stage-norm f") == ["final"]
    assert bash("bbx show f.h5 --mode g") == ["grid"]


def test_zsh_protocol():
    out = zsh("bbx extract -m resnet-50 --out-features stage")
    assert out.startswith("_arguments") and '"stage1"' in out and '"stage4"' in out and "stem" not in out
    assert '"swin-tiny":"' in zsh("bbx extract --model swin-t")  # with help text for the menu
    assert zsh("bbx extract -o ").strip() == "_files"  # nothing of ours: the shell completes files


def test_fish_protocol():
    p = fish("bbx extract --pool ")
    assert p.returncode == 0 and p.stdout.split("\n")[:3] == [
        "none\tmaps [N, C, H, W]",
        "avg\tmean over H, W: [N, C]",
        "max\tmax over H, W: [N, C]",
    ]
    assert fish("bbx extract --model resnet-5", "is-args").returncode == 0  # ours, not files
    assert fish("bbx extract -o ", "is-args").returncode == 1  # files


def test_show_stage_completes_the_files_stages(tiny_resnet, photos, tmp_path):
    from tests.cli import run

    folder, _ = photos
    out = tmp_path / "f.h5"
    assert run("extract", "-m", tiny_resnet, "--out-indices", "1,3", "-o", out, folder).exit_code == 0
    assert bash(f"bbx show {out} --stage ") == ["stage1", "stage3"]
    assert bash(f"bbx show -i 2 {out} -s stage3") == ["stage3"]
    assert bash(f"bbx show {tmp_path / 'missing.h5'} --stage ") == []


def test_stage_names_from_config_match_every_known_checkpoint():
    for row in registry.checkpoints():
        assert stage_names_of_config(row.config_dict()) == list(row.stage_names), row.alias


def test_stage_names_from_config_match_built_models(tiny_resnet):
    """The torch-free rule agrees with the families' own stage lists, also for odd configs."""
    import json

    from bbx import hub
    from bbx.checkpoints import recognise
    from bbx.loading import build

    configs = [json.loads((tiny_resnet / "config.json").read_text())]
    for alias, changes in (
        ("convnext-tiny", {"num_stages": 3}),
        ("swin-tiny", {"depths": [2, 2, 2], "num_heads": [3, 6, 12]}),
        ("dinov2-small", {"num_hidden_layers": 5}),
        ("dinov2-small-reg", {"num_hidden_layers": 2}),
    ):
        configs.append(registry.lookup(alias).config_dict() | changes)
    for config in configs:
        ref = hub.ModelRef(given="x", source="folder", spec=recognise(config))
        model = build(ref, device="meta")
        assert stage_names_of_config(config) == model.stage_names, config["model_type"]


def test_scripts_are_up_to_date(tmp_path):
    """completions/ holds what the CLI generates now; rerun `python completions/generate.py` if this fails."""
    subprocess.run([sys.executable, str(ROOT / "completions" / "generate.py"), str(tmp_path)], check=True, env=_env())
    for name in ("bbx.bash", "bbx.zsh", "bbx.fish"):
        fresh = (tmp_path / name).read_text()
        assert "_BBX_COMPLETE=complete_" in fresh
        assert (ROOT / "completions" / name).read_text() == fresh, f"completions/{name} is stale"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_end_to_end(tmp_path):
    """The shipped bash script, sourced by a real bash, completes through a `bbx` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "bbx"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bbx "$@"\n')
    shim.chmod(0o755)
    script = ROOT / "completions" / "bbx.bash"
    cmd = (
        f"source '{script}'; COMP_WORDS=(bbx extract --model resnet-5); COMP_CWORD=3; "
        '_bbx_completion bbx; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("_BBX_COMPLETE", None)
    p = subprocess.run(["bash", "--norc", "-c", cmd], env=env, capture_output=True, text=True)
    assert p.stdout.split() == ["resnet-50"], p.stderr


def test_bench_out_features_follow_its_model_argument():
    import subprocess
    import sys

    from tests.cli import proc_env

    env = proc_env(
        _BBX_COMPLETE="complete_bash",
        COMP_WORDS="bbx bench resnet-18 --out-features sta",
        COMP_CWORD="4",
    )
    p = subprocess.run([sys.executable, "-m", "bbx"], env=env, capture_output=True, text=True)
    assert "stage1" in p.stdout and "stage4" in p.stdout, (p.stdout, p.stderr)
