"""fuse_matmul_add: structure (2-D MatMul+Add -> Gemm, 3-D pairs recorded in meta, declines with reasons, Gemm
normalization) and numerics (the Gemm computes the same dot products: any difference is summation rounding,
bounded by gamma_{K+1} * (|A||W| + |b|) on each side)."""

from __future__ import annotations

import numpy as np

import qcompiler
from qcompiler.ir import format_graph, parse_graph

from .canon_util import decided, dot_bound, ops, run_passes

RNG = np.random.default_rng(3)


def test_2d_matmul_add_becomes_gemm() -> None:
    g = parse_graph("""graph g (%x: f32[N,3]) -> (%y) {
  init %w: f32[3,2] = tensor<f32[3,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  init %b: f32[2] = tensor<f32[2]>[0.5, -0.5]
  %h: f32[N,2] = MatMul(%x, %w) @fc_mm
  %y: f32[N,2] = Add(%b, %h) @fc_add
}""")
    m, ctx = run_passes(g, "fuse_matmul_add")
    assert format_graph(m.graph) == """graph g (%x: f32[N,3]) -> (%y) {
  init %w: f32[3,2] = tensor<f32[3,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  init %b: f32[2] = tensor<f32[2]>[0.5, -0.5]
  %y: f32[N,2] = Gemm(%x, %w, %b) @fc_mm
}"""
    assert decided(ctx, "fused") == {"fc_mm (MatMul)": "MatMul + fc_add (Add) -> Gemm with bias %b; output %y"}


def test_3d_pairs_are_recorded_and_declines_say_why() -> None:
    g = parse_graph("""graph g (%x: f32[2,5,3], %k: f32[2,3,5], %bx: f32[4]) -> (%y, %att, %y3, %y4, %y5) {
  init %w: f32[3,4] = tensor<f32[3,4]>[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
  init %b: f32[4] = tensor<f32[4]>[1.0, 2.0, 3.0, 4.0]
  init %b2: f32[5,4] = tensor<f32[5,4]>[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
  %h: f32[2,5,4] = MatMul(%x, %w) @q_proj
  %y: f32[2,5,4] = Add(%h, %b) @q_bias
  %att: f32[2,5,5] = MatMul(%x, %k) @scores
  %h3: f32[2,5,4] = MatMul(%x, %w) @fed_bias
  %y3: f32[2,5,4] = Add(%h3, %bx) @fed_bias_add
  %h4: f32[2,5,4] = MatMul(%x, %w) @full_bias
  %y4: f32[2,5,4] = Add(%h4, %b2) @full_bias_add
  %h5: f32[2,5,4] = MatMul(%x, %w) @two_readers
  %y5: f32[2,5,4] = Mul(%h5, %h5) @square
}""")
    before = format_graph(g)
    m, ctx = run_passes(g, "fuse_matmul_add")
    assert format_graph(m.graph) == before  # 3-D: nothing rewritten
    q = m.graph.find_node("q_proj")
    assert q is not None and q.meta["bias"] is m.graph.find_node("q_bias")
    assert decided(ctx, "paired") == {
        "q_proj (MatMul)": "rank-3 input: kept MatMul + q_bias (Add), bias %b in meta['bias']"}
    assert decided(ctx, "kept") == {
        "scores (MatMul)": "weight is not constant",
        "fed_bias (MatMul)": "fed_bias_add (Add) adds a non-constant %bx",
        "full_bias (MatMul)": "bias %b2 has shape [5, 4], not [4] along the last axis",
        "two_readers (MatMul)": "output %h5 has 2 readers, not one Add",
    }
    assert all("bias" not in n.meta for n in m.graph.nodes if n.name != "q_proj")


GEMMS = """graph g (%x: f32[3,4]) -> (%y1, %y2, %y3) {
  init %b: f32[4,2] = tensor<f32[4,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
  init %c: f32[2] = tensor<f32[2]>[1.0, -3.0]
  init %bt: f32[3,2] = tensor<f32[3,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  init %b3: f32[4,2] = tensor<f32[4,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
  %y1: f32[3,2] = Gemm(%x, %b, %c) {alpha=0.5, beta=2.0} @scaled
  %y2: f32[4,2] = Gemm(%x, %bt) {transA=1} @trans_a
  %y3: f32[3,2] = Gemm(%x, %b3) {beta=0.25} @no_c
}"""


def test_gemm_normalization() -> None:
    m, ctx = run_passes(parse_graph(GEMMS), "fuse_matmul_add")
    # %b and %c have one reader each: scaled in place, names kept.
    assert format_graph(m.graph) == """graph g (%x: f32[3,4]) -> (%y1, %y2, %y3) {
  init %b: f32[4,2] = tensor<f32[4,2]>[[0.5, 1.0], [1.5, 2.0], [2.5, 3.0], [3.5, 4.0]]
  init %c: f32[2] = tensor<f32[2]>[2.0, -6.0]
  init %bt: f32[3,2] = tensor<f32[3,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  init %b3: f32[4,2] = tensor<f32[4,2]>[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
  %y1: f32[3,2] = Gemm(%x, %b, %c) @scaled
  %y2: f32[4,2] = Gemm(%x, %bt) {transA=1} @trans_a
  %y3: f32[3,2] = Gemm(%x, %b3) @no_c
}"""
    assert decided(ctx, "kept") == {
        "trans_a (Gemm)": "transA=1 with an A that is not a constant f16/f32/f64 matrix: normalizing needs a "
                          "Transpose node"}
    assert set(decided(ctx, "normalized")) == {"scaled (Gemm)", "no_c (Gemm)"}
    # alpha = 0.5, beta = 2 and 0.25 are powers of two: scaling commutes with rounding (no overflow or
    # underflow here), so the outputs are bit-identical.
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    want = qcompiler.run(parse_graph(GEMMS), {"x": x})
    got = qcompiler.run(m, {"x": x})
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_gemm_matches_matmul_add_within_summation_bound() -> None:
    text = """graph g (%x: f32[N,64]) -> (%y) {{
  init %w: f32[64,32] = {w}
  init %b: f32[32] = {b}
  %h: f32[N,32] = MatMul(%x, %w) @fc
  %y: f32[N,32] = Add(%h, %b) @fc_bias
}}"""
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    b = RNG.standard_normal(32).astype(np.float32)
    x = RNG.standard_normal((16, 64)).astype(np.float32)
    lit = {"w": "tensor<f32[64,32]>" + repr(w.tolist()), "b": "tensor<f32[32]>" + repr(b.tolist())}
    g = parse_graph(text.format(**lit))
    want = qcompiler.run(g, {"x": x})["y"]
    m, _ = run_passes(parse_graph(text.format(**lit)), "fuse_matmul_add")
    assert ops(m) == ["Gemm"]
    got = qcompiler.run(m, {"x": x})["y"]
    terms = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)) + np.abs(b)
    bound = 2 * dot_bound(terms, 64 + 1)  # each side within gamma_{K+1} of the exact value
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound)
