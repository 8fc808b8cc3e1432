"""fold_constants: structure (what folds, what is declined and why, dead code removed) and numerics
(folding evaluates with the executor's own kernels, so the folded graph computes bit-identical outputs)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.errors import ConfigError
from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.ir import format_graph, parse_graph
from qcompiler.pipeline import get_pass

from .canon_util import decided, ops, run_passes

RNG = np.random.default_rng(0)


def test_folds_constants_shapes_and_declines_with_reasons() -> None:
    g = parse_graph("""graph g (%x: f32[2,3]) -> (%z, %s, %s1, %m, %w) {
  init %a: f32[3] = tensor<f32[3]>[1.0, 2.0, 3.0]
  init %big: i64[2] = tensor<i64[2]>[4096, 4096]
  init %wq: i8[3] = tensor<i8[3]>[-4, 0, 7]
  init %sc: f32[] = tensor<f32[]>0.5
  init %unused: f32[2] = tensor<f32[2]>[9.0, 9.0]
  %k: f32[3] = Constant() {value=tensor<f32[3]>[0.5, 0.5, 0.5]} @k
  %b: f32[3] = Mul(%a, %k) @mul
  %s: i64[2] = Shape(%x) @shape
  %s1: i64[1] = Shape(%x) {start=-1} @shape_last
  %m: f32[4096,4096] = ConstantOfShape(%big) @mask
  %r: f32[3] = RandomNormalLike(%a) @noise
  %w: f32[3] = DequantizeLinear(%wq, %sc) @dq
  %dead: f32[3] = Neg(%x) @dead
  %y: f32[2,3] = Add(%x, %b) @add
  %z: f32[2,3] = Add(%y, %r) @add2
}""")
    m, ctx = run_passes(g, "fold_constants")
    assert format_graph(m.graph) == """graph g (%x: f32[2,3]) -> (%z, %s, %s1, %m, %w) {
  init %a: f32[3] = tensor<f32[3]>[1.0, 2.0, 3.0]
  init %big: i64[2] = tensor<i64[2]>[4096, 4096]
  init %wq: i8[3] = tensor<i8[3]>[-4, 0, 7]
  init %sc: f32[] = tensor<f32[]>0.5
  init %b: f32[3] = tensor<f32[3]>[0.5, 1.0, 1.5]
  init %s: i64[2] = tensor<i64[2]>[2, 3]
  init %s1: i64[1] = tensor<i64[1]>[3]
  %m: f32[4096,4096] = ConstantOfShape(%big) @mask
  %r: f32[3] = RandomNormalLike(%a) @noise
  %w: f32[3] = DequantizeLinear(%wq, %sc) @dq
  %y: f32[2,3] = Add(%x, %b) @add
  %z: f32[2,3] = Add(%y, %r) @add2
}"""
    folded = decided(ctx, "folded")
    assert folded == {"k (Constant)": "Constant node", "mul (Mul)": "all inputs constant -> f32[3]",
                      "shape (Shape)": "the input's shape is static",
                      "shape_last (Shape)": "the input's shape is static"}
    kept = decided(ctx, "kept")
    # 64 MiB of zeros from a 16-byte shape: declined before anything is allocated.
    assert kept["mask (ConstantOfShape)"] == ("its output (64.0 MiB) is over 2x its constant inputs (16 B) + 64.0 KiB: "
                                              "materializing it would grow the model")
    assert kept["noise (RandomNormalLike)"] == "RandomNormalLike is random"
    assert kept["dq (DequantizeLinear)"].startswith("quantization op")
    assert decided(ctx, "removed dead code") == {"g": "5 node(s) and 2 initializer(s) nobody reads"}


def test_blow_up_is_predicted_before_running() -> None:
    # 2**40 elements: evaluating it would need 4 TiB, so the decline must come from the prediction.
    g = parse_graph("""graph g () -> (%t) {
  init %v: f32[2] = tensor<f32[2]>[1.0, 2.0]
  init %reps: i64[1] = tensor<i64[1]>[549755813888]
  %t = Tile(%v, %reps) @tile
}""")
    m, ctx = run_passes(g, "fold_constants")
    assert ops(m) == ["Tile"]
    assert decided(ctx, "kept")["tile (Tile)"] == ("its output (4.0 TiB) would add 4.0 TiB to the model, over "
                                                  "max_bytes=64.0 MiB")


def test_max_bytes_option_and_unknown_option() -> None:
    g = parse_graph("""graph g () -> (%t) {
  init %n: i64[1] = tensor<i64[1]>[1024]
  init %one: i64[] = tensor<i64[]>0
  init %d: i64[] = tensor<i64[]>1
  %t = Range(%one, %n, %d) @range
}""")
    m, ctx = run_passes(g, "fold_constants", max_bytes=1000)  # 8 KiB of int64 > 1000 bytes
    assert ops(m) == ["Range"]
    assert decided(ctx, "kept")["range (Range)"] == ("its output (8.0 KiB) would add 8.0 KiB to the model, "
                                                    "over max_bytes=1000 B")
    m, ctx = run_passes(m, "fold_constants")  # the default (64 MiB) lets it fold
    assert ops(m) == [] and np.array_equal(m.graph.outputs[0].const.numpy(), np.arange(1024))
    with pytest.raises(ConfigError, match="pass 'fold_constants': unknown option 'max_mb'; valid options: "
                                          "max_bytes, max_growth, small_bytes"):
        get_pass("fold_constants", max_mb=1)


def test_graph_outputs_keep_names_and_subgraph_reads_stay_alive() -> None:
    g = parse_graph("""graph g (%c: bool[]) -> (%y, %z) {
  init %a: f32[2] = tensor<f32[2]>[1.0, -2.0]
  init %kept_by_body: f32[2] = tensor<f32[2]>[3.0, 4.0]
  %y: f32[2] = Abs(%a) @abs
  %z = If(%c) {then_branch=graph then () -> (%y) {
  }, else_branch=graph else () -> (%t) {
    %t: f32[2] = Neg(%kept_by_body)
  }} @if
}""")
    m, _ = run_passes(g, "fold_constants")
    y = m.graph.outputs[0]
    assert y.name == "y" and y.const is not None and y.const.numpy().tolist() == [1.0, 2.0]
    assert "kept_by_body" in m.graph.initializers and "a" not in m.graph.initializers
    # The then branch returns %y itself: it now returns the initializer.
    assert m.graph.nodes[0].attrs["then_branch"].value.outputs == [y]
    for c, z in ((True, [1.0, 2.0]), (False, [-3.0, -4.0])):
        out = qcompiler.run(m, {"c": np.array(c)})
        assert out["y"].tolist() == [1.0, 2.0] and out["z"].tolist() == z


def _weights_from_constants() -> tuple:
    """x[N,8] @ (Transpose(W0) * Constant 0.5), reshaped by a shape Concat-ed from Constants, a position
    table from Range/Cast/Unsqueeze, a Gather of constant rows: everything but the data path folds."""
    w0 = RNG.standard_normal((4, 8)).astype(np.float32)
    table = RNG.standard_normal((10, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["w0"], ["wt"], perm=[1, 0], name="t"),
        helper.make_node("Constant", [], ["half"], value=numpy_helper.from_array(np.float32(0.5)), name="c_half"),
        helper.make_node("Mul", ["wt", "half"], ["w"], name="scale_w"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Constant", [], ["m1"], value_ints=[-1], name="c_m1"),
        helper.make_node("Constant", [], ["two"], value_ints=[2], name="c_two"),
        helper.make_node("Concat", ["m1", "two"], ["shape"], axis=0, name="cat"),
        helper.make_node("Reshape", ["h", "shape"], ["h2"], name="reshape"),
        helper.make_node("Range", ["zero", "five", "one"], ["pos"], name="range"),
        helper.make_node("Gather", ["table", "pos"], ["rows"], axis=0, name="gather"),
        helper.make_node("ReduceSum", ["rows", "axes"], ["tot"], keepdims=0, name="sum"),
        helper.make_node("Cast", ["tot"], ["tot16"], to=TensorProto.FLOAT16, name="cast"),
        helper.make_node("Cast", ["tot16"], ["tot32"], to=TensorProto.FLOAT, name="cast_back"),
        helper.make_node("Add", ["h2", "tot32"], ["y"], name="add_pos"),
    ]
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.int64(0), "zero"), numpy_helper.from_array(np.int64(5), "five"),
             numpy_helper.from_array(np.int64(1), "one"), numpy_helper.from_array(np.array([0], np.int64), "axes")]
    graph = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_folded_graph_computes_identical_outputs() -> None:
    model = model_from_proto(_weights_from_constants())
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    want = qcompiler.run(model, {"x": x})["y"]
    m, ctx = run_passes(model, "fold_constants")
    assert ops(m) == ["MatMul", "Reshape", "Add"]
    assert sorted(m.graph.initializers) == ["shape", "tot32", "w"]
    assert len(decided(ctx, "folded")) == 11
    got = qcompiler.run(m, {"x": x})["y"]
    # Exact: every folded value was computed by the same kernel the unfolded graph runs.
    assert got.dtype == want.dtype and np.array_equal(got, want)
