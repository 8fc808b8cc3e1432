"""smooth_quant: which nodes change (weight rows times s, the producer's constants divided by s, a Mul by s on the
other readers' edge), the declines and their reasons, and the numerics: the float model is bit-identical with
power-of-two scales and within a derived float32 bound without them; on a synthetic LayerNorm output with an
outlier channel, dynamic int8 in ONNX Runtime has a lower error after smoothing, each within its derived bound."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import qcompiler
from qcompiler.errors import ConfigError
from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.ir import Model, format_graph, parse_graph
from qcompiler.passes.smooth_quant import FOLD_TARGETS
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.targets import get_target

from .canon_util import U32, decided, f32_literal, grid_weights
from .transformer_util import bert_layer_proto, gamma, layer_norm_bound, ort_run

RNG = np.random.default_rng(7)


def _t(a: np.ndarray) -> str:
    return f32_literal(a)


def _w(*shape: int) -> np.ndarray:
    return grid_weights(RNG, *shape)


def _run(model: Model, calib: list | None = None, **options: object) -> PassContext:
    ctx = PassContext(calibration=calib, progress=False)
    PassManager([get_pass("smooth_quant", **options)]).run(model, ctx)
    return ctx


def _feeds(n: int, shapes: dict[str, tuple[int, ...]]) -> list[dict[str, np.ndarray]]:
    return [{k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


GAMMA = np.array([1.0, 20.0, 0.5, 1.0], np.float32)  # channel 1 is the outlier
BETA = np.array([0.125, -2.0, 0.0, 0.25], np.float32)
WQ, WK = _w(4, 3), _w(4, 3)


def _ln_block() -> Model:
    """Post-LN: the LayerNorm output feeds two projections and the residual Sum."""
    return Model(parse_graph(f"""graph g (%x: f32[B,S,4], %r: f32[B,S,4]) -> (%q, %k, %y) {{
  init %gamma: f32[4] = {_t(GAMMA)}
  init %beta: f32[4] = {_t(BETA)}
  init %wq: f32[4,3] = {_t(WQ)}
  init %wk: f32[4,3] = {_t(WK)}
  %ln: f32[B,S,4] = LayerNormalization(%x, %gamma, %beta) {{axis=-1, epsilon=1e-05}} @ln
  %q: f32[B,S,3] = MatMul(%ln, %wq) @q_proj
  %k: f32[B,S,3] = MatMul(%ln, %wk) @k_proj
  %y: f32[B,S,4] = Sum(%ln, %r) @residual
}}"""), opset_imports={"": 21})


def _ln64(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(z, LN(x)) in float64."""
    x = x.astype(np.float64)
    z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return z, z * g.astype(np.float64) + b.astype(np.float64)


def test_layer_norm_output_is_divided_in_the_producer_and_restored_for_the_residual() -> None:
    m = _ln_block()
    calib = _feeds(3, {"x": (2, 5, 4), "r": (2, 5, 4)})
    ctx = _run(m, calib)
    g = m.graph
    assert [(n.op_type, n.name) for n in g.nodes] == [
        ("LayerNormalization", "ln"), ("Mul", "ln_unsmoothed_Mul"), ("MatMul", "q_proj"), ("MatMul", "k_proj"),
        ("Sum", "residual")]
    mul = g.nodes[1]
    assert [v.name for v in mul.inputs] == ["ln", "ln_smooth_scale"] and mul.outputs[0].name == "ln_unsmoothed"
    assert [v.name for v in g.find_node("residual").inputs] == ["ln_unsmoothed", "r"]
    assert [v.name for v in g.find_node("q_proj").inputs] == ["ln", "wq"]  # weights rescaled in place
    # s from the statistics: max|LN(x)_j| over the data, max over both weights' row j, alpha 0.5, power of 2.
    a = np.max([np.abs(_ln64(f["x"], GAMMA, BETA)[1]).reshape(-1, 4).max(0) for f in calib], axis=0)
    w = np.maximum(np.abs(WQ).max(1), np.abs(WK).max(1))
    s = g.initializers["ln_smooth_scale"].const.numpy()
    np.testing.assert_array_equal(s, np.exp2(np.round(np.log2(np.sqrt(a / w)))).astype(np.float32))
    assert s[1] > s[0]  # the outlier channel is divided most
    np.testing.assert_array_equal(g.initializers["gamma"].const.numpy(), GAMMA / s)
    np.testing.assert_array_equal(g.initializers["beta"].const.numpy(), BETA / s)
    np.testing.assert_array_equal(g.initializers["wq"].const.numpy(), WQ * s[:, None])
    np.testing.assert_array_equal(g.initializers["wk"].const.numpy(), WK * s[:, None])
    (reason,) = decided(ctx, "smoothed").values()
    assert "divided in its producer ln (LayerNormalization)" in reason
    assert "rows of 2 weight(s) times s; 1 other reader(s) get it back through a Mul by s" in reason
    assert ctx.artifacts["smooth_quant"]["ln"]["max_after"] < ctx.artifacts["smooth_quant"]["ln"]["max_before"]


