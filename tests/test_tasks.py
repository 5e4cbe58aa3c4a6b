"""Backbones inside task checkpoints (Mask2Former, MaskFormer, DETR, Depth Anything, DPT, UperNet,
RT-DETR) at parity with the transformers task model's own backbone module, on random-weight task
checkpoints saved in the hub layout (small backbones and heads; the public backbone configs in the
slow tests); only the backbone's tensors are ever read; the task processors come down to the
preprocessing bbx applies; every catalog row answers offline (models, inspect, dry-run, completion)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import transformers as hf

import bbx
from bbx import registry
from bbx.checkpoints import recognise
from bbx.cli._complete import stage_names_of_model
from bbx.errors import ModelError, UsageError
from bbx.inspection import inspect_model
from bbx.preprocess import Preprocess
from tests import parity
from tests.cli import bbx_proc, run
from tests.processors import hf_pixels, hf_processor
from tests.util import photo, randomize_, rel_err, save_checkpoint

SWIN = {
    "model_type": "swin",
    "embed_dim": 16,
    "depths": [2, 2, 2, 2],
    "num_heads": [2, 2, 4, 4],
    "window_size": 7,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
CONVNEXT = {
    "model_type": "convnext",
    "hidden_sizes": [16, 32, 48, 64],
    "depths": [1, 1, 2, 1],
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
DINOV2 = {
    "model_type": "dinov2",
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "image_size": 56,
    "out_indices": [1, 2, 3, 4],
    "reshape_hidden_states": False,
}
RT_RESNET = {
    "model_type": "rt_detr_resnet",
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 48, 64],
    "depths": [1, 1, 2, 1],
    "out_indices": [2, 3, 4],
}
RESNET = {
    "model_type": "resnet",
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 48, 64],
    "depths": [1, 1, 2, 1],
    "out_features": ["stage4"],
}


@contextlib.contextmanager
def _no_scipy_check():
    """Mask2Former's and MaskFormer's losses (never run here) ask for scipy when they are built."""
    import transformers.models.mask2former.modeling_mask2former as m2f
    import transformers.models.maskformer.modeling_maskformer as mf

    with mock.patch.object(m2f, "requires_backends", lambda *a, **k: None):
        with mock.patch.object(mf, "requires_backends", lambda *a, **k: None):
            yield


def _mask(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[0], *x.shape[2:], dtype=torch.long)


def _tokens_to_maps(tokens: torch.Tensor, x: torch.Tensor, patch: int = 14) -> torch.Tensor:
    """A ViT backbone's token sequence (class token first, reshape_hidden_states false) as maps."""
    n, _, c = tokens.shape
    h, w = x.shape[2] // patch, x.shape[3] // patch
    return tokens[:, 1:].reshape(n, h, w, c).permute(0, 3, 1, 2)


