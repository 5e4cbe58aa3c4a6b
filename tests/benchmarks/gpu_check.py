"""The prepared GPU check (run by gpu_check.sh on a lent GPU machine; the suite runs its parity
part on the CPU only, as a smoke test).

1. ``parity``: for every family, the smallest public config with seeded random weights, CUDA
   against CPU on a batch of photo-like images: fp32 with TF32 off (relative error <= 1e-4 per
   stage) and bf16 (<= 1e-2 against CPU fp32, or, for a net whose bf16 rounding alone costs more,
   within 1.25x of plain CPU autocast's error); ``parity OUT resnet,vit`` checks only those
   families. ``GPU_CHECK_DEVICE=cpu`` runs it without a GPU (tests/test_gpu_check.py does, so
   that the script works when a GPU machine is lent).
2. ``speed`` is compare_transformers.py --device cuda (gpu_check.sh drives it case by case while
   sampling GPU utilisation); ``summary`` prints one table of everything from the JSON it wrote.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: where the check runs (cpu only to smoke-test this script on a machine without a GPU)
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
sys.path.insert(0, str(ROOT))


def _rel(a, b) -> float:
    import torch

    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def _smallest(fam) -> tuple[str, bool] | None:
    """The alias of the family's smallest public config, and whether it needs an --image-size
    (a task row sized per image)."""
    from bbx import registry
    from bbx.preprocess import Preprocess

    def size(row):
        try:
            return fam.parse(row.config).parameter_count() or 0
        except Exception:  # a row the settings cannot estimate: keep the catalog's order
            return 0

    if fam.catalog:
        row = min(fam.catalog, key=size)
    elif fam.timm is not None:  # timm-layout networks: their architectures come smallest first
        return f"timm:{fam.timm.architectures[0].name}", False
    else:  # a family only inside task checkpoints: the first task row carrying it
        row = next((r for r in registry.task_rows() if r.checkpoint().family is fam), None)
        if row is None:
            return None
    return row.alias, Preprocess.from_checkpoint(row.checkpoint()).output_size is None


def _plain_bf16_error(alias: str, common: dict, batch: list, want: dict) -> float:
    """The max relative error of plain eager bf16 autocast on the CPU (no bbx kernel levers)
    against the CPU's fp32 maps: what bf16 rounding alone costs this network."""
    from bbx.extractor import Extractor
    from bbx.nn import kernels

    plain = Extractor(alias, device="cpu", dtype="bfloat16", **common)
    with kernels.using(kernels.plain("bfloat16")):
        got = plain(batch)
    return max(_rel(got[s], want[s]) for s in plain.stages)


def parity(out: Path, only: set[str] | None = None) -> int:
    import torch

    from bbx import hub, registry
    from bbx.extractor import Extractor

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from tests.util import photo

    rows, failures = [], 0
    for fam in registry.families():
        if only is not None and fam.name not in only:
            continue
        found = _smallest(fam)
        if found is None:
            continue
        alias, sized = found
        t = time.perf_counter()
        try:
            common: dict = {"pretrained": False, **({"image_size": 224} if sized else {})}
            common["out_indices"] = list(range(len(hub.resolve(alias, weights=False).spec.stage_names)))
            cpu = Extractor(alias, device="cpu", **common)
            gpu = Extractor(alias, device=DEVICE, **common)
            gbf = Extractor(alias, device=DEVICE, dtype="bfloat16", **common)
            # camera-like sizes and aspect ratios, each extractor preprocessing them its own way
            batch = [photo(w, h, seed=i) for i, (w, h) in enumerate(((640, 480), (480, 640), (500, 500), (800, 450)))]
            want, got, low = cpu(batch), gpu(batch), gbf(batch)
            fp32 = max(_rel(got[s], want[s]) for s in cpu.stages)
            bf16 = max(_rel(low[s], want[s]) for s in cpu.stages)
            row = {"family": fam.name, "alias": alias, "fp32": fp32, "bf16": bf16}
            if bf16 > 1e-2:
                # a deep net's bf16 rounding alone can pass 1e-2 (random-weight Swin-B: 1.2e-2 in
                # plain CPU autocast): then bf16 is judged against that, plain autocast of the same
                # weights on the CPU, and must stay within 1.25 times its error
                row["bf16_cpu_autocast"] = _plain_bf16_error(alias, common, batch, want)
            row["ok"] = fp32 <= 1e-4 and (bf16 <= 1e-2 or bf16 <= 1.25 * row.get("bf16_cpu_autocast", 0.0))
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
        except Exception as e:  # report and go on: one family must not hide the others
            rows.append({"family": fam.name, "alias": alias, "error": f"{type(e).__name__}: {e}", "ok": False})
        failures += not rows[-1]["ok"]
        print(json.dumps(rows[-1]), flush=True)
    (out / "parity.json").write_text(json.dumps(rows, indent=2))
    return failures


def summary(out: Path) -> None:
    parity_rows = json.loads((out / "parity.json").read_text()) if (out / "parity.json").exists() else []
    print(
        "\nCUDA vs CPU parity (max relative error over all stages; fp32 TF32 off <= 1e-4, "
        "bf16 <= 1e-2 or 1.25x CPU autocast's)"
    )
    for r in parity_rows:
        if "error" in r:
            print(f"  {r['family']:18} {r['alias']:34} ERROR {r['error'][:120]}")
        else:
            verdict = "ok" if r["ok"] else "FAIL"
            plain = f" (CPU autocast {r['bf16_cpu_autocast']:.2e})" if "bf16_cpu_autocast" in r else ""
            print(f"  {r['family']:18} {r['alias']:34} fp32 {r['fp32']:.2e}  bf16 {r['bf16']:.2e}{plain}  {verdict}")
    print("\nend to end on the GPU, 256 photos, batch 16 (images/s; bbx phases in seconds; GPU utilisation %)")
    for f in sorted(out.glob("speed-*.json")):
        for rec in json.loads(f.read_text()):
            bx, hf = rec["bbx"], rec["transformers"]
            util = (
                json.loads((out / f"{f.stem}.util.json").read_text()) if (out / f"{f.stem}.util.json").exists() else {}
            )
            ph = bx.get("phases") or {}
            print(
                f"  {rec['case']:24} transformers {hf['images_per_s']:8.1f}  bbx {bx['images_per_s']:8.1f}  "
                f"ratio {rec['ratio']:5.2f}  decode {ph.get('decode_s', 0):.2f} compute {ph.get('compute_s', 0):.2f} "
                f"write {ph.get('write_s', 0):.2f}  "
                f"util mean {util.get('mean', float('nan')):.0f} max {util.get('max', float('nan')):.0f}"
            )


def utilisation(csv: Path, out: Path) -> None:
    values = []
    for line in csv.read_text().splitlines():
        try:
            values.append(float(line.split(",")[0]))
        except ValueError:
            pass
    busy = [v for v in values if v > 0]
    out.write_text(
        json.dumps(
            {
                "samples": len(values),
                "mean": sum(busy) / len(busy) if busy else 0.0,
                "max": max(values) if values else 0.0,
            }
        )
    )


if __name__ == "__main__":
    what, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    if what == "parity":  # parity OUT [family,family,...]
        sys.exit(1 if parity(folder, set(sys.argv[3].split(",")) if len(sys.argv) > 3 else None) else 0)
    if what == "util":
        utilisation(Path(sys.argv[3]), folder / sys.argv[4])
    if what == "summary":
        summary(folder)