def test_float_outputs_are_bit_identical_with_power_of_two_scales() -> None:
    """Scaling by 2^e is exact in binary floating point (no overflow or underflow here): gamma/s, beta/s, W·s and
    the restoring X'·s are the exact values, every product x_j·w_jk is the same float before and after, so
    both ONNX Runtime and the executor compute the same bits: the bound is 0."""
    m = _ln_block()
    before = copy.deepcopy(m)
    _run(m, _feeds(3, {"x": (2, 5, 4), "r": (2, 5, 4)}))
    feeds = _feeds(1, {"x": (3, 7, 4), "r": (3, 7, 4)})[0]
    for run in (ort_run, qcompiler.run):
        a, b = run(before, feeds), run(m, feeds)
        for k in ("q", "k", "y"):
            np.testing.assert_array_equal(a[k], b[k])


def test_float_outputs_within_the_rounding_bound_without_power_of_two() -> None:
    """Bound on |smoothed - original| per output element with arbitrary float32 s.

    Per side, the LayerNorm computed in float32 is within E(g, b) = layer_norm_bound([x], g, b)/2 of the exact
    one (the helper bounds two sides). The smoothed graph holds g' = fl(g/s), b' = fl(b/s), so its exact
    LayerNorm X'* satisfies |X'* s - X*| <= u(|z g| + |b|). Hence the two computed LayerNorms satisfy
    |X'^ s - X^| <= D = s E(g', b') + u(|z g| + |b|) + E(g, b).
    Projection: W' = fl(W s) = W s (1 + t), |t| <= u, and each side's K-term dot product is within gamma_K of its
    exact sum of |terms|, so |q' - q| <= gamma_K (A + A' s)|W| (1 + u) + (D + u s A')|W|, with A = |X*| + E(g, b)
    and A' = |X'*| + E(g', b') bounding the computed LayerNorms.
    Residual: fl(X'^ s) is within D + u s A' of X^, the Sum rounds once on each side:
    |y' - y| <= (D + u s A') + u (2 (A + |r|) + D + u s A')."""
    m = _ln_block()
    before = copy.deepcopy(m)
    _run(m, _feeds(3, {"x": (2, 5, 4), "r": (2, 5, 4)}), power_of_two=False)
    s = m.graph.initializers["ln_smooth_scale"].const.numpy().astype(np.float64)
    assert not np.all(np.log2(s) == np.round(np.log2(s)))  # really not powers of two
    g1, b1 = (m.graph.initializers[n].const.numpy() for n in ("gamma", "beta"))
    feeds = _feeds(1, {"x": (3, 7, 4), "r": (3, 7, 4)})[0]
    z, x_star = _ln64(feeds["x"], GAMMA, BETA)
    _, x1_star = _ln64(feeds["x"], g1, b1)
    e0 = layer_norm_bound([feeds["x"]], GAMMA, BETA, 1e-5) / 2
    e1 = layer_norm_bound([feeds["x"]], g1, b1, 1e-5) / 2
    a0, a1 = np.abs(x_star) + e0, np.abs(x1_star) + e1
    d = s * e1 + U32 * (np.abs(z * GAMMA) + np.abs(BETA)) + e0
    a, b = qcompiler.run(before, feeds), qcompiler.run(m, feeds)
    for name, w in (("q", WQ), ("k", WK)):
        wa = np.abs(w.astype(np.float64))
        bound = gamma(4) * (a0 + a1 * s) @ wa * (1 + U32) + (d + U32 * s * a1) @ wa
        err = np.abs(a[name].astype(np.float64) - b[name])
        assert np.all(err <= bound), float(np.max(err - bound))
    r = np.abs(feeds["r"].astype(np.float64))
    bound_y = (d + U32 * s * a1) + U32 * (2 * (a0 + r) + d + U32 * s * a1)
    assert np.all(np.abs(a["y"].astype(np.float64) - b["y"]) <= bound_y)


