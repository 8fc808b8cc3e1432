"""Math ops of the op table against ONNX Runtime's CPU kernels.

Bounds: IEEE-exact ops (add, sub, mul, div, sqrt, rounding, min/max, comparisons, integer ops) must agree
bit for bit. Transcendentals are allowed TRANS_ULP units of float32 epsilon relative error (libm and MLAS
both claim a few ulp), plus the same amount absolute for results near zero. A K-term dot product in float32
accumulates at most ~K*eps*sum|a_k b_k| error per implementation; rounding errors behave like a random walk,
so the two results differ by about sqrt(K)*eps*sum|a_k b_k|, and we allow 4x that.
"""

from __future__ import annotations

import numpy as np
import pytest

from .harness import check_node

EPS = float(np.finfo(np.float32).eps)
TRANS_ULP = 4
RNG = np.random.default_rng(1234)


def f32(*shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def dot_atol(k: int, amax: float, bmax: float) -> float:
    """Difference bound for two float32 K-term dot products with |a| <= amax, |b| <= bmax."""
    return 4 * np.sqrt(k) * EPS * k * amax * bmax


# ------------------------------------------------------------------------------------------------ elementwise


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_binary_arith_broadcast(op: str, dtype: type) -> None:
    if np.dtype(dtype).kind == "f":
        a, b = f32(2, 3, 4).astype(dtype), f32(3, 1).astype(dtype)
    else:
        a = RNG.integers(-50, 50, size=(2, 3, 4)).astype(dtype)
        b = RNG.integers(1, 9, size=(3, 1)).astype(dtype) * RNG.choice([-1, 1], size=(3, 1)).astype(dtype)
    check_node(op, [a, b])


def test_integer_div_truncates_toward_zero() -> None:
    a = np.array([7, -7, 7, -7, 0, 1], np.int32)
    b = np.array([2, 2, -2, -2, 3, -3], np.int32)
    (got,) = check_node("Div", [a, b])
    assert got.tolist() == [3, -3, -3, 3, 0, 0]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64])
def test_small_and_unsigned_int_arith(dtype: type) -> None:
    # Full-range operands: ORT's kernels wrap around on overflow (C integer arithmetic), so must we.
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, info.max, size=(3, 4), dtype=dtype, endpoint=True)
    b = RNG.integers(info.min, info.max, size=(4,), dtype=dtype, endpoint=True)
    for op in ("Add", "Sub", "Mul"):
        check_node(op, [a, b])
    # Division: nonzero divisors; uint64 operands stay below 2**63 (computed in int64, see math.py).
    hi = min(info.max, 2**63 - 1)
    a = RNG.integers(info.min, hi, size=(3, 4), dtype=dtype, endpoint=True)
    b = RNG.integers(1, min(hi, 1000), size=(4,), dtype=dtype, endpoint=True)
    check_node("Div", [a, b])
    check_node("Mod", [a, b])


def test_float16_arith() -> None:
    a, b = f32(3, 4).astype(np.float16), f32(4, lo=0.5, hi=2).astype(np.float16)
    for op in ("Add", "Sub", "Mul", "Div"):
        check_node(op, [a, b])


def test_mod_float_floor_opset_28() -> None:
    a, b = f32(4, 5), f32(5, lo=0.5, hi=2.0) * RNG.choice([-1, 1], size=5).astype(np.float32)
    # a - floor(a/b)*b: fmod is exact in IEEE arithmetic; the sign fix-up adds b once (one rounding).
    check_node("Mod", [a, b], {"fmod": 0}, opset=28, atol=EPS * 4)


def test_uint32_wraps() -> None:
    a = np.array([4294967295, 5], np.uint32)
    b = np.array([2, 4294967295], np.uint32)
    check_node("Add", [a, b])
    check_node("Mul", [a, b])
    check_node("Sub", [b, a])


