"""Activations, softmax family, convolution, pooling, normalization and attention ops.

Padding is resolved here, not by torch: ONNX allows asymmetric `pads` and `auto_pad`, torch convolutions
and pools only symmetric padding, so the input is padded explicitly when the two sides differ. Pools
compute window sums with a depthwise all-ones convolution, which covers dilations, ceil_mode and
count_include_pad in one code path for 1-D, 2-D and 3-D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..registry import OpContext, register
from .math import _ordered

_EW = {"elementwise"}

# --------------------------------------------------------------------------------------------- activations


@register("Relu", since=6, traits=_EW)
def relu(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    if x.dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64):
        return x.clone()
    return torch.clamp(x, min=0) if not x.dtype.is_floating_point else torch.relu(x)


@register("LeakyRelu", since=6, traits=_EW)
def leaky_relu(ctx: OpContext, x: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


@register("PRelu", since=7, traits=_EW)
def prelu(ctx: OpContext, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # slope broadcasts unidirectionally to x (per-channel slopes come as (C, 1, 1)).
    return torch.where(x < 0, x * slope, x)


@register("Sigmoid", since=6, traits=_EW)
def sigmoid(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


@register("HardSigmoid", since=6, traits=_EW)
def hard_sigmoid(ctx: OpContext, x: torch.Tensor, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@register("HardSwish", since=14, traits=_EW)
def hard_swish(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    # ONNX defines x * HardSigmoid<alpha=1/6, beta=0.5>(x); torch's hardswish rounds differently.
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


@register("Gelu", since=20, traits=_EW)
def gelu(ctx: OpContext, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate not in ("none", "tanh"):
        raise ctx.fail(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.gelu(x, approximate=approximate)


@register("Elu", since=6, traits=_EW)
def elu(ctx: OpContext, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return F.elu(x, alpha)


@register("Selu", since=6, traits=_EW)
def selu(ctx: OpContext, x: torch.Tensor, alpha: float = 1.67326319217681884765625,
         gamma: float = 1.05070102214813232421875) -> torch.Tensor:
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@register("Celu", since=12, traits=_EW)
def celu(ctx: OpContext, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return F.celu(x, alpha)


@register("Softplus", since=1, traits=_EW)
def softplus(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    # log(1 + exp(x)); torch switches to x above 20, where exp(-x) is below float32's epsilon anyway.
    return F.softplus(x)


@register("Softsign", since=1, traits=_EW)
def softsign(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.abs(x))


@register("Mish", since=18, traits=_EW)
def mish(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


@register("ThresholdedRelu", since=10, traits=_EW)
def thresholded_relu(ctx: OpContext, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


@register("Swish", since=24, traits=_EW)
def swish(ctx: OpContext, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@register("Shrink", since=9, traits=_EW)
def shrink(ctx: OpContext, x: torch.Tensor, bias: float = 0.0, lambd: float = 0.5) -> torch.Tensor:
    dt = x.dtype
    if not dt.is_floating_point:
        b = int(bias)
        xs = _ordered(x)
        y = torch.where(xs < -lambd, xs + b, torch.where(xs > lambd, xs - b, torch.zeros_like(xs)))
        return y.to(dt)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


# --------------------------------------------------------------------------------------------- softmax family


def _flat_last(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Opset < 13 semantics: view as 2-D [prod(shape[:axis]), prod(shape[axis:])]."""
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _softmax_like(fn, x: torch.Tensor, axis: int, opset: int) -> torch.Tensor:
    if x.dim() == 0:
        return fn(x.reshape(1), 0).reshape(())
    if opset >= 13:
        return fn(x, axis)
    return fn(_flat_last(x, axis), 1).reshape(x.shape)


