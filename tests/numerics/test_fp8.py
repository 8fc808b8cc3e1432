"""FP8 encode/decode, bit-exact against ml_dtypes (the library ONNX's reference and ONNX Runtime agree with)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from qcompiler.numerics import fp8_decode, fp8_encode, fp8_round, get_format

FP8 = [("fp8_e4m3fn", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)]


def _reference(x: np.ndarray, dtype: type, saturate: bool) -> np.ndarray:
    """ONNX semantics via ml_dtypes: saturating = clip to +-max then cast (onnx.numpy_helper.saturate_cast);
    non-saturating = plain cast (overflow -> NaN for e4m3fn, inf for e5m2)."""
    if saturate:
        fmax = float(ml_dtypes.finfo(dtype).max)
        x = np.clip(x, -fmax, fmax)
    return x.astype(dtype).view(np.uint8)


def _sweep() -> np.ndarray:
    """float32 values that exercise every rounding path: every fp8 value of both formats, the midpoints
    between neighbours (ties) and one float32 ulp either side, a strided walk over all 2**32 float32 bit
    patterns (subnormals, huge values, inf, NaN), every float32 in a window around the smallest fp8
    subnormals, and Gaussian values at several magnitudes."""
    parts = []
    for _, dtype in FP8:
        vals = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
        vals = np.unique(vals[np.isfinite(vals)])
        vals = np.concatenate([vals, [2 * vals.max() - vals[-2]]])  # the slot above max (for overflow ties)
        mids = ((vals[:-1] + vals[1:]) / 2).astype(np.float32)  # exact: each needs <= 5 significant bits
        parts += [vals.astype(np.float32), mids, np.nextafter(mids, np.float32(np.inf)),
                  np.nextafter(mids, np.float32(-np.inf))]
    parts.append(np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32))
    tiny = np.float32(2.0**-17)  # below e5m2's smallest subnormal (2**-16) and e4m3fn's (2**-9)
    lo = tiny.view(np.uint32)
    parts.append(np.arange(lo - 50_000, lo + 50_000, dtype=np.uint32).view(np.float32))
    rng = np.random.default_rng(0)
    for mag in (1e-6, 1e-3, 1.0, 300.0, 6e4):
        parts.append((rng.standard_normal(20_000) * mag).astype(np.float32))
    x = np.concatenate(parts)
    return np.concatenate([x, -x])


SWEEP = _sweep()


@pytest.mark.parametrize(("name", "dtype"), FP8)
def test_decode_all_codes_bit_exact(name: str, dtype: type) -> None:
    codes = np.arange(256, dtype=np.uint8)
    ours = fp8_decode(codes, name)
    ref = codes.view(dtype).astype(np.float32)
    assert ours.dtype == np.float32
    # Bit patterns, so -0.0 and the sign of NaN count too.
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize(("name", "dtype"), FP8)
def test_encode_sweep_bit_exact(name: str, dtype: type, saturate: bool) -> None:
    ours = fp8_encode(SWEEP, name, saturate=saturate)
    ref = _reference(SWEEP, dtype, saturate)
    bad = np.nonzero(ours != ref)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first x={SWEEP[bad[0]]!r}: {ours[bad[0]]:#x} != {ref[bad[0]]:#x}"


def test_special_values() -> None:
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 464.0, 465.0], dtype=np.float32)
    # e4m3fn: 464 is the tie between 448 (0x7E) and the NaN slot -> even -> 448; 465 overflows.
    assert list(fp8_encode(x, "fp8_e4m3fn", True)) == [0x00, 0x80, 0x7E, 0xFE, 0x7F, 0x7E, 0xFE, 0x7E, 0x7E]
    assert list(fp8_encode(x, "fp8_e4m3fn", False)) == [0x00, 0x80, 0x7F, 0xFF, 0x7F, 0x7F, 0xFF, 0x7E, 0x7F]
    y = np.array([np.inf, -np.inf, 61439.0, 61440.0, 1e30], dtype=np.float32)
    # e5m2: 61440 is the tie between 57344 (0x7B) and inf (0x7C) -> even mantissa -> inf when not saturating.
    assert list(fp8_encode(y, "fp8_e5m2", True)) == [0x7B, 0xFB, 0x7B, 0x7B, 0x7B]
    assert list(fp8_encode(y, "fp8_e5m2", False)) == [0x7C, 0xFC, 0x7B, 0x7C, 0x7C]


@pytest.mark.parametrize(("name", "dtype"), FP8)
def test_round_error_bound(name: str, dtype: type) -> None:
    # Round-to-nearest on a grid with M mantissa bits: error <= |x| * 2**-(M+1) for normals and half the
    # subnormal spacing 2**(1-bias-M) / 2 below the smallest normal.
    fmt = get_format(name)
    m, bias = fmt.mantissa_bits, fmt.exponent_bias
    x = np.random.default_rng(1).uniform(-fmt.max_value, fmt.max_value, 100_000).astype(np.float32)
    x = np.concatenate([x, x * np.float32(2.0 ** (-bias - 4))])  # many subnormal results too
    err = np.abs(fp8_round(x, name).astype(np.float64) - x)
    bound = np.maximum(np.abs(x) * 2.0 ** -(m + 1), 2.0 ** (1 - bias - m) / 2)
    assert (err <= bound).all()


def test_decode_rejects_non_uint8() -> None:
    with pytest.raises(TypeError, match="uint8 bit patterns"):
        fp8_decode(np.zeros(3, dtype=np.int32), "fp8_e4m3fn")
    with pytest.raises(ValueError, match="not an fp8 format"):
        fp8_encode(np.zeros(3, dtype=np.float32), "int8")
