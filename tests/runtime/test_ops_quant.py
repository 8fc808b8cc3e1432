"""Quantization ops against ONNX Runtime: integer outputs bit for bit.

Float outputs: DequantizeLinear is one float32 multiply of exact integers -> exact. MatMulIntegerToFloat and
DynamicQuantizeMatMul scale an exact int32 accumulator: ORT may fuse the multiply-add (one rounding) where
we round twice, so each element may differ by 2 ulps of max(|acc * scale|, |y|). MatMulNBits is a float32
matmul of identical dequantized weights: a K-term dot product in two summation orders differs by at most
2 * K * u * sum_k |a_k w_k| (u = 2**-24).

Types ORT's Python API cannot return (int4, uint4, float8 e5m2) are compared through a Cast to a type it
can return (exact for these values); types it cannot take as feeds are initializers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from .harness import check_model, check_node, const, finish_model, tensor

RNG = np.random.default_rng(11)
U = 2.0**-24

QTYPES = {  # element type -> (numpy storage, qmin, qmax)
    TP.INT8: (np.int8, -128, 127),
    TP.UINT8: (np.uint8, 0, 255),
    TP.INT16: (np.int16, -32768, 32767),
    TP.UINT16: (np.uint16, 0, 65535),
    TP.INT4: (np.int8, -8, 7),
    TP.UINT4: (np.uint8, 0, 15),
}
RETURNABLE = {TP.INT8, TP.UINT8, TP.INT16, TP.UINT16, TP.FLOAT8E4M3FN}


def x_for(shape: tuple, scale: np.ndarray | float, qmin: int, qmax: int) -> np.ndarray:
    """Values over the whole code range and beyond (saturation), plus a third at half-way points (k + 0.5)
    * scale: exact ties for power-of-two scales, and otherwise values whose x / scale lands within an ulp
    of a tie, where dividing and multiplying by 1 / scale round differently. `scale` is broadcast to x."""
    sc = np.broadcast_to(np.asarray(scale, np.float32), shape)
    span = (qmax - qmin + 1) * float(sc.max())
    x = RNG.uniform(-span, span, size=shape).astype(np.float32)
    tie = RNG.random(shape) < 1 / 3
    k = RNG.integers(qmin, qmax, size=shape)
    return np.where(tie, ((k + 0.5) * sc).astype(np.float32), x).astype(np.float32)


def _full(scale: np.ndarray, shape: tuple, attrs: dict) -> np.ndarray:
    """A scale array broadcast to the input's shape (per tensor, per axis or per block)."""
    if scale.ndim == 0:
        return np.broadcast_to(scale, shape)
    axis = attrs.get("axis", 1)
    if "block_size" in attrs:
        return np.repeat(scale, attrs["block_size"], axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(scale.reshape(view), shape)


def zero_point(elem: int, shape: tuple = ()) -> onnx.TensorProto:
    _, lo, hi = QTYPES[elem]
    vals = RNG.integers(lo // 2, hi // 2 + 1, size=shape)
    return tensor(vals, elem, list(shape))


def _q_model(
    x: np.ndarray, scale: np.ndarray, zp: onnx.TensorProto | None, attrs: dict, opset: int, out_elem: int
) -> onnx.ModelProto:
    """QuantizeLinear, then (for element types ORT cannot return) a Cast to int32 / float."""
    inits = [numpy_helper.from_array(scale, "scale")]
    ins = ["x", "scale"]
    if zp is not None:
        zp.name = "zp"
        inits.append(zp)
        ins.append("zp")
    nodes = [helper.make_node("QuantizeLinear", ins, ["q"], **attrs)]
    out = "q"
    if out_elem not in RETURNABLE:
        back = TP.FLOAT if out_elem in (TP.FLOAT8E5M2,) else TP.INT32
        nodes.append(helper.make_node("Cast", ["q"], ["y"], to=back))
        out = "y"
    g = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TP.FLOAT, list(x.shape))],
        [onnx.ValueInfoProto(name=out)],
        inits,
    )
    return finish_model(g, [helper.make_opsetid("", opset)])


