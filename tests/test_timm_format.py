"""timm checkpoints through the format seam: timm's eval transform to the bit, TimmBackbone
folders, timm:NAME, refusals, the hub, and the embedded architecture tables against timm."""

from __future__ import annotations

import json

import pytest
import torch

import bbx
from bbx import registry
from bbx.checkpoints import recognise
from bbx.errors import ModelError
from bbx.images import load, normalize
from bbx.preprocess import Preprocess
from tests import oracle
from tests.cli import bbx_proc, run
from tests.util import photo

# (width, height, mode, suffix): landscape, portrait, square, extreme, smaller than the crop
IMAGES = [
    (640, 480, "RGB", ".jpg"),
    (333, 500, "L", ".png"),
    (224, 224, "RGB", ".png"),
    (1000, 301, "P", ".png"),
    (97, 131, "CMYK", ".jpg"),
    (257, 256, "RGB", ".webp"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, (w, h, mode, suffix) in enumerate(IMAGES):
        p = root / f"im{i}{suffix}"
        photo(w, h, seed=i, mode=mode).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm") / "resnet18"
    return oracle.make(folder, "resnet18", model_args={"channels": [8, 16, 24, 32], "layers": [1, 1, 1, 1]})


def _with_cfg(folder, tmp, **cfg):
    """A copy of the checkpoint's config.json (no weights needed for pixels) with pretrained_cfg changes."""
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(cfg)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"crop_pct": 0.875, "interpolation": "bilinear"},
        {"crop_pct": 1.0, "crop_mode": "squash"},
        {"crop_pct": 0.9, "crop_mode": "border", "mean": [0.5, 0.5, 0.5]},
        {"input_size": [3, 256, 192], "crop_pct": 0.95},  # non-square: timm's ResizeKeepRatio
        {"input_size": [3, 160, 200], "crop_mode": "squash"},
        {"crop_pct": 1.15},  # a scale below the crop: padded
        {"input_size": [3, 518, 518], "crop_pct": 1.0, "interpolation": "bicubic"},
    ],
    ids=["default", "bilinear-0.875", "squash", "border", "center-non-square", "squash-non-square", "pad", "518"],
)
def test_pixels_are_timms_to_the_bit(tmp_path, resnet18, images, cfg):
    folder = _with_cfg(resnet18, tmp_path / "cfg", **cfg)
    for input_size in (None, 288):
        want = oracle.timm_pixels(folder, images, tmp_path / "px", input_size=input_size)
        pre = Preprocess.from_checkpoint(recognise(json.loads((folder / "config.json").read_text())))
        if input_size:
            pre = pre.with_image_size(input_size)
        got = normalize(torch.from_numpy(__import__("numpy").stack([load(p, pre) for p in images])), pre)
        assert got.shape == want.shape and torch.equal(got, want), (cfg, input_size)


def test_timm_backbone_folders_load(tmp_path):
    """transformers' TimmBackbone (weights under _backbone., features_only layout) at parity with
    itself, preprocessing from timm's default pretrained tag."""
    folder = oracle.make(tmp_path / "ckpt", "resnet18", layout="timm_backbone", seed=3)
    oracle.compare(folder, 160, tmp_path / "a", timm_backbone=True)
    ref = bbx.load_backbone(str(folder)).ref
    assert ref.architecture == "timm:resnet18" and ref.spec.format == "timm"
    assert Preprocess.from_checkpoint(ref.spec).crop_pct == 0.95  # resnet18.a1_in1k's


def test_timm_wrapper_folders_load(tmp_path):
    """transformers' TimmWrapper (weights under timm_model., no pretrained_cfg of its own)."""
    folder = oracle.make(tmp_path / "ckpt", "resnet18", layout="timm_wrapper", model_args={"layers": [1, 1, 1, 1]})
    oracle.compare(folder, 128, tmp_path / "a", timm_wrapper=True)
    assert Preprocess.from_checkpoint(bbx.load_backbone(str(folder)).ref.spec).crop_pct == 0.95


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["convnext_atto", "vit_small_patch16_224"])
def test_timm_backbone_layouts_of_other_families(tmp_path, arch):
    """FeatureListNet's flattened names (stages_0) and FeatureGetterNet's model. prefix."""
    folder = oracle.make(tmp_path / "ckpt", arch, layout="timm_backbone", seed=3)
    oracle.compare(
        folder, 224, tmp_path / "a", timm_backbone=True, names=[bbx.load_backbone(str(folder)).stage_names[-1]]
    )


