"""llm_int8: which channels leave the int8 part (calibration max over `threshold` x the median, at most
`max_channels`, largest first), the rewrite (U's columns, the bias entries and the readers' rows moved to a float
path that is added after the reader's bias), the float model unchanged within float32 summation, the declines
with their reasons, assign_quant_types keeping the float path float, and the numerics: through ONNX Runtime's
DynamicQuantizeMatMul the error drops and stays within the bound of the smaller step."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from qcompiler.compiler import CompileOptions
from qcompiler.errors import ConfigError
from qcompiler.ir import Model, parse_graph
from qcompiler.passes.assign import KEEP_FLOAT
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.targets import get_target

from .canon_util import decided, dot_bound, f32_literal, grid_weights
from .transformer_util import gamma, ort_run

RNG = np.random.default_rng(11)
K_IN, K, N = 8, 16, 4
OUTLIERS = (10, 3)  # channel 10 larger than channel 3: the pass lists the largest first


def _t(a: np.ndarray) -> str:
    return f32_literal(a)


def _w(*shape: int) -> np.ndarray:
    return grid_weights(RNG, *shape)


U = _w(K_IN, K)
U[:, OUTLIERS[0]] *= 32.0  # powers of two: still exact
U[:, OUTLIERS[1]] *= 16.0
B = _w(K)
W, BD = _w(K, N), _w(N)


def _ffn(act: str = "Relu", extra: str = "", rows: str = "S") -> Model:
    """y = act(z U + b) W + bd: the FFN shape of a transformer (act = com.microsoft::Gelu there); `rows` are the
    leading dims of z, x and y."""
    return Model(parse_graph(f"""graph g (%z: f32[{rows},{K_IN}]) -> (%y{extra and ', %x'}) {{
  init %u: f32[{K_IN},{K}] = {_t(U)}
  init %b: f32[{K}] = {_t(B)}
  init %w: f32[{K},{N}] = {_t(W)}
  init %bd: f32[{N}] = {_t(BD)}
  %m: f32[{rows},{K}] = MatMul(%z, %u) @up
  %h: f32[{rows},{K}] = Add(%m, %b) @up_bias
  %x: f32[{rows},{K}] = {act}(%h) @act
  %p: f32[{rows},{N}] = MatMul(%x, %w) @down
  %y: f32[{rows},{N}] = Add(%p, %bd) @down_bias
}}"""), opset_imports={"": 21, "com.microsoft": 1})


def _calib(n: int = 4, rows: tuple[int, ...] = (6,)) -> list[dict[str, np.ndarray]]:
    return [{"z": RNG.standard_normal((*rows, K_IN)).astype(np.float32)} for _ in range(n)]


def _run(model: Model, calib: list | None, *names: str, **options: object) -> PassContext:
    tgt = get_target("cpu-int8-dynamic")
    ctx = PassContext(options={"recipe": tgt.default_recipe}, calibration=calib, target=tgt, progress=False)
    passes = [get_pass("llm_int8", **options)] + [get_pass(n) for n in names]
    PassManager(passes).run(model, ctx)
    return ctx


def _consts(model: Model) -> dict[str, tuple[int, ...]]:
    return {n.name: tuple(n.inputs[1].const.shape) for n in model.graph.nodes
            if n.op_type == "MatMul" and n.inputs[1].const is not None}


def test_outlier_channels_move_to_a_float_path_added_after_the_bias() -> None:
    m = _ffn()
    ctx = _run(m, _calib())
    g = m.graph
    assert [(n.op_type, n.name) for n in g.nodes] == [
        ("MatMul", "up"), ("Add", "up_bias"), ("Relu", "act"),
        ("MatMul", "up_outliers"), ("Add", "up_bias_outliers"), ("Relu", "act_outliers"),
        ("MatMul", "down"), ("Add", "down_bias"), ("MatMul", "down_outliers"), ("Add", "down_outliers_sum"),
    ]
    assert _consts(m) == {"up": (K_IN, K - 2), "up_outliers": (K_IN, 2), "down": (K - 2, N), "down_outliers": (2, N)}
    keep = [j for j in range(K) if j not in OUTLIERS]
    by = {n.name: n for n in g.nodes}
    np.testing.assert_array_equal(by["up"].inputs[1].const.numpy(), U[:, keep])
    np.testing.assert_array_equal(by["up_outliers"].inputs[1].const.numpy(), U[:, list(OUTLIERS)])
    np.testing.assert_array_equal(by["up_bias_outliers"].inputs[1].const.numpy(), B[list(OUTLIERS)])
    np.testing.assert_array_equal(by["down"].inputs[1].const.numpy(), W[keep])
    np.testing.assert_array_equal(by["down_outliers"].inputs[1].const.numpy(), W[list(OUTLIERS)])
    # The sum holds the layer's full output under its old name; the partial values are renamed.
    assert [v.name for v in g.outputs] == ["y"] and g.outputs[0].producer is by["down_outliers_sum"]
    assert by["act"].outputs[0].name == "x_inliers" and by["act"].outputs[0].type.shape[-1] == K - 2
    assert by["down_bias"].outputs[0].name == "y_inliers"
    art = ctx.artifacts["llm_int8"]["x"]
    assert art["channels"] == list(OUTLIERS) and art["max_after"] * 4 < art["max_before"]
    assert ctx.artifacts["measure_at"] == {"p": "y"} and "up_outliers" not in ctx.artifacts["measure_at"]
    assert "channels [10, 3]" in decided(ctx, "split", "llm_int8")["%x"]
    for name in ("up_outliers", "down_outliers"):
        assert "llm_int8" in by[name].meta[KEEP_FLOAT]


def test_float_outputs_equal_within_summation_rounding() -> None:
    """Splitting the sum over K into two parts changes only the order of the float32 additions: per element,
    |y_split - y| <= 2 gamma_K sum_j |x_j W_jk| plus the bias (each side a float32 dot product of K terms)."""
    before, m = _ffn("com.microsoft::Gelu"), _ffn("com.microsoft::Gelu")
    _run(m, _calib())
    z = RNG.standard_normal((9, K_IN)).astype(np.float32)
    for run in (ort_run, qcompiler.run):
        a, b = run(before, {"z": z})["y"], run(m, {"z": z})["y"]
        h = z.astype(np.float64) @ U.astype(np.float64) + B
        xs = np.abs(h)  # |gelu(h)| <= |h|
        bound = 2 * dot_bound(xs @ np.abs(W).astype(np.float64) + np.abs(BD), K + 1)
        bound += 2 * dot_bound((np.abs(z) @ np.abs(U)) @ np.abs(W), K_IN)  # the up MatMul's own rounding, carried
        assert np.all(np.abs(a.astype(np.float64) - b) <= bound), float(np.max(np.abs(a - b) - bound))


def test_threshold_and_max_channels_pick_the_largest() -> None:
    m = _ffn()
    ctx = _run(m, _calib(), max_channels=1)
    assert ctx.artifacts["llm_int8"]["x"]["channels"] == [OUTLIERS[0]]
    assert "the largest 1 taken" in decided(ctx, "split", "llm_int8")["%x"]
    m = _ffn()
    ctx = _run(m, _calib(), threshold=1000.0)
    assert "no channel's max exceeds 1000" in decided(ctx, "kept", "llm_int8")["%x"]
    assert _consts(m) == {"up": (K_IN, K), "down": (K, N)}


def test_declines_say_why_and_change_nothing() -> None:
    # X also a graph output: its values must stay whole.
    m = _ffn(extra="x")
    ctx = _run(m, _calib())
    assert "graph output" in decided(ctx, "kept", "llm_int8")["%x"] and _consts(m) == {"up": (K_IN, K), "down": (K, N)}
    # X made by something that is not an elementwise activation of a linear layer.
    m = Model(parse_graph(f"""graph g (%z: f32[S,{K}]) -> (%y) {{
  init %g: f32[{K}] = {_t(np.ones(K))}
  init %w: f32[{K},{N}] = {_t(W)}
  %x: f32[S,{K}] = LayerNormalization(%z, %g) {{axis=-1}} @ln
  %y: f32[S,{N}] = MatMul(%x, %w) @down
}}"""), opset_imports={"": 21})
    ctx = _run(m, [{"z": RNG.standard_normal((4, K)).astype(np.float32) * np.arange(1, K + 1)}])
    assert "made by ln (LayerNormalization)" in decided(ctx, "kept", "llm_int8")["%x"]
    # X gated by a linear layer of one column (broadcast along the channels): that layer's columns are not X's.
    m = Model(parse_graph(f"""graph g (%z: f32[S,{K_IN}]) -> (%y) {{
  init %u: f32[{K_IN},{K}] = {_t(U)}
  init %v: f32[{K_IN},1] = {_t(U[:, :1])}
  init %w: f32[{K},{N}] = {_t(W)}
  %h: f32[S,{K}] = MatMul(%z, %u) @up
  %gate: f32[S,1] = MatMul(%z, %v) @gate
  %x: f32[S,{K}] = Mul(%h, %gate) @gated
  %y: f32[S,{N}] = MatMul(%x, %w) @down
}}"""), opset_imports={"": 21})
    ctx = _run(m, _calib())
    assert "whose 1 output columns are not its 16 channels" in decided(ctx, "kept", "llm_int8")["%x"]
    # No calibration data, or disabled: nothing happens, and the plan says so.
    for calib, opts, why in ((None, {}, "needs calibration data"), (_calib(), {"enabled": False}, "disabled")):
        m = _ffn()
        ctx = _run(m, calib, **opts)
        assert why in decided(ctx, "skipped", "llm_int8")["model"] and _consts(m) == {"up": (K_IN, K), "down": (K, N)}


@pytest.mark.parametrize("options, message", [({"threshold": 1.0}, "threshold"), ({"max_channels": 0}, "max_channels"),
                                              ({"alpha": 0.5}, "alpha")])
def test_bad_options_name_the_key(options: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        get_pass("llm_int8", **options).options()


def test_assign_keeps_the_float_path_float() -> None:
    m = _ffn()
    ctx = _run(m, _calib(), "assign_quant_types")
    kept = decided(ctx, "kept float", "assign_quant_types")
    assert {k for k in kept if "outliers (MatMul)" in k} == {"up_outliers (MatMul)", "down_outliers (MatMul)"}
    assert all("outlier channels [10, 3]" in kept[k] for k in ("up_outliers (MatMul)", "down_outliers (MatMul)"))
    assert set(decided(ctx, "quantized", "assign_quant_types")) == {"up (MatMul)", "down (MatMul)"}


def test_dynamic_int8_error_drops_within_the_bound_of_the_smaller_step() -> None:
    """y = relu(z U + b) W + bd with two channels of X 32x and 16x the rest, through the dynamic target
    (DynamicQuantizeMatMul) in ONNX Runtime. Per output element, X's int8 part is quantized per tensor to uint8
    with step dx = (max(X_R, 0) - min(X_R, 0)) / 255 (each element off by at most dx, a full step where the
    rounded zero point clips an end) and the down weight int8 per column, step dw_k = max_j |W_jk| / 127.5
    (off by dw_k / 2); the float path and the float32 arithmetic add at most gamma_{K+2} of the magnitudes. Here
    the up layer is quantized too: its output error e_j (bounded the same way from z's step and U's) passes through
    relu (1-Lipschitz), so with X* = relu(z U + b) exact and e the up layer's bound:
        |y^ - y| <= sum_{j in R} (e_j + dx)|W_jk| + (X*_j + e_j) dw_k / 2 + dx dw_k / 2
                    + sum_{j in C} e_j |W_jk| + gamma terms.
    Without the split, dx is set by the outlier channels (16x and 32x the rest): the RMS error is over 4x larger;
    with it, within the bound."""
    z = RNG.standard_normal((12, K_IN)).astype(np.float32)
    zd, ud, wd = z.astype(np.float64), U.astype(np.float64), W.astype(np.float64)
    xs = np.maximum(zd @ ud + B, 0.0)
    y_ref = xs @ wd + BD
    rms = {}
    for split in (False, True):
        m = _ffn()
        names = ("assign_quant_types", "calibrate", "lower_qdq")
        if split:
            _run(m, _calib(), *names)
        else:
            tgt = get_target("cpu-int8-dynamic")
            ctx = PassContext(options={"recipe": tgt.default_recipe}, target=tgt, progress=False)
            PassManager([get_pass(n) for n in names]).run(m, ctx)
        assert [n.op_type for n in m.graph.nodes if n.op_type == "DynamicQuantizeMatMul"] == ["DynamicQuantizeMatMul"] * 2
        y = ort_run(m, {"z": z})["y"].astype(np.float64)
        rms[split] = float(np.sqrt(np.mean((y - y_ref) ** 2)))
        if not split:
            continue
        # The up layer (int8 part): z per tensor (step dz), U's kept columns per column (step du_j).
        keep = [j for j in range(K) if j not in OUTLIERS]
        dz = (zd.max() - min(zd.min(), 0.0)) / 255
        du = np.abs(ud).max(0) / 127.5
        e = dz * np.abs(ud).sum(0) + np.abs(zd).sum(1, keepdims=True) * du / 2 + K_IN * dz * du / 2
        e[:, list(OUTLIERS)] = 0.0  # computed in float
        e += gamma(K_IN + 2) * (np.abs(zd) @ np.abs(ud) + np.abs(B))
        xr = xs[:, keep] + e[:, keep]
        dx = (xr.max() - min((xs[:, keep] - e[:, keep]).min(), 0.0)) / 255
        w_r = np.abs(wd[keep])
        dw = w_r.max(0) / 127.5
        bound = (e[:, keep] + dx) @ w_r + (xs[:, keep] + e[:, keep]) @ np.ones((K - 2, N)) * dw / 2 + (K - 2) * dx * dw / 2
        bound += e[:, list(OUTLIERS)] @ np.abs(wd[list(OUTLIERS)])
        bound += gamma(K + 3) * ((xs + e + dx) @ (np.abs(wd) + dw / 2) + np.abs(BD))
        err = np.abs(y - y_ref)
        assert np.all(err <= bound), float(np.max(err - bound))
    assert rms[True] < 0.25 * rms[False], rms  # measured 0.066x


def test_the_dynamic_target_runs_it_and_the_report_measures_the_reader_after_the_sum(tmp_path) -> None:
    assert [p.name for p in get_target("cpu-int8-dynamic").default_recipe.passes].index("llm_int8") < \
        [p.name for p in get_target("cpu-int8-dynamic").default_recipe.passes].index("assign_quant_types")
    m = _ffn(rows="B,S")  # rank 3: MatMul + Add stay (rank 2 becomes Gemm, as the next test shows)
    out = tmp_path / "ffn.onnx"
    art = qcompiler.compile(m, target="cpu-int8-dynamic", calib=_calib(12, (2, 3)), output=out,
                            options=CompileOptions(progress=False, measure_latency=False))
    assert "split" in {d.action for d in art.decisions if d.pass_name == "llm_int8"}
    layers = {e.node: e for e in art.report.layers}
    assert layers["down"].sqnr_db is not None and layers["down"].sqnr_db > 25.0, layers["down"]
    assert layers["down"].reason == "measured after y"
    assert layers["up"].sqnr_db is None and "llm_int8's float path" in layers["up"].reason
    z = RNG.standard_normal((2, 5, K_IN)).astype(np.float32)
    y = art.run({"z": z})["y"]
    ref = np.maximum(z.astype(np.float64) @ U + B, 0) @ W + BD
    assert 10 * np.log10(np.sum(ref**2) / np.sum((y - ref) ** 2)) > 25.0


def test_gemm_layers_split_the_same_way() -> None:
    """torch.nn.Linear on 2-D input exports Gemm(transB=1) with its bias in C: U's rows (its output axis) and C
    lose the entries C, the reader's weight its columns C; the float path copies the Gemm's attributes."""
    m = Model(parse_graph(f"""graph g (%z: f32[S,{K_IN}]) -> (%y) {{
  init %u: f32[{K},{K_IN}] = {_t(U.T)}
  init %b: f32[{K}] = {_t(B)}
  init %w: f32[{N},{K}] = {_t(W.T)}
  init %bd: f32[{N}] = {_t(BD)}
  %h: f32[S,{K}] = Gemm(%z, %u, %b) {{transB=1}} @up
  %x: f32[S,{K}] = Relu(%h) @act
  %y: f32[S,{N}] = Gemm(%x, %w, %bd) {{transB=1}} @down
}}"""), opset_imports={"": 21})
    z = RNG.standard_normal((9, K_IN)).astype(np.float32)
    ref = ort_run(m, {"z": z})["y"]
    ctx = _run(m, _calib())
    assert ctx.artifacts["llm_int8"]["x"]["channels"] == list(OUTLIERS)
    by = {n.name: n for n in m.graph.nodes}
    keep = [j for j in range(K) if j not in OUTLIERS]
    assert [(n.op_type, n.name) for n in m.graph.nodes] == [
        ("Gemm", "up"), ("Relu", "act"), ("Gemm", "up_outliers"), ("Relu", "act_outliers"),
        ("Gemm", "down"), ("Gemm", "down_outliers"), ("Add", "down_outliers_sum")]
    np.testing.assert_array_equal(by["up"].inputs[1].const.numpy(), U.T[keep])
    np.testing.assert_array_equal(by["up"].inputs[2].const.numpy(), B[keep])
    np.testing.assert_array_equal(by["up_outliers"].inputs[2].const.numpy(), B[list(OUTLIERS)])
    np.testing.assert_array_equal(by["down"].inputs[1].const.numpy(), W.T[:, keep])
    np.testing.assert_array_equal(by["down_outliers"].inputs[1].const.numpy(), W.T[:, list(OUTLIERS)])
    assert len(by["down_outliers"].inputs) == 2 and by["down_outliers"].attr("transB") == 1
    h = z.astype(np.float64) @ U + B
    bound = 2 * dot_bound(np.abs(h) @ np.abs(W) + np.abs(BD), K + 1) + 2 * dot_bound((np.abs(z) @ np.abs(U)) @ np.abs(W), K_IN)
    assert np.all(np.abs(ort_run(m, {"z": z})["y"].astype(np.float64) - ref) <= bound)


def test_in_an_mlp_the_next_layer_splits_through_the_previous_float_path() -> None:
    """z -> L1 -> relu -> L2 -> relu -> L3, both relu outputs with outlier channels. After the first split, L2's
    output is the sum of its int8 part and the first float path (a MatMul too): the second activation is planned
    again on that graph, an elementwise function (Add, Relu) of two linear layers, and splits through both. (Split
    from a plan made before the first split, its float path would miss the first float path's share.) The float
    outputs stay equal within float32 summation."""
    u2 = _w(K, K)
    u2[:, 5] *= 32.0
    w3 = _w(K, N)
    text = f"""graph g (%z: f32[S,{K_IN}]) -> (%y) {{
  init %u: f32[{K_IN},{K}] = {_t(U)}
  init %b: f32[{K}] = {_t(B)}
  init %u2: f32[{K},{K}] = {_t(u2)}
  init %b2: f32[{K}] = {_t(B)}
  init %w3: f32[{K},{N}] = {_t(w3)}
  %m1: f32[S,{K}] = MatMul(%z, %u) @l1
  %h1: f32[S,{K}] = Add(%m1, %b) @l1_bias
  %x1: f32[S,{K}] = Relu(%h1) @act1
  %m2: f32[S,{K}] = MatMul(%x1, %u2) @l2
  %h2: f32[S,{K}] = Add(%m2, %b2) @l2_bias
  %x2: f32[S,{K}] = Relu(%h2) @act2
  %y: f32[S,{N}] = MatMul(%x2, %w3) @l3
}}"""
    before, m = (Model(parse_graph(text), opset_imports={"": 21}) for _ in range(2))
    ctx = _run(m, _calib())
    assert list(ctx.artifacts["llm_int8"]) == ["x1", "x2"]
    assert "through l2 (MatMul), l2_outliers (MatMul) and 1 reader(s)" in decided(ctx, "split", "llm_int8")["%x2"]
    z = RNG.standard_normal((9, K_IN)).astype(np.float32)
    x1 = np.maximum(z.astype(np.float64) @ U + B, 0)
    x2 = np.maximum(x1 @ u2 + B, 0)
    mag2 = np.abs(x1) @ np.abs(u2) + np.abs(B) + (np.abs(z) @ np.abs(U) + np.abs(B)) @ np.abs(u2)
    bound = 2 * dot_bound(mag2 @ np.abs(w3) + np.abs(x2) @ np.abs(w3), 2 * K + K_IN)
    a, b = ort_run(before, {"z": z})["y"], ort_run(m, {"z": z})["y"]
    assert np.all(np.abs(a.astype(np.float64) - b) <= bound), float(np.max(np.abs(a - b) - bound))


def test_a_gated_unit_splits_through_both_projections() -> None:
    """Llama's MLP input: x = silu(z G) * (z U) * c (silu exported as g * sigmoid(g); c a per-channel constant
    here, to check [k] constants are cut on both sides). Channel j of x depends on column j of G and U and on c_j
    alone: both projections lose the columns C, the float path copies the whole elementwise region on C."""
    rng = np.random.default_rng(5)  # this test's own draws: the channels it picks do not depend on test order
    g_w, c = grid_weights(rng, K_IN, K), (1 + np.abs(grid_weights(rng, K))).astype(np.float32)
    text = f"""graph g (%z: f32[S,{K_IN}]) -> (%y) {{
  init %g: f32[{K_IN},{K}] = {_t(g_w)}
  init %u: f32[{K_IN},{K}] = {_t(U)}
  init %c: f32[{K}] = {_t(c)}
  init %w: f32[{K},{N}] = {_t(W)}
  %hg: f32[S,{K}] = MatMul(%z, %g) @gate
  %hu: f32[S,{K}] = MatMul(%z, %u) @up
  %sg: f32[S,{K}] = Sigmoid(%hg) @sig
  %silu: f32[S,{K}] = Mul(%hg, %sg) @silu
  %gated: f32[S,{K}] = Mul(%silu, %hu) @gate_mul
  %x: f32[S,{K}] = Mul(%gated, %c) @scale
  %y: f32[S,{N}] = MatMul(%x, %w) @down
}}"""
    before, m = (Model(parse_graph(text), opset_imports={"": 21}) for _ in range(2))
    z = rng.standard_normal((9, K_IN)).astype(np.float32)
    ctx = _run(m, [{"z": rng.standard_normal((6, K_IN)).astype(np.float32)} for _ in range(4)])
    picked = ctx.artifacts["llm_int8"]["x"]["channels"]
    assert OUTLIERS[0] in picked and len(picked) < K // 2
    keep = [j for j in range(K) if j not in picked]
    by = {n.name: n for n in m.graph.nodes}
    assert _consts(m) == {"gate": (K_IN, len(keep)), "up": (K_IN, len(keep)), "gate_outliers": (K_IN, len(picked)),
                          "up_outliers": (K_IN, len(picked)), "down": (len(keep), N), "down_outliers": (len(picked), N)}
    assert [by[f"{n}_outliers"].op_type for n in ("sig", "silu", "gate_mul", "scale")] == ["Sigmoid", "Mul", "Mul", "Mul"]
    np.testing.assert_array_equal(by["scale"].inputs[1].const.numpy(), c[keep])
    np.testing.assert_array_equal(by["scale_outliers"].inputs[1].const.numpy(), c[picked])
    assert "through gate (MatMul), up (MatMul)" in decided(ctx, "split", "llm_int8")["%x"]
    hg, hu = z.astype(np.float64) @ g_w, z.astype(np.float64) @ U
    mag = (np.abs(hg) * np.abs(hu) * np.abs(c)) @ np.abs(W)  # |silu(g)| <= |g|
    dmag = ((np.abs(z) @ np.abs(g_w)) * np.abs(hu) + np.abs(hg) * (np.abs(z) @ np.abs(U))) * np.abs(c)
    bound = 2 * dot_bound(mag + dmag @ np.abs(W), K + K_IN + 8)
    a, b = ort_run(before, {"z": z})["y"], ort_run(m, {"z": z})["y"]
    assert np.all(np.abs(a.astype(np.float64) - b) <= bound), float(np.max(np.abs(a - b) - bound))
