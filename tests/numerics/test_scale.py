"""Scale and zero point rules, degenerate ranges and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.errors import QuantizationError
from qcompiler.numerics import (
    AFFINE,
    MIN_SCALE,
    SYMMETRIC,
    SYMMETRIC_NARROW,
    ZERO_RANGE_SCALE,
    compute_scale_zero_point,
    get_format,
    quant_range,
)


@pytest.mark.parametrize(
    ("fmt", "scheme", "scale", "zp"),
    [
        ("int8", SYMMETRIC, 2.0 / 127.5, 0),
        ("int8", SYMMETRIC_NARROW, 2.0 / 127, 0),
        ("uint8", SYMMETRIC, 2.0 / 127.5, 128),  # ORT: zero point (0 + 255) / 2 rounded
        ("int4", SYMMETRIC, 2.0 / 7.5, 0),
        ("uint4", SYMMETRIC, 2.0 / 7.5, 8),  # MatMulNBits' default zero point
        ("int16", SYMMETRIC, 2.0 / 32767.5, 0),
        ("uint16", SYMMETRIC, 2.0 / 32767.5, 32768),
        ("ternary", SYMMETRIC, 2.0, 0),
        ("fp8_e4m3fn", SYMMETRIC, 2.0 / 448, None),
        ("fp8_e5m2", SYMMETRIC, 2.0 / 57344, None),
        ("nf4", SYMMETRIC, 2.0, None),
    ],
)
def test_symmetric_rules(fmt: str, scheme, scale: float, zp: int | None) -> None:
    s, z = compute_scale_zero_point(-1.5, 2.0, fmt, scheme)
    assert s.dtype == np.float32 and s.shape == ()
    assert s == np.float32(scale)
    if zp is None:
        assert z is None
    else:
        assert z.dtype == get_format(fmt).numpy_dtype and z == zp


@pytest.mark.parametrize("fmt", ["int8", "uint8", "int16", "uint16", "int4", "uint4", "ternary"])
def test_affine_rules(fmt: str) -> None:
    qmin, qmax = quant_range(fmt, AFFINE)
    lo = np.array([-1.0, 0.5, -3.0, -0.25], dtype=np.float32)
    hi = np.array([3.0, 2.0, -1.0, 0.0], dtype=np.float32)
    s, z = compute_scale_zero_point(lo, hi, fmt, AFFINE)
    lo0, hi0 = np.minimum(lo, 0), np.maximum(hi, 0)  # 0 is always inside the range
    np.testing.assert_array_equal(s, ((hi0.astype(np.float64) - lo0) / (qmax - qmin)).astype(np.float32))
    assert z.dtype == get_format(fmt).numpy_dtype
    assert ((z >= qmin) & (z <= qmax)).all()
    # 0 is exactly representable: it quantizes to the zero point.
    np.testing.assert_array_equal(np.clip(np.rint(0 / s) + z, qmin, qmax), z)
    # the ends of the range are within half a step of the grid ends
    assert (np.abs(lo0 / s + z - qmin) <= 0.5 + 1e-4).all()
    assert (np.abs(hi0 / s + z - qmax) <= 0.5 + 1e-4).all()
    assert z[1] == qmin and z[2] == qmax  # all-positive / all-negative ranges pin the zero point


def test_zero_range_gets_documented_scale() -> None:
    assert ZERO_RANGE_SCALE == 1.0
    for fmt, scheme in [("int8", SYMMETRIC), ("uint8", AFFINE), ("fp8_e4m3fn", SYMMETRIC), ("nf4", SYMMETRIC)]:
        s, _ = compute_scale_zero_point(np.zeros(3), np.zeros(3), fmt, scheme)
        np.testing.assert_array_equal(s, np.full(3, ZERO_RANGE_SCALE, np.float32))
    _, z = compute_scale_zero_point(0.0, 0.0, "uint8", AFFINE)
    assert z == 0


def test_tiny_range_keeps_a_normal_scale() -> None:
    s, _ = compute_scale_zero_point(-1e-44, 1e-44, "int8", SYMMETRIC)
    assert s == np.float32(MIN_SCALE) and s > 0
    s, _ = compute_scale_zero_point(0.0, 1e-37, "fp8_e4m3fn", SYMMETRIC)  # 1e-37 / 448 is subnormal
    assert s == np.float32(MIN_SCALE)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_range_raises_naming_the_tensor(bad: float) -> None:
    lo = np.array([-1.0, -1.0, bad])
    hi = np.array([1.0, 1.0, 1.0])
    with pytest.raises(QuantizationError, match=r"tensor 'conv1.weight': range holds NaN or Inf at granule \(2,\)"):
        compute_scale_zero_point(lo, hi, "int8", SYMMETRIC, name="conv1.weight")


def test_inverted_range_and_huge_range() -> None:
    with pytest.raises(ValueError, match="min 2.0 exceeds max 1.0"):
        compute_scale_zero_point(2.0, 1.0, "int8")
    with pytest.raises(QuantizationError, match="too large for a float32 scale"):
        compute_scale_zero_point(-1e300, 1e300, "int8")


def test_bad_scheme_for_format() -> None:
    with pytest.raises(ValueError, match="fp8_e4m3fn supports only the symmetric scheme"):
        compute_scale_zero_point(-1.0, 1.0, "fp8_e4m3fn", AFFINE)
