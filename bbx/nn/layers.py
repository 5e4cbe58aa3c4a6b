"""Pieces that more than one family uses: activations named as in checkpoint configs."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bbx.errors import ModelError

#: QuickGELU's factor: ``x * sigmoid(1.702 x)`` (CLIP's activation)
QUICK_GELU = 1.702


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU * x)


class _TanhGELU(nn.Module):
    """The tanh approximation of GELU written out, as configs call ``gelu_new``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _GELU(nn.Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": _GELU,
    "gelu_pytorch_tanh": lambda: _GELU("tanh"),
    "gelu_new": _TanhGELU,
    "quick_gelu": _QuickGELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "linear": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """The activation a config's ``hidden_act`` names, with the same numerics as transformers'."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ModelError(
            f"unsupported activation {name!r} in config; supported: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


# --- fused inference ops ----------------------------------------------------------------------
#
# On CPU, torch ships oneDNN kernels that run a linear layer or a convolution together with its
# activation and a residual sum (``mkldnn::_linear_pointwise`` / ``_convolution_pointwise``, the
# kernels torch.compile's CPU backend emits). They save a pass over every activation tensor:
# measured on 2 cores, ResNet-50 +30% in fp32 and +20% in bf16, ConvNeXt-T +17% in fp32, the
# same numbers to fp32 rounding. They are internal to torch, so bbx uses them only after a probe
# shows they exist and agree with the eager ops, and falls back to eager everywhere else (other
# devices, other activations, training, a torch without them).

#: bbx activation name -> (oneDNN post-op, its algorithm)
_ONEDNN_ACTS = {"relu": ("relu", ""), "gelu": ("gelu", "none"), "gelu_pytorch_tanh": ("gelu", "tanh")}


@functools.lru_cache(maxsize=1)
def onednn_fusion_available() -> bool:
    """Whether the fused oneDNN CPU ops exist here and match the eager ops on a small probe."""
    try:
        ops = torch.ops.mkldnn
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):

            def rand(*shape: int) -> torch.Tensor:
                return torch.randn(*shape, generator=g, device="cpu")

            x, w, b, r = rand(32, 24), rand(16, 24), rand(16), rand(32, 16)
            ok = torch.allclose(
                ops._linear_pointwise(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)), 1e-5, 1e-5
            )
            ok &= torch.allclose(ops._linear_pointwise.binary(x, r, w, b, "add"), F.linear(x, w, b) + r, 1e-5, 1e-5)
            xi = rand(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
            cw, cb = rand(6, 8, 3, 3), rand(6)
            other = rand(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
            want = F.conv2d(xi, cw, cb, stride=2, padding=1)
            got = ops._convolution_pointwise(xi, cw, cb, [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
            ok &= torch.allclose(got, F.relu(want), 1e-5, 1e-5)
            got = ops._convolution_pointwise.binary(
                xi, other, cw, cb, [1, 1], [2, 2], [1, 1], 1, "add", None, "relu", [], ""
            )
            ok &= torch.allclose(got, F.relu(want + other), 1e-5, 1e-5)
        return bool(ok)
    except Exception:  # an older or newer torch without these ops, or a CPU oneDNN does not support
        return False


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear/conv computes in: autocast's on CPU when it is on, else the input's."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _cast_params(module: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight and bias in ``dtype``, cast once; cast again if a weight was changed or
    replaced since (its version counter or storage moved)."""
    cache = module.__dict__.setdefault("_bbx_cast", {})
    w, b = module.weight, module.bias
    key = (dtype, w._version, w.data_ptr(), None if b is None else (b._version, b.data_ptr()))
    if cache.get(dtype, (None,))[0] != key:
        cache[dtype] = (key, w.detach().to(dtype), b.detach().to(dtype) if b is not None else None)
    return cache[dtype][1], cache[dtype][2]


@functools.lru_cache(maxsize=1)
def onednn_bf16_available() -> bool:
    """Whether the fused kernels also run in bfloat16 here (oneDNN needs AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT for it; elsewhere they raise where eager autocast works)."""
    if not onednn_fusion_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            x = torch.randn(8, 16, generator=g, device="cpu").bfloat16()
            w = torch.randn(4, 16, generator=g, device="cpu").bfloat16()
            y = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            return bool(torch.allclose(y.float(), F.linear(x.float(), w.float()), rtol=2e-2, atol=2e-2))
    except Exception:
        return False


def _mode(x: torch.Tensor, kind: str, act: str | None) -> str:
    """How a layer marked ``fused`` computes on ``x``: ``fused`` (one oneDNN kernel), ``eager``
    (PyTorch's ops, through autocast) or ``float32`` (bf16 compute done in fp32, rounded after),
    as this machine's measured kernel choice (:mod:`bbx.nn.kernels`) says for the compute dtype;
    always ``eager`` off the CPU, with autograd, or for activations oneDNN does not fuse."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return "eager"
    dt = compute_dtype(x)
    if dt not in (torch.float32, torch.bfloat16):
        return "eager"
    from bbx.nn import kernels

    mode = getattr(kernels.choice(dt), kind)
    if mode == "fused":
        ok = onednn_fusion_available() if dt == torch.float32 else onednn_bf16_available()
        if not ok or (act is not None and act not in _ONEDNN_ACTS):
            return "eager"
    if mode == "float32" and dt == torch.float32:
        return "eager"
    return mode


def linear_act(
    x: torch.Tensor,
    linear: nn.Linear,
    act: str | None = None,
    *,
    add: torch.Tensor | None = None,
    fused: bool = False,
) -> torch.Tensor:
    """``act(linear(x))``, or ``linear(x) + add`` (no activation then), in one oneDNN kernel when
    ``fused`` and possible, else with the eager ops. A residual in another dtype than the compute
    dtype is added after the fused product, as autocast's type promotion does (a bf16 product
    added to an fp32 residual stream stays fp32)."""
    mode = _mode(x, "linear", act) if fused else "eager"
    if mode == "float32":
        with torch.autocast("cpu", enabled=False):
            y = F.linear(x.float(), linear.weight, linear.bias)
            if act is not None:
                y = _eager_act(act)(y)
            y = y.to(torch.bfloat16)
        return y + add if add is not None else y
    if mode == "fused" and (add is None or act is None):
        dt = compute_dtype(x)
        if add is not None and add.dtype != dt:
            return add + linear_act(x, linear, fused=True)
        w, b = _cast_params(linear, dt)
        rows = x.reshape(-1, x.shape[-1]).to(dt)
        if add is not None:
            y = torch.ops.mkldnn._linear_pointwise.binary(rows, add.reshape(-1, w.shape[0]), w, b, "add")
        elif act is None:
            y = torch.ops.mkldnn._linear_pointwise(rows, w, b, "none", [], "")
        else:
            name, algo = _ONEDNN_ACTS[act]
            y = torch.ops.mkldnn._linear_pointwise(rows, w, b, name, [], algo)
        return y.view(*x.shape[:-1], w.shape[0])
    if fused and add is not None and act is None and _fits(x, add, linear):
        return _linear_add(x, linear, add)
    y = linear(x)
    if act is not None:
        y = _eager_act(act)(y)
    return y + add if add is not None else y


def _fits(x: torch.Tensor, add: torch.Tensor, linear: nn.Linear) -> bool:
    """Whether ``add`` is a whole residual for ``linear(x)`` (its shape, one dtype, no autocast)."""
    same = x.dtype == add.dtype == linear.weight.dtype == compute_dtype(x)
    return same and add.shape == (*x.shape[:-1], linear.out_features)


def _linear_add(x: torch.Tensor, linear: nn.Linear, add: torch.Tensor) -> torch.Tensor:
    """``linear(x) + add`` as one matmul accumulating onto ``add + bias``: the product is summed
    into the output in the matmul's own pass rather than written, read back and summed in another
    (2-core EPYC, lanes, eager linears: ViT-B/16's forward 300 -> 289 ms an image, median of 5).
    The same sum to fp32 rounding."""
    rows = x.reshape(-1, x.shape[-1])
    base = add.reshape(-1, linear.out_features)
    if linear.bias is not None:
        base = base + linear.bias  # a new tensor: the matmul accumulates into it
        return torch.addmm(base, rows, linear.weight.t(), out=base).view_as(add)
    return torch.addmm(base, rows, linear.weight.t()).view_as(add)


def conv_act(
    x: torch.Tensor,
    conv: nn.Conv2d,
    act: str | None = None,
    *,
    add: torch.Tensor | None = None,
    fused: bool = False,
) -> torch.Tensor:
    """``act(conv(x) [+ add])`` in one oneDNN kernel when ``fused`` and possible, else eager."""
    mode = _mode(x, "conv", act) if fused else "eager"
    if mode == "float32":
        with torch.autocast("cpu", enabled=False):
            y = F.conv2d(x.float(), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            y = y.to(torch.bfloat16)
        if add is not None:
            y = y + add
        return _eager_act(act)(y) if act is not None else y
    if (
        mode == "fused"
        and isinstance(conv.padding, tuple)
        and conv.padding_mode == "zeros"
        and (add is None or add.dtype == compute_dtype(x))
    ):
        dt = compute_dtype(x)
        w, b = _cast_params(conv, dt)
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        name, algo = _ONEDNN_ACTS[act] if act is not None else ("none", "")
        xin = x.to(dt)
        if add is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                xin, add, w, b, *args, "add", None, name if act is not None else None, [], algo or None
            )
        return torch.ops.mkldnn._convolution_pointwise(xin, w, b, *args, name, [], algo)
    y = conv(x)
    if add is not None:
        y = y + add
    return _eager_act(act)(y) if act is not None else y


@torch.no_grad()
def fold_scale_(linear: nn.Linear, scale: torch.Tensor) -> None:
    """Make ``linear(x)`` compute ``scale * linear(x)`` (a per-output-channel layer scale): the
    factor folded into the weight and bias, ``g * (W h + b) = (g W) h + g b``, equal to fp32
    rounding."""
    linear.weight.mul_(scale[:, None])
    if linear.bias is not None:
        linear.bias.mul_(scale)


#: bytes per torch thread of a row slice's widest intermediate (see :func:`in_row_slices`; 2 MiB
#: measured best on 2 cores with 2 MiB of L2 each, against 0.25 to 8 MiB)
SLICE_BYTES_PER_THREAD = 2 << 20


def in_row_slices(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, *more: torch.Tensor, width: int, force: bool = False
) -> torch.Tensor:
    """``fn(x, *more)`` for a row-wise ``fn`` (LayerNorm, linear layers, activation, residual
    sum: each output row depends on the same rows of the inputs only), run over slices of rows
    small enough that ``fn``'s intermediates, ``width`` values per row, stay in cache instead of
    streaming through memory. All but the last dimension are rows; ``x`` and ``more`` have the same
    rows (inputs that are not contiguous run whole).

    The numbers are the same as in one call (oneDNN reduces each row in the same order whatever
    the row count). Measured on 2 cores, the fused ConvNeXt MLP (LayerNorm, fc1 + GELU, fc2 +
    residual) on 50,176 rows of 96 channels: 78 -> 45 ms in fp32, 50 -> 30 ms in bf16; on 12,544
    rows of 192: 50 -> 40 ms. Tensors whose intermediate fits in a few caches gain nothing, and
    are left whole, and so is everything where this machine's kernel choice turns row slices off
    (:mod:`bbx.nn.kernels`); ``force`` slices whatever the size and the choice (the probe times it)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    dt = compute_dtype(x)
    row_bytes = width * (2 if dt in (torch.bfloat16, torch.float16) else 4)
    budget = SLICE_BYTES_PER_THREAD * max(1, torch.get_num_threads())
    small = rows * row_bytes <= 8 * budget
    if not force and (x.device.type != "cpu" or small or not _row_slices_chosen(dt)):
        return fn(x, *more)
    if not all(t.is_contiguous() for t in (x, *more)):
        return fn(x, *more)
    slices = -(-rows * row_bytes // budget)
    step = max(256, -(-rows // slices))
    flat = [t.view(rows, t.shape[-1]) for t in (x, *more)]
    out: torch.Tensor | None = None
    for start in range(0, rows, step):
        y = fn(*(t[start : start + step] for t in flat))
        if out is None:
            out = y.new_empty((rows, y.shape[-1]))
        out[start : start + step] = y
    assert out is not None
    return out.view(*x.shape[:-1], out.shape[-1])


def _row_slices_chosen(dt: torch.dtype) -> bool:
    if dt not in (torch.float32, torch.bfloat16):
        return True
    from bbx.nn import kernels

    return kernels.choice(dt).row_slices


@functools.lru_cache(maxsize=1)
def onednn_bf16_matmul() -> bool:
    """Whether torch runs bf16 matmuls on this CPU with oneDNN (AVX-512 or newer), not its slow
    reference kernel."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # a torch without the op
        return False


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over ``[B, heads, N, d]``: ``scaled_dot_product_attention``,
    except for bfloat16 on the CPU where this machine's kernel choice picks
    :func:`sliced_attention` (:mod:`bbx.nn.kernels`). fp32 keeps the fused kernel, bit for bit, and
    so does float16 (CPUs without fp16 matrix units run fp16 matmuls 9x slower than the fused
    kernel)."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or torch.is_grad_enabled() or not onednn_bf16_matmul():
        return F.scaled_dot_product_attention(q, k, v)
    from bbx.nn import kernels

    if kernels.choice(torch.bfloat16).attention != "sliced":
        return F.scaled_dot_product_attention(q, k, v)
    return sliced_attention(q, k, v)


def sliced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention as two matmuls and a softmax over a few images at a time, so that each slice's
    scores stay in cache. Where oneDNN's bf16 matmuls beat the fused kernel, which computes in
    fp32 (measured on an AMD EPYC, 2 cores, DINOv2-S (16 x 6 heads x 257 tokens): 14.8 -> 8.5 ms per
    layer), this is faster. The probabilities are rounded to bf16 before the product with ``v``,
    as transformers' eager attention does under autocast (the fused kernel keeps them in fp32)."""
    b, heads, n, d = q.shape
    per_image = heads * n * k.shape[2] * 4  # the scores of one image, in fp32 terms
    step = max(1, SLICE_BYTES_PER_THREAD * max(1, torch.get_num_threads()) // per_image)
    out = torch.empty((b, heads, n, v.shape[3]), dtype=q.dtype, device=q.device)
    scale = d**-0.5
    for start in range(0, b, step):
        qs, ks, vs = (t[start : start + step] for t in (q, k, v))
        # softmax of bf16 scores accumulates in fp32 and rounds once to bf16
        probs = torch.softmax(torch.matmul(qs * scale, ks.transpose(-1, -2)), dim=-1)
        torch.matmul(probs, vs, out=out[start : start + step])
    return out


@torch.no_grad()
def fold_quick_gelu_(mlp: Mlp) -> None:
    """Frozen weights: an MLP with QuickGELU, ``fc2(y * sigmoid(a y))`` of ``y = fc1(x)`` with
    ``a = 1.702``, becomes ``fc2'(silu(fc1'(x)))``: fc1 scaled by ``a`` and fc2's weight by ``1 / a``,
    since ``y * sigmoid(a y) = silu(a y) / a``. One SiLU pass over the hidden units instead of
    QuickGELU's three (a product, a sigmoid, a product); equal to fp32 rounding. Other activations
    are left as they are."""
    if mlp.act_name != "quick_gelu":
        return
    fold_scale_(mlp.fc1, torch.full_like(mlp.fc1.weight[:, 0], QUICK_GELU))
    mlp.fc2.weight.mul_(1.0 / QUICK_GELU)
    mlp.act_name = "silu"


@functools.cache
def _eager_act(name: str) -> nn.Module:
    return activation(name)


class Mlp(nn.Module):
    """The MLP ``fc2(act(fc1(x)))`` of Swin, DINOv2 and ConvNeXt blocks, with the residual sum
    folded in when ``add`` is given. Once ``fused`` (frozen CPU inference), fc1 + activation and
    fc2 + residual each run as one oneDNN kernel."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        activation(act)  # an unknown name is refused here, at build time
        self.act_name = act
        self.fc2 = nn.Linear(hidden, dim)
        self.fused = False

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        h = linear_act(x, self.fc1, self.act_name, fused=self.fused)
        return linear_act(h, self.fc2, add=add, fused=self.fused)
