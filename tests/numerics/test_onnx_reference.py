"""quantize / dequantize bit-exact against onnx.reference running QuantizeLinear / DequantizeLinear."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompiler.numerics import (
    AFFINE,
    SYMMETRIC,
    PerChannel,
    PerGroup,
    PerTensor,
    compute_scale_zero_point,
    dequantize,
    get_format,
    quantize,
    reduce_min_max,
)

# numpy container ONNX's reference uses for each element type (sub-byte and fp8 types come from ml_dtypes).
ONNX_NP = {
    TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16, TensorProto.INT4: ml_dtypes.int4, TensorProto.UINT4: ml_dtypes.uint4,
    TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn, TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2,
}


def _attrs(g) -> dict:
    if isinstance(g, PerChannel):
        return {"axis": g.axis}
    if isinstance(g, PerGroup):
        return {"axis": g.axis, "block_size": g.size}
    return {}


def _run(op: str, x: np.ndarray, x_type: int, scale: np.ndarray, zp: np.ndarray | None, zp_type: int | None,
         out_type: int, attrs: dict, opset: int) -> np.ndarray:
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "scale")]
    inputs = ["x", "scale"]
    if zp is not None:
        inits.append(numpy_helper.from_array(np.asarray(zp).astype(ONNX_NP[zp_type]), "zp"))
        inputs.append("zp")
    node = helper.make_node(op, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", x_type, x.shape)],
                              [helper.make_tensor_value_info("y", out_type, x.shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def _data(shape=(6, 13)) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * np.logspace(-1, 1, shape[0])[:, None]
    x[1] = np.abs(x[1])
    return x.astype(np.float32)


GRANS = [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(1, 4), PerGroup(0, 4)]  # groups are ragged
INT_FORMATS = ["int8", "uint8", "int16", "uint16", "int4", "uint4"]


@pytest.mark.parametrize("opset", [21, 25])
@pytest.mark.parametrize("scheme", [SYMMETRIC, AFFINE], ids=str)
@pytest.mark.parametrize("g", GRANS, ids=str)
@pytest.mark.parametrize("fmt_name", INT_FORMATS)
def test_integer_quantize_dequantize_match_onnx(fmt_name: str, g, scheme, opset: int) -> None:
    fmt = get_format(fmt_name)
    x = _data()
    lo, hi = reduce_min_max(x, g)
    scale, zp = compute_scale_zero_point(lo, hi, fmt, scheme)
    x_test = x * np.float32(1.3)  # the largest values of each granule pass its range: exercises the clamp
    ours = quantize(x_test, scale, zp, fmt, g)
    ref = _run("QuantizeLinear", x_test, TensorProto.FLOAT, scale, zp, fmt.onnx_type, fmt.onnx_type,
               _attrs(g), opset)
    np.testing.assert_array_equal(ours.astype(np.int64), ref.astype(np.int64))
    assert ours.min() == fmt.qmin or ours.max() == fmt.qmax  # some values reached the clamp

    back = _run("DequantizeLinear", ours.astype(ONNX_NP[fmt.onnx_type]), fmt.onnx_type, scale, zp,
                fmt.onnx_type, TensorProto.FLOAT, _attrs(g), opset)
    np.testing.assert_array_equal(dequantize(ours, scale, zp, fmt, g).view(np.uint32), back.view(np.uint32))


@pytest.mark.parametrize("fmt_name", ["int8", "uint8", "int4", "uint4", "int16"])
def test_ties_round_to_even_like_onnx(fmt_name: str) -> None:
    fmt = get_format(fmt_name)
    # scale 0.25 makes x / scale exact, so every k + 0.5 is a true tie.
    x = (np.arange(-20, 20, dtype=np.float32) + np.float32(0.5)) * np.float32(0.25)
    zp = np.array(fmt.qmin + (fmt.qmax - fmt.qmin) // 2 + 1).astype(fmt.numpy_dtype)
    ours = quantize(x, 0.25, zp, fmt)
    ref = _run("QuantizeLinear", x, TensorProto.FLOAT, np.float32(0.25), zp, fmt.onnx_type, fmt.onnx_type, {}, 21)
    np.testing.assert_array_equal(ours.astype(np.int64), ref.astype(np.int64))


FP8 = [("fp8_e4m3fn", TensorProto.FLOAT8E4M3FN), ("fp8_e5m2", TensorProto.FLOAT8E5M2)]


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("g", GRANS, ids=str)
@pytest.mark.parametrize(("fmt_name", "onnx_type"), FP8)
def test_fp8_quantize_dequantize_match_onnx(fmt_name: str, onnx_type: int, g, saturate: int) -> None:
    x = _data()
    lo, hi = reduce_min_max(x, g)
    scale, _ = compute_scale_zero_point(lo, hi, fmt_name, SYMMETRIC)
    # Scale the data up to 300x so values overflow (fp8 max) and saturate or turn into NaN / inf.
    x_test = x * np.float32(300.0) if saturate == 0 else x * np.float32(3.0)
    x_test = np.concatenate([x_test.ravel()[:40], x.ravel()[40:]]).reshape(x.shape)
    ours = quantize(x_test, scale, None, fmt_name, g, saturate=bool(saturate))
    ref = _run("QuantizeLinear", x_test, TensorProto.FLOAT, scale, None, None, onnx_type,
               {**_attrs(g), "saturate": saturate, "output_dtype": onnx_type}, 21)
    np.testing.assert_array_equal(ours, ref.view(np.uint8))

    back = _run("DequantizeLinear", ours.view(ONNX_NP[onnx_type]), onnx_type, scale, None, None,
                TensorProto.FLOAT, _attrs(g), 21)
    np.testing.assert_array_equal(dequantize(ours, scale, None, fmt_name, g).view(np.uint32),
                                  back.view(np.uint32))
