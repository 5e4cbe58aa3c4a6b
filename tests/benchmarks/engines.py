"""Images/s of ``bbx extract`` against ``--engine ray`` and ``--devices`` (a measurement, not a
test; run it on an idle machine).

Each engine is run twice in fresh processes, on ``--small`` and on ``--images`` photo-like JPEGs,
and its rate *after start-up* is the marginal one, ``(images - small) / (t(images) - t(small))``,
so Ray's start (a local cluster, actors, model loads) is left out as the issue asks; the overall
rate is printed too. The target: ray >= 0.85 x plain on 2,048 images::

    python tests/benchmarks/engines.py --model resnet-50 [--images 2048] [--small 128]
        [--engines plain ray devices] [--devices cpu,cpu] [--batch-size 32] [-- extra bbx args]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def corpus(folder: Path, n: int) -> Path:
    """``n`` distinct photo-like 640x480 JPEGs (the first ``n`` of one deterministic set)."""
    from tests.util import photo

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = folder / f"img{i:05d}.jpg"
        if not p.exists():
            photo(640, 480, seed=i).save(p, quality=90)
    return folder


def timed(cmd: list[str], env: dict[str, str]) -> float:
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--small", type=int, default=128)
    ap.add_argument("--model", required=True, help="an alias (random weights unless --pretrained is passed on)")
    ap.add_argument("--engines", nargs="+", default=["plain", "ray"], choices=["plain", "ray", "devices"])
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("extra", nargs="*", help="more bbx extract arguments (after --)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bbx-engines-"))
    try:
        pool = corpus(work / "pool", args.images)
        sets = {}
        for n in (args.small, args.images):
            sub = work / f"set{n}"
            sub.mkdir()
            for p in sorted(pool.iterdir())[:n]:
                os.link(p, sub / p.name)
            sets[n] = sub
        base = [sys.executable, "-m", "bbx", "extract", "-m", args.model, "-b", args.batch_size, "-q", *args.extra]
        if "--pretrained" not in args.extra:
            base.append("--no-pretrained")
        flags = {"plain": [], "ray": ["--engine", "ray"], "devices": ["--devices", args.devices]}
        rates = {}
        print(f"{'engine':>8} {'images':>7} {'seconds':>8} {'overall/s':>10} {'after start-up/s':>17}")
        for engine in args.engines:
            times = {}
            for n, folder in sets.items():
                out = work / f"{engine}-{n}.h5"
                times[n] = timed([*base, *flags[engine], "-o", str(out), str(folder)], env)
                out.unlink(missing_ok=True)
            marginal = (args.images - args.small) / max(1e-9, times[args.images] - times[args.small])
            rates[engine] = marginal
            overall = args.images / times[args.images]
            print(f"{engine:>8} {args.images:>7} {times[args.images]:>8.1f} {overall:>10.1f} {marginal:>17.1f}")
        if "plain" in rates:
            for engine, r in rates.items():
                if engine != "plain":
                    print(f"{engine} / plain after start-up: {r / rates['plain']:.2f} (target >= 0.85 for ray)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