@register("Softmax", since=1)
def softmax(ctx: OpContext, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    axis = (-1 if ctx.opset >= 13 else 1) if axis is None else axis
    return _softmax_like(lambda t, a: torch.softmax(t, a), x, axis, ctx.opset)


@register("LogSoftmax", since=1)
def log_softmax(ctx: OpContext, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    axis = (-1 if ctx.opset >= 13 else 1) if axis is None else axis
    return _softmax_like(lambda t, a: torch.log_softmax(t, a), x, axis, ctx.opset)


def _hardmax(t: torch.Tensor, axis: int) -> torch.Tensor:
    # One-hot of the first maximum (torch.argmax returns the first occurrence).
    idx = torch.argmax(t, dim=axis, keepdim=True)
    return torch.zeros_like(t).scatter_(axis, idx, 1)


@register("Hardmax", since=1)
def hardmax(ctx: OpContext, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    axis = (-1 if ctx.opset >= 13 else 1) if axis is None else axis
    return _softmax_like(_hardmax, x, axis, ctx.opset)


# --------------------------------------------------------------------------------------------- padding helpers


def _ntuple(v: Sequence[int] | None, n: int, default: int) -> list[int]:
    return [default] * n if not v else [int(i) for i in v]


def _same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int], auto_pad: str) -> list[int]:
    """pads (begins then ends) for SAME_UPPER / SAME_LOWER: output = ceil(in / stride)."""
    n = len(in_sizes)
    begins, ends = [0] * n, [0] * n
    for i in range(n):
        out = -(-in_sizes[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i])
        small, big = total // 2, total - total // 2
        begins[i], ends[i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    return begins + ends


def _resolve_pads(ctx: OpContext, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int], pads: Sequence[int] | None, auto_pad: str) -> list[int]:
    n = len(in_sizes)
    if auto_pad in ("", "NOTSET"):
        p = _ntuple(pads, 2 * n, 0)
        if len(p) != 2 * n:
            raise ctx.fail(f"pads has {len(p)} values, expected {2 * n}")
        return p
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_sizes, kernel, strides, dilations, auto_pad)
    raise ctx.fail(f"unknown auto_pad {auto_pad!r}")