def test_bare_timm_names_resolve_to_the_default_tag_offline():
    r = run("inspect", "timm:resnet50", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == "timm/resnet50.a1_in1k" and data["architecture"] == "timm:resnet50"
    assert [s["name"] for s in data["stages"]] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [s["stride"] for s in data["stages"]] == [2, 4, 8, 16, 32]
    assert data["transformers_layout"] == "ResNet"
    assert [s["transformers_stage"] for s in data["stages"]] == [None, "stage1", "stage2", "stage3", "stage4"]
    assert data["preprocessing"]["crop_pct"] == 0.95 and data["preprocessing"]["crop_mode"] == "center"
    vit = json.loads(run("inspect", "timm:vit_base_patch16_224", "--json").stdout)
    assert vit["checkpoint"] == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k" and "transformers_layout" not in vit
    swin = json.loads(run("inspect", "timm:swin_tiny_patch4_window7_224", "--json").stdout)
    assert [s["transformers_stage"] for s in swin["stages"]] == ["stage1", "stage2", "stage3", "stage4"]


def test_what_bbx_does_not_implement_is_one_line():
    r = bbx_proc("inspect", "timm:resnet50_gn")
    assert r.returncode == 4 and r.stderr.count("\n") == 1
    assert "'resnet50_gn'" in r.stderr and "resnet50d" in r.stderr and "convnext_tiny" not in r.stderr
    r = bbx_proc("inspect", "timm:levit_128")
    assert r.returncode == 4 and r.stderr.count("\n") == 1
    assert "'levit_128'" in r.stderr and "resnet*" in r.stderr and "tf_efficientnet_b0" in r.stderr
    config = {"architecture": "convnext_tiny", "pretrained_cfg": {}, "model_args": {"output_stride": 16}}
    with pytest.raises(ModelError, match="output_stride=16 changes convnext_tiny"):
        recognise(config)
    with pytest.raises(ModelError, match="output_stride=16 changes convnext_tiny"):
        recognise({"model_type": "timm_backbone", "backbone": "convnext_tiny", "output_stride": 16})
    dilated = recognise({"model_type": "timm_backbone", "backbone": "resnet50", "output_stride": 16})
    assert [st.stride for st in dilated.settings().stages()] == [2, 4, 8, 16, 16]
    with pytest.raises(ModelError, match="crop_mode"):
        Preprocess.from_checkpoint(recognise({"architecture": "resnet50", "pretrained_cfg": {"crop_mode": "x"}}))


def test_a_timm_repo_from_the_hub_downloads_caches_and_runs_offline(hub_server, resnet18, tmp_path, images):
    import shutil

    folder = tmp_path / "repo"
    shutil.copytree(resnet18, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 64)  # another framework's copy: never fetched
    (folder / "README.md").write_text("# resnet18\n")
    sha = hub_server.add_repo("timm/resnet18.a1_in1k", folder)
    p = bbx_proc("download", "timm:resnet18", "--json", env=hub_server.env())
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["repo_id"] == "timm/resnet18.a1_in1k" and out["commit"] == sha
    assert [f["name"] for f in out["files"]] == ["config.json", "model.safetensors"]
    asked = {r.path.rsplit("/", 1)[-1] for r in hub_server.requests if "/resolve/" in r.path}
    assert asked == {"config.json", "model.safetensors"}
    hub_server.clear_log()
    dest = tmp_path / "feats.h5"
    p = bbx_proc(
        "extract",
        "-m",
        "timm/resnet18.a1_in1k",
        "-o",
        dest,
        "--out-indices",
        "0,-1",
        *images,
        env=hub_server.env(offline=True),
    )
    assert p.returncode == 0, p.stderr
    assert hub_server.requests == []
    with bbx.open(dest) as f:
        assert f.stages == ["act1", "layer4"] and f.facts.architecture == "timm:resnet18"
        assert f["act1"].shape == (len(images), 64, 112, 112)  # timm: 64 whatever the stage widths


def test_embedded_tables_are_timms():
    """Every architecture bbx implements, against timm itself: its feature_info (names, channels,
    reductions), its default pretrained_cfg, and every tensor's shape after bbx's remap."""
    from concurrent.futures import ThreadPoolExecutor

    from bbx.checkpoints import timm_default

    timm = oracle.oracle()
    archs = [(fam, arch) for fam in registry.families() if fam.timm is not None for arch in fam.timm.architectures]
    asking = ThreadPoolExecutor(1)  # timm builds the next architecture while bbx checks this one
    try:
        infos = asking.map(lambda fa: timm.ask("info", arch=fa[1].name), archs)
        for (fam, arch), info in zip(archs, infos):
            assert info["pretrained_cfg"]["tag"] == arch.tag, arch.name
            for key, value in arch.data.items():
                if key != "fixed_input_size":
                    assert info["pretrained_cfg"][key] == (list(value) if isinstance(value, tuple) else value), (
                        arch.name,
                        key,
                    )
            ck = recognise(timm_default(arch.name, arch.name)[1])
            stages = ck.settings().stages()
            assert [s.name for s in stages] == [f["module"] for f in info["feature_info"]], arch.name
            assert [s.channels for s in stages] == [f["channels"] for f in info["feature_info"]], arch.name
            assert [s.stride for s in stages] == [f["reduction"] for f in info["feature_info"]], arch.name
            with torch.device("meta"):
                model = fam.build(ck.config, stage_norm="final")
            shapes = {k: tuple(v) for k, v in info["shapes"].items()}
            remapped = fam.remap({k: torch.empty(v, device="meta") for k, v in shapes.items()}, ck.config)
            mine = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            theirs = {k: tuple(v.shape) for k, v in remapped.items() if not k.endswith("num_batches_tracked")}
            assert mine == theirs, (arch.name, set(mine) ^ set(theirs))
    finally:
        asking.shutdown(cancel_futures=True)  # a failure does not wait for the rest


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm") / "vit"
    args = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 64}
    return oracle.make(folder, "vit_small_patch16_224", model_args=args, seed=8)