#: task -> (build the transformers task model around a backbone config, its backbone's maps)
TASKS: dict[str, tuple[Callable[[dict], Any], Callable[[Any, torch.Tensor], list[torch.Tensor]]]] = {
    "mask2former": (
        lambda bb: hf.Mask2FormerForUniversalSegmentation(
            hf.Mask2FormerConfig(
                backbone_config=bb,
                hidden_dim=32,
                feature_size=32,
                mask_feature_size=32,
                num_queries=4,
                decoder_layers=2,
                encoder_layers=1,
                dim_feedforward=32,
                encoder_feedforward_dim=32,
                num_attention_heads=2,
                num_labels=3,
            )
        ),
        lambda m, x: list(m.model.pixel_level_module.encoder(x).feature_maps),
    ),
    "maskformer": (
        lambda bb: hf.MaskFormerForInstanceSegmentation(
            hf.MaskFormerConfig(
                backbone_config=bb,
                decoder_config={
                    "model_type": "detr",
                    "d_model": 32,
                    "encoder_layers": 1,
                    "decoder_layers": 1,
                    "encoder_attention_heads": 2,
                    "decoder_attention_heads": 2,
                    "encoder_ffn_dim": 32,
                    "decoder_ffn_dim": 32,
                    "num_queries": 4,
                },
                fpn_feature_size=32,
                mask_feature_size=32,
                num_labels=3,
            )
        ),
        lambda m, x: list(m.model.pixel_level_module.encoder(x).feature_maps),
    ),
    "depth_anything": (
        lambda bb: hf.DepthAnythingForDepthEstimation(
            hf.DepthAnythingConfig(
                backbone_config=bb,
                reassemble_hidden_size=bb["hidden_size"],
                patch_size=14,
                neck_hidden_sizes=[8, 16, 32, 32],
                fusion_hidden_size=16,
                head_hidden_size=8,
            )
        ),
        lambda m, x: [_tokens_to_maps(t, x) for t in m.backbone(x).feature_maps],
    ),
    "dpt": (
        lambda bb: hf.DPTForDepthEstimation(
            hf.DPTConfig(
                backbone_config=bb,
                hidden_size=bb["hidden_size"],
                neck_hidden_sizes=[8, 16, 32, 32],
                fusion_hidden_size=16,
                head_hidden_size=8,
                is_hybrid=False,
                add_projection=True,
                use_bias_in_fusion_residual=False,
            )
        ),
        lambda m, x: [_tokens_to_maps(t, x) for t in m.backbone(x).feature_maps],
    ),
    "upernet": (
        lambda bb: hf.UperNetForSemanticSegmentation(
            hf.UperNetConfig(backbone_config=bb, hidden_size=16, auxiliary_channels=8, num_labels=3)
        ),
        lambda m, x: list(m.backbone(x).feature_maps),
    ),
    "rt_detr": (
        lambda bb: hf.RTDetrForObjectDetection(
            hf.RTDetrConfig(
                backbone_config=bb,
                encoder_in_channels=bb["hidden_sizes"][-3:],
                encoder_hidden_dim=16,
                encoder_ffn_dim=16,
                encoder_attention_heads=2,
                d_model=16,
                decoder_in_channels=[16, 16, 16],
                decoder_ffn_dim=16,
                decoder_attention_heads=2,
                decoder_layers=1,
                num_queries=4,
                num_labels=3,
            )
        ),
        lambda m, x: [f for f, _ in m.model.backbone(x, _mask(x))],
    ),
    "detr": (
        lambda bb: hf.DetrForObjectDetection(
            hf.DetrConfig(
                use_timm_backbone=False,
                backbone_config=bb,
                d_model=16,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=16,
                decoder_ffn_dim=16,
                num_queries=4,
                num_labels=3,
            )
        ),
        lambda m, x: [f for f, _ in m.model.backbone(x, _mask(x))],
    ),
}

#: (case id, task, small backbone config, the public row whose preprocessing the checkpoint gets)
CASES = [
    ("mask2former", "mask2former", SWIN, "mask2former-swin-tiny-coco-instance"),
    ("maskformer", "maskformer", SWIN, "maskformer-swin-tiny-coco"),
    ("depth_anything", "depth_anything", DINOV2, "depth-anything-v2-small"),
    ("dpt", "dpt", {**DINOV2, "apply_layernorm": False}, "dpt-dinov2-small-nyu"),
    ("upernet-convnext", "upernet", CONVNEXT, "upernet-convnext-tiny"),
    ("upernet-swin", "upernet", SWIN, "upernet-swin-tiny"),
    ("rt_detr", "rt_detr", RT_RESNET, "rtdetr-r50vd"),
    ("detr", "detr", RESNET, "detr-resnet-50-no-timm"),
]
IDS = [c[0] for c in CASES]


def _build(task: str, backbone: dict, seed: int = 0) -> Any:
    with _no_scipy_check():
        model = TASKS[task][0](dict(backbone))
    return randomize_(model.eval(), seed)


def task_checkpoint(folder: Path, task: str, backbone: dict, row: str, seed: int = 0) -> tuple[Path, Any]:
    """A random-weight task checkpoint in the hub layout with ``row``'s preprocessing; and the
    transformers model holding the same weights (the oracle)."""
    model = _build(task, backbone, seed)
    save_checkpoint(model, folder, registry.lookup(row).preprocessor_dict())
    return folder, model


