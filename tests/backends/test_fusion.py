"""What ONNX Runtime fuses, checked on the QDQ groups lower_qdq writes, and what check_fusion reports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.backends.onnxruntime import fusion
from qcompiler.backends.onnxruntime.fusion import analyze_graph, check_fusion
from qcompiler.backends.onnxruntime.session import OrtRunner
from qcompiler.backends.onnxruntime.targets import STATIC_KERNELS
from qcompiler.errors import ModelLoadError

from .qdq_models import QDQBuilder, pattern

# The integer kernel each static-target op becomes ("" = the Q/DQ pair is dropped or the op removed, so the
# op runs on the 8-bit tensor or disappears).
EXPECTED_KERNEL = {
    "Conv": "QLinearConv", "MatMul": "QLinearMatMul", "Gemm": "QGemm", "Add": "QLinearAdd", "Mul": "QLinearMul",
    "Concat": "QLinearConcat", "GlobalAveragePool": "QLinearGlobalAveragePool",
    "AveragePool": "QLinearAveragePool", "Sigmoid": "QLinearSigmoid", "LeakyRelu": "QLinearLeakyRelu",
    "Softmax": "QLinearSoftmax", "Where": "QLinearWhere", "Relu": "QLinearConv", "Clip": "QLinearConv",
}
NOT_FUSED = ["ConvTranspose", "Sub", "Div", "Tanh", "HardSigmoid", "Pad", "GlobalMaxPool", "SpaceToDepth",
             "ReduceMean", "InstanceNormalization", "LayerNormalization"]


def test_every_kernel_of_the_static_target_has_an_expectation():
    assert set(STATIC_KERNELS) <= set(EXPECTED_KERNEL) | {
        op for op, how in STATIC_KERNELS.items() if how.startswith("Q/DQ dropped")
    }


@pytest.mark.parametrize("op", sorted(STATIC_KERNELS))
def test_static_target_kernels_are_fused(op, tmp_path):
    path = pattern(op, "uint8", per_channel=op in ("Conv", "MatMul", "Gemm")).save(tmp_path / "m.onnx")
    r = check_fusion(path)
    assert r.unfused == [], r.summary()
    assert r.float_ops == {}, r.summary()
    want = EXPECTED_KERNEL.get(op)
    if want:
        assert r.integer_kernels == {want: 1}
    else:
        assert r.integer_kernels == {}
    # Only the model's own edges keep a Q or a DQ: the Q of each input and the DQ of each output.
    assert {b.reason for b in r.benign} <= {"Q at graph input", "DQ at graph output"}


@pytest.mark.parametrize("op", NOT_FUSED)
def test_ops_left_out_of_the_target_are_not_fused(op, tmp_path):
    """If an ORT upgrade fuses one of these, it can join STATIC_KERNELS (update FUSION.md)."""
    assert op not in STATIC_KERNELS
    r = check_fusion(pattern(op).save(tmp_path / "m.onnx"))
    assert r.float_ops.get(op) == 1
    assert r.integer_kernels == {}
    assert any(u.op_type == op and "not fused" in u.reason for u in r.unfused)


@pytest.mark.parametrize("op", ["Conv", "MatMul", "Gemm"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_linear_ops_fuse_for_both_activation_types_and_granularities(op, per_channel, act, tmp_path):
    r = check_fusion(pattern(op, act, per_channel=per_channel).save(tmp_path / "m.onnx"))
    assert r.integer_kernels == {EXPECTED_KERNEL[op]: 1} and r.unfused == []


def test_float_output_matmul_becomes_matmul_integer_to_float(tmp_path):
    b = QDQBuilder()
    x = b.qdq(b.input("x", [4, 32]))
    w, _ = b.weight(np.random.default_rng(0).normal(size=(32, 16)), axis=1)
    b.output(b.node("MatMul", [x, w]))
    r = check_fusion(b.save(tmp_path / "m.onnx"))
    assert r.integer_kernels == {"MatMulIntegerToFloat": 1} and r.unfused == []


def _shared_input_convs(act: str) -> QDQBuilder:
    """One quantized input read by two Convs (lower_qdq shares one Q->DQ pair between readers)."""
    rng = np.random.default_rng(0)
    b = QDQBuilder(act)
    x = b.qdq(b.input("x", [1, 8, 10, 10]))
    for _ in range(2):
        w, s = b.weight(rng.normal(size=(16, 8, 3, 3)))
        b.output(b.qdq(b.node("Conv", [x, w, b.bias(rng.normal(size=16), s)]), scale=0.5))
    return b


def test_uint8_activation_with_two_readers_fuses(tmp_path):
    r = check_fusion(_shared_input_convs("uint8").save(tmp_path / "m.onnx"))
    assert r.integer_kernels == {"QLinearConv": 2} and r.unfused == []


def test_int8_activation_with_two_readers_is_not_fused(tmp_path):
    """ORT on x86 rewrites int8 Q->DQ pairs to uint8 before fusing, but only a Q with a single DQ reader: the
    reason cpu-int8 uses uint8 activations. The report names each piece left in float."""
    r = check_fusion(_shared_input_convs("int8").save(tmp_path / "m.onnx"))
    assert r.integer_kernels == {}
    assert r.float_ops == {"Conv": 2}
    reasons = sorted(u.reason.split(" 'Conv")[0] for u in r.unfused)
    assert reasons == sorted(
        ["activation Q->DQ pair around Conv", "weight DQ left before float op Conv", "bias DQ left before float op Conv"]
        * 2 + ["Q->DQ round trip after Conv"] * 2
    )
    text = r.summary()
    assert "unfused Q/DQ: 8" in text and "Conv x2" in text


def test_benign_edges_are_not_reported_as_unfused(tmp_path):
    r = check_fusion(pattern("Conv").save(tmp_path / "m.onnx"))
    assert sorted(b.reason for b in r.benign) == ["DQ at graph output", "Q at graph input"]
    assert r.fully_fused


def test_float_model_has_nothing_to_fuse(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "f",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    p = tmp_path / "f.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    r = check_fusion(p)
    assert r.integer_kernels == {} and r.unfused == [] and r.quant_ops == {}
    assert sum(r.float_ops.values()) >= 1  # Conv, possibly as NCHWc Conv with its reorders
    assert "nothing runs quantized" in r.summary()


def test_model_with_external_data(tmp_path):
    p = tmp_path / "ext.onnx"
    onnx.save(pattern("Gemm", per_channel=True).model(), str(p), save_as_external_data=True,
              location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").is_file()
    r = check_fusion(p)
    assert r.integer_kernels == {"QGemm": 1} and r.unfused == []


def test_constant_float_inputs_alone_do_not_make_a_float_op():
    """Resize on an 8-bit tensor takes float scales: that is not float compute."""
    g = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    assert analyze_graph(g).float_ops == {}


def test_fused_kernels_match_the_unfused_graph_within_one_output_step(tmp_path):
    """The integer kernel accumulates exactly in int32; the unfused graph (optimization disabled) computes the
    same sum in float from dequantized values. Both round to the output grid, so they differ by at most one
    step of the output scale (0.5 in these patterns)."""
    rng = np.random.default_rng(1)
    for op in ("Conv", "MatMul", "Gemm"):
        path = pattern(op, "uint8", per_channel=True).save(tmp_path / f"{op}.onnx")
        fused, ref = OrtRunner(path, 1), OrtRunner(path, 1, optimization="disable")
        assert check_fusion(path).integer_kernels  # really fused at "all"
        x = rng.normal(size=[d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim])
        feeds = {"x": x.astype(np.float32)}
        a, b = fused(feeds), ref(feeds)
        (name,) = a
        assert np.max(np.abs(a[name] - b[name])) <= 0.5 * (1 + 1e-6), op
        # Not a vacuous comparison: the outputs span the grid instead of sitting at the clamp.
        assert np.mean(np.abs(b[name]) >= 0.5 * 127) < 0.05


def test_per_column_matmul_weights_are_honoured(tmp_path):
    """QLinearMatMul with one weight scale per output column, against numpy: round(dq(x) @ dq(w) / s) within
    one output step. Columns get scales 1..100x apart, so using one scale for all would be far off."""
    rng = np.random.default_rng(2)
    b = QDQBuilder(act_scale=0.05)
    x = b.qdq(b.input("x", [16, 32]))
    w = rng.normal(size=(32, 8)) * np.geomspace(0.01, 1, 8)
    wd, ws = b.weight(w, axis=1)
    b.output(b.qdq(b.node("MatMul", [x, wd]), scale=0.02))
    path = b.save(tmp_path / "m.onnx")
    r = check_fusion(path)
    assert r.integer_kernels == {"QLinearMatMul": 1}
    xf = rng.normal(size=(16, 32)).astype(np.float32)
    xq = np.clip(np.round(xf / 0.05) + 128, 0, 255)
    xd = (xq - 128) * 0.05
    wq = np.clip(np.round(w / ws), -127, 127)
    acc = xd @ (wq * ws)
    want = (np.clip(np.round(acc / 0.02) + 128, 0, 255) - 128) * 0.02
    got = OrtRunner(path, 1)({"x": xf})
    (y,) = got.values()
    assert np.max(np.abs(y - want)) <= 0.02 * (1 + 1e-6)


def test_falls_back_to_extended_when_the_all_graph_cannot_be_saved(tmp_path, monkeypatch):
    path = pattern("Conv").save(tmp_path / "m.onnx")
    real = fusion.make_session
    levels = []

    def fake(model, *, optimization, **kw):
        levels.append(optimization)
        if optimization == "all":
            raise ModelLoadError(f"{model}: ONNX Runtime cannot load it: cannot save NCHWc layout")
        return real(model, optimization=optimization, **kw)

    monkeypatch.setattr(fusion, "make_session", fake)
    r = check_fusion(path)
    assert levels == ["all", "extended"]
    assert r.level == "extended" and r.integer_kernels == {"QLinearConv": 1}
    assert any("analyzed 'extended' instead" in n for n in r.notes)
    assert "optimization level extended" in r.summary()


def test_bad_model_names_the_file(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="broken.onnx"):
        check_fusion(p)


def test_ort_quantizer_output_is_fully_fused(tmp_path):
    """ORT's own static quantizer (QDQ, uint8 activations, per-channel int8 weights) on a small CNN: the anchor
    that our checker reads ORT's fused graph the same way ORT builds it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("w", (8, 3, 3, 3)), ("b", (8,)), ("wg", (4, 8)), ("bg", (4,)))]
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1),
    ], "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))

    class Data(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Data(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    r = check_fusion(dst)
    assert r.unfused == [], r.summary()
    assert r.integer_kernels == {"QLinearConv": 1, "QLinearGlobalAveragePool": 1, "QGemm": 1}


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize(("bias", "out_q", "fused"), [
    ("int32", True, True), ("int32", False, True), ("float", True, True),
    ("float", False, False),  # ORT's MatMulAddFusion makes it a float Gemm first: nothing is quantized
])
def test_matmul_with_bias_add_becomes_qgemm(rank, bias, out_q, fused, tmp_path):
    """MatMul(DQ x, DQ W) + bias, no Q between them: ORT rewrites MatMul+Add to Gemm (with Reshapes for 3-D
    inputs) and fuses that into QGemm, unless the bias is float and the output is not quantized."""
    rng = np.random.default_rng(0)
    b = QDQBuilder()
    x = b.qdq(b.input("x", [2, 12, 64][-rank:]))
    w, s = b.weight(rng.normal(size=(64, 48)), axis=1)
    c = b.bias(rng.normal(size=48), s) if bias == "int32" else b.const("bias", rng.normal(size=48).astype(np.float32))
    y = b.node("Add", [b.node("MatMul", [x, w]), c])
    b.output(b.qdq(y, scale=0.5) if out_q else y)
    r = check_fusion(b.save(tmp_path / "m.onnx"))
    if fused:
        assert r.integer_kernels == {"QGemm": 1} and r.unfused == []
    else:
        assert r.integer_kernels == {} and r.float_ops.get("Gemm") == 1
        assert any(u.reason.startswith("weight DQ left before float op Gemm") for u in r.unfused)


def test_a_quantized_graph_output_is_benign():
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(128, np.uint8), "z")
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q0"),
                           helper.make_node("Relu", ["x"], ["r"], name="relu"),
                           helper.make_node("QuantizeLinear", ["r", "s", "z"], ["y"], name="q1")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("q", TensorProto.UINT8, [4]),
                           helper.make_tensor_value_info("y", TensorProto.UINT8, [4])], [s, z])
    r = analyze_graph(g)
    assert [(b.node, b.op_type, b.reason) for b in r.benign] == [
        ("q0", "", "Q at graph input"), ("q1", "Relu", "Q at graph output")]
    assert r.unfused == [] and r.float_ops == {"Relu": 1} and r.quant_ops == {"QuantizeLinear": 2}
