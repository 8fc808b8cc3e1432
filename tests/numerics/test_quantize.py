"""quantize / dequantize / fake_quantize for every format x scheme x granularity, against the float input.

Error bounds (derived, not fitted). With s the granule's scale and amax its largest |x|:
  integer formats:  |x - fq(x)| <= s/2 + 4 * eps32 * amax  inside the range
  fp8 (M mantissa bits, bias b): <= max(|x| * 2**-(M+1), s * 2**(-b-M)) + 4 * eps32 * amax
  nf4: <= s * (half the width of the code-book interval holding x/s) + 4 * eps32 * amax
The eps32 term covers float32 rounding of x / s, of the scale itself (which can move the grid's end
by range * 2**-24) and of (q - zp) * s: each is at most one float32 rounding relative to amax.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.errors import QuantizationError
from qcompiler.numerics import (
    AFFINE,
    NF4_CODEBOOK,
    SYMMETRIC,
    SYMMETRIC_NARROW,
    PerBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    QuantizedTensor,
    Scheme,
    dequantize,
    expand_param,
    fake_quantize,
    get_format,
    quant_range,
    quantize,
    quantize_tensor,
    reduce_absmax,
)

EPS32 = float(np.finfo(np.float32).eps)
INT_FORMATS = ["int8", "uint8", "int16", "uint16", "int4", "uint4", "ternary"]
FORMAT_SCHEMES = (
    [(f, SYMMETRIC) for f in INT_FORMATS]
    + [(f, AFFINE) for f in INT_FORMATS]
    + [(f, SYMMETRIC_NARROW) for f in ("int8", "int16", "int4")]
    + [("fp8_e4m3fn", SYMMETRIC), ("fp8_e5m2", SYMMETRIC), ("nf4", SYMMETRIC)]
)
GRANULARITIES = [PerTensor(), PerChannel(0), PerChannel(-1), PerGroup(1, 5), PerGroup(0, 4), PerBlock((4, 8))]


def _weights(shape: tuple[int, int] = (6, 13)) -> np.ndarray:
    """Gaussian rows with very different magnitudes (so per-channel matters), a skewed row for affine, and
    a few outliers."""
    rng = np.random.default_rng(42)
    x = rng.standard_normal(shape) * np.logspace(-2, 1, shape[0])[:, None]
    x[1] = np.abs(x[1]) + 0.5  # all-positive row
    x[0, 3], x[4, 7] = 25.0, -40.0
    return x.astype(np.float32)


def _bound(fmt_name: str, x: np.ndarray, s: np.ndarray, amax: np.ndarray) -> np.ndarray:
    fmt = get_format(fmt_name)
    slack = 4 * EPS32 * amax
    if fmt.is_integer:
        return s / 2 + slack
    if fmt.is_float:
        m, b = fmt.mantissa_bits, fmt.exponent_bias
        return np.maximum(np.abs(x) * 2.0 ** -(m + 1), s * 2.0 ** (-b - m)) + slack
    levels = np.asarray(NF4_CODEBOOK)
    y = np.clip(x / s, -1, 1)
    i = np.clip(np.searchsorted(levels, y) - 1, 0, 14)
    return s * (levels[i + 1] - levels[i]) / 2 + slack


def _ids(v):
    return str(v)


@pytest.mark.parametrize("g", GRANULARITIES, ids=_ids)
@pytest.mark.parametrize(("fmt", "scheme"), FORMAT_SCHEMES, ids=_ids)
def test_fake_quant_error_within_bound(fmt: str, scheme: Scheme, g) -> None:
    x = _weights()
    qt = quantize_tensor(x, fmt, scheme, g, name="w")
    f = get_format(fmt)
    assert qt.q.dtype == f.numpy_dtype and qt.q.shape == x.shape
    assert qt.scale.dtype == np.float32 and (qt.scale > 0).all()
    s = np.broadcast_to(expand_param(qt.scale, x.shape, g), x.shape)
    amax = np.broadcast_to(expand_param(reduce_absmax(x, g), x.shape, g), x.shape)
    err = np.abs(x.astype(np.float64) - qt.dequantize())
    bound = _bound(fmt, x, s, amax)
    worst = np.argmax(err - bound)
    assert (err <= bound).all(), f"x={x.flat[worst]} err={err.flat[worst]} bound={bound.flat[worst]}"
    if f.is_integer:
        qmin, qmax = quant_range(f, scheme)
        assert qt.q.min() >= qmin and qt.q.max() <= qmax  # narrow range: -128 never used inside the range
        assert qt.zero_point.dtype == f.numpy_dtype
    else:
        assert qt.zero_point is None
    # The grid maps onto itself: fake-quant is idempotent.
    fq = qt.dequantize()
    np.testing.assert_array_equal(fake_quantize(fq, qt.scale, qt.zero_point, fmt, g), fq)


@pytest.mark.parametrize("g", [PerTensor(), PerChannel(0), PerGroup(1, 5)], ids=_ids)
@pytest.mark.parametrize(("fmt", "scheme"), FORMAT_SCHEMES, ids=_ids)
def test_values_beyond_range_clamp(fmt: str, scheme: Scheme, g) -> None:
    x = _weights()
    qt = quantize_tensor(x, fmt, scheme, g)
    amax = np.broadcast_to(expand_param(reduce_absmax(x, g), x.shape, g), x.shape)
    sign = np.where(np.arange(x.size).reshape(x.shape) % 2 == 0, 1.0, -1.0).astype(np.float32)
    far = sign * (10 * amax + 1)  # beyond every grid end
    q = quantize(far, qt.scale, qt.zero_point, fmt, g)
    f = get_format(fmt)
    if f.is_integer:
        # ONNX QuantizeLinear clamps to the format's full range (narrow range included).
        expect = np.where(sign > 0, f.qmax, f.qmin)
    elif f.is_float:
        expect = np.where(sign > 0, 0x7E if fmt == "fp8_e4m3fn" else 0x7B, 0xFE if fmt == "fp8_e4m3fn" else 0xFB)
    else:
        expect = np.where(sign > 0, 15, 0)
    np.testing.assert_array_equal(q, expect.astype(q.dtype))


def test_fp8_non_saturating_overflow() -> None:
    x = np.array([1.0, 1e6, -1e6], dtype=np.float32)
    assert list(quantize(x, 1.0, None, "fp8_e4m3fn", saturate=False)) == [0x38, 0x7F, 0xFF]
    assert list(quantize(x, 1.0, None, "fp8_e5m2", saturate=False)) == [0x3C, 0x7C, 0xFC]
    assert np.isnan(dequantize(np.array([0x7F], np.uint8), 2.0, None, "fp8_e4m3fn")).all()


def test_round_half_to_even() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5], dtype=np.float32)
    assert list(quantize(x, 1.0, 0, "int8")) == [0, 2, 2, 0, -2, -2, 4]
    assert list(quantize(x, 1.0, np.uint8(10), "uint8")) == [10, 12, 12, 10, 8, 8, 14]
    assert list(quantize(x * 0.25, 0.25, 0, "int4")) == [0, 2, 2, 0, -2, -2, 4]


def test_zero_tensor_and_zero_channel() -> None:
    z = np.zeros((3, 4), dtype=np.float32)
    for fmt, scheme in [("int8", SYMMETRIC), ("uint8", AFFINE), ("fp8_e4m3fn", SYMMETRIC), ("nf4", SYMMETRIC)]:
        qt = quantize_tensor(z, fmt, scheme, PerTensor())
        assert qt.scale == 1.0
        np.testing.assert_array_equal(qt.dequantize(), z)
    w = _weights()
    w[2] = 0.0
    qt = quantize_tensor(w, "int8", SYMMETRIC, PerChannel(0))
    assert qt.scale[2] == 1.0
    np.testing.assert_array_equal(qt.dequantize()[2], np.zeros(13, np.float32))


def test_nan_and_inf_inputs_raise_with_name() -> None:
    w = _weights()
    w[3, 3] = np.nan
    with pytest.raises(QuantizationError, match=r"tensor 'fc.weight': range holds NaN or Inf at granule \(3,\)"):
        quantize_tensor(w, "int8", SYMMETRIC, PerChannel(0), name="fc.weight")
    w[3, 3] = np.inf
    with pytest.raises(QuantizationError, match="fc.weight"):
        quantize_tensor(w, "int4", AFFINE, PerGroup(1, 4), name="fc.weight")
    with pytest.raises(QuantizationError, match="tensor 'act': holds NaN, which int8 cannot represent"):
        quantize(np.array([1.0, np.nan], np.float32), 1.0, 0, "int8", name="act")
    # fp8 has a NaN code: NaN passes through.
    assert quantize(np.array([np.nan], np.float32), 1.0, None, "fp8_e4m3fn")[0] == 0x7F


def test_bad_parameters_raise() -> None:
    x = np.ones((4, 6), dtype=np.float32)
    with pytest.raises(QuantizationError, match="scale must be positive and finite"):
        quantize(x, np.array([1.0, 0.0, 1.0, 1.0]), None, "int8", PerChannel(0), name="w")
    with pytest.raises(ValueError, match=r"tensor 'w': scale has shape \(3,\), but per_channel\(0\)"):
        quantize(x, np.ones(3), None, "int8", PerChannel(0), name="w")
    with pytest.raises(ValueError, match=r"zero point range \[-1, -1\] exceeds uint8 \[0, 255\]"):
        quantize(x, 1.0, np.array(-1), "uint8")
    with pytest.raises(TypeError, match="zero point must be an integer array"):
        quantize(x, 1.0, 0.5, "int8")
    with pytest.raises(ValueError, match="fp8_e4m3fn has no zero point"):
        quantize(x, 1.0, 3, "fp8_e4m3fn")
    with pytest.raises(ValueError, match=r"values \[-9, 0\] exceed int4 \[-8, 7\]"):
        dequantize(np.array([-9, 0], np.int8), 1.0, None, "int4")
    with pytest.raises(ValueError, match="codebook indices must lie in"):
        dequantize(np.array([16], np.uint8), 1.0, None, "nf4")


def test_dequantize_formula() -> None:
    q = np.array([[0, 255], [128, 3]], dtype=np.uint8)
    s = np.array([0.5, 2.0], dtype=np.float32)
    zp = np.array([128, 3], dtype=np.uint8)
    out = dequantize(q, s, zp, "uint8", PerChannel(0))
    np.testing.assert_array_equal(out, np.array([[-64.0, 63.5], [250.0, 0.0]], np.float32))
    assert out.dtype == np.float32
    levels = dequantize(np.arange(16, dtype=np.uint8), 2.0, None, "nf4")
    np.testing.assert_array_equal(levels, np.asarray(NF4_CODEBOOK, np.float32) * 2)


def test_quantized_tensor_record() -> None:
    x = _weights()
    qt = quantize_tensor(x, "uint4", AFFINE, PerGroup(1, 4))
    assert isinstance(qt, QuantizedTensor)
    assert qt.shape == x.shape and qt.scale.shape == (6, 4) and qt.zero_point.shape == (6, 4)
    assert qt.fmt is get_format("uint4") and qt.scheme == AFFINE and qt.granularity == PerGroup(1, 4)
    np.testing.assert_array_equal(qt.dequantize(), dequantize(qt.q, qt.scale, qt.zero_point, "uint4",
                                                              PerGroup(1, 4)))