_CACHE: dict[str, tuple[Path, Any]] = {}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request, tmp_path_factory):
    cid, task, backbone, row = request.param
    if cid not in _CACHE:
        _CACHE[cid] = task_checkpoint(tmp_path_factory.mktemp("task") / cid, task, backbone, row)
    folder, model = _CACHE[cid]
    return cid, task, folder, model


def _reference(task: str, model: Any) -> parity.Reference:
    def ref(folder: Path, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        with torch.no_grad():
            return TASKS[task][1](model, x)

    return ref


def _taps(folder: Path) -> list[str]:
    ck = recognise(json.loads((folder / "config.json").read_text()))
    return [ck.stage_names[i] for i in ck.default_stages]


# --- parity ---------------------------------------------------------------------------------------


def test_the_task_backbone_matches_transformers(case):
    """bbx's default stages are the task's taps, each at parity with the task model's backbone."""
    cid, task, folder, model = case
    ours = bbx.load_backbone(str(folder))
    names = _taps(folder)
    assert ours.out_features == names and ours.ref.spec.task == task
    ref = _reference(task, model)
    assert len(ref(folder, parity.photos(112, 1), names)) == len(names)  # the oracle reports the same taps
    size, other = ((112, 112), (140, 196)) if task in ("depth_anything", "dpt") else ((128, 128), (150, 211))
    parity.compare(folder, size, 2, names=names, reference=ref)
    parity.compare(folder, other, 2, names=names, reference=ref)


def test_inference_rewrites_stay_at_parity(case):
    """extract and bench run the model after its frozen-inference rewrites."""
    from bbx.loading import prepare_for_inference

    cid, task, folder, model = case
    ours, channels_last = prepare_for_inference(bbx.load_backbone(str(folder)), "cpu")
    x = parity.photos((112, 140) if task in ("depth_anything", "dpt") else (128, 160), 2)
    with torch.no_grad():
        got = ours(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        want = TASKS[task][1](model, x)
    assert max(rel_err(a, b) for a, b in zip(got, want)) <= parity.TOL


@pytest.mark.parametrize("alias", ["mask2former-swin-tiny-coco-instance", "upernet-convnext-tiny", "rtdetr-r50vd"])
def test_extraction_at_the_processors_own_size(tmp_path, alias):
    """The whole path: bbx's pixels (the task processor's, at its fixed size) through the loaded
    backbone give the task model's backbone maps on the processor's pixel_values."""
    row = registry.lookup(alias)
    ck = row.checkpoint()
    cid, task, backbone, _ = next(c for c in CASES if c[3] == alias)
    folder, model = task_checkpoint(tmp_path / "ckpt", task, backbone, alias, seed=3)
    size = Preprocess.from_checkpoint(ck).output_size
    small = (size[0] // 4, size[1] // 4)  # the same recipe at a quarter of the size, to stay fast
    images = [photo(300, 220, seed=1), photo(180, 260, seed=2)]
    ex = bbx.Extractor(str(folder), image_size=small[0])
    got = ex(images)
    proc = hf_processor(tmp_path / "proc", {**row.preprocessor_dict(), "size": {"height": small[0], "width": small[1]}})
    x = hf_pixels(proc, images)
    assert tuple(x.shape[2:]) == small
    with torch.no_grad():
        want = TASKS[task][1](model, x)
    assert list(got) == _taps(folder)
    for name, b in zip(got, want):
        assert rel_err(got[name], b) <= parity.TOL, name


@pytest.mark.parametrize(
    "alias,n",
    [("detr-resnet-50-no-timm", 96), ("depth-anything-v2-small", 98), ("dpt-dinov2-small-nyu", 84)],
)
def test_extraction_needs_and_takes_an_image_size(tmp_path, alias, n):
    """A task processor whose size follows the image: bbx resizes to --image-size with its
    resample, no crop, then its statistics; the processor set to that size gives the same pixels."""
    row = registry.lookup(alias)
    cid, task, backbone, _ = next(c for c in CASES if c[3] == alias)
    folder, model = task_checkpoint(tmp_path / "ckpt", task, backbone, alias, seed=4)
    with pytest.raises(UsageError, match="--image-size"):
        bbx.Extractor(str(folder))
    images = [photo(300, 220, seed=1), photo(180, 260, seed=2)]
    got = bbx.Extractor(str(folder), image_size=n)(images)
    pre = row.preprocessor_dict() | {"size": {"height": n, "width": n}, "do_resize": True, "do_pad": False}
    pre |= {"keep_aspect_ratio": False} if "keep_aspect_ratio" in pre else {}
    pre.pop("max_size", None)
    x = hf_pixels(hf_processor(tmp_path / "proc", pre), images)
    assert tuple(x.shape[2:]) == (n, n)
    with torch.no_grad():
        want = TASKS[task][1](model, x)
    for name, b in zip(got, want):
        assert rel_err(got[name], b) <= parity.TOL, name


def test_non_square_sizes_through_the_python_api(case):
    cid, task, folder, model = case
    if task in ("depth_anything", "dpt"):
        size = (84, 126)
    elif task in ("mask2former", "maskformer"):
        size = (96, 160)
    else:
        size = (90, 130)
    ex = bbx.Extractor(str(folder), image_size=size)
    assert ex.input_size == size
    maps = ex([photo(200, 150, seed=5)])
    assert all(m.shape[0] == 1 for m in maps.values())


# --- only the backbone is read ----------------------------------------------------------------


def test_only_the_backbone_tensors_are_ever_read(case, monkeypatch):
    """The heads' tensors are never read from the file (safetensors reads each tensor on request)."""
    import safetensors

    from bbx import weights

    cid, task, folder, model = case
    asked: list[str] = []
    real = safetensors.safe_open

    class Recording:
        def __init__(self, *a: Any, **k: Any) -> None:
            self.f = real(*a, **k)

        def __enter__(self) -> Recording:
            self.f.__enter__()
            return self

        def __exit__(self, *a: Any) -> None:
            self.f.__exit__(*a)

        def keys(self) -> list[str]:
            return list(self.f.keys())

        def get_tensor(self, key: str) -> torch.Tensor:
            asked.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    ours = bbx.load_backbone(str(folder))
    prefix = ours.ref.spec.weight_prefix
    with real(str(folder / "model.safetensors"), "pt") as f:
        everything = list(f.keys())
    heads = [k for k in everything if not k.startswith(prefix)]
    assert heads and asked, (len(heads), len(asked))
    assert all(k.startswith(prefix) for k in asked)
    assert len(asked) == len(set(asked)) <= len(everything) - len(heads)
    assert weights  # the module that reads them


def _extraction_memory(folder: Path, tmp: Path) -> int:
    """Peak resident bytes of ``bbx extract`` of one image (batch 1, 224 px) in a fresh process,
    above what importing torch and bbx took (tests/benchmarks/task_memory.py's measurement)."""
    import subprocess
    import sys

    photo(224, 224).save(tmp / "img.png")
    script = Path(__file__).parent / "benchmarks" / "task_memory.py"
    p = subprocess.run(
        [sys.executable, str(script), "--child", str(folder), str(tmp / "img.png"), str(tmp / "out.h5")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["peak"] - r["after_imports"]


def test_the_heads_never_reach_memory(tmp_path):
    """A Mask2Former checkpoint whose heads weigh 192 MiB costs an extraction no more memory than
    the same checkpoint without them (the heads are neither read nor built)."""
    from safetensors.torch import load_file, save_file

    light, _ = task_checkpoint(tmp_path / "light", "mask2former", SWIN, "mask2former-swin-tiny-coco-instance")
    heavy = tmp_path / "heavy"
    heavy.mkdir()
    for f in light.iterdir():
        (heavy / f.name).write_bytes(f.read_bytes())
    state = load_file(str(light / "model.safetensors"))
    state["model.transformer_module.decoder.extra.weight"] = torch.ones(48 << 20)  # 192 MiB of fp32
    save_file(state, str(heavy / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base, with_heads = _extraction_memory(light, tmp_path / "a"), _extraction_memory(heavy, tmp_path / "b")
    assert with_heads - base < 32 << 20, (base >> 20, with_heads >> 20)


# --- every row, offline ---------------------------------------------------------------------------

ROWS = registry.task_rows()


@pytest.mark.parametrize("row", ROWS, ids=[r.alias for r in ROWS])
def test_task_rows_answer_offline(row):
    ck = row.checkpoint()
    assert ck.format == "task" and registry.is_task(ck.task)
    with torch.device("meta"):
        model = ck.family.build(ck.config)
    assert model.stage_names == list(row.stage_names)
    assert ck.default_stages and all(0 <= i < len(model.stage_names) for i in ck.default_stages)
    report = inspect_model(row.alias)
    assert [s.name for s in report.stages] == list(row.stage_names)
    assert [s.index for s in report.stages if s.default] == list(ck.default_stages)
    assert report.task is not None and report.task.weight_prefix == ck.weight_prefix != ""
    assert stage_names_of_model(row.alias) == list(row.stage_names)
    pre = Preprocess.from_checkpoint(ck)
    assert pre.output_size is not None or (pre.size_required and report.input_size is None)


def test_cli_lists_inspects_and_plans_every_task_row_offline(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")  # a dry run opens no image
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    listed = json.loads(bbx_proc("models", "--json", env=env).stdout)
    by_alias = {r["alias"]: r for r in listed}
    for row in ROWS:
        entry = by_alias[row.alias]
        ck = row.checkpoint()
        assert entry["task"] == ck.task and entry["architecture"] == ck.network
        assert entry["default_stages"] == [ck.stage_names[i] for i in ck.default_stages]
        r = run("inspect", row.alias, "--json", env=env)
        assert r.exit_code == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["task"]["model_type"] == ck.task and data["task"]["weight_prefix"] == ck.weight_prefix
        pre = Preprocess.from_checkpoint(ck)
        size = [] if pre.output_size else ["--image-size", str(14 * 8 if pre.multiple_of == 14 else 128)]
        r = run("extract", "-m", row.alias, *size, "--dry-run", "--json", "-o", str(tmp_path / "o.h5"), str(tmp_path))
        assert r.exit_code == 0, (row.alias, r.stderr)
        plan = json.loads(r.stdout)
        assert [s["name"] for s in plan["stages"]] == entry["default_stages"]
        assert plan["weight_prefix"] == ck.weight_prefix and plan["architecture"] == f"{ck.network} in {ck.task}"


def test_inspect_says_where_the_weights_come_from():
    r = run("inspect", "mask2former-swin-tiny-coco-instance")
    assert r.exit_code == 0, r.stderr
    assert "weights under model.pixel_level_module.encoder.*" in r.stdout
    assert "stage norms trained with Mask2Former" in r.stdout and "swin in mask2former" in r.stdout
    r = run("inspect", "maskformer-swin-tiny-coco")
    assert r.exit_code == 0, r.stderr
    assert "input varies" in r.stdout and "[96, H/4, W/4]" in r.stdout and "--image-size" in r.stdout
    r = run("inspect", "maskformer-swin-tiny-coco", "--image-size", "320", "--json")
    assert json.loads(r.stdout)["stages"][0]["shape"] == [96, 80, 80]
    r = run("inspect", "rtdetr-r50vd")
    assert "stage norms none in the checkpoint" in r.stdout


@pytest.mark.parametrize(
    "alias,size,words",
    [
        ("depth-anything-v2-small", None, "keeps each image's aspect ratio"),
        ("depth-anything-v2-small", "500", "--image-size 500 is not a multiple of 14"),
        ("dpt-dinov2-small-nyu", "225", "not a multiple of 14"),
        ("maskformer-swin-tiny-coco", "500", "not a multiple of 32"),
        ("detr-resnet-50-no-timm", None, "resizes each image's shortest edge to 800"),
    ],
)
def test_sizes_a_task_cannot_take_are_one_line(tmp_path, alias, size, words):
    photo(64, 48).save(tmp_path / "a.png")
    args = ["--image-size", size] if size else []
    r = run("extract", "-m", alias, *args, "--dry-run", str(tmp_path))
    assert r.exit_code == 2 and words in r.stderr and "--image-size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# --- what is refused --------------------------------------------------------------------------


def _task_config(**over: Any) -> dict:
    return {"model_type": "mask2former", "backbone_config": dict(SWIN)} | over


@pytest.mark.parametrize(
    "config,words",
    [
        ({"model_type": "detr", "use_timm_backbone": True, "backbone": "nonesuch"}, "timm architecture 'nonesuch'"),
        ({"model_type": "detr", "backbone_config": {"model_type": "timm_backbone", "backbone": "x"}}, "'x'"),
        (
            {"model_type": "detr", "use_timm_backbone": True, "backbone": "convnext_tiny", "dilation": True},
            "output_stride=16",
        ),
        ({"model_type": "dpt"}, "no backbone_config"),
        ({"model_type": "dpt", "is_hybrid": True, "backbone_config": {"model_type": "bit"}}, "hybrid"),
        (_task_config(backbone_config={"model_type": "dinat"}), "'dinat'"),
        (_task_config(backbone_config={**SWIN, "out_features": ["stage9"]}), "stage9"),
        (_task_config(backbone_config={**SWIN, "embed_dim": -1}), "embed_dim"),
        (_task_config(backbone_config={"embed_dim": 16}), "no model_type"),
        ({"model_type": "oneformer", "backbone_config": dict(SWIN)}, "oneformer"),
    ],
    ids=[
        "detr-timm",
        "detr-timm-nested",
        "detr-dc5",
        "dpt-own",
        "dpt-hybrid",
        "unknown-backbone",
        "bad-tap",
        "bad-field",
        "no-type",
        "unknown-task",
    ],
)
def test_task_configs_bbx_cannot_read_are_one_line(config, words):
    with pytest.raises(ModelError) as e:
        recognise(config, None, "config.json")
    assert words in e.value.message and "\n" not in e.value.message


def test_a_checkpoint_without_the_backbone_prefix_is_refused(tmp_path):
    folder, _ = task_checkpoint(tmp_path / "ckpt", "upernet", CONVNEXT, "upernet-convnext-tiny")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["UperNetForSemanticSegmentation"]
    from safetensors.torch import load_file, save_file

    state = {k.replace("backbone.", "encoder.", 1): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="no tensors under 'backbone.'"):
        bbx.load_backbone(str(folder))


# --- the hub: a row at a revision -------------------------------------------------------------


def test_the_no_timm_row_downloads_that_revision(hub_server, tmp_path):
    folder, model = task_checkpoint(tmp_path / "ckpt", "detr", RESNET, "detr-resnet-50-no-timm", seed=5)
    (folder / "config.json").write_text(
        json.dumps(json.loads((folder / "config.json").read_text()) | {"architectures": ["DetrForObjectDetection"]})
    )
    timm_main = {"config.json": json.dumps({"model_type": "detr", "use_timm_backbone": True, "backbone": "x"}).encode()}
    hub_server.add_repo("facebook/detr-resnet-50", files=timm_main)
    sha = hub_server.add_repo("facebook/detr-resnet-50", folder, branch="no_timm")
    photo(120, 90, seed=1).save(tmp_path / "a.jpg")
    out = tmp_path / "o.h5"
    p = bbx_proc(
        "extract",
        "-m",
        "detr-resnet-50-no-timm",
        "--image-size",
        "64",
        "-q",
        "-o",
        out,
        tmp_path / "a.jpg",
        env=hub_server.env(),
    )
    assert p.returncode == 0, p.stderr
    with bbx.open(out) as f:
        assert f.facts.revision == sha and f.stages == ["stage4"] and f.facts.architecture == "resnet in detr"
    p = bbx_proc("inspect", "facebook/detr-resnet-50", "--revision", "main", env=hub_server.env())
    assert p.returncode == 4 and "timm architecture 'x'" in p.stderr and "\n" not in p.stderr.strip()


# --- DETR's timm backbone (the public repos' main revision) -------------------------------------

DETR_HEADS = {
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 16,
    "decoder_ffn_dim": 16,
    "num_queries": 4,
    "num_labels": 3,
}


@pytest.mark.parametrize(
    ("arch", "dilation"),
    [
        ("resnet18", False),
        ("resnet18", True),
        pytest.param("resnet50", False, marks=pytest.mark.slow),
        pytest.param("resnet50", True, marks=pytest.mark.slow),
    ],
    ids=["resnet18", "resnet18-dc5", "resnet50", "resnet50-dc5"],
)
def test_detr_with_a_timm_backbone_matches_transformers(tmp_path, arch, dilation):
    """transformers' DetrForObjectDetection with use_timm_backbone (built by the timm oracle: timm
    is not beside bbx's torch), saved in the hub layout: bbx reads the timm network under DETR's
    prefix, taps layers 1-4 and matches DETR's conv encoder (frozen BatchNorms); with ``dilation``
    (DC5) timm's output_stride 16, the last stage dilated."""
    from tests import oracle as timm_oracle

    folder = tmp_path / "detr"
    config = {"use_timm_backbone": True, "backbone": arch, "use_pretrained_backbone": False, **DETR_HEADS}
    config["dilation"] = dilation
    timm_oracle.oracle().ask("task_make", cls="DetrForObjectDetection", config=config, folder=str(folder), seed=7)
    (folder / "preprocessor_config.json").write_text(json.dumps(registry.lookup("detr-resnet-50").preprocessor_dict()))
    ours = bbx.load_backbone(str(folder))
    assert ours.out_features == ["layer1", "layer2", "layer3", "layer4"] and ours.ref.spec.task == "detr"
    assert ours.ref.architecture == f"timm:{arch} in detr"
    assert [st.stride for st in ours.settings.stages()][-1] == (16 if dilation else 32)

    def reference(folder: Path, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        from safetensors.torch import load_file, save_file

        src, out = tmp_path / "x.safetensors", tmp_path / "maps.safetensors"
        save_file({"x": x.contiguous()}, str(src))
        timm_oracle.oracle().ask(
            "task_features",
            cls="DetrForObjectDetection",
            module="model.backbone",
            folder=str(folder),
            input=str(src),
            out=str(out),
        )
        maps = load_file(str(out))
        return [maps[str(i)] for i in range(len(maps))]

    names = ours.out_features
    parity.compare(folder, (128, 128), 2, names=names, reference=reference)
    parity.compare(folder, (150, 211), 2, names=names, reference=reference)


# --- full-size public backbone configs ------------------------------------------------------------

SLOW = [
    ("mask2former", "mask2former-swin-tiny-coco-instance", (224, 224)),
    ("maskformer", "maskformer-swin-tiny-coco", (224, 192)),
    ("depth_anything", "depth-anything-v2-small", (224, 182)),
    ("dpt", "dpt-dinov2-small-nyu", (224, 168)),
    ("upernet", "upernet-convnext-tiny", (224, 192)),
    ("upernet", "upernet-swin-tiny", (224, 192)),
    ("rt_detr", "rtdetr-r50vd", (224, 192)),
    ("detr", "detr-resnet-50-no-timm", (224, 192)),
]


@pytest.mark.slow
@pytest.mark.parametrize("task,alias,size", SLOW, ids=[a for _, a, _ in SLOW])
def test_public_backbone_configs_match_transformers(tmp_path, task, alias, size):
    """The row's own nested backbone config (full size; small heads: they are never run or read)."""
    backbone = registry.lookup(alias).config_dict()["backbone_config"]
    folder, model = task_checkpoint(tmp_path / "ckpt", task, backbone, alias, seed=6)
    names = _taps(folder)
    row = registry.lookup(alias).checkpoint()
    assert bbx.load_backbone(str(folder)).out_features == names == [row.stage_names[i] for i in row.default_stages]
    parity.compare(folder, size, 1, names=names, reference=_reference(task, model))


def test_completion_offers_the_task_aliases_and_their_stages():
    from bbx.cli._complete import complete_model

    offered = {v for v, _ in complete_model("")}
    assert {r.alias for r in ROWS} <= offered
    assert [v for v, _ in complete_model("mask2former-")] == [
        r.alias for r in ROWS if r.alias.startswith("mask2former-")
    ]
    assert stage_names_of_model("maskformer-swin-tiny-coco") == ["stage1", "stage2", "stage3", "stage4"]
