"""bbx extract vs the transformers recipe (or timm's), side by side, on one fixed corpus.

Run on purpose (never collected by the test suite)::

    python tests/benchmarks/compare_transformers.py               # every case, 256 images
    python tests/benchmarks/compare_transformers.py --cases resnet50,swin-s1 --images 64
    python tests/benchmarks/compare_transformers.py --memory      # + the 256 vs 2,048 images check

What it does, per case, one after the other in the same environment and thread count:

* builds (once, cached in ``--workdir``) random-weight checkpoints in the hub layout with the
  public full-size configs, and a corpus of JPEG photos of camera-like sizes (long side 480 to
  1024, seeded);
* (a) the transformers recipe in a fresh process: the checkpoint's image processor and backbone,
  batch 16, maps written to HDF5 with h5py; or, for the timm cases (recipe ``timm``, alias
  ``timm:<architecture>``), the timm recipe in a fresh process of the timm oracle's venv
  (``$BBX_TIMM_PYTHON`` or ``.venv-timm``, with h5py): ``timm.create_model("local-dir:...",
  pretrained=True, features_only=True, out_indices=...)``, its eval transform
  (``resolve_data_config`` + ``create_transform``) on each Pillow image (``convert("RGB")``),
  batch 16, maps written to HDF5 with h5py; the checkpoint is made by timm itself
  (tests/timm_oracle.py) with random weights;
* (b) ``bbx extract`` in a fresh process on the same files, stages and batch size, HDF5 output;
* times each from the first image to the last map written (imports and model loading excluded
  on both sides) and reads each process's peak memory (``VmHWM``).

It prints a table of images/s, the ratio bbx / transformers and the target of the speed issue,
peak memory, and bbx's time from the start of the run to its first written batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    name: str
    alias: str  # the bbx registry row whose public config the checkpoint copies
    out_features: tuple[str, ...] | None  # None: the last stage
    dtype: str  # compute dtype on both sides
    target: float  # bbx / transformers images/s the speed issue asks for
    #: the peer: "backbone" (transformers' backbone class, feature_maps of the stages), "model"
    #: (``hf_class``, default the model_type's AutoModel class, with output_hidden_states: the
    #: hidden states of the stages, as the model returns them) or "timm" (timm's features_only
    #: model, for an alias ``timm:<architecture>``)
    recipe: str = "backbone"
    hf_class: str | None = None
    #: the environment variable naming the Python (a command line) the transformers side runs in,
    #: when this one cannot run it: a processor that exists only in transformers' torchvision
    #: backend (DINOv3's) needs torchvision, which does not import beside the torch bbx tests pin
    hf_python: str | None = None


def _cases() -> list[Case]:
    """The cases, from cases.json beside this script (data: adding a case touches no code)."""
    data = json.loads((Path(__file__).with_name("cases.json")).read_text())
    return [
        Case(
            c["name"],
            c["alias"],
            tuple(c["out_features"]) if c["out_features"] else None,
            c["dtype"],
            c["target"],
            c.get("recipe", "backbone"),
            c.get("hf_class"),
            c.get("hf_python"),
        )
        for c in data["cases"]
    ]


CASES = _cases()
BATCH = 16


# ---------------------------------------------------------------------------------------------
# fixtures: corpus and checkpoints


def make_corpus(folder: Path, n: int) -> list[Path]:
    from tests.util import photo

    folder.mkdir(parents=True, exist_ok=True)
    import random

    rng = random.Random(1234)
    paths = []
    for i in range(n):
        p = folder / f"photo{i:05d}.jpg"
        if not p.exists():
            long = rng.randint(480, 1024)
            ratio = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0])
            short = int(round(long / ratio))
            w, h = (long, short) if rng.random() < 0.7 else (short, long)
            photo(w, h, seed=i).save(p, quality=rng.choice([85, 90, 95]))
        paths.append(p)
    return paths


def timm_python() -> str:
    found = os.environ.get("BBX_TIMM_PYTHON") or str(ROOT / ".venv-timm" / "bin" / "python")
    if not Path(found).is_file():
        raise SystemExit("the timm cases need the timm oracle's venv: set BBX_TIMM_PYTHON (see DEVELOPERS.md)")
    return found


def make_timm_checkpoint(workdir: Path, alias: str) -> Path:
    """A random-weight timm hub-layout checkpoint of ``timm:<architecture>``, made by timm."""
    folder = workdir / "ckpt" / alias.replace(":", "-")
    if (folder / "model.safetensors").exists():
        return folder
    request = {"op": "make", "arch": alias.split(":", 1)[1], "folder": str(folder), "seed": 7}
    p = subprocess.run(
        [timm_python(), str(ROOT / "tests" / "timm_oracle.py")],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    reply = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {"ok": False, "error": p.stderr}
    if not reply.get("ok"):
        raise SystemExit(f"timm could not make {alias}: {reply.get('error', '')[-2000:]}")
    return folder


def make_checkpoint(workdir: Path, alias: str) -> Path:
    if alias.startswith("timm:"):
        return make_timm_checkpoint(workdir, alias)
    import transformers

    from bbx import registry
    from tests.util import randomize_, save_checkpoint

    folder = workdir / "ckpt" / alias
    if (folder / "model.safetensors").exists():
        return folder
    row = registry.lookup(alias)
    config = row.config_dict()
    arch = config.pop("architectures", None)
    model_type = config.pop("model_type")
    cfg = transformers.AutoConfig.for_model(model_type, **config)
    cls_name = (arch or [None])[0]
    cls = getattr(transformers, cls_name) if cls_name else transformers.AutoModel
    model = cls(cfg) if cls_name else transformers.AutoModel.from_config(cfg)
    randomize_(model.eval(), seed=7)
    save_checkpoint(model, folder, row.preprocessor_dict())
    return folder


# ---------------------------------------------------------------------------------------------
# the two recipes, each run in its own process


def _hf_model(ckpt: Path, stages: list[str] | None, recipe: str, hf_class: str | None, device: str = "cpu"):
    """(a callable pixels -> the maps to write, the stage names): the transformers side of a case."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    from bbx import hub
    from tests.util import hf_backbone

    if recipe == "backbone":
        model = hf_backbone(ckpt, out_features=stages).to(device)
        return (lambda x: model(x).feature_maps), list(model.out_features)
    config = json.loads((ckpt / "config.json").read_text())
    cls = getattr(transformers, hf_class or MODEL_MAPPING_NAMES[config["model_type"]])
    model = cls.from_pretrained(ckpt).eval().to(device)
    names = hub.resolve(str(ckpt), weights=False).spec.stage_names
    chosen = stages or names[-1:]
    index = [names.index(s) for s in chosen]
    return (lambda x: [model(x, output_hidden_states=True).hidden_states[i] for i in index]), chosen