@pytest.mark.parametrize(
    "base, exp",
    [
        (f32(3, 4, lo=0.1, hi=3), f32(3, 4, lo=-2, hi=2)),
        (f32(3, 4), np.array([2.0], np.float32)),
        (f32(3, 4), np.array([3], np.int64)),
        (np.array([2, 3, -2, 5], np.int32), np.array([0.5, 2.5, 3.0, 0.0], np.float32)),
        (np.array([2, 3, -2, 5], np.int64), np.array([10, 2, 3, 0], np.int64)),
    ],
)
def test_pow(base: np.ndarray, exp: np.ndarray) -> None:
    # pow is exp(y log x) in libm: a few ulp; integer results are exact.
    check_node("Pow", [base, exp], rtol=TRANS_ULP * EPS, atol=TRANS_ULP * EPS)


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_int(fmod: int) -> None:
    a = np.array([7, -7, 7, -7, 0, 13, -13], np.int32)
    b = np.array([3, 3, -3, -3, 5, 4, 4], np.int32)
    (got,) = check_node("Mod", [a, b], {"fmod": fmod})
    # fmod=0 takes the divisor's sign (Python %), fmod=1 the dividend's (C fmod).
    expect = np.fmod(a, b) if fmod else np.mod(a, b)
    np.testing.assert_array_equal(got, expect)


def test_mod_float_fmod() -> None:
    check_node("Mod", [f32(4, 5), f32(5, lo=0.5, hi=2.0)], {"fmod": 1})


def test_mod_float_without_fmod_fails_before_opset_28() -> None:
    from qcompiler.errors import UnsupportedOpError

    from .harness import run_ours, single_node_model

    model, feeds = single_node_model("Mod", [f32(3), f32(3)], {"fmod": 0}, opset=21)
    with pytest.raises(UnsupportedOpError, match="fmod"):
        run_ours(model, feeds)


@pytest.mark.parametrize("op", ["Neg", "Abs", "Sign"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64, np.int8])
def test_exact_unary(op: str, dtype: type) -> None:
    x = (f32(3, 5) * 10).astype(dtype)
    x.flat[0] = 0
    check_node(op, [x])


@pytest.mark.parametrize("op", ["Sqrt", "Floor", "Ceil", "Reciprocal"])
def test_ieee_unary(op: str) -> None:
    # IEEE 754 requires correctly rounded sqrt and division, and exact floor/ceil.
    x = f32(4, 6, lo=0.01, hi=50)
    check_node(op, [x])


def test_round_half_to_even() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6, 3.5], np.float32)
    (got,) = check_node("Round", [x])
    np.testing.assert_array_equal(got, [0, 2, 2, -0, -2, 2, -3, 4])


@pytest.mark.parametrize(
    "op, lo, hi",
    [
        ("Exp", -5, 5), ("Log", 0.01, 20), ("Sin", -6, 6), ("Cos", -6, 6), ("Tan", -1.2, 1.2),
        ("Asin", -0.99, 0.99), ("Acos", -0.99, 0.99), ("Atan", -5, 5), ("Sinh", -4, 4), ("Cosh", -4, 4),
        ("Tanh", -5, 5), ("Asinh", -5, 5), ("Acosh", 1.01, 6), ("Atanh", -0.95, 0.95), ("Erf", -3, 3),
    ],
)
def test_transcendental(op: str, lo: float, hi: float) -> None:
    x = f32(5, 7, lo=lo, hi=hi)
    check_node(op, [x], rtol=TRANS_ULP * EPS, atol=TRANS_ULP * EPS)


def test_isnan_isinf() -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -3.0], np.float32)
    check_node("IsNaN", [x])
    for neg, pos in [(1, 1), (1, 0), (0, 1)]:
        check_node("IsInf", [x], {"detect_negative": neg, "detect_positive": pos})


# ------------------------------------------------------------------------------------------------ variadic


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_variadic_and_nan(op: str) -> None:
    a = np.array([[1, np.nan, 3, -1]], np.float32)
    b = np.array([[2], [0]], np.float32)
    c = np.array([np.nan, 5, 0, -2], np.float32)
    (got,) = check_node(op, [a, b, c])
    assert np.isnan(got[:, 0]).all() and np.isnan(got[:, 1]).all()  # NaN in, NaN out
    check_node(op, [f32(3, 4)])
    check_node(op, [np.array([3, 200, 7], np.uint8), np.array([4, 100, 7], np.uint8)])
    check_node(op, [np.array([3, -9, 7], np.int64), np.array([4, 100, -7], np.int64)])
    check_node(op, [np.array([3, 4000000000], np.uint32), np.array([5, 1], np.uint32)])


