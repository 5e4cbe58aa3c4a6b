"""The kernel choice is measured per machine (bbx.nn.kernels): the probe keeps the fastest
candidate of each lever, the choice is cached per CPU and torch, and the layers follow it."""

from __future__ import annotations

import json

import pytest
import torch

from bbx.nn import kernels, layers
from tests.parity import photos
from tests.util import rel_err


def _probe_with(dtype: str, slow: set[str]) -> kernels.Choice:
    """probe() with every candidate timed as fast except ``slow`` (lever.mode names)."""
    names = [f"{lever}.{mode}" for lever, modes in kernels._candidates(getattr(torch, dtype)).items() for mode in modes]
    order = iter(names)
    return kernels.probe(dtype, measure=lambda fn: 100.0 if next(order) in slow else 1.0)


def test_the_probe_picks_another_path_where_fused_bf16_is_slower(monkeypatch):
    """On every CPU: the timings are fake (no candidate runs), so a CPU without fused bf16
    kernels (AMD EPYC, AVX2 only) is told it has them, to make the fused path a candidate."""
    if not layers.onednn_fusion_available():
        pytest.skip("no fused oneDNN kernels in this torch")
    monkeypatch.setattr(layers, "onednn_bf16_available", lambda: True)
    fast = _probe_with("bfloat16", slow={"linear.eager", "linear.float32", "conv.eager", "conv.float32"})
    assert fast.linear == fast.conv == "fused" and fast.source == "probe"
    slow = _probe_with("bfloat16", slow={"linear.fused", "conv.fused", "conv.float32", "linear.float32"})
    assert slow.linear == slow.conv == "eager"
    fp32 = _probe_with("bfloat16", slow={"linear.fused", "conv.fused", "conv.eager", "linear.eager"})
    assert fp32.linear == fp32.conv == "float32"
    assert set(fast.timings) >= {"linear.fused", "linear.eager", "conv.fused", "attention.sdpa"}


def _conv_calls(monkeypatch):
    # the availability checks and the first probe run the fused ops once (then cached): run them
    # before the spy, so that only the model's calls count whichever test ran first
    layers.onednn_fusion_available(), layers.onednn_bf16_available()
    kernels.choice("float32"), kernels.choice("bfloat16")
    calls = []
    real = torch.ops.mkldnn._convolution_pointwise

    class Spy:
        def __call__(self, *a, **k):
            calls.append("unary")
            return real(*a, **k)

        def binary(self, *a, **k):
            calls.append("binary")
            return real.binary(*a, **k)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", Spy())
    return calls


@pytest.mark.parametrize("mode", ["fused", "eager", "float32"])
def test_the_model_follows_the_choice_at_parity(monkeypatch, mode):
    """Each mode a probe can pick computes the same maps (to bf16 rounding); only "fused" runs
    the fused oneDNN convolutions."""
    if mode == "fused" and not layers.onednn_bf16_available():
        pytest.skip("no fused bf16 kernels on this CPU")
    from bbx.extractor import Extractor

    calls = _conv_calls(monkeypatch)
    ex = Extractor("resnet-18", pretrained=False, dtype="bfloat16", out_indices=[2])
    x = photos(64, 2).contiguous(memory_format=torch.channels_last)
    with kernels.override("bfloat16", conv=mode, linear=mode):
        (got,) = ex.forward(x)
    with torch.inference_mode(), kernels.override("float32", conv="eager", linear="eager"):
        (want,) = ex.model(x)  # the same weights, fp32, plain eager ops
    assert (len(calls) > 0) == (mode == "fused")
    assert got.dtype == torch.bfloat16 and rel_err(got.float(), want) < 2e-2


def test_choices_are_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("BBX_CACHE", str(tmp_path))
    kernels._chosen.cache_clear()
    monkeypatch.setattr(kernels, "probe", lambda dtype: kernels.Choice(dtype, "eager", "eager", source="probe"))
    first = kernels.choice("bfloat16")
    assert first.source == "probe" and first.linear == "eager"
    (file,) = tmp_path.glob("kernels-*.json")
    data = json.loads(file.read_text())
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cpu"]
    kernels._chosen.cache_clear()
    monkeypatch.setattr(kernels, "probe", lambda dtype: pytest.fail("probed again"))
    again = kernels.choice("bfloat16")
    assert again.source == "cache" and again.linear == "eager"
    kernels._chosen.cache_clear()


def test_bbx_kernels_eager_turns_every_lever_off(monkeypatch):
    monkeypatch.setenv("BBX_KERNELS", "eager")
    kernels._chosen.cache_clear()
    try:
        c = kernels.choice("float32")
        assert (c.linear, c.conv, c.attention, c.row_slices, c.source) == ("eager", "eager", "sdpa", False, "eager")
    finally:
        kernels._chosen.cache_clear()


def test_a_real_probe_runs_quickly_and_names_every_lever():
    import time

    t = time.perf_counter()
    c = kernels.probe("float32")
    assert time.perf_counter() - t < 20
    assert c.linear in kernels.LINEAR_MODES and c.conv in kernels.LINEAR_MODES
    assert {"linear.eager", "conv.eager", "row_slices.whole", "row_slices.sliced"} <= set(c.timings)