def test_matmul_gemm_and_attention_producers_divide_their_output_columns() -> None:
    """Bias Add after a MatMul, a Gemm with transB (its B rows are the output columns) read by a Gemm with
    transB (K along B's columns), and V's projection behind MultiHeadAttention; outputs stay bit-identical."""
    w1, b1, w2 = _w(4, 6), _w(6), _w(6, 3)
    wg, cg, w5 = _w(6, 4), _w(6), _w(2, 6)
    wv, bv, wo = _w(4, 4), _w(4), _w(4, 5)
    m = Model(parse_graph(f"""graph g (%a: f32[B,S,4], %a2: f32[N,4], %xin: f32[B,S,4], %qk: f32[B,S,4]) -> (%y1, %y2, %o) {{
  init %w1: f32[4,6] = {_t(w1)}
  init %b1: f32[6] = {_t(b1)}
  init %w2: f32[6,3] = {_t(w2)}
  init %wg: f32[6,4] = {_t(wg)}
  init %cg: f32[6] = {_t(cg)}
  init %w5: f32[2,6] = {_t(w5)}
  init %wv: f32[4,4] = {_t(wv)}
  init %bv: f32[4] = {_t(bv)}
  init %wo: f32[4,5] = {_t(wo)}
  %h: f32[B,S,6] = MatMul(%a, %w1) @fc1
  %x1: f32[B,S,6] = Add(%h, %b1) @fc1_bias
  %y1: f32[B,S,3] = MatMul(%x1, %w2) @fc2
  %g: f32[N,6] = Gemm(%a2, %wg, %cg) {{transB=1}} @gemm1
  %y2: f32[N,2] = Gemm(%g, %w5) {{transB=1}} @gemm2
  %hv: f32[B,S,4] = MatMul(%xin, %wv) @v_proj
  %v: f32[B,S,4] = Add(%hv, %bv) @v_bias
  %att: f32[B,S,4] = com.microsoft::MultiHeadAttention(%qk, %qk, %v) {{num_heads=2}} @mha
  %o: f32[B,S,5] = MatMul(%att, %wo) @o_proj
}}"""), opset_imports={"": 21, "com.microsoft": 1})
    before = copy.deepcopy(m)
    shapes = {"a": (2, 5, 4), "a2": (6, 4), "xin": (2, 5, 4), "qk": (2, 5, 4)}
    ctx = _run(m, _feeds(3, shapes), fold_into=list(FOLD_TARGETS))
    g = m.graph
    assert len(g.nodes) == len(before.graph.nodes)  # nothing else reads the three activations: no Mul
    init = {k: v.const.numpy() for k, v in g.initializers.items()}
    s1 = init["w2"][:, 0] / w2[:, 0]
    np.testing.assert_array_equal(init["w2"], w2 * s1[:, None])
    np.testing.assert_array_equal(init["w1"], w1 / s1[None, :])
    np.testing.assert_array_equal(init["b1"], b1 / s1)
    sg = init["w5"][0] / w5[0]
    np.testing.assert_array_equal(init["w5"], w5 * sg[None, :])
    np.testing.assert_array_equal(init["wg"], wg / sg[:, None])
    np.testing.assert_array_equal(init["cg"], cg / sg)
    sv = init["wo"][:, 0] / wo[:, 0]
    np.testing.assert_array_equal(init["wv"], wv / sv[None, :])
    np.testing.assert_array_equal(init["bv"], bv / sv)
    assert not any(np.all(s == 1) for s in (s1, sg, sv))
    # What now holds (float value / s), for the report's per-layer comparison.
    rescaled = ctx.artifacts["rescaled"]
    assert set(rescaled) == {"h", "x1", "g", "hv", "v", "att"}
    for names, s in ((("h", "x1"), s1), (("g",), sg), (("hv", "v", "att"), sv)):
        for name in names:
            np.testing.assert_array_equal(rescaled[name], s)
    smoothed = decided(ctx, "smoothed")
    assert "divided in its producer fc1 (MatMul)" in smoothed["%x1"]
    assert "divided in its producer gemm1 (Gemm)" in smoothed["%g"]
    assert "divided through mha (com.microsoft::MultiHeadAttention) in its value's producer v_proj (MatMul)" in \
        smoothed["%att"]
    feeds = _feeds(1, {"a": (3, 7, 4), "a2": (5, 4), "xin": (3, 7, 4), "qk": (3, 7, 4)})[0]
    for run in (ort_run, qcompiler.run):
        a, b = run(before, feeds), run(m, feeds)
        for k in ("y1", "y2", "o"):
            np.testing.assert_array_equal(a[k], b[k])