@pytest.mark.parametrize("elem", list(QTYPES))
@pytest.mark.parametrize("granularity", ["tensor", "axis", "block"])
def test_quantize_linear_integer(elem: int, granularity: str) -> None:
    _, lo, hi = QTYPES[elem]
    opset = 21
    shape = (3, 8, 4)
    if granularity == "tensor":
        scale = np.array(0.5, np.float32)
        zp, attrs = zero_point(elem), {}
    elif granularity == "axis":
        scale = np.array([0.25, 0.5, 1.0, 2.0, 0.125, 4.0, 0.5, 1.0], np.float32)
        zp, attrs = zero_point(elem, (8,)), {"axis": 1}
    else:
        scale = np.exp2(RNG.integers(-3, 3, size=(3, 2, 4))).astype(np.float32)  # blocks of 4 along axis 1
        zp, attrs = zero_point(elem, (3, 2, 4)), {"axis": 1, "block_size": 4}
    x = x_for(shape, _full(scale, shape, attrs), lo, hi)
    check_model(_q_model(x, scale, zp, attrs, opset, elem), {"x": x})
    # non power-of-two scales: exercises the float32 division (x / scale, never x * (1 / scale))
    scale2 = (scale * np.float32(0.7317)).astype(np.float32)
    x2 = x_for(shape, _full(scale2, shape, attrs), lo, hi)
    check_model(_q_model(x2, scale2, zp, attrs, opset, elem), {"x": x2})


@pytest.mark.parametrize("out_elem", [TP.INT8, TP.UINT8, TP.INT4, TP.UINT16])
def test_quantize_linear_output_dtype_without_zero_point(out_elem: int) -> None:
    x = x_for((4, 6), 0.5, *QTYPES[out_elem][1:])
    check_model(
        _q_model(x, np.array(0.5, np.float32), None, {"output_dtype": out_elem}, 21, out_elem), {"x": x}
    )


def test_quantize_linear_defaults_and_old_opsets() -> None:
    x = x_for((5, 4), 0.1, 0, 255)
    check_node("QuantizeLinear", [x, np.array(0.1, np.float32)], opset=10)  # uint8, zero point 0
    check_node("QuantizeLinear", [x, np.array(0.1, np.float32), np.array(7, np.int8)], opset=10)
    check_node(
        "QuantizeLinear",
        [x, np.array([0.1, 0.2, 0.05, 0.3], np.float32), np.array([0, 3, 9, 2], np.uint8)],
        {"axis": -1},
        opset=13,
    )


def test_quantize_linear_float16_input() -> None:
    x = x_for((4, 5), 0.25, -128, 127).astype(np.float16)
    check_node("QuantizeLinear", [x, np.array(0.25, np.float16), np.array(3, np.int8)], opset=19)


@pytest.mark.parametrize("elem", [TP.FLOAT8E4M3FN, TP.FLOAT8E5M2])
@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("granularity", ["tensor", "axis", "block"])
def test_quantize_linear_float8(elem: int, saturate: int, granularity: str) -> None:
    x = (RNG.standard_normal((4, 50)) * np.exp2(RNG.uniform(-12, 12, (4, 50)))).astype(np.float32)
    if granularity == "tensor":
        scale, attrs = np.array(0.75, np.float32), {}
    elif granularity == "axis":
        scale, attrs = np.array([0.5, 1.5, 3.0, 0.01], np.float32), {"axis": 0}
    else:
        scale, attrs = RNG.uniform(0.01, 3, (4, 5)).astype(np.float32), {"axis": 1, "block_size": 10}
    attrs["saturate"] = saturate
    zp = tensor(np.zeros(scale.shape), elem, list(scale.shape))
    check_model(_q_model(x, scale, zp, attrs, 21, elem), {"x": x})


# ------------------------------------------------------------------------------------------- dequantize
def _dq_model(
    q: onnx.TensorProto, scale: np.ndarray, zp: onnx.TensorProto | None, attrs: dict, opset: int
) -> onnx.ModelProto:
    q.name = "q"
    inits = [q, numpy_helper.from_array(scale, "scale")]
    ins = ["q", "scale"]
    if zp is not None:
        zp.name = "zp"
        inits.append(zp)
        ins.append("zp")
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ins, ["y"], **attrs)],
        "dq",
        [],
        [onnx.ValueInfoProto(name="y")],
        inits,
    )
    return finish_model(g, [helper.make_opsetid("", opset)])