def test_files_end_to_end_match_timm(tmp_path, vit, images):
    """Image files of several sizes and modes through bbx.Extractor against timm's eval transform
    and features_only model on the same files: the whole job, not the model alone."""
    from tests.util import rel_err

    pixels = oracle.timm_pixels(vit, images, tmp_path / "px")
    want, _ = oracle.timm_maps(vit, pixels, tmp_path / "maps", out_indices=[0, 2])
    got = bbx.Extractor(str(vit), out_indices=[0, -1], device="cpu")(images)
    assert list(got) == ["blocks.0", "blocks.2"]
    for a, b in zip(got.values(), want):
        assert a.shape == b.shape and rel_err(a, b) <= oracle.TOL


@pytest.mark.parametrize("fmt", ["h5", "safetensors", "sharded"])
def test_dotted_stage_names_in_every_output(tmp_path, vit, images, fmt):
    out = tmp_path / ("feats.h5" if fmt == "h5" else "feats.safetensors")
    extra = ["--shard-size", "20kB"] if fmt == "sharded" else []
    p = bbx_proc("extract", "-m", vit, "--out-features", "blocks.0,blocks.2", "-o", out, "-b", "2", *extra, *images)
    assert p.returncode == 0, p.stderr
    with bbx.open(out) as f:
        assert f.stages == ["blocks.0", "blocks.2"] and f["blocks.2"].shape == (len(images), 32, 4, 4)
    info = bbx_proc("info", out, "--json")
    assert info.returncode == 0 and [s["name"] for s in json.loads(info.stdout)["stages"]] == ["blocks.0", "blocks.2"]
    show = bbx_proc("show", out, "--stage", "blocks.0", "-o", tmp_path / "map.png")
    assert show.returncode == 0, show.stderr


def test_completion_knows_timm_names_and_their_stages():
    from bbx.cli._complete import complete_model, stage_names_of_model

    offered = [item[0] if isinstance(item, tuple) else item for item in complete_model("timm:resnet5")]
    assert "timm:resnet50" in offered and "timm:resnet50d" in offered
    assert not any(str(o).startswith("timm:") for o in complete_model(""))
    assert stage_names_of_model("timm:convnext_tiny") == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert stage_names_of_model("timm:nope") == []


@pytest.mark.parametrize("arch", ["resnet50", "vit_small_patch16_224", "convnext_atto"])
def test_bfloat16_errs_as_timms_own(tmp_path, arch):
    """bbx in bf16 (autocast, as extract runs it) is as close to timm's fp32 maps as timm's own bf16 is."""
    from tests.parity import photos
    from tests.util import rel_err

    args = {"resnet50": {"layers": [1, 1, 1, 1]}, "convnext_atto": {"depths": [1, 1, 2, 1]}}.get(
        arch, {"embed_dim": 64, "depth": 3, "num_heads": 2}
    )
    folder = oracle.make(tmp_path / "ckpt", arch, model_args=args, seed=12)
    model = bbx.load_backbone(str(folder))
    x = photos(224, 2)
    fp32, _ = oracle.timm_maps(folder, x, tmp_path / "a", out_indices=[model.out_indices[0]])
    bf16, _ = oracle.timm_maps(
        folder, x.bfloat16(), tmp_path / "b", out_indices=[model.out_indices[0]], dtype="bfloat16"
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (ours,) = model(x)
    theirs = rel_err(bf16[0], fp32[0])
    assert 0 < rel_err(ours.float(), fp32[0]) <= max(2 * theirs, 1e-2), (rel_err(ours.float(), fp32[0]), theirs)
