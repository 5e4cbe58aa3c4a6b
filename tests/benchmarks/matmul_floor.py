"""How close bbx's forward is to the time its matrix products alone take on this machine.

Run on purpose (never collected by the test suite)::

    python tests/benchmarks/matmul_floor.py --cases vit-base,clip-b32,convnext-tiny-all

A speed target is a ratio against a peer that runs the same products with the same BLAS (MKL or
oneDNN, through torch). When the model's time is almost all dense products, no choice of the other
kernels can beat the peer by more than the share of its time that is not those products. This
measures that share, per case of the comparison benchmark (its cases.json and checkpoints):

* bbx's forward on a batch of 16 images at the model's input size, as ``bbx bench`` times it
  (:func:`bbx.bench.benchmark`: lanes where the machine's kernel choice says so), in ms per image,
  the best of ``--repeat`` batches;
* the *matmul floor*: every dense product that forward runs (linear layers with or without a fused
  activation, the other matmuls; recorded with torch's profiler on one thread over half the batch,
  convolutions and fused attention excluded), replayed as plain ``torch.addmm`` / ``torch.bmm``
  on random operands of the same shapes, one thread per core at the same time (each core the half
  batch), in ms per image, best of ``--repeat``; and the GFLOP/s this reaches per core;
* optionally (``--peer``) the transformers recipe's forward alone (the model the comparison
  benchmark's peer builds, batch 16, all threads), for the same ratio without decoding or writing.

What is left over (forward minus floor) is the attention, norms, activations, convolutions and
copies: the only part the kernel choices can cut.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.compare_transformers import BATCH, CASES, _cpu_name, _hf_model, make_checkpoint  # noqa: E402

#: the profiler's names of the dense products replayed (the leaves: aten::linear and aten::matmul
#: are recorded too, as the callers of these)
_PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")


def _best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def products(ex, pixels) -> list[tuple[str, tuple[int, ...]]]:
    """The dense products of one forward of ``pixels`` on one thread, lanes off: (kind, dims) with
    kind ``mm`` (dims m, k, n) or ``bmm`` (dims b, m, k, n)."""
    from torch.profiler import profile

    with profile(record_shapes=True) as p:  # the caller runs torch on one thread: no lanes
        ex.forward(pixels)
    found = []
    for e in p.events():
        if e.name not in _PRODUCTS:
            continue
        shapes = [tuple(d) for d in e.input_shapes]
        if e.name == "mkldnn::_linear_pointwise":  # (x, [other,] w, b, ...): x [.., k], w [n, k]
            x = shapes[0]
            w = next(d for d in shapes[1:] if len(d) == 2 and d[1] == x[-1])
            found.append(("mm", (math.prod(x[:-1]), x[-1], w[0])))
            continue
        # (self, mat1, mat2, ...) for addmm / baddbmm, (mat1, mat2, ...) for mm / bmm; an out= last
        a, b = shapes[1:3] if e.name in ("aten::addmm", "aten::baddbmm") else shapes[0:2]
        found.append(("mm", (a[0], a[1], b[1])) if len(a) == 2 else ("bmm", (a[0], a[1], a[2], b[2])))
    return found


def replay_seconds(found: list[tuple[str, tuple[int, ...]]], lanes: int, repeat: int) -> float:
    """Seconds for ``lanes`` threads, one torch thread each, to run ``found`` at the same time (the
    slowest lane, best of ``repeat``)."""
    import torch

    g = torch.Generator().manual_seed(0)
    operands = []
    for kind, d in found:
        if kind == "mm":
            m, k, n = d
            # the weight as a linear layer holds it, [n, k], used transposed
            operands.append((kind, torch.randn(m, k, generator=g), torch.randn(n, k, generator=g).t(), torch.randn(n)))
        else:
            b, m, k, n = d
            operands.append((kind, torch.randn(b, m, k, generator=g), torch.randn(b, k, n, generator=g), None))

    def once() -> None:
        for kind, a, b, bias in operands:
            torch.addmm(bias, a, b) if kind == "mm" else torch.bmm(a, b)

    results: list[float] = []

    def lane() -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            results.append(_best(once, repeat))

    before = torch.get_num_threads()
    try:
        threads = [threading.Thread(target=lane) for _ in range(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(before)
    return max(results)


def flops(found: list[tuple[str, tuple[int, ...]]]) -> float:
    """Multiply-adds times two: ``m k n`` per product (``b m k n`` per batched one)."""
    return 2.0 * sum(math.prod(d) for _, d in found)


def measure(case, ns: argparse.Namespace, threads: int) -> dict:
    """One case's row: printed, and returned for ``--json-out``."""
    import torch

    import bbx
    from bbx.bench import benchmark

    if case.dtype != "float32":
        raise SystemExit(f"{case.name}: the floor is measured for float32 cases")
    ckpt = make_checkpoint(Path(ns.workdir), case.alias)
    stages = list(case.out_features) if case.out_features else None
    ex = bbx.Extractor(str(ckpt), out_features=stages)
    h, w = ex.input_size
    pixels = torch.randn(BATCH, 3, h, w, generator=torch.Generator().manual_seed(0))
    if ex.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    timed = benchmark(str(ckpt), batch_size=BATCH, out_features=stages, pretrained=True, iters=ns.repeat)
    fwd = min(timed.ms_per_batch) / 1e3 / BATCH
    lanes = max(1, min(threads, BATCH))
    with torch.inference_mode():
        torch.set_num_threads(1)
        try:
            found = products(ex, pixels[: BATCH // lanes])
        finally:
            torch.set_num_threads(threads)
    # each lane runs one lane's share of the batch: together the whole batch
    lane_s = replay_seconds(found, lanes, ns.repeat)
    floor = lane_s / BATCH
    gf = flops(found) / lane_s / 1e9
    row = {"case": case.name, "bbx_forward_ms": fwd * 1e3, "floor_ms": floor * 1e3, "gflops_per_core": gf}
    line = f"{case.name:20} {fwd * 1e3:14.1f} {floor * 1e3:12.1f} {gf:9.1f} {floor / fwd:11.0%}"
    if ns.peer and case.recipe == "timm":
        line += "  (the timm recipe: see compare_transformers)"
    elif ns.peer:
        forward, _ = _hf_model(ckpt, stages, case.recipe, case.hf_class)
        plain = pixels.contiguous()
        with torch.inference_mode():
            peer = _best(lambda: forward(plain), ns.repeat) / BATCH
        row["peer_forward_ms"] = peer * 1e3
        line += f" {peer * 1e3:15.1f} {peer / floor:10.2f}"
    print(line, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", required=True, help="comma list of case names of cases.json (fp32 cases)")
    ap.add_argument("--workdir", default="/tmp/bbx-bench", help="the comparison benchmark's workdir (checkpoints)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer", action="store_true", help="also time the transformers recipe's forward alone")
    ap.add_argument("--json-out", default=None)
    ns = ap.parse_args()

    import torch

    threads = torch.get_num_threads()
    print(f"machine: {_cpu_name()}, torch {torch.__version__}, {threads} threads, batch {BATCH}, best of {ns.repeat}")
    print(
        f"{'case':20} {'bbx fwd ms/img':>14} {'matmul floor':>12} {'GF/s/core':>9} {'floor share':>11}"
        + (f" {'peer fwd ms/img':>15} {'peer/floor':>10}" if ns.peer else "")
    )
    rows = [measure(case, ns, threads) for case in CASES if case.name in ns.cases.split(",")]
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