_DECLINES = f"""graph g (%x: f32[2,5,4], %x5: f32[2,5,4]) -> (%y0, %y1, %y2, %out, %y3, %y4, %hr) {{
  init %w: f32[4,4] = {_t(_w(4, 4))}
  init %g5: f32[5,4] = {_t(np.ones((5, 4)))}
  init %b: f32[4] = {_t(_w(4))}
  %y0: f32[2,5,4] = MatMul(%x, %w) @from_input
  %gl: f32[2,5,4] = com.microsoft::Gelu(%x5) @gelu
  %y1: f32[2,5,4] = MatMul(%gl, %w) @ffn2
  %l5: f32[2,5,4] = LayerNormalization(%x5, %g5) {{axis=1}} @ln_axis1
  %y2: f32[2,5,4] = MatMul(%l5, %w) @after_ln
  %out: f32[2,5,4] = Relu(%x5) @relu
  %y3: f32[2,5,4] = MatMul(%out, %w) @reads_output
  %h: f32[2,5,4] = MatMul(%x, %w) @fc
  %xb: f32[2,5,4] = Add(%h, %b) @fc_bias
  %y4: f32[2,5,4] = MatMul(%xb, %w) @after_bias
  %hr: f32[2,5,4] = Neg(%h) @other_reader
}}"""


def test_declines_say_why_and_change_nothing() -> None:
    m = Model(parse_graph(_DECLINES), opset_imports={"": 21, "com.microsoft": 1})
    before = format_graph(m.graph)
    ctx = _run(m, _feeds(2, {"x": (2, 5, 4), "x5": (2, 5, 4)}), fold_into=list(FOLD_TARGETS))
    assert format_graph(m.graph) == before
    assert decided(ctx, "kept") == {
        "%x": "%x is a graph input (no producer to fold 1/s into); insert_mul is off, so X is kept",
        "%gl": "producer gelu (com.microsoft::Gelu) is not linear in %gl per channel; insert_mul is off, so X is kept",
        "%l5": "ln_axis1 (LayerNormalization) normalizes from axis 1, not over the last axis only (gamma is not per "
               "channel); insert_mul is off, so X is kept",
        "%out": "%out is a graph output: its values must stay as they are",
        "%xb": "fc (MatMul): its output %h is also read elsewhere (would see the divided values); insert_mul is off, "
               "so X is kept",
    }
    assert not decided(ctx, "smoothed")