def _pad_input(x: torch.Tensor, pads: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad the spatial dims of NC... `x` with ONNX-ordered pads [b1, b2, ..., e1, e2, ...]."""
    n = len(pads) // 2
    if not any(pads):
        return x
    torch_pads: list[int] = []
    for i in reversed(range(n)):  # F.pad wants the last dim first
        torch_pads += [pads[i], pads[i + n]]
    return F.pad(x, torch_pads, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


# --------------------------------------------------------------------------------------------- convolution


@register("Conv", since=1, quantizable_inputs=(0, 1))
def conv(
    ctx: OpContext,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    auto_pad: str = "NOTSET",
    dilations: list[int] | None = None,
    group: int = 1,
    kernel_shape: list[int] | None = None,
    pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    n = x.dim() - 2
    if n not in _CONV:
        raise ctx.fail(f"{n}-D convolution is not supported (1-D, 2-D and 3-D are)")
    kernel = list(w.shape[2:])
    if kernel_shape and list(kernel_shape) != kernel:
        raise ctx.fail(f"kernel_shape {list(kernel_shape)} disagrees with W's shape {kernel}")
    st, dil = _ntuple(strides, n, 1), _ntuple(dilations, n, 1)
    p = _resolve_pads(ctx, list(x.shape[2:]), kernel, st, dil, pads, auto_pad)
    if p[:n] == p[n:]:
        return _CONV[n](x, w, b, stride=st, padding=p[:n], dilation=dil, groups=group)
    return _CONV[n](_pad_input(x, p), w, b, stride=st, padding=0, dilation=dil, groups=group)


@register("ConvTranspose", since=1, quantizable_inputs=(0, 1))
def conv_transpose(
    ctx: OpContext,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    auto_pad: str = "NOTSET",
    dilations: list[int] | None = None,
    group: int = 1,
    kernel_shape: list[int] | None = None,
    output_padding: list[int] | None = None,
    output_shape: list[int] | None = None,
    pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    n = x.dim() - 2
    if n not in _CONV_T:
        raise ctx.fail(f"{n}-D transposed convolution is not supported (1-D, 2-D and 3-D are)")
    kernel = list(w.shape[2:])
    st, dil = _ntuple(strides, n, 1), _ntuple(dilations, n, 1)
    adj = _ntuple(output_padding, n, 0)
    in_sizes = list(x.shape[2:])
    # Size of the transposed convolution without any padding, plus output_padding at the end.
    full = [(in_sizes[i] - 1) * st[i] + (kernel[i] - 1) * dil[i] + 1 + adj[i] for i in range(n)]
    if output_shape:
        out = list(output_shape)[-n:]
        begins, ends = [0] * n, [0] * n
        for i in range(n):
            total = full[i] - out[i]
            if total < 0:
                raise ctx.fail(f"output_shape {out} is larger than the full output {full}")
            # ONNX: SAME_UPPER crops the odd unit at the end, anything else at the beginning.
            small, big = total // 2, total - total // 2
            begins[i], ends[i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        p = begins + ends
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Output is in * stride; the surplus is cut, the odd unit at the end for SAME_UPPER.
        begins, ends = [0] * n, [0] * n
        for i in range(n):
            total = max(0, full[i] - in_sizes[i] * st[i])
            small, big = total // 2, total - total // 2
            begins[i], ends[i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        p = begins + ends
    elif auto_pad == "VALID":
        p = [0] * (2 * n)
    elif auto_pad in ("", "NOTSET"):
        p = _ntuple(pads, 2 * n, 0)
    else:
        raise ctx.fail(f"unknown auto_pad {auto_pad!r}")
    y = _CONV_T[n](x, w, None, stride=st, padding=0, dilation=dil, groups=group)
    # output_padding adds rows that no input reaches (zeros before the bias); then pads crop.
    if any(adj):
        y = _pad_input(y, [0] * n + adj)
    idx = [slice(None), slice(None)] + [slice(p[i], y.shape[2 + i] - p[n + i]) for i in range(n)]
    y = y[tuple(idx)]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n)
    return y


# --------------------------------------------------------------------------------------------- pooling


def _pool_geometry(ctx: OpContext, x: torch.Tensor, kernel_shape: list[int] | None, strides, dilations, pads,
                   auto_pad: str, ceil_mode: int) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, pads, output sizes), as ORT's pool attributes compute them."""
    if not kernel_shape:
        raise ctx.fail("attribute 'kernel_shape' is required")
    n = len(kernel_shape)
    if x.dim() != n + 2:
        raise ctx.fail(f"input rank {x.dim()} does not fit kernel_shape {list(kernel_shape)}")
    k = [int(v) for v in kernel_shape]
    st, dil = _ntuple(strides, n, 1), _ntuple(dilations, n, 1)
    in_sizes = list(x.shape[2:])
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        p = _same_pads(in_sizes, k, st, dil, auto_pad)
    else:
        p = _resolve_pads(ctx, in_sizes, k, st, dil, pads, auto_pad)
    out = []
    for i in range(n):
        span = in_sizes[i] + p[i] + p[i + n] - ((k[i] - 1) * dil[i] + 1)
        o = (-(-span // st[i]) if ceil_mode else span // st[i]) + 1
        # A window that would start in the end padding is dropped (ONNX / torch ceil_mode rule).
        if ceil_mode and (o - 1) * st[i] >= in_sizes[i] + p[i]:
            o -= 1
        out.append(o)
    return k, st, dil, p, out


def _window_sum(x: torch.Tensor, k: list[int], st: list[int], dil: list[int], p: list[int],
                out: list[int]) -> torch.Tensor:
    """Sum over each pooling window (zero padding), as a depthwise all-ones convolution."""
    n = len(k)
    # Extend the end so that `out` windows fit (ceil_mode windows run past the end padding).
    extra = [max(0, (out[i] - 1) * st[i] + (k[i] - 1) * dil[i] + 1 - (x.shape[2 + i] + p[i] + p[i + n]))
             for i in range(n)]
    xp = _pad_input(x, p[:n] + [p[n + i] + extra[i] for i in range(n)])
    c = x.shape[1]
    ones = torch.ones((c, 1, *k), dtype=x.dtype, device=x.device)
    y = _CONV[n](xp, ones, None, stride=st, dilation=dil, groups=c)
    return y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]


def _window_count(x: torch.Tensor, k, st, dil, p, out, include_pad: bool) -> torch.Tensor:
    """How many elements each window averages: real inputs, plus explicit pads if `include_pad`
    (never the ceil_mode overhang)."""
    n = len(k)
    shape = (1, 1, *x.shape[2:])
    ones = torch.ones(shape, dtype=x.dtype, device=x.device)
    if include_pad:
        ones = _pad_input(ones, p, 1.0)
        p = [0] * (2 * n)
    return _window_sum(ones, k, st, dil, p, out)


def _check_pool_dims(ctx: OpContext, n: int) -> None:
    if n not in _CONV:
        raise ctx.fail(f"{n}-D pooling is not supported (1-D, 2-D and 3-D are)")


@register("AveragePool", since=1)
def average_pool(
    ctx: OpContext,
    x: torch.Tensor,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    count_include_pad: int = 0,
    dilations: list[int] | None = None,
    kernel_shape: list[int] | None = None,
    pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    k, st, dil, p, out = _pool_geometry(ctx, x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    _check_pool_dims(ctx, len(k))
    s = _window_sum(x, k, st, dil, p, out)
    return s / _window_count(x, k, st, dil, p, out, bool(count_include_pad))


@register("LpPool", since=1)
def lp_pool(
    ctx: OpContext,
    x: torch.Tensor,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: list[int] | None = None,
    kernel_shape: list[int] | None = None,
    p: int = 2,
    pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    k, st, dil, pd, out = _pool_geometry(ctx, x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    _check_pool_dims(ctx, len(k))
    s = _window_sum(torch.abs(x) ** p, k, st, dil, pd, out)
    return s ** (1.0 / p)


@register("MaxPool", since=1)
def max_pool(
    ctx: OpContext,
    x: torch.Tensor,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: list[int] | None = None,
    kernel_shape: list[int] | None = None,
    pads: list[int] | None = None,
    storage_order: int = 0,
    strides: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    k, st, dil, p, out = _pool_geometry(ctx, x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    n = len(k)
    _check_pool_dims(ctx, n)
    dt = x.dtype
    # torch has no integer max-pool kernels; int8/uint8 are exact in float32.
    xf = x if dt.is_floating_point else x.to(torch.float32)
    in_sizes = list(x.shape[2:])
    extra = [max(0, (out[i] - 1) * st[i] + (k[i] - 1) * dil[i] + 1 - (in_sizes[i] + p[i] + p[i + n]))
             for i in range(n)]
    xp = _pad_input(xf, p[:n] + [p[n + i] + extra[i] for i in range(n)], float("-inf"))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    y, idx = pool(xp, k, st, 0, dil, return_indices=True)
    y = y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]
    idx = idx[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]
    # torch's index is flat within the padded plane; ONNX's is flat over the whole unpadded tensor,
    # row-major (storage_order 0) or column-major over the spatial dims (storage_order 1).
    padded = [xp.shape[2 + i] for i in range(n)]
    coords = []
    rem = idx
    for i in reversed(range(n)):
        coords.append(rem % padded[i] - p[i])
        rem = rem // padded[i]
    coords.reverse()
    flat = torch.zeros_like(idx)
    dims = list(range(n)) if not storage_order else list(reversed(range(n)))
    for i in dims:
        flat = flat * in_sizes[i] + coords[i]
    plane = math.prod(in_sizes)
    nc = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *([1] * n))
    flat = flat + nc * plane
    return (y if dt.is_floating_point else y.to(dt)), flat


@register("GlobalAveragePool", since=1)
def global_average_pool(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool", since=1)
def global_max_pool(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalLpPool", since=2)
def global_lp_pool(ctx: OpContext, x: torch.Tensor, p: int = 2) -> torch.Tensor:
    return (torch.abs(x) ** p).sum(dim=tuple(range(2, x.dim())), keepdim=True) ** (1.0 / p)


# --------------------------------------------------------------------------------------------- normalization


def _stash_dtype(x: torch.Tensor, stash_type: int) -> torch.dtype:
    # stash_type 1 = float32 (ONNX TensorProto.FLOAT); other values keep the input type.
    return torch.float32 if stash_type == 1 else x.dtype


@register("BatchNormalization", since=7)
def batch_norm(
    ctx: OpContext,
    x: torch.Tensor,
    scale: torch.Tensor,
    b: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: int = 0,
    spatial: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    if not spatial:
        raise ctx.fail("spatial=0 (opset < 9 per-activation statistics) is not supported")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if not training_mode:
        inv = torch.rsqrt(var.to(x.dtype) + epsilon) * scale
        return (x - mean.reshape(shape)) * inv.reshape(shape) + b.reshape(shape)
    # Training mode: normalize with the batch statistics (biased variance) and update the running ones.
    dims = [0] + list(range(2, x.dim()))
    bmean = x.mean(dim=dims)
    bvar = x.var(dim=dims, unbiased=False)
    y = (x - bmean.reshape(shape)) * torch.rsqrt(bvar.reshape(shape) + epsilon) * scale.reshape(shape) \
        + b.reshape(shape)
    running_mean = mean * momentum + bmean.to(mean.dtype) * (1 - momentum)
    running_var = var * momentum + bvar.to(var.dtype) * (1 - momentum)
    return y, running_mean, running_var


@register("InstanceNormalization", since=6)
def instance_norm(ctx: OpContext, x: torch.Tensor, scale: torch.Tensor, b: torch.Tensor,
                  epsilon: float = 1e-5) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean) * torch.rsqrt(var + epsilon) * scale.reshape(shape) + b.reshape(shape)


def layer_norm_stats(x: torch.Tensor, axis: int, epsilon: float, stash: torch.dtype, rms: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(normalized x in the stash type, mean or None for RMS, 1/sqrt(var + eps)) over dims axis.., keepdim."""
    axis = axis % x.dim()
    dims = tuple(range(axis, x.dim()))
    xs = x.to(stash)
    if rms:
        inv = torch.rsqrt((xs * xs).mean(dim=dims, keepdim=True) + epsilon)
        return xs * inv, None, inv
    mean = xs.mean(dim=dims, keepdim=True)
    d = xs - mean
    inv = torch.rsqrt((d * d).mean(dim=dims, keepdim=True) + epsilon)
    return d * inv, mean, inv


@register("LayerNormalization", since=1)
def layer_norm(ctx: OpContext, x: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None = None,
               axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX LayerNormalization (opset 17) and ORT's earlier onnx-domain version 1 (same attributes)."""
    normed, mean, inv = layer_norm_stats(x, axis, epsilon, _stash_dtype(x, stash_type))
    y = normed.to(x.dtype) * scale
    if b is not None:
        y = y + b
    return y, mean, inv


@register("RMSNormalization", since=23)
def rms_norm(ctx: OpContext, x: torch.Tensor, scale: torch.Tensor, axis: int = -1, epsilon: float = 1e-5,
             stash_type: int = 1) -> torch.Tensor:
    normed, _, _ = layer_norm_stats(x, axis, epsilon, _stash_dtype(x, stash_type), rms=True)
    return normed.to(x.dtype) * scale


@register("GroupNormalization", since=18)
def group_norm(ctx: OpContext, x: torch.Tensor, scale: torch.Tensor, b: torch.Tensor, epsilon: float = 1e-5,
               num_groups: int | None = None, stash_type: int = 1) -> torch.Tensor:
    if num_groups is None:
        raise ctx.fail("attribute 'num_groups' is required")
    n, c = x.shape[0], x.shape[1]
    if c % num_groups:
        raise ctx.fail(f"{c} channels do not split into {num_groups} groups")
    stash = _stash_dtype(x, stash_type) if ctx.opset >= 21 else x.dtype
    xs = x.reshape(n, num_groups, -1).to(stash)
    mean = xs.mean(dim=-1, keepdim=True)
    d = xs - mean
    normed = (d * torch.rsqrt((d * d).mean(dim=-1, keepdim=True) + epsilon)).to(x.dtype).reshape(x.shape)
    if ctx.opset < 21:
        # Opset 18: scale and bias hold one value per group.
        scale = scale.repeat_interleave(c // num_groups)
        b = b.repeat_interleave(c // num_groups)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return normed * scale.reshape(shape) + b.reshape(shape)


@register("LRN", since=1)
def lrn(ctx: OpContext, x: torch.Tensor, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
        size: int | None = None) -> torch.Tensor:
    if size is None:
        raise ctx.fail("attribute 'size' is required")
    # Window over channels [c - floor((size-1)/2), c + ceil((size-1)/2)] (torch centers it the other way).
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = (x * x).unsqueeze(1).flatten(3) if x.dim() > 2 else (x * x).reshape(x.shape[0], 1, x.shape[1], 1)
    sq = F.pad(sq, (0, 0, lo, hi))
    s = F.avg_pool2d(sq, (size, 1), stride=1, divisor_override=1).reshape(x.shape)
    return x / (bias + (alpha / size) * s) ** beta


@register("MeanVarianceNormalization", since=9)
def mean_variance_norm(ctx: OpContext, x: torch.Tensor, axes: list[int] | None = None) -> torch.Tensor:
    dims = tuple(axes) if axes is not None else (0, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
    # ONNX's function body: (X - E[X]) / (sqrt(E[X^2] - E[X]^2) + 1e-9).
    return (x - mean) / (torch.sqrt(var) + 1e-9)


@register("LpNormalization", since=1)
def lp_norm(ctx: OpContext, x: torch.Tensor, axis: int = -1, p: int = 2) -> torch.Tensor:
    if p not in (1, 2):
        raise ctx.fail(f"p must be 1 or 2, got {p}")
    norm = x.abs().sum(dim=axis, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(dim=axis, keepdim=True))
    return x / norm


# --------------------------------------------------------------------------------------------- attention


def masked_softmax(scores: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(scores + bias) over the last dim; a row whose bias is -inf everywhere gives zeros, not NaN."""
    if bias is None:
        return torch.softmax(scores, dim=-1)
    s = scores + bias
    row_max = s.amax(dim=-1, keepdim=True)
    dead = torch.isneginf(bias.amax(dim=-1, keepdim=True)).expand_as(row_max) | torch.isneginf(row_max)
    e = torch.exp(s - torch.where(dead, torch.zeros_like(row_max), row_max))
    e = torch.where(dead, torch.zeros_like(e), e)
    denom = e.sum(dim=-1, keepdim=True)
    return e / torch.where(denom == 0, torch.ones_like(denom), denom)


def _to_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, heads*D) -> (B, heads, S, D)."""
    b, s, hd = t.shape
    return t.reshape(b, s, heads, hd // heads).transpose(1, 2)


@register("Attention", since=23)
def attention(
    ctx: OpContext,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    nonpad_kv_seqlen: torch.Tensor | None = None,
    is_causal: int = 0,
    kv_num_heads: int | None = None,
    q_num_heads: int | None = None,
    qk_matmul_output_mode: int = 0,
    scale: float | None = None,
    softcap: float = 0.0,
    softmax_precision: int | None = None,
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> tuple[torch.Tensor, ...]:
    """ONNX Attention (opsets 23-25): MHA/GQA/MQA, 3-D or 4-D, bool or additive mask, causal with the
    bottom-right offset, KV cache concatenation, softcap, sliding window and the qk_matmul output modes."""
    if (past_key is None) != (past_value is None):
        raise ctx.fail("past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise ctx.fail("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    three_d = q.dim() == 3
    if three_d:
        if not q_num_heads or not kv_num_heads:
            raise ctx.fail("3-D Q/K/V need the q_num_heads and kv_num_heads attributes")
        q, k, v = _to_heads(q, q_num_heads), _to_heads(k, kv_num_heads), _to_heads(v, kv_num_heads)
    elif q.dim() != 4:
        raise ctx.fail(f"Q must be 3-D or 4-D, got rank {q.dim()}")
    dt = q.dtype
    hq, hk = q.shape[1], k.shape[1]
    if hq % hk:
        raise ctx.fail(f"{hq} query heads are not a multiple of {hk} key/value heads")
    sc = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    present_k = k if past_key is None else torch.cat([past_key, k], dim=2)
    present_v = v if past_value is None else torch.cat([past_value, v], dim=2)
    sq, skv = q.shape[2], present_k.shape[2]

    bias = torch.zeros((sq, skv), dtype=dt, device=q.device)
    if attn_mask is not None:
        pad = skv - attn_mask.shape[-1]
        if attn_mask.dtype == torch.bool:
            m = torch.where(attn_mask, 0.0, float("-inf")).to(dt)
        else:
            m = attn_mask.to(dt)
        if pad > 0:  # a shorter mask is padded with "masked"
            m = F.pad(m, (0, pad), value=float("-inf"))
        bias = bias + m
    i = torch.arange(sq, device=q.device).reshape(sq, 1)
    j = torch.arange(skv, device=q.device).reshape(1, skv)
    if past_key is not None:
        offset: torch.Tensor | int = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = (nonpad_kv_seqlen.reshape(-1, 1, 1, 1).to(torch.int64) - sq)
    else:
        offset = 0
    allowed = None
    if is_causal:
        allowed = j <= i + offset
    if left_window_size >= 0 or right_window_size >= 0:
        diff = (i + offset) - j
        win = torch.ones_like(diff, dtype=torch.bool)
        if left_window_size >= 0:
            win = win & (diff <= left_window_size)
        if right_window_size >= 0:
            win = win & (-diff <= right_window_size)
        allowed = win if allowed is None else allowed & win
    if allowed is not None:
        bias = bias + torch.where(allowed, 0.0, float("-inf")).to(dt)
    if nonpad_kv_seqlen is not None:
        valid = j.reshape(1, 1, 1, skv) < nonpad_kv_seqlen.reshape(-1, 1, 1, 1)
        bias = bias + torch.where(valid, 0.0, float("-inf")).to(dt)

    kk, vv = present_k, present_v
    if hq != hk:  # GQA: query head h reads kv head h // (hq / hk)
        kk = kk.repeat_interleave(hq // hk, dim=1)
        vv = vv.repeat_interleave(hq // hk, dim=1)
    qk = torch.matmul(q, kk.transpose(-1, -2)) * sc
    qk_out = qk
    if softcap and softcap > 0:
        qk = softcap * torch.tanh(qk / softcap)
    if qk_matmul_output_mode == 1:
        qk_out = qk
    if qk_matmul_output_mode == 2:
        qk_out = qk + bias
    sm_dt = dt
    if softmax_precision is not None:
        sm_dt = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}.get(
            softmax_precision, dt)
    probs = masked_softmax(qk.to(sm_dt), bias.to(sm_dt)).to(dt)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    elif qk_matmul_output_mode not in (0, 1, 2):
        raise ctx.fail(f"qk_matmul_output_mode must be 0..3, got {qk_matmul_output_mode}")
    y = torch.matmul(probs, vv)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], sq, -1)
    return y, present_k, present_v, qk_out.expand(q.shape[0], hq, sq, skv)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the pairs of x's last dim ((i, i + d/2) halves, or (2i, 2i+1) interleaved) by cos/sin, which
    have d/2 entries and broadcast against x[..., :d/2]."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
        return torch.stack([real, imag], dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([cos * x1 - sin * x2, sin * x1 + cos * x2], dim=-1)


@register("RotaryEmbedding", since=23)
def rotary_embedding(
    ctx: OpContext,
    x: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    interleaved: int = 0,
    num_heads: int = 0,
    rotary_embedding_dim: int = 0,
) -> torch.Tensor:
    """ONNX RotaryEmbedding: x is (B, H, S, D) or (B, S, H*D); caches are (B, S, d/2), or (max_pos, d/2)
    indexed by position_ids (B, S)."""
    four_d = x.dim() == 4
    if four_d:
        xs = x.transpose(1, 2)  # (B, S, H, D)
    elif x.dim() == 3:
        if not num_heads:
            raise ctx.fail("3-D input needs the num_heads attribute")
        xs = x.reshape(x.shape[0], x.shape[1], num_heads, -1)
    else:
        raise ctx.fail(f"input must be 3-D or 4-D, got rank {x.dim()}")
    d = rotary_embedding_dim or xs.shape[-1]
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids.long()], sin_cache[position_ids.long()]
    if cos_cache.shape[-1] != d // 2:
        raise ctx.fail(f"cos_cache last dim {cos_cache.shape[-1]} != rotary_embedding_dim/2 = {d // 2}")
    cos, sin = cos_cache.unsqueeze(2), sin_cache.unsqueeze(2)  # (B, S, 1, d/2)
    rot = rotate(xs[..., :d], cos, sin, bool(interleaved))
    y = torch.cat([rot, xs[..., d:]], dim=-1)
    return y.transpose(1, 2) if four_d else y.reshape(x.shape)