class _Batches:
    """The transformers recipe's input pipeline: PIL decode + the image processor, batch by
    batch (a torch Dataset of batches, so a DataLoader's workers can run it)."""

    def __init__(self, paths: list[Path], processor: object) -> None:
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return (len(self.paths) + BATCH - 1) // BATCH

    def __getitem__(self, i: int):
        from PIL import Image

        if not 0 <= i < len(self):
            raise IndexError(i)
        images = []
        for p in self.paths[i * BATCH : (i + 1) * BATCH]:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        return self.processor(images, return_tensors="pt")["pixel_values"]


def run_transformers(
    ckpt: Path,
    listing: Path,
    out: Path,
    stages: list[str] | None,
    dtype: str,
    recipe: str,
    hf_class: str | None,
    device: str = "cpu",
    workers: int = 0,
) -> dict:
    import contextlib

    import h5py
    import torch
    from transformers import AutoImageProcessor

    paths = [Path(p) for p in listing.read_text().splitlines() if p]
    processor = AutoImageProcessor.from_pretrained(ckpt)
    forward, names = _hf_model(ckpt, stages, recipe, hf_class, device)
    kind = torch.device(device).type
    ctx = torch.autocast(kind, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    batches = _Batches(paths, processor)
    if workers:
        batches = torch.utils.data.DataLoader(
            batches, batch_size=None, num_workers=workers, pin_memory=kind == "cuda", prefetch_factor=4
        )
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f, torch.inference_mode(), ctx:
        datasets = None
        done = 0
        for pixels in batches:
            maps = [m.float().cpu() for m in forward(pixels.to(device, non_blocking=True))]
            if datasets is None:
                datasets = [
                    f.create_dataset(n, shape=(len(paths), *m.shape[1:]), dtype="f4", chunks=(1, *m.shape[1:]))
                    for n, m in zip(names, maps)
                ]
            for ds, m in zip(datasets, maps):
                ds[done : done + len(m)] = m.numpy()
            done += len(maps[0])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": len(paths), "images_per_s": len(paths) / seconds}


def run_timm(ckpt: Path, listing: Path, out: Path, indices: list[int], dtype: str) -> dict:
    """The timm recipe (run with the timm venv's python)."""
    import contextlib

    import h5py
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    paths = [Path(p) for p in listing.read_text().splitlines() if p]
    model = timm.create_model(f"local-dir:{ckpt}", pretrained=True, features_only=True, out_indices=indices).eval()
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    names = [str(n) for n in model.feature_info.module_name()]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f, torch.inference_mode(), ctx:
        datasets = None
        for i in range(0, len(paths), BATCH):
            batch = paths[i : i + BATCH]
            pixels = []
            for p in batch:
                with Image.open(p) as im:
                    pixels.append(transform(im.convert("RGB")))
            maps = model(torch.stack(pixels))
            if datasets is None:
                datasets = [
                    f.create_dataset(n, shape=(len(paths), *m.shape[1:]), dtype="f4", chunks=(1, *m.shape[1:]))
                    for n, m in zip(names, maps)
                ]
            for ds, m in zip(datasets, maps):
                ds[i : i + len(batch)] = m.float().numpy()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": len(paths), "images_per_s": len(paths) / seconds}


def vm_bytes(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM). ``VmHWM`` is a process's peak resident
    memory, counted afresh from its exec; ``ru_maxrss`` is not: Linux carries it over from the
    parent through fork and exec, so every child reported at least this runner's own peak (1118 MB
    once it had built the CLIP checkpoint)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(args: list[str]) -> tuple[dict, float]:
    """Run a child process; (its JSON result, its peak RSS in MB, which the child reports itself:
    the parent's RUSAGE_CHILDREN keeps the maximum over all children so far)."""
    # the previous run's output may still be going to disk: let the kernel finish writing it back
    # now, so that no run pays for its predecessor's writeback
    os.sync()
    p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if p.returncode != 0:
        raise SystemExit(f"child failed ({p.returncode}): {' '.join(args)}\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    return result, result.pop("_peak_rss_mb")


def measure(
    side: str,
    ckpt: Path,
    listing: Path,
    out: Path,
    case: Case,
    threads: int,
    extra: list[str] | None = None,
    *,
    device: str = "cpu",
    hf_workers: int = 0,
) -> tuple[dict, float]:
    """One side ("hf" or "bbx") of a case in a fresh process: (its result, its peak RSS in MB). The
    "hf" side of a timm case is the timm recipe, in the timm venv's python; a case with
    ``hf_python`` runs its transformers side in the Python that environment variable names."""
    # the last run's output goes before the sync, not while this run writes: freeing hundreds of MB
    # on this VM's disk (ext4 mounted with discard) made the next writes 2-4x slower (bbx, ConvNeXt-T,
    # all stages, 256 photos: write 0.85-2.1 s with the old file replaced in the run, 0.46-0.48 s
    # with it removed and synced first), landing on whichever side ran next
    for old in (out, out.with_name(out.name + ".partial")):
        old.unlink(missing_ok=True)
    python = [sys.executable]
    if side == "hf" and case.recipe == "timm":
        side, python = "timm", [timm_python()]
    elif side == "hf" and case.hf_python:
        spec = os.environ.get(case.hf_python)
        if not spec:
            raise SystemExit(
                f"case {case.name}: its transformers side needs torchvision; set {case.hf_python} to a Python "
                "(a command line) with torch, torchvision, transformers and h5py"
            )
        python = shlex.split(spec)
    args = [*python, str(Path(__file__)), "--_child", side, "--ckpt", str(ckpt), "--listing", str(listing)]
    args += ["--out", str(out), "--dtype", case.dtype, "--threads", str(threads), "--recipe", case.recipe]
    args += ["--device", device, "--hf-workers", str(hf_workers)]
    if case.hf_class:
        args += ["--hf-class", case.hf_class]
    if case.out_features:
        args += ["--stages", ",".join(case.out_features)]
    if side == "timm":  # timm takes feature_info indices; bbx's stage list of a timm checkpoint is timm's
        from bbx import hub

        names = hub.resolve(str(ckpt), weights=False).spec.stage_names
        chosen = list(case.out_features) if case.out_features else names[-1:]
        args += ["--indices", ",".join(str(names.index(n)) for n in chosen)]
    if extra:
        args += ["--", *extra]
    return _child(args)


def child_main(ns: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(ns.threads)
    stages = ns.stages.split(",") if ns.stages else None
    if ns._child == "timm":
        indices = [int(i) for i in ns.indices.split(",")]
        result = run_timm(Path(ns.ckpt), Path(ns.listing), Path(ns.out), indices, ns.dtype)
    elif ns._child == "hf":
        result = run_transformers(
            Path(ns.ckpt),
            Path(ns.listing),
            Path(ns.out),
            stages,
            ns.dtype,
            ns.recipe,
            ns.hf_class,
            ns.device,
            ns.hf_workers,
        )
    else:
        from typer.testing import CliRunner

        from bbx.cli import app

        args = [
            "extract",
            "-m",
            ns.ckpt,
            "-o",
            ns.out,
            "--overwrite",
            "-b",
            str(BATCH),
            "--dtype",
            ns.dtype,
            "--device",
            ns.device,
            "--json",
            "-q",
            "-0",
            "-",
        ]
        if stages:
            args += ["--out-features", ",".join(stages)]
        args += ns.extra
        listing = "\0".join(Path(ns.listing).read_text().splitlines()) + "\0"
        r = CliRunner().invoke(app, args, input=listing.encode(), catch_exceptions=False)
        if r.exit_code != 0:
            raise SystemExit(f"bbx failed ({r.exit_code}): {r.stderr}")
        rep = json.loads(r.stdout)
        result = {
            "seconds": rep["seconds"],
            "images": rep["done"],
            "images_per_s": rep["images_per_s"],
            "first_batch_s": rep["first_batch_s"],
            "startup": rep.get("startup"),
            "phases": rep.get("phases"),
        }
    result["_peak_rss_mb"] = vm_bytes("VmHWM") / (1 << 20)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cases", default="all", help="comma list of case names, or all: " + ", ".join(c.name for c in CASES)
    )
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workdir", default="/tmp/bbx-bench")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")
    ap.add_argument("--memory", action="store_true", help="also compare bbx's peak memory for 256 vs 2,048 images")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side; the best is kept")
    ap.add_argument("--bbx-args", default="", help="extra bbx extract options, e.g. --fast-decode (opt-in levers)")
    ap.add_argument("--_child", choices=["hf", "bbx", "timm"], help=argparse.SUPPRESS)
    ap.add_argument("--indices", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--listing", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--stages", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    ap.add_argument("--hf-workers", type=int, default=None, help="DataLoader workers of the transformers side")
    ap.add_argument("--json-out", default=None, help="also write every measurement as JSON here")
    ap.add_argument("--recipe", default="backbone", help=argparse.SUPPRESS)
    ap.add_argument("--hf-class", default=None, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns._child:
        child_main(ns)
        return

    import torch

    threads = ns.threads or torch.get_num_threads()
    work = Path(ns.workdir)
    corpus = make_corpus(work / "corpus", ns.images)
    listing = work / f"listing-{ns.images}.txt"
    listing.write_text("\n".join(str(p) for p in corpus) + "\n")
    chosen = CASES if ns.cases == "all" else [c for c in CASES if c.name in ns.cases.split(",")]
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{threads} threads, {len(corpus)} JPEGs (long side 480-1024), batch {BATCH}, best of {ns.repeat}"
        + (f", bbx {ns.bbx_args}" if ns.bbx_args else "")
    )
    header = (
        f"{'case':20} {'dtype':9} {'peer img/s':>19} {'bbx img/s':>10} {'ratio':>6} {'target':>7} "
        f"{'hf peak MB':>10} {'bbx peak MB':>11} {'bbx 1st batch s':>15}"
    )
    print(header)
    hf_workers = (
        ns.hf_workers if ns.hf_workers is not None else (0 if ns.device == "cpu" else min(8, os.cpu_count() or 1))
    )
    side = {"device": ns.device, "hf_workers": hf_workers}
    records = []
    for case in chosen:
        ckpt = make_checkpoint(work, case.alias)
        hf_best, bx_best = None, None
        for _ in range(ns.repeat):
            hf, hf_peak = measure("hf", ckpt, listing, work / "hf.h5", case, threads, **side)
            bx, bx_peak = measure("bbx", ckpt, listing, work / "bbx.h5", case, threads, ns.bbx_args.split(), **side)
            if hf_best is None or hf["images_per_s"] > hf_best[0]["images_per_s"]:
                hf_best = (hf, hf_peak)
            if bx_best is None or bx["images_per_s"] > bx_best[0]["images_per_s"]:
                bx_best = (bx, bx_peak)
        (hf, hf_peak), (bx, bx_peak) = hf_best, bx_best
        ratio = bx["images_per_s"] / hf["images_per_s"]
        ok = "ok" if ratio >= case.target else "MISS"
        print(
            f"{case.name:20} {case.dtype:9} {hf['images_per_s']:19.2f} {bx['images_per_s']:10.2f} {ratio:6.2f} "
            f">={case.target:<4} {ok:4} {hf_peak:10.0f} {bx_peak:11.0f} {bx['first_batch_s']:15.2f}",
            flush=True,
        )
        records.append(
            {
                "case": case.name,
                "dtype": case.dtype,
                "device": ns.device,
                "transformers": hf,
                "bbx": bx,
                "ratio": ratio,
                "target": case.target,
                "hf_peak_mb": hf_peak,
                "bbx_peak_mb": bx_peak,
            }
        )
        if ns.json_out:
            Path(ns.json_out).write_text(json.dumps(records, indent=2))
    if ns.memory:
        case = CASES[0]
        ckpt = make_checkpoint(work, case.alias)
        big = work / "corpus2048"
        big.mkdir(exist_ok=True)
        links = []
        for i in range(2048):
            dst = big / f"photo{i:05d}.jpg"
            if not dst.exists():
                os.link(corpus[i % len(corpus)], dst)
            links.append(dst)
        listing2 = work / "listing-2048.txt"
        listing2.write_text("\n".join(str(p) for p in links) + "\n")
        small_rss = measure("bbx", ckpt, listing, work / "m256.h5", case, threads)[1]
        big_rss = measure("bbx", ckpt, listing2, work / "m2048.h5", case, threads)[1]
        print(
            f"peak memory, {case.name}: 256 images {small_rss:.0f} MB, 2,048 images {big_rss:.0f} MB "
            f"({(big_rss / small_rss - 1) * 100:+.1f}%, target within 10%)"
        )


if __name__ == "__main__":
    main()
