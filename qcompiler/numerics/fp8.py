"""FP8 (e4m3fn, e5m2) <-> float32 in plain numpy, bit-exact with ml_dtypes and ONNX Cast/QuantizeLinear."""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from qcompiler.numerics.formats import Format, get_format


def _fp8_format(fmt: Format | str) -> Format:
    fmt = get_format(fmt)
    if not fmt.is_float or fmt.bits != 8:
        raise ValueError(f"format {fmt.name} is not an fp8 format")
    return fmt


def _nan_code(fmt: Format) -> int:
    # e4m3fn's only NaN is S.1111.111; for IEEE-like e5m2 the quiet NaN is S.11111.10 (what a float32 NaN
    # truncates to, and what ml_dtypes produces).
    assert fmt.mantissa_bits is not None
    return 0x7F if not fmt.has_inf else 0x7C | (1 << (fmt.mantissa_bits - 1))


@cache
def _decode_table(fmt: Format) -> np.ndarray:
    """float32 value of each of the 256 codes, built from the bit fields."""
    assert fmt.exponent_bits is not None and fmt.mantissa_bits is not None and fmt.exponent_bias is not None
    e_bits, m_bits, bias = fmt.exponent_bits, fmt.mantissa_bits, fmt.exponent_bias
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> m_bits) & ((1 << e_bits) - 1)
    man = codes & ((1 << m_bits) - 1)
    normal = (1.0 + man / (1 << m_bits)) * np.exp2(exp - bias)
    subnormal = man * np.exp2(1 - bias - m_bits)
    mag = np.where(exp == 0, subnormal, normal)
    top = exp == (1 << e_bits) - 1
    if fmt.has_inf:
        mag = np.where(top & (man == 0), np.inf, mag)
        mag = np.where(top & (man != 0), np.nan, mag)
    else:
        mag = np.where(top & (man == (1 << m_bits) - 1), np.nan, mag)
    table = np.copysign(mag, sign).astype(np.float32)  # copysign keeps the sign of NaN, as ml_dtypes
    table.flags.writeable = False
    return table


def fp8_decode(codes: np.ndarray, fmt: Format | str) -> np.ndarray:
    """float32 values of uint8 fp8 bit patterns."""
    fmt = _fp8_format(fmt)
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"fp8 codes must be uint8 bit patterns, got dtype {codes.dtype}")
    return _decode_table(fmt)[codes]


def fp8_encode(x: np.ndarray, fmt: Format | str, saturate: bool = True) -> np.ndarray:
    """uint8 bit patterns of float32 ``x`` rounded to nearest, ties to even.

    ``saturate=True`` (ONNX QuantizeLinear/Cast default) clamps finite overflow and +-inf to +-max.
    ``saturate=False`` follows ONNX's non-saturating cast: overflow becomes NaN for e4m3fn, +-inf for e5m2.
    Overflow is decided after rounding, so e4m3fn 464 (the tie between 448 and the NaN slot) gives 448.
    NaN stays NaN.
    """
    fmt = _fp8_format(fmt)
    x = np.asarray(x, dtype=np.float32)
    return _encode(x, fmt, saturate)


def _max_code(fmt: Format) -> int:
    assert fmt.max_value is not None and fmt.mantissa_bits is not None and fmt.exponent_bias is not None
    frac, e = math.frexp(fmt.max_value)  # max = frac * 2**e, frac in [0.5, 1)
    return ((e - 1 + fmt.exponent_bias) << fmt.mantissa_bits) | int((frac * 2 - 1) * (1 << fmt.mantissa_bits))


def _encode(x: np.ndarray, fmt: Format, saturate: bool) -> np.ndarray:
    assert fmt.mantissa_bits is not None and fmt.exponent_bias is not None
    m_bits, bias = fmt.mantissa_bits, fmt.exponent_bias
    shift = 23 - m_bits  # float32 mantissa bits dropped
    u = x.view(np.uint32)
    sign = ((u >> 24) & 0x80).astype(np.uint8)
    a_bits = u & np.uint32(0x7FFFFFFF)
    # Normal results: round the float32 mantissa to m_bits, half to even, by integer addition (a carry
    # into the exponent is the correct result), then rebias the exponent. uint32 arithmetic wraps for
    # inputs below the smallest normal; those take the subnormal path instead.
    half_minus_1 = np.uint32((1 << (shift - 1)) - 1)
    rounded = (a_bits + half_minus_1 + ((a_bits >> shift) & np.uint32(1))) >> shift
    normal = rounded - np.uint32((127 - bias) << m_bits)
    # Subnormal results: adding 2**k whose float32 ulp equals the fp8 subnormal step makes the float32
    # adder round to that grid (half to even); the low bits of the sum are then the code.
    magic = np.float32(2.0 ** (24 - bias - m_bits))
    min_normal_bits = np.float32(2.0 ** (1 - bias)).view(np.uint32)
    small = a_bits < min_normal_bits
    sub = (np.where(small, a_bits, 0).view(np.float32) + magic).view(np.uint32) - magic.view(np.uint32)
    code = np.where(small, sub, normal)
    # Overflow is judged after rounding: codes are monotonic in |x|, and inf rounds past every code.
    max_code = _max_code(fmt)
    overflow = (code > max_code) | (a_bits >= np.uint32(0x7F800000))
    over_code = max_code if saturate else (0x7C if fmt.has_inf else _nan_code(fmt))
    code = np.where(overflow, over_code, code)
    code = np.where(a_bits > np.uint32(0x7F800000), _nan_code(fmt), code)
    return code.astype(np.uint8) | sign


def fp8_round(x: np.ndarray, fmt: Format | str, saturate: bool = True) -> np.ndarray:
    """``x`` rounded to the nearest fp8 value, as float32."""
    return fp8_decode(fp8_encode(x, fmt, saturate), fmt)
