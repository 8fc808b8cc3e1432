"""Quantization ops, bit-exact with ONNX Runtime on integer outputs.

Integer formats: q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax), the division in float32
(ORT's MLAS divides; multiplying by 1/scale would differ in the last bit). Dequantize: float32(q - zp) *
scale. FP8: q = cast(x / scale) with ONNX's saturate rule (`qcompiler.runtime.dtypes.cast`). Integer
kernels (MatMulInteger, ConvInteger, QLinear*) accumulate exactly (float64 holds every int32 partial sum of
8-bit products exactly) and requantize as MLAS does: float32(acc) * (a_scale * b_scale / y_scale),
rounded half to even, plus the zero point, clamped.

Granularity of scale/zero point: a scalar (or one element) is per tensor; a 1-D tensor is per axis
(`axis`); with `block_size` (opset 21+) it has the input's rank and each element covers `block_size`
consecutive elements along `axis`. 4-bit values are held unpacked in int8/uint8 tensors; which of int4 or
int8 a zero point is comes from the IR type (`ctx.in_dtype`).
"""

from __future__ import annotations

import torch

from ...ir import DType
from ..dtypes import FLOAT8, cast, ir_dtype, torch_dtype
from ..registry import OpContext, register
from .nn import conv as float_conv

_RANGE = {
    DType.UINT8: (0, 255),
    DType.INT8: (-128, 127),
    DType.UINT16: (0, 65535),
    DType.INT16: (-32768, 32767),
    DType.UINT4: (0, 15),
    DType.INT4: (-8, 7),
    DType.UINT2: (0, 3),
    DType.INT2: (-2, 1),
    DType.INT32: (-(2**31), 2**31 - 1),
}
_FP8 = (DType.FLOAT8E4M3FN, DType.FLOAT8E5M2)


