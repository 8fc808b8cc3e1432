"""canonicalize: the four steps together to a fixed point on a small CNN classifier whose weights come from
constant subgraphs, with an Identity between Conv and BN and a Dropout; structure (what is left, what the
report says, a second run changes nothing, ONNX Runtime accepts the result) and numerics (a bound propagated
from the rounding of each rewritten layer, see test_fold_batchnorm's doc)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.errors import ConfigError
from qcompiler.frontends.onnx_io import model_from_proto, model_to_proto
from qcompiler.pipeline import PassContext, get_pass

from .canon_util import conv_bn_bound, decided, dot_bound, ops, run_passes

RNG = np.random.default_rng(4)


def _params() -> dict[str, np.ndarray]:
    def arr(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (RNG.standard_normal(shape) * scale).astype(np.float32)

    return {"w1_flat": arr(8 * 3 * 3 * 3, scale=0.4), "g1": arr(8, scale=0.8), "be1": arr(8, scale=0.5),
            "m1": arr(8, scale=0.5), "v1": RNG.uniform(0.05, 2.0, 8).astype(np.float32),
            "fcw_t": arr(10, 8, scale=0.5), "fcb": arr(10, scale=0.1)}


SHAPES = {"y": ["N", 10], "r1": ["N", 8, 8, 8], "f": ["N", 8]}


def _classifier(p: dict[str, np.ndarray], outputs: tuple[str, ...] = ("y",)) -> onnx.ModelProto:
    """Conv(Reshape(w1_flat)) - Identity - BN - Relu - Dropout - GlobalAveragePool - Flatten -
    MatMul(Transpose(fcw_t)) - Add(fcb)."""
    nodes = [
        helper.make_node("Constant", [], ["shape1"], value_ints=[8, 3, 3, 3], name="shape_const"),
        helper.make_node("Reshape", ["w1_flat", "shape1"], ["w1"], name="w1_reshape"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Identity", ["c1"], ["i1"], name="copy"),
        helper.make_node("BatchNormalization", ["i1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Dropout", ["r1"], ["d1"], name="drop"),
        helper.make_node("GlobalAveragePool", ["d1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("Transpose", ["fcw_t"], ["fcw"], perm=[1, 0], name="fcw_transpose"),
        helper.make_node("MatMul", ["f", "fcw"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "fcb"], ["y"], name="fc_bias"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPES[o]) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_canonical_form_report_and_fixed_point() -> None:
    m, ctx = run_passes(model_from_proto(_classifier(_params())), "canonicalize")
    assert ops(m) == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    conv, gemm = m.graph.nodes[0], m.graph.nodes[-1]
    assert [v.name for v in conv.inputs] == ["x", "w1", "w1_bias"]
    assert conv.outputs[0].name == "n1" and gemm.outputs[0].name == "y" and gemm.name == "fc"
    assert [v.name for v in gemm.inputs] == ["f", "fcw", "fcb"]
    assert sorted(m.graph.initializers) == ["fcb", "fcw", "w1", "w1_bias"]
    report = {(d.pass_name, d.subject, d.action) for d in ctx.decisions}
    assert report >= {
        ("fold_constants", "shape_const (Constant)", "folded"),
        ("fold_constants", "w1_reshape (Reshape)", "folded"),
        ("fold_constants", "fcw_transpose (Transpose)", "folded"),
        ("remove_identity", "copy (Identity)", "removed"),
        ("remove_identity", "drop (Dropout)", "removed"),
        ("fold_batchnorm", "bn1 (BatchNormalization)", "folded"),
        ("fuse_matmul_add", "fc (MatMul)", "fused"),
    }
    assert not decided(ctx, "kept")
    assert set(ctx.timings) >= {"canonicalize/fold_constants", "canonicalize/fuse_matmul_add"}
    # A second run finds nothing to do.
    again = PassContext()
    assert get_pass("canonicalize")(m, again).modified is False
    assert not [d for d in again.decisions if d.action != "kept"]


def test_declines_are_reported_once_for_the_final_graph() -> None:
    # Round 1 folds the weight's Transpose, round 2 finds nothing more; the attention-style MatMul with a
    # fed weight is declined in both rounds but reported once.
    proto = _classifier(_params())
    proto.graph.input.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, [10, 10]))
    proto.graph.node.append(helper.make_node("MatMul", ["y", "k"], ["z"], name="scores"))
    proto.graph.output[0].name = "z"
    m, ctx = run_passes(model_from_proto(proto), "canonicalize")
    assert [d.reason for d in ctx.decisions if d.subject == "scores (MatMul)"] == ["weight is not constant"]
    assert ops(m)[-2:] == ["Gemm", "MatMul"]


def test_canonical_model_matches_within_propagated_bound_and_runs_in_onnxruntime() -> None:
    p = _params()
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = qcompiler.run(model_from_proto(_classifier(p, ("y", "r1", "f"))), {"x": x})
    m, _ = run_passes(model_from_proto(_classifier(p)), "canonicalize")
    got = qcompiler.run(m, {"x": x})["y"]
    bn = {"gamma": p["g1"], "beta": p["be1"], "mean": p["m1"], "var": p["v1"]}
    # Conv+BN -> Conv: bound per element (Relu is 1-Lipschitz, Dropout is a copy).
    e1 = conv_bn_bound(np.abs(x), np.zeros(x.shape), p["w1_flat"].reshape(8, 3, 3, 3), None, bn, 1e-5, 1)
    # GlobalAveragePool: mean of the input errors, plus each side's rounding of a 64-term sum (/64 is exact).
    r1 = np.abs(ref["r1"]).astype(np.float64)
    e_gap = e1.mean(axis=(2, 3)) + 2 * dot_bound((r1 + e1).mean(axis=(2, 3)), 64)
    # MatMul+Add -> Gemm: the input error through |W|, plus each side's rounding of 8 products and the bias.
    w = np.abs(p["fcw_t"].T.astype(np.float64))
    f = np.abs(ref["f"]).astype(np.float64)
    bound = e_gap @ w + 2 * dot_bound((f + e_gap) @ w + np.abs(p["fcb"]), 8 + 1)
    err = np.abs(got.astype(np.float64) - ref["y"])
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    assert bound.max() < 1e-4 * np.abs(ref["y"]).max()
    # The canonical model is valid ONNX and ONNX Runtime runs it (its kernels differ: only the shape is checked).
    proto = model_to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": x})[0].shape == (4, 10)


def test_options() -> None:
    with pytest.raises(ConfigError, match="pass 'canonicalize': max_rounds must be >= 1, got 0"):
        get_pass("canonicalize", max_rounds=0)
    with pytest.raises(ConfigError, match="pass 'remove_identity' takes no options; got x"):
        get_pass("remove_identity", x=1)