def test_insert_mul_divides_before_the_matmuls_only() -> None:
    m = Model(parse_graph(_DECLINES), opset_imports={"": 21, "com.microsoft": 1})
    before = copy.deepcopy(m)
    ctx = _run(m, _feeds(2, {"x": (2, 5, 4), "x5": (2, 5, 4)}), insert_mul=True)
    g = m.graph
    ffn2 = g.find_node("ffn2")
    div = ffn2.inputs[0].producer
    assert div.op_type == "Mul" and div.inputs[0].name == "gl" and div.inputs[1].name == "gl_smooth_inv_scale"
    assert g.find_node("gelu").outputs[0].uses == ((div, 0),)
    assert "divided by an inserted Mul" in decided(ctx, "smoothed")["%gl"]
    # The graph input %x feeds two MatMuls: divided by a Mul placed first in the graph.
    assert g.nodes[0].op_type == "Mul" and g.nodes[0].inputs[0].name == "x"
    assert "%out" in decided(ctx, "kept")  # a graph output stays kept
    feeds = _feeds(1, {"x": (2, 5, 4), "x5": (2, 5, 4)})[0]
    a, b = qcompiler.run(before, feeds), qcompiler.run(m, feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_without_data_or_when_disabled_nothing_changes() -> None:
    for calib, options, reason in ((None, {}, "needs calibration data (none was given)"),
                                   ([{}], {"enabled": False}, "disabled by the recipe (enabled = false)")):
        m = _ln_block()
        before = format_graph(m.graph)
        ctx = _run(m, calib, **options)
        assert format_graph(m.graph) == before
        assert decided(ctx, "skipped") == {"model": reason}


@pytest.mark.parametrize(("options", "message"), [
    ({"alpha": 1.5}, "alpha must lie in \\[0, 1\\], got 1.5"),
    ({"alpha_grid": [0.5, -0.1]}, "alpha must lie in \\[0, 1\\], got -0.1"),
    ({"fold_into": ["Gelu"]}, "fold_into: unknown producer 'Gelu'; valid: LayerNormalization, Mul, MatMul, Gemm, "
                              "MultiHeadAttention"),
    ({"alpha_search": True}, "unknown option 'alpha_search'"),
])
def test_bad_options_name_the_key(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_pass("smooth_quant", **options)


def test_on_a_bert_layer_the_default_folds_into_layer_norm_only() -> None:
    """The tiny BERT layer after the dynamic recipe's first passes: by default (fold_into LayerNormalization)
    the first LayerNorm's output is smoothed and the attention output kept; with every producer allowed the
    attention output is smoothed too (through V). The GELU output and the graph input are kept. Outputs stay
    bit-identical in ONNX Runtime."""
    rec = get_target("cpu-int8-dynamic").default_recipe
    first = [get_pass(p.name, **p.options) for p in rec.passes[:3]]
    m = PassManager(first).run(model_from_proto(bert_layer_proto()), PassContext(progress=False))
    calib = [{"x": RNG.standard_normal((2, 6, 16)).astype(np.float32), "mask": np.ones((2, 6), np.int64)}
             for _ in range(3)]
    variants = {}
    for name, options in (("all", {"fold_into": list(FOLD_TARGETS)}), ("ln", {})):
        mm = copy.deepcopy(m)
        variants[name] = (mm, _run(mm, calib, **options))
    smoothed = decided(variants["all"][1], "smoothed")
    assert len(smoothed) == 2 and any("MultiHeadAttention" in r for r in smoothed.values())
    assert any("LayerNormalization" in r and "1 other reader(s)" in r for r in smoothed.values())
    kept = decided(variants["all"][1], "kept")
    assert any("Gelu" in r for r in kept.values()) and "%x" in kept
    ln_only = decided(variants["ln"][1], "kept")
    assert any("MultiHeadAttention is not in fold_into" in r for r in ln_only.values())
    feeds = {"x": RNG.standard_normal((3, 7, 16)).astype(np.float32), "mask": np.ones((3, 7), np.int64)}
    feeds["mask"][1, 5:] = 0
    ref = ort_run(m, feeds)["y"]
    for mm, _ in variants.values():
        np.testing.assert_array_equal(ort_run(mm, feeds)["y"], ref)


def _dynamic_int8(model: Model, calib: list | None, smooth: bool) -> Model:
    """The dynamic target's quantization passes (with smooth_quant first when asked) on `model`."""
    tgt = get_target("cpu-int8-dynamic")
    rec = tgt.default_recipe
    names = (["smooth_quant"] if smooth else []) + ["assign_quant_types", "calibrate", "lower_qdq"]
    ctx = PassContext(options={"recipe": rec}, calibration=calib, target=tgt, progress=False)
    return PassManager([get_pass(n) for n in names]).run(model, ctx)


def test_dynamic_int8_error_is_lower_after_smoothing_each_within_its_bound() -> None:
    """y = LN(x) W with one LN channel 40x the others, through DynamicQuantizeMatMul in ONNX Runtime.

    Per output element, for X (what the MatMul reads: the float32 LayerNorm with the graph's gamma and beta,
    within E = layer_norm_bound([x], ...)/2 of the exact X*) and W (the weight it holds, [K, N]): X is
    quantized per tensor to uint8 with step dx = (max(X, 0) - min(X, 0)) / 255 <= (range(X*) + 2 max E) / 255
    and a rounded zero point, so each element is off by at most dx (half a step, up to a full one where the
    rounded zero point clips an end); W is int8 symmetric per column with step dw_k = max_j |W_jk| / 127.5, off
    by at most dw_k / 2. The int32 accumulation is exact; converting it to float and applying the two scales
    rounds 3 times (gamma_3 of the dequantized terms). With power-of-two s, X* W equals the unsmoothed product
    exactly, so against y = LN(x; gamma, beta) W in float64:
    |y^ - y| <= sum_j (E_j + dx)|W_jk| + (|X*_j| + E_j) dw_k / 2 + dx dw_k / 2 + gamma_3 (|X*| + E + dx)(|W| + dw/2).
    Smoothing moves range from X's outlier channel into W's rows: the bound, and the error, drop."""
    k, n = 16, 8
    g = np.ones(k, np.float32)
    g[3] = 40.0
    w = _w(k, n)
    text = f"""graph g (%x: f32[B,S,{k}]) -> (%y) {{
  init %gamma: f32[{k}] = {_t(g)}
  init %beta: f32[{k}] = {_t(np.zeros(k))}
  init %w: f32[{k},{n}] = {_t(w)}
  %ln: f32[B,S,{k}] = LayerNormalization(%x, %gamma, %beta) {{axis=-1}} @ln
  %y: f32[B,S,{n}] = MatMul(%ln, %w) @proj
}}"""
    calib = _feeds(4, {"x": (2, 8, k)})
    x = RNG.standard_normal((3, 8, k)).astype(np.float32)
    y_ref = _ln64(x, g, np.zeros(k))[1] @ w.astype(np.float64)
    errors, bounds = {}, {}
    for smooth in (False, True):
        q = _dynamic_int8(Model(parse_graph(text), opset_imports={"": 21}), calib, smooth)
        assert [nd.op_type for nd in q.graph.nodes] == ["LayerNormalization", "DynamicQuantizeMatMul"]
        gq, bq = (q.graph.nodes[0].inputs[i].const.numpy() for i in (1, 2))
        s = g.astype(np.float64) / gq  # 1 without smoothing
        assert np.all(s == 1.0) != smooth
        _, xs = _ln64(x, gq, bq)
        e = layer_norm_bound([x], gq, bq, 1e-5) / 2
        w_f = w.astype(np.float64) * s[:, None]  # the weight the MatMul holds (before int8)
        y = ort_run(q, {"x": x})["y"].astype(np.float64)
        dx = (xs.max() - min(xs.min(), 0.0) + 2 * e.max()) / 255
        dw = np.abs(w_f).max(0) / 127.5
        wa = np.abs(w_f)
        bound = (e + dx) @ wa + (np.abs(xs) + e) @ np.ones((k, n)) * dw / 2 + k * dx * dw / 2
        bound = bound + gamma(3) * (np.abs(xs) + e + dx) @ (wa + dw / 2)
        err = np.abs(y - y_ref)
        assert np.all(err <= bound), float(np.max(err - bound))
        errors[smooth], bounds[smooth] = float(np.sqrt(np.mean(err**2))), float(np.mean(bound))
    assert errors[True] < errors[False] and bounds[True] < bounds[False], (errors, bounds)


def test_alpha_grid_picks_by_predicted_error_or_keeps_x() -> None:
    """With an outlier channel some alpha lowers the predicted error and is applied (the decision says which,
    and the numbers); with X = +-1 in every channel, alpha = 1 gives s = max|X_j| = 1 everywhere, which cannot
    lower anything, so X is kept with the reason."""
    import re

    m = _ln_block()
    ctx = _run(m, _feeds(3, {"x": (2, 5, 4), "r": (2, 5, 4)}), alpha_grid=[0.25, 0.5, 0.75])
    (reason,) = decided(ctx, "smoothed").values()
    found = re.match(r"alpha (0\.25|0\.5|0\.75) \(predicted relative error ([0-9.e-]+) -> ([0-9.e-]+)\)", reason)
    assert found is not None, reason
    assert float(found.group(3)) < float(found.group(2))
    assert ctx.artifacts["smooth_quant"]["ln"]["alpha"] == float(found.group(1))

    m2 = Model(parse_graph(f"""graph g (%x: f32[B,4]) -> (%y) {{
  init %w: f32[4,3] = {_t(WQ)}
  %y: f32[B,3] = MatMul(%x, %w) @proj
}}"""), opset_imports={"": 21})
    signs = [{"x": np.sign(RNG.standard_normal((6, 4))).astype(np.float32)} for _ in range(2)]
    before = format_graph(m2.graph)
    ctx2 = _run(m2, signs, alpha_grid=[1.0], insert_mul=True)
    assert format_graph(m2.graph) == before
    assert decided(ctx2, "kept")["%x"].startswith("no alpha in [1.0] lowers the predicted error")


def test_rms_norm_weight_absorbs_the_division() -> None:
    """Llama's RMSNorm as exported: x * rsqrt(mean(x^2) + eps), then a Mul by the per-channel weight. That Mul's
    vector is divided by s (power-of-two: the float model stays bit-identical); a Mul by a scalar cannot absorb a
    per-channel s, and says so."""
    k = 4
    wvec = np.array([1.0, 24.0, 0.5, 1.0], np.float32)  # channel 1 is the outlier
    wq = _w(k, 3)

    def model(scale: str) -> Model:
        return Model(parse_graph(f"""graph g (%x: f32[B,S,{k}]) -> (%q) {{
  init %wvec: {scale}
  init %two: f32[] = tensor<f32[]>2.0
  init %eps: f32[] = tensor<f32[]>1e-06
  init %wq: f32[{k},3] = {_t(wq)}
  %sq: f32[B,S,{k}] = Pow(%x, %two) @pow
  %ms: f32[B,S,1] = ReduceMean(%sq) {{axes=[-1], keepdims=1}} @mean
  %d: f32[B,S,1] = Add(%ms, %eps) @add_eps
  %r: f32[B,S,1] = Sqrt(%d) @sqrt
  %inv: f32[B,S,1] = Reciprocal(%r) @rsqrt
  %n: f32[B,S,{k}] = Mul(%x, %inv) @normed
  %h: f32[B,S,{k}] = Mul(%wvec, %n) @rms_weight
  %q: f32[B,S,3] = MatMul(%h, %wq) @q_proj
}}"""), opset_imports={"": 17})

    m, before = model(f"f32[{k}] = {_t(wvec)}"), model(f"f32[{k}] = {_t(wvec)}")
    calib = _feeds(3, {"x": (2, 5, k)})
    ctx = _run(m, calib)
    assert "divided in its producer rms_weight (Mul)" in decided(ctx, "smoothed")["%h"]
    by = {n.name: n for n in m.graph.nodes}
    s = wvec / by["rms_weight"].inputs[0].const.numpy()
    assert np.all(np.exp2(np.round(np.log2(s))) == s) and s[1] > s[0]  # powers of two, the outlier moved most
    np.testing.assert_array_equal(by["q_proj"].inputs[1].const.numpy(), wq * s[:, None])
    feeds = {"x": RNG.standard_normal((2, 7, k)).astype(np.float32)}
    np.testing.assert_array_equal(ort_run(before, feeds)["q"], ort_run(m, feeds)["q"])
    m = model("f32[] = tensor<f32[]>3.0")
    ctx = _run(m, calib)
    assert "does not multiply %h by a constant vector along its channels" in decided(ctx, "kept")["%h"]