def _expand(p: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """Scale or zero point broadcast against x: per tensor, per axis, or per block along `axis`."""
    if block_size and block_size > 0:
        a = axis + x.dim() if axis < 0 else axis
        return p.repeat_interleave(block_size, dim=a).narrow(a, 0, x.shape[a])
    if p.dim() == 0 or (p.dim() == 1 and p.numel() == 1):
        return p.reshape(())
    a = axis + x.dim() if axis < 0 else axis
    shape = [1] * x.dim()
    shape[a] = -1
    return p.reshape(shape)


def _int(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor widened for arithmetic (torch lacks arithmetic on uint16/32)."""
    return (
        t.to(torch.int64)
        if t.dtype in (torch.uint16, torch.uint32, torch.int32, torch.int64)
        else t.to(torch.int32)
    )


def _out_type(ctx: OpContext, zp: torch.Tensor | None, output_dtype: int) -> DType:
    if zp is not None:
        return ctx.in_dtype(2) or ir_dtype(zp.dtype)
    if output_dtype:
        return DType(output_dtype)
    return DType.UINT8


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor | None,
    out: DType,
    *,
    axis: int = 1,
    block_size: int = 0,
    saturate: bool = True,
) -> torch.Tensor:
    """ONNX QuantizeLinear (see the module doc) into element type `out`."""
    y = x.to(torch.float32) / _expand(scale.to(torch.float32), x, axis, block_size)
    if out in _FP8:
        return cast(y, out, saturate=saturate)
    lo, hi = _RANGE[out]
    q = torch.round(y)  # half to even
    if zp is not None:
        q = q + _expand(_int(zp).to(torch.float32), x, axis, block_size)
    return q.clamp(lo, hi).to(torch_dtype(out))


def dequantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor | None,
    *,
    axis: int = 1,
    block_size: int = 0,
    out: torch.dtype | None = None,
) -> torch.Tensor:
    """ONNX DequantizeLinear: float32(x - zp) * scale, in the scale's type unless `out` says otherwise."""
    if x.dtype in FLOAT8:
        v = x.to(torch.float32)
    else:
        v = _int(x)
        if zp is not None:
            v = v - _expand(_int(zp), x, axis, block_size)
        v = v.to(torch.float32)
    y = v * _expand(scale.to(torch.float32), x, axis, block_size)
    return y.to(out or scale.dtype)


# One function covers opsets 10 (per tensor), 13 (axis), 19 (float8, saturate), 21 (blocks, int4, int16,
# output_dtype) and 23 (precision): each adds attributes with defaults that keep the older meaning.
@register("QuantizeLinear", since=10, traits=("quantize",))
def quantize_linear(
    ctx: OpContext,
    x: torch.Tensor,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor | None = None,
    *,
    axis: int = 1,
    saturate: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
    precision: int = 0,
) -> torch.Tensor:
    out = _out_type(ctx, y_zero_point, output_dtype)
    if out not in _RANGE and out not in _FP8:
        raise ctx.fail(f"quantizing to {out.name} is not supported")
    if precision and DType(precision) is not DType.FLOAT:
        raise ctx.fail(f"precision {DType(precision).name} is not supported (float32 only)")
    return quantize(x, y_scale, y_zero_point, out, axis=axis, block_size=block_size, saturate=bool(saturate))


@register("DequantizeLinear", since=10, traits=("dequantize",), quantizable_inputs=(0,))
def dequantize_linear(
    ctx: OpContext,
    x: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
) -> torch.Tensor:
    out = torch_dtype(DType(output_dtype)) if output_dtype else None
    return dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size, out=out)


def dynamic_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and uint8 zero point of ONNX DynamicQuantizeLinear: the range [min(x, 0), max(x, 0)] onto
    [0, 255]; a range of zero width gets scale 1 (as ORT)."""
    xf = x.detach().to(torch.float32)
    lo = torch.clamp(xf.min(), max=0.0)
    hi = torch.clamp(xf.max(), min=0.0)
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255.0)
    zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, 255.0)).to(torch.uint8)
    return scale, zp


@register("DynamicQuantizeLinear", since=11, traits=("quantize",))
def dynamic_quantize_linear(ctx: OpContext, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    scale, zp = dynamic_qparams(x)
    return quantize(x, scale, zp, DType.UINT8), scale, zp


# ------------------------------------------------------------------------------------------ integer matmul
def _shifted(q: torch.Tensor, zp: torch.Tensor | None, row_axis: bool) -> torch.Tensor:
    """q - zero_point as float64 (exact). A 1-D zero point of A is per row, of B per column."""
    v = _int(q)
    if zp is not None:
        z = _int(zp)
        if z.dim() == 1 and z.numel() > 1 and row_axis:
            z = z.unsqueeze(-1)
        v = v - z
    return v.to(torch.float64)


def _int_matmul(
    a: torch.Tensor, b: torch.Tensor, a_zp: torch.Tensor | None, b_zp: torch.Tensor | None
) -> torch.Tensor:
    # float64 sums of products of 9-bit integers are exact up to K ~ 2**37: the result is the int32 one.
    return torch.matmul(_shifted(a, a_zp, True), _shifted(b, b_zp, False))


def _requantize(
    acc: torch.Tensor, multiplier: torch.Tensor, zp: torch.Tensor | None, out: DType
) -> torch.Tensor:
    """MLAS requantization: float32(acc) * multiplier, rounded half to even, + zero point, clamped."""
    lo, hi = _RANGE[out]
    y = torch.round(acc.to(torch.int32).to(torch.float32) * multiplier)
    if zp is not None:
        y = y + _int(zp).to(torch.float32).reshape(())  # per tensor, as ONNX defines y_zero_point
    return y.clamp(lo, hi).to(torch_dtype(out))


@register("MatMulInteger", since=10, traits=("integer_kernel",), quantizable_inputs=(0, 1))
def matmul_integer(
    ctx: OpContext,
    A: torch.Tensor,
    B: torch.Tensor,
    a_zero_point: torch.Tensor | None = None,
    b_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    return _int_matmul(A, B, a_zero_point, b_zero_point).to(torch.int32)


@register("QLinearMatMul", since=10, traits=("integer_kernel",), quantizable_inputs=(0, 3))
def qlinear_matmul(
    ctx: OpContext,
    a: torch.Tensor,
    a_scale: torch.Tensor,
    a_zero_point: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    b_zero_point: torch.Tensor,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor,
) -> torch.Tensor:
    if a.dtype in FLOAT8 or b.dtype in FLOAT8:
        raise ctx.fail("float8 QLinearMatMul is not supported")
    acc = _int_matmul(a, b, a_zero_point, b_zero_point)
    # (a_scale * b_scale) / y_scale in float32, in ORT's order; a 1-D b_scale is per column
    mult = (a_scale.to(torch.float32).reshape(()) * b_scale.to(torch.float32).reshape(-1)) / y_scale.to(
        torch.float32
    ).reshape(())
    out = ctx.in_dtype(7) or ir_dtype(y_zero_point.dtype)
    return _requantize(acc, mult if mult.numel() > 1 else mult.reshape(()), y_zero_point, out)


def _matmul_to_float(
    acc: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    mult = a_scale.to(torch.float32).reshape(()) * b_scale.to(torch.float32).reshape(-1)
    y = acc.to(torch.int32).to(torch.float32) * (mult if mult.numel() > 1 else mult.reshape(()))
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(a_scale.dtype)


@register(
    "MatMulIntegerToFloat",
    domain="com.microsoft",
    since=1,
    traits=("integer_kernel",),
    quantizable_inputs=(0, 1),
)
def matmul_integer_to_float(
    ctx: OpContext,
    A: torch.Tensor,
    B: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    a_zero_point: torch.Tensor | None = None,
    b_zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    acc = _int_matmul(A, B, a_zero_point, b_zero_point)
    return _matmul_to_float(acc, a_scale, b_scale, bias)


@register(
    "DynamicQuantizeMatMul",
    domain="com.microsoft",
    since=1,
    traits=("integer_kernel",),
    quantizable_inputs=(1,),
)
def dynamic_quantize_matmul(
    ctx: OpContext,
    A: torch.Tensor,
    B: torch.Tensor,
    b_scale: torch.Tensor,
    b_zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    a_scale, a_zp = dynamic_qparams(A)
    qa = quantize(A, a_scale, a_zp, DType.UINT8)
    acc = _int_matmul(qa, B, a_zp, b_zero_point)
    return _matmul_to_float(acc, a_scale, b_scale, bias)


# ---------------------------------------------------------------------------------------------- integer conv
def _shift_w(w: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    v = _int(w)
    if zp is not None:
        z = _int(zp)
        v = v - (z.reshape(-1, *([1] * (w.dim() - 1))) if z.numel() > 1 else z.reshape(()))
    return v.to(torch.float64)


@register("ConvInteger", since=10, traits=("integer_kernel",), quantizable_inputs=(0, 1))
def conv_integer(
    ctx: OpContext,
    x: torch.Tensor,
    w: torch.Tensor,
    x_zero_point: torch.Tensor | None = None,
    w_zero_point: torch.Tensor | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: list[int] | None = None,
    group: int = 1,
    kernel_shape: list[int] | None = None,
    pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    # Shifting by the zero point first makes the zero padding equal ORT's padding with the zero point.
    xs = _shifted(x, None if x_zero_point is None else x_zero_point.reshape(()), False)
    # The float convolution on exact integers (float64 holds every int8 x uint8 sum of a real layer).
    acc = float_conv(ctx, xs, _shift_w(w, w_zero_point), None, auto_pad=auto_pad, dilations=dilations,
                     group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)
    return acc.to(torch.int32)


@register("QLinearConv", since=10, traits=("integer_kernel",), quantizable_inputs=(0, 3))
def qlinear_conv(
    ctx: OpContext,
    x: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero_point: torch.Tensor,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor,
    B: torch.Tensor | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: list[int] | None = None,
    group: int = 1,
    kernel_shape: list[int] | None = None,
    pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    xs = _shifted(x, x_zero_point.reshape(()), False)
    # The float convolution on exact integers (float64 holds every int8 x uint8 sum of a real layer).
    acc = float_conv(ctx, xs, _shift_w(w, w_zero_point), None, auto_pad=auto_pad, dilations=dilations,
                     group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if B is not None:
        acc = acc + B.to(torch.float64).reshape(shape)
    mult = (x_scale.to(torch.float32).reshape(()) * w_scale.to(torch.float32).reshape(-1)) / y_scale.to(
        torch.float32
    ).reshape(())
    mult = mult.reshape(shape) if mult.numel() > 1 else mult.reshape(())
    out = ctx.in_dtype(7) or ir_dtype(y_zero_point.dtype)
    return _requantize(acc, mult, y_zero_point.reshape(()), out)


# ---------------------------------------------------------------------------------------------- MatMulNBits
def unpack_nbits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Codes packed low bits first in the last axis of a uint8 tensor -> (..., count) uint8 codes."""
    per = 8 // bits
    mask = (1 << bits) - 1
    p = packed.to(torch.int32)
    parts = [(p >> (i * bits)) & mask for i in range(per)]
    codes = torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)
    return codes[..., :count].to(torch.uint8)


