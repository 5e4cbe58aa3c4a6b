"""The shared inference kernels in bbx.nn.layers: row slices and low-precision attention."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bbx.nn import layers
from tests.util import rel_err


def _block(dim: int = 16, hidden: int = 64, seed: int = 0):
    """A ConvNeXt-like row-wise block: LayerNorm, fc1 + GELU, fc2 + residual (fused kernels)."""
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.LayerNorm(dim)
    fc1, fc2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)
    with torch.no_grad():
        for p in (*norm.parameters(), *fc1.parameters(), *fc2.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        h = layers.linear_act(norm(x), fc1, "gelu", fused=True)
        return layers.linear_act(h, fc2, add=rows, fused=True)

    return fn


def test_row_slices_give_the_numbers_of_one_call(monkeypatch):
    fn = _block()
    calls = []

    def counted(*a):
        calls.append(a[0].shape[0])
        return fn(*a)

    from bbx.nn import kernels

    x, r = torch.randn(3, 37, 41, 16), torch.randn(3, 37, 41, 16)
    with torch.inference_mode(), kernels.override("float32", row_slices=True):
        whole = fn(x, r)
        monkeypatch.setattr(layers, "SLICE_BYTES_PER_THREAD", 64)
        sliced = layers.in_row_slices(counted, x, r, width=64)
    assert len(calls) > 10 and sum(calls) == 3 * 37 * 41 and min(calls[:-1]) >= 256
    assert sliced.shape == whole.shape and torch.equal(sliced, whole)


def test_small_tensors_are_left_whole():
    calls = []
    x = torch.randn(8, 16)
    with torch.inference_mode():
        y = layers.in_row_slices(lambda t: calls.append(t) or t * 2, x, width=64)
    assert len(calls) == 1 and torch.equal(y, x * 2)


def _qkv(b: int, heads: int, n: int, d: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(b, n, 3, heads, d, generator=g).to(dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # the strided views a fused projection gives


@pytest.mark.skipif(not layers.onednn_bf16_matmul(), reason="bf16 attention keeps SDPA on this CPU")
@pytest.mark.parametrize("budget", [None, 1])
def test_low_precision_attention_on_cpu_matches_sdpa(monkeypatch, budget):
    """bf16 runs as matmul + softmax + matmul, a few images at a time (budget 1: one image per
    slice); its error against fp32 attention is that of bf16 (SDPA's own is about half)."""
    from bbx.nn import kernels

    if budget is not None:
        monkeypatch.setattr(layers, "SLICE_BYTES_PER_THREAD", budget)
    q, k, v = _qkv(5, 3, 50, 16, torch.bfloat16)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode(), kernels.override("bfloat16", attention="sliced"):
        got = layers.attention(q, k, v)
        fused_kernel = F.scaled_dot_product_attention(q, k, v)
    with torch.inference_mode(), kernels.override("bfloat16", attention="sdpa"):
        assert torch.equal(layers.attention(q, k, v), fused_kernel)  # the other choice keeps SDPA
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    assert not torch.equal(got, fused_kernel)  # the matmul path ran, not SDPA
    assert rel_err(got.double(), exact) <= 1e-2
    assert rel_err(got.double(), exact) <= 3 * rel_err(fused_kernel.double(), exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_other_dtypes_keep_the_fused_kernel_bit_for_bit(dtype):
    q, k, v = _qkv(4, 2, 33, 8, dtype)
    with torch.inference_mode():
        assert torch.equal(layers.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_quick_gelu_folds_into_one_silu_pass():
    """CLIP's MLP with QuickGELU, its factor folded into fc1 and fc2 (frozen inference), gives
    the same numbers to fp32 rounding with one SiLU over the hidden units; other activations
    stay as they are."""
    torch.manual_seed(0)
    mlp = layers.Mlp(48, 192, "quick_gelu").eval()
    x = torch.randn(2, 50, 48) * 3
    with torch.inference_mode():
        want = mlp(x)
    layers.fold_quick_gelu_(mlp)
    assert mlp.act_name == "silu"
    with torch.inference_mode():
        assert rel_err(mlp(x), want) < 1e-6
    gelu = layers.Mlp(48, 192, "gelu")
    before = gelu.fc1.weight.clone()
    layers.fold_quick_gelu_(gelu)
    assert gelu.act_name == "gelu" and torch.equal(gelu.fc1.weight, before)


def test_an_eager_linear_sums_its_residual_inside_the_matmul(monkeypatch):
    """Where the machine's choice is the eager matmul, a linear with a residual is one addmm
    accumulating onto residual + bias (no separate sum pass), with the numbers of fc(x) + r."""
    from bbx.nn import kernels

    g = torch.Generator().manual_seed(5)
    fc = torch.nn.Linear(24, 48)
    x, r = torch.randn(3, 10, 24, generator=g), torch.randn(3, 10, 48, generator=g)
    r0 = r.clone()
    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode(), kernels.override("float32", linear="eager"):
        got = layers.linear_act(x, fc, add=r, fused=True)
        plain = layers.linear_act(x, fc, add=r, fused=False)  # not bbx's frozen inference: plain ops
    assert len(calls) == 1 and rel_err(got, fc(x) + r) < 1e-6 and torch.equal(plain, fc(x) + r)
    assert got.shape == r.shape and torch.equal(r, r0)  # the residual itself is untouched