@pytest.mark.parametrize("elem", list(QTYPES) + [TP.INT32])
@pytest.mark.parametrize("granularity", ["tensor", "axis", "block"])
@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
def test_dequantize_linear(elem: int, granularity: str, scale_dtype: type) -> None:
    lo, hi = QTYPES[elem][1:] if elem != TP.INT32 else (-(2**20), 2**20)
    shape = (2, 6, 4)
    q = tensor(RNG.integers(lo, hi + 1, size=shape), elem, list(shape))
    zp_elem = elem
    if granularity == "tensor":
        scale, attrs, zshape = np.array(0.37, scale_dtype), {}, ()
    elif granularity == "axis":
        scale, attrs, zshape = RNG.uniform(0.01, 2, 6).astype(scale_dtype), {"axis": 1}, (6,)
    else:
        scale, attrs, zshape = (
            RNG.uniform(0.01, 2, (2, 2, 4)).astype(scale_dtype),
            {"axis": 1, "block_size": 3},
            (2, 2, 4),
        )
    zp = (
        None
        if elem == TP.INT32 and granularity != "tensor"
        else zero_point(zp_elem, zshape)
        if elem != TP.INT32
        else tensor([5], TP.INT32, [])
    )
    check_model(_dq_model(q, scale, zp, attrs, 21), {})
    check_model(_dq_model(q, scale, None, attrs, 21), {})


@pytest.mark.parametrize("elem", [TP.FLOAT8E4M3FN, TP.FLOAT8E5M2])
def test_dequantize_linear_float8(elem: int) -> None:
    vals = (RNG.standard_normal(40) * np.exp2(RNG.uniform(-10, 10, 40))).astype(np.float32)
    q = tensor(vals.reshape(4, 10), elem)
    check_model(_dq_model(q, np.array(0.3, np.float32), None, {}, 21), {})
    check_model(_dq_model(q, RNG.uniform(0.1, 2, 4).astype(np.float32), None, {"axis": 0}, 21), {})


def test_dequantize_linear_old_opsets_and_feeds() -> None:
    q = RNG.integers(0, 256, size=(3, 5)).astype(np.uint8)
    check_node("DequantizeLinear", [q, np.array(0.02, np.float32), np.array(128, np.uint8)], opset=10)
    q8 = RNG.integers(-128, 128, size=(3, 5)).astype(np.int8)
    check_node(
        "DequantizeLinear",
        [q8, RNG.uniform(0.1, 1, 3).astype(np.float32), np.zeros(3, np.int8)],
        {"axis": 0},
        opset=13,
    )


def test_dequantize_linear_output_dtype() -> None:
    q = tensor(RNG.integers(-8, 8, size=(4, 4)), TP.INT4)
    check_model(_dq_model(q, np.array(0.5, np.float32), None, {"output_dtype": TP.FLOAT}, 23), {})


@pytest.mark.parametrize("case", ["random", "zeros", "positive", "negative", "single"])
def test_dynamic_quantize_linear(case: str) -> None:
    x = {
        "random": RNG.standard_normal((6, 7)).astype(np.float32) * 3,
        "zeros": np.zeros((3, 4), np.float32),
        "positive": RNG.uniform(0.5, 4, (5, 5)).astype(np.float32),
        "negative": RNG.uniform(-4, -0.5, (5, 5)).astype(np.float32),
        "single": np.array([2.5], np.float32),
    }[case]
    check_node("DynamicQuantizeLinear", [x], n_outputs=3)