def test_sum_mean() -> None:
    xs = [f32(2, 3), f32(3), f32(1, 3), f32(2, 1)]
    # Both add in input order: identical roundings; Mean adds one correctly rounded division.
    check_node("Sum", xs)
    check_node("Mean", xs, rtol=2 * EPS)


# ------------------------------------------------------------------------------------------------ logic


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_comparisons(op: str, dtype: type) -> None:
    a = RNG.integers(-3, 3, size=(2, 3, 4)).astype(dtype)
    b = RNG.integers(-3, 3, size=(3, 1)).astype(dtype)
    check_node(op, [a, b])


def test_comparisons_nan_and_unsigned() -> None:
    a = np.array([np.nan, 1, 2], np.float32)
    b = np.array([np.nan, 1, np.nan], np.float32)
    for op in ("Equal", "Less", "Greater"):
        check_node(op, [a, b])
    # An unsigned order is not the signed order of the same bits.
    ua = np.array([1, 2**63 + 5, 7], np.uint64)
    ub = np.array([2**63, 3, 7], np.uint64)
    check_node("Less", [ua, ub])
    check_node("Greater", [np.array([1, 4000000000], np.uint32), np.array([3000000000, 2], np.uint32)])


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op: str) -> None:
    a = RNG.integers(0, 2, size=(3, 4)).astype(bool)
    b = RNG.integers(0, 2, size=(4,)).astype(bool)
    check_node(op, [a, b])


def test_not() -> None:
    check_node("Not", [RNG.integers(0, 2, size=(3, 4)).astype(bool)])


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.uint16, np.uint64, np.int8])
def test_bitwise(op: str, dtype: type) -> None:
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, info.max, size=(3, 4), dtype=dtype, endpoint=True)
    b = RNG.integers(info.min, info.max, size=(4,), dtype=dtype, endpoint=True)
    check_node(op, [a, b], opset=18)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.uint32, np.uint64])
def test_bitwise_not(dtype: type) -> None:
    info = np.iinfo(dtype)
    check_node("BitwiseNot", [RNG.integers(info.min, info.max, size=(5,), dtype=dtype, endpoint=True)], opset=18)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_bitshift(direction: str, dtype: type) -> None:
    info = np.iinfo(dtype)
    bits = info.bits
    x = RNG.integers(0, info.max, size=(bits,), dtype=dtype, endpoint=True)
    x[0] = info.max  # top bit set: a signed stand-in must still shift logically
    y = np.arange(bits, dtype=dtype)
    check_node("BitShift", [x, y], {"direction": direction})


def test_bitshift_known_values() -> None:
    x = np.array([16, 4, 1, 255], np.uint8)
    y = np.array([1, 2, 7, 4], np.uint8)
    (r,) = check_node("BitShift", [x, y], {"direction": "RIGHT"})
    (lft,) = check_node("BitShift", [x, y], {"direction": "LEFT"})
    assert r.tolist() == [8, 1, 0, 15] and lft.tolist() == [32, 16, 128, 240]


# ------------------------------------------------------------------------------------------------ matmul & co


