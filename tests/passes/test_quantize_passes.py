"""assign_quant_types -> calibrate -> lower_qdq on small graphs: structure (which Q/DQ where) and numerics
(the lowered graph computes what the QuantTypes say, within bounds derived from the scales)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.errors import CalibrationError, GraphError
from qcompiler.frontends.onnx_io import model_from_proto, model_to_proto
from qcompiler.frontends.onnx_schema import schema_rule
from qcompiler.ir import parse_graph
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.recipe import QuantizeSection, Recipe, TensorSpec

RNG = np.random.default_rng(0)


class _Samples(list):
    """The smallest calibration set: a list of feed dicts with `batches`."""

    def batches(self, batch_size: int) -> list:
        return list(self)


def _init(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def cnn() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [_init("w1", (8, 3, 3, 3)), _init("b1", (8,)), _init("w2", (8, 8, 3, 3)), _init("b2", (8,)),
             _init("wf", (10, 8)), _init("bf", (10,))]
    return helper.make_model(helper.make_graph(nodes, "cnn", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _compile(proto: onnx.ModelProto, recipe: Recipe, samples: list | None, passes=("assign_quant_types", "calibrate", "lower_qdq")):
    model = model_from_proto(proto)
    ctx = PassContext(options={"recipe": recipe}, calibration=_Samples(samples) if samples is not None else None,
                      progress=False)
    pm = PassManager([get_pass(p) for p in passes], rules_for=lambda m: [schema_rule(m)])
    return pm.run(model, ctx), ctx


def _feeds(n: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def test_cnn_structure_one_pair_per_value_and_int32_bias() -> None:
    q, ctx = _compile(cnn(), Recipe(), _feeds())
    ops = [n.op_type for n in q.graph.nodes]
    # Relu folded into conv1's output quantization; every other op kept, with Q/DQ around.
    assert "Relu" not in ops
    assert [op for op in ops if op not in ("QuantizeLinear", "DequantizeLinear")] == [
        "Conv", "Conv", "Add", "GlobalAveragePool", "Flatten", "Gemm"]
    # One Q per quantized activation (x, c1(=relu1), c2, a, g, f shared with g); y (graph output only) has none.
    qnodes = [n for n in q.graph.nodes if n.op_type == "QuantizeLinear"]
    assert sorted(n.inputs[0].name for n in qnodes) == ["a", "c1", "c2", "f", "g", "x"]
    # r1 is read by conv2 and add: both read the same dequantized value.
    c1_dq = next(n for n in q.graph.nodes if n.op_type == "DequantizeLinear" and n.inputs[0].name == "c1_quantized")
    assert sorted(u.name for u in c1_dq.outputs[0].users) == ["add", "conv2"]
    # Flatten shares GlobalAveragePool's scale and zero point.
    f_q = next(n for n in qnodes if n.inputs[0].name == "f")
    g_q = next(n for n in qnodes if n.inputs[0].name == "g")
    assert f_q.inputs[1] is g_q.inputs[1] and f_q.inputs[2] is g_q.inputs[2]
    # Weights are int8 per channel, biases int32 with scale = s_x * s_w; float copies are gone.
    g = q.graph
    assert g.initializers["w1_quantized"].const.numpy().dtype == np.int8
    assert g.initializers["w1_scale"].const.shape == (8,)
    assert "w1" not in g.initializers and "b1" not in g.initializers
    sx = g.initializers["x_scale"].const.numpy()
    sw = g.initializers["w1_scale"].const.numpy()
    np.testing.assert_array_equal(g.initializers["b1_scale"].const.numpy(), (np.float64(sx) * sw).astype(np.float32))
    assert g.initializers["b1_quantized"].const.numpy().dtype == np.int32
    assert {d.subject: d.action for d in ctx.decisions if d.pass_name == "lower_qdq"} == {"relu1 (Relu)": "folded"}


def test_cnn_numerics_follow_the_scales(tmp_path) -> None:
    proto = cnn()
    q, _ = _compile(proto, Recipe(), _feeds(16))
    x = _feeds(1)[0]
    ref = qcompiler.run(model_from_proto(proto), x)["y"]
    got = qcompiler.run(q, x)["y"]
    # The executor and ONNX Runtime agree on the quantized model (ORT fuses it into integer kernels).
    path = tmp_path / "q.onnx"
    qcompiler.save(q, path)
    ort_out = ort.InferenceSession(str(path)).run(None, x)[0]
    s_y_bound = 2e-6 * np.abs(ref).max() + 1e-6  # float rounding only: same math in both
    assert np.abs(got - ort_out).max() <= max(s_y_bound, 1e-5)
    # Error vs float: bounded by accumulated quantization error; at least 25 dB SQNR for 8-bit on this net.
    sqnr = 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum())
    assert sqnr > 25, sqnr


def test_activation_error_is_within_half_a_step() -> None:
    """Q->DQ on a graph input: |x - dq(q(x))| <= scale/2 inside the calibrated range."""
    g = parse_graph("graph g (%x: f32[4,64]) -> (%y) {\n  %y: f32[4,64] = Sigmoid(%x)\n}")
    model = qcompiler.Model(g, opset_imports={"": 17})
    proto = model_to_proto(model)
    samples = [{"x": RNG.uniform(-3, 3, (4, 64)).astype(np.float32)} for _ in range(4)]
    q, _ = _compile(proto, Recipe(), samples)
    scale = float(q.graph.initializers["x_scale"].const.numpy())
    zp = int(q.graph.initializers["x_zero_point"].const.numpy())
    lo = min(s["x"].min() for s in samples)
    hi = max(s["x"].max() for s in samples)
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    x = np.clip(RNG.uniform(-3, 3, (4, 64)).astype(np.float32), lo, hi)
    dq = np.clip(np.rint(x / scale) + zp, 0, 255) - zp
    got = qcompiler.run(q, {"x": x})["y"]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-dq * scale)), rtol=1e-5, atol=1e-6)
    assert np.abs(dq * scale - x).max() <= scale / 2 * (1 + 1e-5)


def test_exclusions_and_first_last_policy() -> None:
    recipe = Recipe(quantize=QuantizeSection(exclude_nodes=("conv2",), first_last="float"))
    q, ctx = _compile(cnn(), recipe, None, passes=("assign_quant_types",))
    reasons = {d.subject: d.reason for d in ctx.decisions if d.action == "kept float"}
    assert reasons["conv2 (Conv)"] == "excluded by pattern 'conv2'"
    assert reasons["conv1 (Conv)"] == "first/last quantizable layer kept float by the recipe"
    assert reasons["fc (Gemm)"] == "first/last quantizable layer kept float by the recipe"
    w1 = q.graph.initializers["w1"]
    assert w1.quant is None


def test_static_needs_calibration_data() -> None:
    with pytest.raises(CalibrationError, match="needs calibration data .* --calib random"):
        _compile(cnn(), Recipe(), None)


def test_dynamic_matmul_lowering_matches_ort() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 24])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = helper.make_model(helper.make_graph(nodes, "lin", [x], [y], [_init("w", (32, 24))]),
                              opset_imports=[helper.make_opsetid("", 17)])
    recipe = Recipe(quantize=QuantizeSection(activations=None, dynamic=True,
                                             weights=TensorSpec("int8", "symmetric", "per_channel")))
    q, _ = _compile(proto, recipe, None, passes=("assign_quant_types", "calibrate", "lower_qdq"))
    assert [(n.domain, n.op_type) for n in q.graph.nodes] == [("com.microsoft", "DynamicQuantizeMatMul")]
    assert q.graph.outputs[0].name == "y"
    feeds = {"x": RNG.standard_normal((2, 16, 32)).astype(np.float32)}
    ours = qcompiler.run(q, feeds)["y"]
    sess = ort.InferenceSession(model_to_proto(q).SerializeToString())
    np.testing.assert_allclose(ours, sess.run(None, feeds)[0], rtol=1e-5, atol=1e-5)
    ref = feeds["x"] @ numpy_helper.to_array(proto.graph.initializer[0])
    # Dynamic u8 activations x s8 per-column weights: error ~ a few quantization steps of each side.
    assert 10 * np.log10((ref**2).sum() / ((ref - ours) ** 2).sum()) > 30


def test_uncalibrated_lowering_is_refused() -> None:
    q, _ = _compile(cnn(), Recipe(), None, passes=("assign_quant_types",))
    ctx = PassContext(options={"recipe": Recipe()}, progress=False)
    with pytest.raises(GraphError, match="has no scale; run calibrate first"):
        get_pass("lower_qdq")(q, ctx)
