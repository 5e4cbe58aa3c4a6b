"""Peak memory of extracting the backbone of a task checkpoint (a catalog row of a task model)
against the same backbone from a plain backbone checkpoint (a measurement, not a test; issue 18
asks for at most 1.2x for a Mask2Former row at 224 px, batch 1).

Builds, with transformers, a random-weight task model of the row's embedded configuration (the
row's backbone config, transformers' defaults for the heads) in the hub layout, and a plain
checkpoint of its backbone (the nested backbone config, the tensors under the task's weight
prefix, a resize-only processor with the task's statistics); then, each in a fresh process,
``bbx extract`` of one image at ``--image-size`` (batch 1, the stages the task taps, CPU, fp32)
and prints the process's peak resident memory (``VmHWM``) and the part of it above what
importing torch and bbx already took. If the heads were read or built, the task run would show
their size on top of the backbone's::

    python tests/benchmarks/task_memory.py TASK_ALIAS [--image-size 224] [--keep FOLDER]

(README, "Backbones inside task checkpoints", names the row issue 18 measures.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.compare_transformers import vm_bytes  # noqa: E402


def child(folder: str, image: str, out: str, size: str = "224", stages: str = "") -> None:
    """One extraction in this process (``stages``: comma-separated, default the model's); prints
    JSON with the peak and the peak after imports."""
    import torch  # noqa: F401 - what every run imports, before the baseline

    import bbx  # noqa: F401
    import bbx.extract  # noqa: F401
    from bbx.cli import app

    base = vm_bytes("VmHWM")
    args = ["extract", "-m", folder, "--image-size", size, "-b", "1", "--device", "cpu", "-o", out]
    for s in filter(None, stages.split(",")):
        args += ["--out-features", s]
    try:
        app([*args, image], prog_name="bbx")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    print(json.dumps({"peak": vm_bytes("VmHWM"), "after_imports": base}))


def build(alias: str, root: Path) -> tuple[Path, Path, list[str], int, int]:
    """The task checkpoint and the plain backbone one (the same backbone tensors), the stages the
    task taps, and the parameter counts of the task model and of its backbone."""
    import sys as _sys

    import torch
    import transformers as hf
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from bbx import registry
    from bbx.checkpoints import recognise
    from bbx.family import thaw

    row = registry.lookup(alias)
    if row is None:
        raise SystemExit(f"no catalog row {alias!r}")
    config = row.config_dict()
    torch.manual_seed(0)
    cls = getattr(hf, config["architectures"][0])
    # the losses of the segmentation models (never run) ask for scipy when they are built
    with mock.patch.object(_sys.modules[cls.__module__], "requires_backends", lambda *a, **k: None):
        task = cls(
            hf.AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
        )
    task.eval()
    n_task = sum(p.numel() for p in task.parameters())
    tasked = root / "task"
    task.save_pretrained(tasked)
    del task
    (tasked / "preprocessor_config.json").write_text(json.dumps(row.preprocessor_dict()))
    ck = recognise(json.loads((tasked / "config.json").read_text()), row.preprocessor_dict())
    prefix = ck.weight_prefix
    state = {
        k[len(prefix) :]: v for k, v in load_file(str(tasked / "model.safetensors")).items() if k.startswith(prefix)
    }
    plain = root / "plain"
    plain.mkdir(exist_ok=True)
    save_file(state, str(plain / "model.safetensors"), metadata={"format": "pt"})
    (plain / "config.json").write_text(json.dumps(thaw(ck.config)))
    pre = row.preprocessor_dict()
    (plain / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": 224, "width": 224},
                "resample": pre.get("resample", 2),
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": pre["image_mean"],
                "image_std": pre["image_std"],
            }
        )
    )
    Image.new("RGB", (640, 480), (120, 90, 200)).save(root / "img.png")
    stages = [ck.stage_names[i] for i in ck.default_stages or ()]
    return tasked, plain, stages, n_task, sum(v.numel() for v in state.values())


def measure(folder: Path, root: Path, name: str, size: int, stages: list[str]) -> dict[str, int]:
    image, out = str(root / "img.png"), str(root / f"{name}.h5")
    p = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), image, out, str(size), ",".join(stages)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if p.returncode != 0:
        raise SystemExit(f"{name}: the extraction failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("alias", nargs="?", help="a task row's alias")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--keep", type=Path, help="build the checkpoints here and keep them")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    if not a.alias:
        ap.error("name a task row's alias")
    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        tasked, plain, stages, n_task, n_backbone = build(a.alias, root)
        mib = 1 << 20
        print(f"{a.alias}: {n_task / 1e6:.1f}M parameters, of which the backbone {n_backbone / 1e6:.1f}M")
        print(f"extracting {', '.join(stages)} of one image at {a.image_size} px, batch 1, CPU, fp32")
        got = {
            name: measure(folder, root, name, a.image_size, stages)
            for name, folder in (("plain", plain), ("task", tasked))
        }
        for name, r in got.items():
            above = (r["peak"] - r["after_imports"]) / mib
            print(f"{name:6s} peak {r['peak'] / mib:7.1f} MiB, above the imports {above:7.1f} MiB")
        t, p = got["task"], got["plain"]
        print(
            f"ratio task / plain: peak {t['peak'] / p['peak']:.3f}, above the imports "
            f"{(t['peak'] - t['after_imports']) / (p['peak'] - p['after_imports']):.3f} (issue 18: <= 1.2)"
        )


if __name__ == "__main__":
    main()
