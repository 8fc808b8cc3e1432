"""Sub-byte packing: ONNX INT4/UINT4 byte layout and ONNX Runtime's MatMulNBits layout."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

from qcompiler.numerics import (
    AFFINE,
    SYMMETRIC,
    MatMulNBitsWeights,
    PerGroup,
    dequantize,
    pack_bits,
    pack_int4,
    pack_matmul_nbits,
    quantize_tensor,
    unpack_bits,
    unpack_int4,
    unpack_matmul_nbits,
)

RNG = np.random.default_rng(3)


def test_nibble_order() -> None:
    # element i: low nibble of byte i // 2 for even i, high nibble for odd i; odd length zero-padded.
    assert list(pack_int4(np.array([1, 2, 3], np.uint8))) == [0x21, 0x03]
    assert list(pack_int4(np.array([-1, 7], np.int8))) == [0x7F]
    assert list(pack_int4(np.array([-8, -1, 0], np.int8))) == [0xF8, 0x00]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [0, 1, 7, 64, 1001])
def test_pack_bits_round_trip(bits: int, signed: bool, n: int) -> None:
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    v = RNG.integers(lo, hi, n).astype(np.int8 if signed else np.uint8)
    packed = pack_bits(v, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, n, signed), v)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (1,)])
@pytest.mark.parametrize(("signed", "onnx_type", "ml"), [(True, TensorProto.INT4, ml_dtypes.int4),
                                                         (False, TensorProto.UINT4, ml_dtypes.uint4)])
def test_int4_matches_onnx(shape: tuple[int, ...], signed: bool, onnx_type: int, ml: type) -> None:
    v = RNG.integers(-8 if signed else 0, 8 if signed else 16, shape).astype(np.int8 if signed else np.uint8)
    ours = pack_int4(v)
    from_array = numpy_helper.from_array(v.astype(ml), "t")
    assert from_array.data_type == onnx_type
    assert ours.tobytes() == from_array.raw_data
    made = helper.make_tensor("t", onnx_type, shape, v.reshape(-1).tolist())  # ONNX packs into int32_data
    assert list(ours) == list(made.int32_data)
    np.testing.assert_array_equal(unpack_int4(np.frombuffer(from_array.raw_data, np.uint8), shape, signed), v)
    np.testing.assert_array_equal(numpy_helper.to_array(made).astype(v.dtype), unpack_int4(ours, shape, signed))


def test_pack_errors() -> None:
    with pytest.raises(ValueError, match=r"values \[0, 16\] do not fit 4 bits"):
        pack_int4(np.array([0, 16], np.uint8))
    with pytest.raises(ValueError, match="supported widths"):
        pack_bits(np.zeros(4, np.uint8), 3)
    with pytest.raises(TypeError, match="integer array"):
        pack_int4(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="hold at most 4"):
        unpack_bits(np.zeros(2, np.uint8), 4, 5)


# ---- MatMulNBits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "block"), [(96, 32), (64, 16), (128, 128)])
def test_matmul_nbits_layout_matches_ort_packer(k: int, block: int) -> None:
    """ORT's own packer (quantize_matmul_4bits, used by its MatMulNBitsQuantizer) -> our unpack -> our pack
    gives back the same bytes, and our unpack reads weights that dequantize to within scale/2 of W."""
    n = 5
    w = RNG.standard_normal((k, n)).astype(np.float32)  # MatMul's B: (K, N)
    kb = k // block
    b = np.zeros((n, kb, block // 2), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    zp = np.zeros((n, (kb + 1) // 2), np.uint8)
    quantize_matmul_4bits(b, w, scales, zp, block, n, k, False)
    codes, s, z = unpack_matmul_nbits(MatMulNBitsWeights(b, scales, zp, n, k, 4, block))
    err = np.abs(dequantize(codes, s, z, "uint4", PerGroup(1, block)) - w.T)
    # ORT's own rounding: within half a step, with 1% slack for its reciprocal-multiply arithmetic.
    assert (err <= np.repeat(s, block, axis=1) * 0.505).all()
    again = pack_matmul_nbits(codes, s, z, block)
    np.testing.assert_array_equal(again.b, b)
    np.testing.assert_array_equal(again.zero_points, zp)


def _run_matmul_nbits(a: np.ndarray, packed: MatMulNBitsWeights) -> np.ndarray:
    inits = [numpy_helper.from_array(packed.b, "B"), numpy_helper.from_array(packed.scales.astype(np.float32),
                                                                              "scales")]
    inputs = ["A", "B", "scales"]
    if packed.zero_points is not None:
        inits.append(numpy_helper.from_array(packed.zero_points, "zp"))
        inputs.append("zp")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=packed.k, N=packed.n,
                            bits=packed.bits, block_size=packed.block_size)
    graph = helper.make_graph([node], "mmnb", [helper.make_tensor_value_info("A", TensorProto.FLOAT, a.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a})[0]


@pytest.mark.parametrize(("fmt", "scheme"), [("uint4", AFFINE), ("uint4", SYMMETRIC), ("int4", SYMMETRIC)],
                         ids=["uint4-affine", "uint4-sym", "int4-sym"])
@pytest.mark.parametrize(("k", "block"), [(100, 32), (80, 16), (64, 64)])  # ragged K; odd k_blocks (zp padding)
def test_matmul_nbits_runs_in_ort(fmt: str, scheme, k: int, block: int) -> None:
    n, m = 7, 3
    w_t = RNG.standard_normal((n, k)).astype(np.float32)  # the (N, K) transpose of MatMul's B
    qt = quantize_tensor(w_t, fmt, scheme, PerGroup(1, block))
    packed = pack_matmul_nbits(qt.q, qt.scale, qt.zero_point, block)
    assert packed.b.shape == (n, -(-k // block), block // 2) and packed.scales.shape == (n, -(-k // block))
    if fmt == "int4":
        assert packed.zero_points is None  # signed codes ride on the default zero point 8
    else:
        assert packed.zero_points.shape == (n, -(-k // block * 4 // 8))
    a = RNG.standard_normal((m, k)).astype(np.float32)
    y = _run_matmul_nbits(a, packed)
    deq = qt.dequantize().astype(np.float64)
    ref = a.astype(np.float64) @ deq.T
    # fp32 dot products of length K (any summation order) plus up to two roundings in ORT's dequantization
    # ((code - zp) * scale or code * scale - zp * scale): |err| <= (K + 4) * 2**-23 * sum |a| * s*(|c|+|zp|).
    codes, s, z = unpack_matmul_nbits(packed)
    mag = np.repeat(s, block, axis=1)[:, :k] * (codes.astype(np.float64) + np.repeat(z, block, axis=1)[:, :k])
    bound = (k + 4) * 2.0**-23 * (np.abs(a).astype(np.float64) @ mag.T)
    assert (np.abs(y - ref) <= bound).all()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matmul_nbits_round_trip(bits: int) -> None:
    n, k, block = 3, 50, 16  # ragged K, k_blocks = 4
    kb = -(-k // block)
    q = RNG.integers(0, 1 << bits, (n, k)).astype(np.uint8)
    s = RNG.uniform(0.1, 1.0, (n, kb)).astype(np.float32)
    z = RNG.integers(0, 1 << bits, (n, kb)).astype(np.uint8)
    packed = pack_matmul_nbits(q, s, z, block, bits)
    assert packed.b.shape == (n, kb, block * bits // 8)
    assert packed.zero_points.shape == (n, -(-kb * bits // 8))
    codes, s2, z2 = unpack_matmul_nbits(packed)
    np.testing.assert_array_equal(codes, q)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(z2, z)


def test_matmul_nbits_argument_errors() -> None:
    q = np.zeros((4, 40), np.uint8)
    with pytest.raises(ValueError, match="power of 2 >= 16"):
        pack_matmul_nbits(q, np.ones((4, 2)), None, 24)
    with pytest.raises(ValueError, match=r"expected \(N, k_blocks\) = \(4, 3\)"):
        pack_matmul_nbits(q, np.ones((4, 2)), None, 16)
    with pytest.raises(ValueError, match="zero point of 0"):
        pack_matmul_nbits(q.astype(np.int8), np.ones((4, 3)), np.ones((4, 3), np.int8), 16)
