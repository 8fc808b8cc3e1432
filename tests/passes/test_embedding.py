"""Embedding tables: Gather from a constant float table is lowered to Gather on an int8 table followed by
DequantizeLinear on the rows read; values equal dequantize(quantize(table))[ids] exactly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.compiler import CompileOptions
from qcompiler.frontends.onnx_io import model_to_proto


def _model(tied: bool = False):
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 16])
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("Relu", ["emb"], ["y"], name="act")]
    outs = [y]
    ins = [ids]
    if tied:  # the same table also read by another op, one constant folding cannot remove
        ins.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [1]))
        nodes.append(helper.make_node("Mul", ["table", "s"], ["scaled"], name="scale_table"))
        outs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [50, 16]))
    return helper.make_model(helper.make_graph(nodes, "emb", ins, outs, [table]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_gather_reads_an_int8_table() -> None:
    proto = _model()
    art = qcompiler.compile(proto, target="cpu-int8-dynamic", options=CompileOptions(report=False, progress=False))
    g = art.model.graph
    ops = [(n.op_type, n.inputs[0].name) for n in g.nodes]
    assert ops == [("Gather", "table_quantized"), ("DequantizeLinear", "emb_quantized"), ("Relu", "emb")]
    tq = g.initializers["table_quantized"].const
    assert tq.numpy().dtype == np.int8 and "table" not in g.initializers
    table = numpy_helper.to_array(proto.graph.initializer[0])
    scale = g.initializers["table_scale"].const.numpy()
    # Symmetric int8 with one scale per column (numerics' rule: amax / 127.5).
    np.testing.assert_array_equal(scale, (np.abs(table).max(axis=0) / np.float32(127.5)).astype(np.float32))
    ids = np.array([[0, 7, 49], [3, 3, 1]], np.int64)
    expect = np.maximum(np.clip(np.rint(table / scale), -128, 127)[ids] * scale, 0)
    got = ort.InferenceSession(model_to_proto(art.model).SerializeToString()).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(got, expect.astype(np.float32))
    np.testing.assert_array_equal(qcompiler.run(art.model, {"ids": ids})["y"], got)
    # Error against the float table: at most half a step (plus float32 rounding of amax / 127.5 at the ends).
    bound = scale / 2 + 4 * 2.0**-24 * np.abs(table[ids])
    assert np.all(np.abs(got - np.maximum(table[ids], 0)) <= bound)


def test_table_shared_with_other_ops_stays_float() -> None:
    art = qcompiler.compile(_model(tied=True), target="cpu-int8-dynamic", options=CompileOptions(progress=False))
    assert "table" in art.model.graph.initializers and "table_quantized" not in art.model.graph.initializers
    reasons = {k.node: k.reason for k in art.report.kept_float}
    assert reasons["embed (Gather)"] == "its table is also read by other ops (kept float for them)"
