"""Quantize, dequantize and fake-quantize arrays, with ONNX QuantizeLinear/DequantizeLinear semantics.

Inputs are cast to float32 and all arithmetic is float32, as ONNX's reference does.
Integer formats: q = clip(round_half_even(x / scale) + zero_point, qmin, qmax), clamped to the format's
full range (narrow range is a property of the scale: values inside the calibrated range never reach the
dropped code); dequantize: (q - zero_point) * scale.
FP8: q = fp8(x / scale) (saturating by default, as ONNX), dequantize: fp8_value(q) * scale.
NF4: q = index of the nearest code-book level to x / scale, dequantize: level[q] * scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.numerics.codebook import codebook_decode, codebook_encode
from qcompiler.numerics.formats import Format, get_format
from qcompiler.numerics.fp8 import fp8_decode, fp8_encode
from qcompiler.numerics.granularity import PER_TENSOR, Granularity, PerTensor, expand_param, reduce_min_max
from qcompiler.numerics.scale import compute_scale_zero_point
from qcompiler.numerics.scheme import SYMMETRIC, Scheme


def _what(name: str | None) -> str:
    return f"tensor {name!r}" if name else "tensor"


def _scale(scale: np.ndarray | float, shape: tuple[int, ...], g: Granularity, what: str) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float32)
    if not (np.isfinite(s) & (s > 0)).all():
        raise QuantizationError(f"{what}: scale must be positive and finite, "
                                f"got min {s.min()}, max {s.max()}")
    return expand_param(s, shape, g, f"{what}: scale")


def _zero_point(zp: np.ndarray | int | None, fmt: Format, shape: tuple[int, ...], g: Granularity,
                what: str) -> np.ndarray | None:
    if zp is None:
        return None
    z = np.asarray(zp)
    if not fmt.is_integer:
        if np.any(z != 0):
            raise ValueError(f"{what}: format {fmt.name} has no zero point; got a nonzero one")
        return None
    if not np.issubdtype(z.dtype, np.integer):
        raise TypeError(f"{what}: zero point must be an integer array, got dtype {z.dtype}")
    if z.size and (z.min() < fmt.qmin or z.max() > fmt.qmax):
        raise ValueError(f"{what}: zero point range [{z.min()}, {z.max()}] exceeds {fmt.name} "
                         f"[{fmt.qmin}, {fmt.qmax}]")
    return expand_param(z, shape, g, f"{what}: zero point").astype(np.float32)


def quantize(
    x: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int | None,
    fmt: Format | str,
    granularity: Granularity = PER_TENSOR,
    *,
    saturate: bool = True,
    name: str | None = None,
) -> np.ndarray:
    """Quantize float ``x`` to ``fmt``'s storage dtype (see module doc); scale/zero point are per granule
    in the shapes of ``granularity.param_shape``. ``saturate`` matters for fp8 only (ONNX attribute)."""
    fmt, what = get_format(fmt), _what(name)
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):  # x / scale beyond float32 becomes +-inf, which the clamp saturates
        y = x / _scale(scale, x.shape, granularity, what)
    zp = _zero_point(zero_point, fmt, x.shape, granularity, what)
    if fmt.is_float:
        return fp8_encode(y, fmt, saturate=saturate)
    if np.isnan(y).any():
        raise QuantizationError(f"{what}: holds NaN, which {fmt.name} cannot represent")
    if fmt.is_codebook:
        assert fmt.levels is not None
        return codebook_encode(y, fmt.levels)
    q = np.rint(y)
    if zp is not None:
        q = q + zp
    return np.clip(q, fmt.qmin, fmt.qmax).astype(fmt.numpy_dtype)


def dequantize(
    q: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int | None,
    fmt: Format | str,
    granularity: Granularity = PER_TENSOR,
    *,
    name: str | None = None,
) -> np.ndarray:
    """float32 values of quantized ``q`` (the storage produced by ``quantize``)."""
    fmt, what = get_format(fmt), _what(name)
    q = np.asarray(q)
    s = _scale(scale, q.shape, granularity, what)
    zp = _zero_point(zero_point, fmt, q.shape, granularity, what)
    if fmt.is_float:
        return fp8_decode(q, fmt) * s
    if fmt.is_codebook:
        assert fmt.levels is not None
        return codebook_decode(q, fmt.levels) * s
    if not np.issubdtype(q.dtype, np.integer):
        raise TypeError(f"{what}: quantized values must be integers, got dtype {q.dtype}")
    if q.size and (q.min() < fmt.qmin or q.max() > fmt.qmax):
        raise ValueError(f"{what}: values [{q.min()}, {q.max()}] exceed {fmt.name} [{fmt.qmin}, {fmt.qmax}]")
    v = q.astype(np.float32)
    if zp is not None:
        v = v - zp
    return (v * s).astype(np.float32)


def fake_quantize(
    x: np.ndarray,
    scale: np.ndarray | float,
    zero_point: np.ndarray | int | None,
    fmt: Format | str,
    granularity: Granularity = PER_TENSOR,
    *,
    saturate: bool = True,
    name: str | None = None,
) -> np.ndarray:
    """dequantize(quantize(x)): ``x`` snapped to the quantization grid, as float32."""
    q = quantize(x, scale, zero_point, fmt, granularity, saturate=saturate, name=name)
    return dequantize(q, scale, zero_point, fmt, granularity, name=name)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantized array with what is needed to read it back: ``q`` in the format's storage dtype
    (unpacked), per-granule ``scale`` (float32) and ``zero_point`` (None for fp8/nf4)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    fmt: Format
    scheme: Scheme = SYMMETRIC
    granularity: Granularity = field(default_factory=PerTensor)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    def dequantize(self) -> np.ndarray:
        return dequantize(self.q, self.scale, self.zero_point, self.fmt, self.granularity)


def quantize_tensor(
    x: np.ndarray,
    fmt: Format | str,
    scheme: Scheme = SYMMETRIC,
    granularity: Granularity = PER_TENSOR,
    *,
    name: str | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` with scale and zero point from its own per-granule min/max (weights).

    Raises QuantizationError naming ``name`` if ``x`` holds NaN or Inf.
    """
    fmt = get_format(fmt)
    x = np.asarray(x, dtype=np.float32)
    lo, hi = reduce_min_max(x, granularity)
    scale, zp = compute_scale_zero_point(lo, hi, fmt, scheme, name=name)
    q = quantize(x, scale, zp, fmt, granularity, name=name)
    return QuantizedTensor(q, scale, zp, fmt, scheme, granularity)