def matmul_nbits_weight(
    B: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    *,
    K: int,
    N: int,
    bits: int,
    block_size: int,
) -> torch.Tensor:
    """The dequantized (N, K) weight of a MatMulNBits node, float32: (code - zero_point) * scale."""
    k_blocks = -(-K // block_size)
    codes = unpack_nbits(B.reshape(N, k_blocks, -1), bits, block_size).reshape(N, k_blocks * block_size)
    s = scales.to(torch.float32).reshape(N, k_blocks)
    if zero_points is None:
        zp = torch.full((N, k_blocks), float(1 << (bits - 1)))
    elif zero_points.dtype == torch.uint8:
        zp = unpack_nbits(zero_points.reshape(N, -1), bits, k_blocks).to(torch.float32)
    else:
        zp = zero_points.to(torch.float32).reshape(N, k_blocks)
    w = (codes.to(torch.float32).reshape(N, k_blocks, block_size) - zp.unsqueeze(-1)) * s.unsqueeze(-1)
    return w.reshape(N, k_blocks * block_size)[:, :K]


@register("MatMulNBits", domain="com.microsoft", since=1, traits=("integer_kernel",), quantizable_inputs=(1,))
def matmul_nbits(
    ctx: OpContext,
    A: torch.Tensor,
    B: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None = None,
    g_idx: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    K: int,
    N: int,
    bits: int = 4,
    block_size: int,
    accuracy_level: int = 0,
    weight_prepacked: int = 0,
) -> torch.Tensor:
    if g_idx is not None and g_idx.numel() > 0:
        raise ctx.fail("g_idx (act-order) is not supported")
    if weight_prepacked:
        raise ctx.fail("prepacked weights are not supported")
    if B.numel() == 0:  # an omitted projection: zeros (plus bias)
        y = torch.zeros(*A.shape[:-1], N, dtype=A.dtype, device=A.device)
        return y + bias if bias is not None else y
    w = matmul_nbits_weight(B, scales, zero_points, K=K, N=N, bits=bits, block_size=block_size)
    y = torch.matmul(A.to(torch.float32), w.T)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(A.dtype)