@pytest.mark.parametrize(
    "sa, sb",
    [((4, 8), (8, 5)), ((8,), (8, 5)), ((4, 8), (8,)), ((8,), (8,)), ((2, 3, 4, 8), (8, 5)),
     ((2, 1, 4, 8), (3, 8, 5)), ((6, 8), (2, 8, 3))],
)
def test_matmul_shapes(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    a, b = f32(*sa, lo=-1, hi=1), f32(*sb, lo=-1, hi=1)
    check_node("MatMul", [a, b], atol=dot_atol(8, 1, 1))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_matmul_int(dtype: type) -> None:
    a = RNG.integers(-20, 20, size=(3, 6)).astype(dtype)
    b = RNG.integers(-20, 20, size=(2, 6, 4)).astype(dtype)
    check_node("MatMul", [a, b])


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (4, 1), (4, 5), ()])
def test_gemm(trans_a: int, trans_b: int, c_shape: tuple[int, ...] | None) -> None:
    k = 7
    a = f32(*((k, 4) if trans_a else (4, k)), lo=-1, hi=1)
    b = f32(*((5, k) if trans_b else (k, 5)), lo=-1, hi=1)
    inputs = [a, b] + ([] if c_shape is None else [f32(*c_shape, lo=-1, hi=1)])
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": 0.75, "beta": 1.5}
    # |alpha * AB| <= 0.75 K; adding beta*C (|.| <= 1.5) adds one rounding of magnitude <= 0.75K + 1.5.
    check_node("Gemm", inputs, attrs, atol=0.75 * dot_atol(k, 1, 1) + 4 * EPS * (0.75 * k + 1.5))


def test_gemm_defaults_opset_11() -> None:
    check_node("Gemm", [f32(3, 4, lo=-1, hi=1), f32(4, 2, lo=-1, hi=1)], opset=11, atol=dot_atol(4, 1, 1))


@pytest.mark.parametrize(
    "eq, shapes",
    [
        ("ij,jk->ik", [(3, 4), (4, 5)]),
        ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
        ("ij,kj", [(3, 4), (5, 4)]),  # implicit output: ik
        ("ii->i", [(4, 4)]),
        ("ij->", [(3, 4)]),
        ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
        ("bhqd, bhkd -> bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ],
)
def test_einsum(eq: str, shapes: list[tuple[int, ...]]) -> None:
    xs = [f32(*s, lo=-1, hi=1) for s in shapes]
    k = 16  # no contraction here sums more than 16 terms
    check_node("Einsum", xs, {"equation": eq}, atol=dot_atol(k, 1, 1))


def test_einsum_mixed_case_implicit() -> None:
    # Implicit output puts upper case first ("Ab,bc" -> "Ac"); ORT rejects upper-case labels here, so
    # the reference is onnx's evaluator.
    xs = [f32(3, 4, lo=-1, hi=1), f32(4, 2, lo=-1, hi=1)]
    check_node("Einsum", xs, {"equation": "Ab,bc"}, reference="reference", atol=dot_atol(4, 1, 1))


def test_clip_input_form() -> None:
    x = np.array([-5, -1, 0, 1, 5, np.nan], np.float32)
    check_node("Clip", [x, np.array(-2, np.float32), np.array(2, np.float32)])
    check_node("Clip", [x, None, np.array(0.5, np.float32)])
    check_node("Clip", [x, np.array(-0.5, np.float32)])
    check_node("Clip", [x])
    # min > max: everything becomes max (max(x, lo) then min(., hi)).
    check_node("Clip", [x, np.array(3, np.float32), np.array(1, np.float32)])
    check_node("Clip", [np.array([-5, 0, 7, 100], np.int32), np.array(0, np.int32), np.array(6, np.int32)])
    check_node("Clip", [np.array([1, 200, 7], np.uint8), np.array(5, np.uint8), np.array(100, np.uint8)])


def test_clip_attribute_form() -> None:
    x = f32(3, 4)
    check_node("Clip", [x], {"min": -1.0, "max": 0.5}, opset=6)
    check_node("Clip", [x], {"max": 0.5}, opset=6)


def test_det() -> None:
    # LU-based determinants: relative error ~ n * eps * cond(A); these 3x3 / 4x4 matrices are well
    # conditioned (diagonally dominant), so 16 n eps covers both implementations.
    a = f32(2, 3, 3, lo=-1, hi=1) + 4 * np.eye(3, dtype=np.float32)
    check_node("Det", [a], rtol=16 * 3 * EPS)
    check_node("Det", [f32(4, 4, lo=-1, hi=1) + 4 * np.eye(4, dtype=np.float32)], rtol=16 * 4 * EPS)
