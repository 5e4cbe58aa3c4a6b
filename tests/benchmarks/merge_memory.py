"""Peak memory of ``bbx merge`` against the number of rows (a measurement, not a test).

Writes synthetic shards (written by bbx's own writers, no model) of ``--rows`` rows in total for
each size asked, merges them with ``bbx merge`` in a fresh process, and prints the merge's peak
resident memory (``ru_maxrss`` of the child) and time. Flat memory means the peak does not grow
with the rows (the paths themselves, ~100 bytes each, are the only thing held per row)::

    python tests/benchmarks/merge_memory.py --rows 1000 5000 20000 [--shards 8] [--to safetensors]
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


def make_shards(folder: Path, rows: int, shards: int, fmt: str) -> None:
    import numpy as np

    from bbx.formats import RunFacts, StageLayout, open_writer
    from bbx.shards import Shard, digest

    names = [f"photos/{i // 1000:04d}/img{i:08d}.jpg" for i in range(rows)]
    stages = [StageLayout("stage3", (64, 14, 14), "bfloat16"), StageLayout("stage4", (128, 7, 7), "float32")]
    facts = RunFacts(
        model="m",
        checkpoint="org/m",
        architecture="synthetic",
        weights="random (seed 0)",
        out_features=("stage3", "stage4"),
        out_indices=(3, 4),
        input_size=(224, 224),
        store_dtype="bfloat16",
        cwd=str(folder),
        input_count=rows,
        input_digest=digest(names),
    )
    rng = np.random.default_rng(0)
    batch = 64
    for k in range(shards):
        start, stop = Shard(k, shards).bounds(rows)
        suffix = ".h5" if fmt == "hdf5" else ".safetensors"
        w = open_writer(
            folder / f"feats.shard-{k:05d}-of-{shards:05d}{suffix}",
            fmt,
            facts=facts.with_(shard_index=k, shard_count=shards),
            stages=stages,
        )
        for a in range(start, stop, batch):
            b = min(stop, a + batch)
            maps = {
                "stage3": rng.integers(0, 2**16, (b - a, 64, 14, 14), dtype=np.uint16),
                "stage4": rng.standard_normal((b - a, 128, 7, 7), dtype=np.float32),
            }
            w.write(names[a:b], maps)
        w.finish("complete")


_MEASURE = """
import resource, subprocess, sys
subprocess.run([sys.argv[1], "-m", "bbx", "merge", "-q", "-o", sys.argv[2], sys.argv[3]], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--from", dest="src", default="hdf5", choices=["hdf5", "safetensors"])
    ap.add_argument("--to", default="safetensors", choices=["hdf5", "safetensors"])
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"{'rows':>8} {'shard data':>11} {'peak RSS':>10} {'seconds':>8}")
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix="bbx-merge-mem-"))
        try:
            make_shards(work / "shards", rows, args.shards, args.src)
            data = sum(f.stat().st_size for f in (work / "shards").iterdir())
            out = work / ("merged.h5" if args.to == "hdf5" else "merged.safetensors")
            t0 = time.perf_counter()
            # a fresh parent per measurement: RUSAGE_CHILDREN keeps the largest child's peak
            r = subprocess.run(
                [sys.executable, "-c", _MEASURE, sys.executable, str(out), str(work / "shards")],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - t0
            peak_kb = int(r.stdout.split()[-1])
            print(f"{rows:>8} {data / 1e6:>9.0f}MB {peak_kb / 1024:>8.0f}MB {seconds:>8.1f}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
