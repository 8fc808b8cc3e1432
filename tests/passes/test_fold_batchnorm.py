"""fold_batchnorm: structure (weights scaled, bias created or updated, names kept, declines with reasons) and
numerics against a rounding bound derived from the arithmetic (below), for Conv / grouped Conv /
ConvTranspose / Gemm / MatMul and for a small CNN (Conv-BN-Relu-Conv-BN-Add).

The bound. With s = gamma/sqrt(var+eps), the exact result of layer + BN is y* = s*(sum_k W_k x_k + b - mean)
+ beta. The folded graph computes fl(sum_k fl(W_k s) x_k + fl(b')): the weights carry one rounding (u each)
and the sum of K products plus the bias at most gamma_{K+1} = (K+1)u/(1-(K+1)u) of the sum of absolute
terms (Higham 3.1). The unfolded graph rounds the same sum, then (c - mean), rsqrt(var + eps) (a few ulps),
the products with gamma and (c - mean), and + beta: a handful of u more. Both are within
(K + 8) u * M of y*, with M = |s| (sum_k |W_k||x_k| + |b| + |mean|) + |beta| elementwise, so
|folded - unfolded| <= (2K + 16) u M. M is computed in float64 by running the same layer on |x| with |W|, |b|.
Through a network the bound of one layer's input, E, propagates as conv(E, |W'|) (Relu is 1-Lipschitz).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.ir import format_graph, parse_graph

from .canon_util import U32, channel_view, conv_bn_bound, decided, ops, run_passes

RNG = np.random.default_rng(2)


def test_conv_bn_folds_into_weight_and_created_bias() -> None:
    # eps=1 makes s = [2/sqrt(4), 3/sqrt(1)] = [1, 3]: every number below is exact.
    g = parse_graph("""graph g (%x: f32[1,1,2,2]) -> (%y) {
  init %conv1.weight: f32[2,1,1,1] = tensor<f32[2,1,1,1]>[[[[1.0]]], [[[2.0]]]]
  init %gamma: f32[2] = tensor<f32[2]>[2.0, 3.0]
  init %beta: f32[2] = tensor<f32[2]>[0.5, 0.0]
  init %mean: f32[2] = tensor<f32[2]>[1.0, -1.0]
  init %var: f32[2] = tensor<f32[2]>[3.0, 0.0]
  %c: f32[1,2,2,2] = Conv(%x, %conv1.weight) @conv
  %y: f32[1,2,2,2] = BatchNormalization(%c, %gamma, %beta, %mean, %var) {epsilon=1.0} @bn
}""")
    m, ctx = run_passes(g, "fold_batchnorm")
    # W' = W*s = [1, 6]; b' = (0 - mean)*s + beta = [-0.5, 3]. The Conv output takes the BN output's name.
    assert format_graph(m.graph) == """graph g (%x: f32[1,1,2,2]) -> (%y) {
  init %conv1.weight: f32[2,1,1,1] = tensor<f32[2,1,1,1]>[[[[1.0]]], [[[6.0]]]]
  init %conv1.bias: f32[2] = tensor<f32[2]>[-0.5, 3.0]
  %y: f32[1,2,2,2] = Conv(%x, %conv1.weight, %conv1.bias) @conv
}"""
    assert decided(ctx, "folded") == {
        "bn (BatchNormalization)": "into conv (Conv): weight %conv1.weight scaled, bias %conv1.bias created"}


def test_declines_say_why() -> None:
    g = parse_graph("""graph g (%x: f32[1,2,3,3], %wx: f32[2,2,1,1], %t: f32[2,3,2]) -> (%y1, %y2, %y3, %y4, %y5, %c2) {
  init %w: f32[2,2,1,1] = tensor<f32[2,2,1,1]>[[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]]
  init %m: f32[2,2] = tensor<f32[2,2]>[[1.0, 0.0], [0.0, 1.0]]
  init %one: f32[2] = tensor<f32[2]>[1.0, 1.0]
  init %zero: f32[2] = tensor<f32[2]>[0.0, 0.0]
  %c1: f32[1,2,3,3] = Conv(%x, %w) @conv_train
  %y1: f32[1,2,3,3] = BatchNormalization(%c1, %one, %zero, %zero, %one) {training_mode=1} @bn_train
  %c2: f32[1,2,3,3] = Conv(%x, %w) @conv_shared_out
  %y2: f32[1,2,3,3] = BatchNormalization(%c2, %one, %zero, %zero, %one) @bn_shared_out
  %c3: f32[1,2,3,3] = Conv(%x, %wx) @conv_fed_weight
  %y3: f32[1,2,3,3] = BatchNormalization(%c3, %one, %zero, %zero, %one) @bn_fed_weight
  %r: f32[1,2,3,3] = Relu(%x) @relu
  %y4: f32[1,2,3,3] = BatchNormalization(%r, %one, %zero, %zero, %one) @bn_after_relu
  %mm: f32[2,3,2] = MatMul(%t, %m) @mm3d
  %y5: f32[2,3,2] = BatchNormalization(%mm, %one, %zero, %zero, %one) @bn_3d
}""")
    before = format_graph(g)
    m, ctx = run_passes(g, "fold_batchnorm")
    assert format_graph(m.graph) == before  # nothing folded
    assert decided(ctx, "kept") == {
        "bn_train (BatchNormalization)": "training_mode=1: it normalizes with batch statistics",
        "bn_shared_out (BatchNormalization)": "conv_shared_out (Conv) output %c2 has other readers (the graph outputs)",
        "bn_fed_weight (BatchNormalization)": "conv_fed_weight (Conv) weight is not constant",
        "bn_after_relu (BatchNormalization)": "its input is produced by relu (Relu), not Conv/ConvTranspose/Gemm/MatMul",
        "bn_3d (BatchNormalization)": "mm3d (MatMul) output has rank 3: BatchNormalization normalizes axis 1, "
                                      "which is not the MatMul's feature axis",
    }


def test_shared_weight_is_copied_not_changed() -> None:
    g = parse_graph("""graph g (%x: f32[1,1,2,2]) -> (%y, %z) {
  init %w: f32[1,1,1,1] = tensor<f32[1,1,1,1]>[[[[2.0]]]]
  init %b: f32[1] = tensor<f32[1]>[1.0]
  init %gamma: f32[1] = tensor<f32[1]>[4.0]
  init %zero: f32[1] = tensor<f32[1]>[0.0]
  init %var: f32[1] = tensor<f32[1]>[3.0]
  %c: f32[1,1,2,2] = Conv(%x, %w, %b) @conv
  %y: f32[1,1,2,2] = BatchNormalization(%c, %gamma, %zero, %zero, %var) {epsilon=1.0} @bn
  %z: f32[1,1,2,2] = Conv(%x, %w, %b) @other
}""")
    m, _ = run_passes(g, "fold_batchnorm")
    # s = 4/2 = 2: the folded conv reads copies (W' = 4, b' = 2); the other conv still reads %w and %b.
    assert format_graph(m.graph) == """graph g (%x: f32[1,1,2,2]) -> (%y, %z) {
  init %w: f32[1,1,1,1] = tensor<f32[1,1,1,1]>[[[[2.0]]]]
  init %b: f32[1] = tensor<f32[1]>[1.0]
  init %w_bn: f32[1,1,1,1] = tensor<f32[1,1,1,1]>[[[[4.0]]]]
  init %b_bn: f32[1] = tensor<f32[1]>[2.0]
  %y: f32[1,1,2,2] = Conv(%x, %w_bn, %b_bn) @conv
  %z: f32[1,1,2,2] = Conv(%x, %w, %b) @other
}"""


# ------------------------------------------------------------------------------------------------ numerics
def _arr(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {"gamma": _arr(c, scale=0.8), "beta": _arr(c, scale=0.5), "mean": _arr(c, scale=0.5),
            "var": (RNG.uniform(0.05, 2.0, c)).astype(np.float32)}


# kind: (input shape, weight shape, bias shape or None, attrs, BN channels, reduction length K)
LAYERS = {
    "conv_group2": ((2, 4, 6, 6), (6, 2, 3, 3), None, {"group": 2, "pads": [1, 1, 1, 1]}, 6, 2 * 9),
    "conv_transpose_group2": ((2, 4, 5, 5), (4, 3, 3, 3), (6,), {"group": 2, "strides": [2, 2]}, 6, 2 * 9),
    "gemm_transB_alpha_beta": ((5, 16), (8, 16), (8,), {"transB": 1, "alpha": 0.5, "beta": 2.0}, 8, 16),
    "gemm_no_bias": ((5, 16), (16, 8), None, {}, 8, 16),
    "matmul_2d": ((5, 16), (16, 8), None, {}, 8, 16),
}


def _layer_model(kind: str, w: np.ndarray, b: np.ndarray | None, bn: dict[str, np.ndarray] | None,
                 dtype: type = np.float32) -> tuple:
    xshape, _, _, attrs, _, _ = LAYERS[kind]
    op = {"conv_group2": "Conv", "conv_transpose_group2": "ConvTranspose", "matmul_2d": "MatMul"}.get(kind, "Gemm")
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    nodes = [helper.make_node(op, inputs, ["h"], name="layer", **attrs)]
    inits = [numpy_helper.from_array(w.astype(dtype), "w")]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(dtype), "b"))
    out = "h"
    if bn is not None:
        nodes.append(helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"],
                                      epsilon=1e-3, name="bn"))
        inits += [numpy_helper.from_array(v.astype(dtype), k) for k, v in bn.items()]
        out = "y"
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", elem, list(xshape))],
                              [helper.make_tensor_value_info(out, elem, None)], inits)
    return model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_folded_layer_matches_within_rounding_bound(kind: str) -> None:
    xshape, wshape, bshape, _, c, k = LAYERS[kind]
    w, x = _arr(*wshape, scale=0.3), _arr(*xshape)
    b = _arr(*bshape) if bshape else None
    bn = _bn_params(c)
    model = _layer_model(kind, w, b, bn)
    want = qcompiler.run(model, {"x": x})["y"]
    folded, ctx = run_passes(_layer_model(kind, w, b, bn), "fold_batchnorm")
    assert "BatchNormalization" not in ops(folded), decided(ctx, "kept")
    got = qcompiler.run(folded, {"x": x})["y"]
    # M = |s| (sum|W||x| + |b| + |mean|) + |beta|, the first part from the layer run in float64 on |x|, |W|, |b|.
    absolute = _layer_model(kind, np.abs(w), None if b is None else np.abs(b), None, np.float64)
    terms = qcompiler.run(absolute, {"x": np.abs(x).astype(np.float64)})["h"]
    s = bn["gamma"].astype(np.float64) / np.sqrt(bn["var"].astype(np.float64) + 1e-3)
    nd = terms.ndim
    m = channel_view(np.abs(s), nd) * (terms + channel_view(np.abs(bn["mean"]), nd)) \
        + channel_view(np.abs(bn["beta"]), nd)
    bound = (2 * (k + 2) + 16) * U32 * m  # K + 2: the alpha product and the C addition of Gemm count as terms
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    assert bound.max() < 1e-4 * np.abs(want).max()  # the bound is tight enough to catch a wrong fold


def _cnn(params: dict[str, np.ndarray], outputs: tuple[str, ...] = ("y",)) -> tuple:
    """Conv(3->8, bias) - BN - Relu - Conv(8->8, no bias) - BN - Add(residual): an onnx.helper model."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["n2"], name="bn2"),
        helper.make_node("Add", ["n2", "r1"], ["y"], name="residual"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cnn_params() -> dict[str, np.ndarray]:
    p = {"w1": _arr(8, 3, 3, 3, scale=0.4), "b1": _arr(8, scale=0.1)}
    for i, c in ((1, 8), (2, 8)):
        bn = _bn_params(c)
        p.update({f"g{i}": bn["gamma"], f"be{i}": bn["beta"], f"m{i}": bn["mean"], f"v{i}": bn["var"]})
    p["w2"] = _arr(8, 8, 3, 3, scale=0.2)
    return p


def test_small_cnn_matches_within_propagated_bound() -> None:
    p = cnn_params()
    x = _arr(4, 3, 8, 8)
    ref = qcompiler.run(model_from_proto(_cnn(p, ("y", "r1", "n2"))), {"x": x})
    folded, _ = run_passes(model_from_proto(_cnn(p)), "fold_batchnorm")
    assert ops(folded) == ["Conv", "Relu", "Conv", "Add"]
    got = qcompiler.run(folded, {"x": x})["y"]

    def bn(i: int) -> dict[str, np.ndarray]:
        return {"gamma": p[f"g{i}"], "beta": p[f"be{i}"], "mean": p[f"m{i}"], "var": p[f"v{i}"]}

    e1 = conv_bn_bound(np.abs(x), np.zeros(x.shape), p["w1"], p["b1"], bn(1), 1e-5, 1)  # also bounds relu1
    e2 = conv_bn_bound(np.abs(ref["r1"]), e1, p["w2"], None, bn(2), 1e-5, 1)
    # the residual Add rounds both sums once: u(|n2| + |r1|) each side, the input errors pass through
    bound = (e1 + e2) * (1 + 4 * U32) + 2 * U32 * (np.abs(ref["n2"]) + np.abs(ref["r1"]) + e1 + e2)
    err = np.abs(got.astype(np.float64) - ref["y"])
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    assert bound.max() < 1e-4 * np.abs(ref["y"]).max()