# ------------------------------------------------------------------------------------------- integer matmul
def _ints(dtype: type, shape: tuple, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(
        info.min if lo is None else lo, (info.max if hi is None else hi) + 1, size=shape
    ).astype(dtype)


def _weights(dtype: type, shape: tuple) -> np.ndarray:
    """Integer weights; int8 ones in [-64, 63] (ORT's reduce_range). On x86 CPUs without VNNI, MLAS's
    u8 x s8 kernel adds pairs of products in int16 and saturates beyond that range, so ORT itself is not
    exact there; on VNNI machines full range agrees too."""
    return _ints(dtype, shape, -64, 63) if dtype is np.int8 else _ints(dtype, shape)


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_matmul_integer(ta: type, tb: type) -> None:
    a, b = _ints(ta, (2, 5, 33)), _weights(tb, (33, 7))
    check_node("MatMulInteger", [a, b])
    check_node("MatMulInteger", [a, b, _ints(ta, ()), _ints(tb, ())])
    check_node("MatMulInteger", [a, b, _ints(ta, (1,)), _ints(tb, (7,))])  # per-column zero point of B


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul(ta: type, tb: type, per_column: bool) -> None:
    a, b = _ints(ta, (3, 4, 40)), _weights(tb, (40, 6))
    b_scale = RNG.uniform(0.001, 0.01, 6 if per_column else ()).astype(np.float32)
    b_zp = _ints(tb, (6,) if per_column else ())
    inputs = [
        a,
        np.array(0.02, np.float32),
        _ints(ta, ()),
        b,
        b_scale,
        b_zp,
        np.array(0.05, np.float32),
        _ints(ta, ()),
    ]
    check_node("QLinearMatMul", inputs)


@pytest.mark.parametrize("tb", [np.uint8, np.int8])
def test_matmul_integer_to_float(tb: type) -> None:
    a, b = _ints(np.uint8, (4, 24)), _weights(tb, (24, 5))
    a_s, b_s = np.array(0.03, np.float32), RNG.uniform(0.01, 0.1, 5).astype(np.float32)
    a_zp, b_zp = _ints(np.uint8, ()), _ints(tb, (5,))
    bias = RNG.standard_normal(5).astype(np.float32)
    acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
    bound = 2 * 2 * U * (np.abs(acc * (a_s * b_s)).max() + np.abs(bias).max())  # 2 ulp of the largest term
    check_node("MatMulIntegerToFloat", [a, b, a_s, b_s, a_zp, b_zp, bias], domain="com.microsoft", atol=bound)
    check_node("MatMulIntegerToFloat", [a, b, a_s, b_s], domain="com.microsoft", atol=bound)


@pytest.mark.parametrize("tb", [np.uint8, np.int8])
def test_dynamic_quantize_matmul(tb: type) -> None:
    a = RNG.standard_normal((2, 3, 32)).astype(np.float32)
    b = _weights(tb, (32, 8))
    b_s = RNG.uniform(0.01, 0.05, 8).astype(np.float32)
    bias = RNG.standard_normal(8).astype(np.float32)
    a_scale = (max(a.max(), 0) - min(a.min(), 0)) / 255
    bound = 2 * 2 * U * (32 * 255 * 255 * a_scale * b_s.max() + np.abs(bias).max())
    check_node("DynamicQuantizeMatMul", [a, const(b), b_s, None, bias], domain="com.microsoft", atol=bound)
    check_node(
        "DynamicQuantizeMatMul",
        [a, const(b), b_s, _ints(tb, (8,), 0, 10) if tb is np.uint8 else np.zeros(8, np.int8)],
        domain="com.microsoft",
        atol=bound,
    )


# ------------------------------------------------------------------------------------------- integer conv
CONV_CASES = [
    {"pads": [1, 1, 1, 1]},
    {"strides": [2, 2], "pads": [0, 1, 1, 0]},
    {"auto_pad": "SAME_UPPER"},
    {"auto_pad": "SAME_LOWER", "strides": [2, 1]},
    {"dilations": [2, 1], "auto_pad": "VALID"},
    {"group": 2, "pads": [1, 0, 1, 0]},
]


@pytest.mark.parametrize("attrs", CONV_CASES)
def test_conv_integer(attrs: dict) -> None:
    x = _ints(np.uint8, (2, 4, 7, 6))
    w = _ints(np.uint8, (6, 4 // attrs.get("group", 1), 3, 3))
    check_node("ConvInteger", [x, w, np.array(121, np.uint8), np.array(130, np.uint8)], attrs)
    check_node("ConvInteger", [x, const(_weights(np.int8, w.shape)), np.array(7, np.uint8)], attrs)


@pytest.mark.parametrize("attrs", CONV_CASES + [{"group": 4, "pads": [1, 1, 1, 1]}])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv(attrs: dict, per_channel: bool) -> None:
    g = attrs.get("group", 1)
    m = 8 if g != 4 else 4
    x = _ints(np.uint8, (2, 4, 7, 6))
    w = _weights(np.int8, (m, 4 // g, 3, 3))
    w_scale = RNG.uniform(0.002, 0.02, m if per_channel else ()).astype(np.float32)
    bias = RNG.integers(-5000, 5000, m).astype(np.int32)
    inputs = [
        x,
        np.array(0.03, np.float32),
        np.array(120, np.uint8),
        const(w),
        w_scale,
        np.zeros(m if per_channel else (), np.int8),
        np.array(0.4, np.float32),
        np.array(128, np.uint8),
        const(bias),
    ]
    check_node("QLinearConv", inputs, attrs)


def test_qlinear_conv_int8_activations() -> None:
    x = _ints(np.int8, (1, 3, 6, 6))
    w = _weights(np.int8, (5, 3, 3, 3))
    inputs = [
        x,
        np.array(0.05, np.float32),
        np.array(-3, np.int8),
        const(w),
        RNG.uniform(0.002, 0.02, 5).astype(np.float32),
        np.zeros(5, np.int8),
        np.array(0.3, np.float32),
        np.array(4, np.int8),
    ]
    check_node("QLinearConv", inputs, {"pads": [1, 1, 1, 1]})


# ------------------------------------------------------------------------------------------- MatMulNBits
def _pack4(codes: np.ndarray) -> np.ndarray:
    """(..., n) uint8 codes < 16 -> (..., ceil(n/2)) bytes, low nibble first."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


@pytest.mark.parametrize("k,block", [(64, 32), (80, 16), (100, 32), (256, 128)])
@pytest.mark.parametrize("zp_kind", ["none", "packed", "float"])
def test_matmul_nbits(k: int, block: int, zp_kind: str) -> None:
    n, m = 12, 3
    k_blocks = -(-k // block)
    codes = RNG.integers(0, 16, size=(n, k_blocks * block)).astype(np.uint8)
    b = _pack4(codes.reshape(n, k_blocks, block))
    scales = RNG.uniform(0.01, 0.1, (n, k_blocks)).astype(np.float32)
    a = RNG.standard_normal((2, m, k)).astype(np.float32)
    bias = RNG.standard_normal(n).astype(np.float32)
    if zp_kind == "none":
        zp_in, zp = None, np.full((n, k_blocks), 8.0)
    elif zp_kind == "packed":
        zcodes = RNG.integers(0, 16, size=(n, k_blocks)).astype(np.uint8)
        zp_in, zp = const(_pack4(zcodes).reshape(-1)), zcodes.astype(np.float64)
    else:
        zf = RNG.uniform(0, 15, (n, k_blocks)).astype(np.float32)
        zp_in, zp = const(zf.reshape(-1)), zf.astype(np.float64)
    w = ((codes.reshape(n, k_blocks, block) - zp[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]
    bound = 2 * k * U * (np.abs(a) @ np.abs(w).T).max() + 2 * U * np.abs(bias).max()
    attrs = {"K": k, "N": n, "bits": 4, "block_size": block}
    check_node(
        "MatMulNBits",
        [a, const(b), const(scales.reshape(-1)), zp_in],
        attrs,
        domain="com.microsoft",
        atol=bound,
    )
    check_node(
        "MatMulNBits",
        [a, const(b), const(scales.reshape(-1)), zp_in, None, const(bias)],
        attrs,
        domain="com.microsoft",
        atol=bound,
    )


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    c = codes.reshape(*codes.shape[:-1], -1, per).astype(np.uint16)
    out = np.zeros(c.shape[:-1], np.uint16)
    for i in range(per):
        out |= c[..., i] << (i * bits)
    return out.astype(np.uint8)


@pytest.mark.parametrize("bits,dtype", [(2, np.float32), (8, np.float32), (4, np.float16)])
def test_matmul_nbits_other_widths_and_float16(bits: int, dtype: type) -> None:
    n, k, block = 8, 96, 32
    kb = k // block
    codes = RNG.integers(0, 2**bits, size=(n, kb, block)).astype(np.uint8)
    scales = RNG.uniform(0.01, 0.1, (n, kb)).astype(dtype)
    a = RNG.standard_normal((3, k)).astype(dtype)
    w = ((codes.astype(np.float64) - 2 ** (bits - 1)) * scales[..., None]).reshape(n, k)
    y = np.abs(a.astype(np.float64)) @ np.abs(w).T
    # float32 accumulation in both (see the module doc), then for float16 outputs one rounding each:
    # results that straddle a float16 rounding boundary differ by one float16 ulp (2**-10 relative)
    bound = float((2 * k * U * y).max()) + (2.0**-10 * float(y.max()) if dtype is np.float16 else 0.0)
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    check_node(
        "MatMulNBits",
        [a, const(_pack_bits(codes, bits)), const(scales.reshape(-1))],
        attrs,
        domain="com.microsoft",
        atol=bound,
    )


def test_op_table_marks_quantization_ops() -> None:
    from qcompiler.runtime import lookup

    assert "quantize" in lookup("QuantizeLinear", "", 21).traits
    assert lookup("DequantizeLinear", "", 10).quantizable_inputs == (0,)
    assert lookup("QLinearConv", "", 21).quantizable_inputs == (0, 3)
    assert lookup("MatMulNBits", "com.microsoft", 1).quantizable_inputs == (1,)
    assert "data_movement" in lookup("Reshape", "", 21).traits
