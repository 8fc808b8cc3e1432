"""fuse_transformer's GELU and SkipLayerNormalization rules, keep_layer_norm, and the shape evaluator the attention
rule uses: structure (graph text in, graph text out; declines with their reasons) and numerics (fused against
original in ONNX Runtime and in the executor, within the float32 bounds of `transformer_util`)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.errors import ConfigError
from qcompiler.ir import Model, format_graph, parse_graph
from qcompiler.pipeline import get_pass

from .canon_util import decided, run_passes
from .transformer_util import both_runs, gelu_bound, layer_norm_bound, ort_run

RNG = np.random.default_rng(7)
BIAS = [0.5, -1.0, 0.25, 2.0, -0.75, 0.0]

# -- GELU ------------------------------------------------------------------------------------------------------

_GELU_FORMS = {
    # torch's export of F.gelu (MiniLM): x * (0.5 * (1 + erf(x / sqrt 2)))
    "div": """  %d: f32[N,6] = Div(%x, %sqrt2) @div
  %e: f32[N,6] = Erf(%d) @erf
  %a: f32[N,6] = Add(%e, %one) @add1
  %h: f32[N,6] = Mul(%half, %a) @half_mul
  %y: f32[N,6] = Mul(%x, %h) @gelu""",
    # (x * (1 + erf(x * 1/sqrt 2))) * 0.5
    "mul": """  %d: f32[N,6] = Mul(%x, %isqrt2) @div
  %e: f32[N,6] = Erf(%d) @erf
  %a: f32[N,6] = Add(%one, %e) @add1
  %h: f32[N,6] = Mul(%a, %x) @half_mul
  %y: f32[N,6] = Mul(%h, %half) @gelu""",
    # (x * 0.5) * (1 + erf(x / sqrt 2))
    "half_first": """  %xh: f32[N,6] = Mul(%x, %half) @xh
  %d: f32[N,6] = Div(%x, %sqrt2) @div
  %e: f32[N,6] = Erf(%d) @erf
  %a: f32[N,6] = Add(%e, %one) @add1
  %y: f32[N,6] = Mul(%xh, %a) @gelu""",
}

_GELU = """graph g (%h0: f32[N,6]) -> (%y) {{
  init %b: f32[6] = tensor<f32[6]>{bias}
  init %sqrt2: f32[] = tensor<f32[]>{sqrt2}
  init %isqrt2: f32[] = tensor<f32[]>0.70710677
  init %one: f32[] = tensor<f32[]>1.0
  init %half: f32[] = tensor<f32[]>0.5
  %x: f32[N,6] = Add(%h0, %b) @bias_add
{body}
}}"""


def _gelu(form: str, sqrt2: str = "1.4142135") -> Model:
    return Model(parse_graph(_GELU.format(bias=BIAS, sqrt2=sqrt2, body=_GELU_FORMS[form])), opset_imports={"": 18})


@pytest.mark.parametrize("form", list(_GELU_FORMS))
def test_gelu_forms_become_bias_gelu(form: str) -> None:
    m, ctx = run_passes(_gelu(form), "fuse_transformer")
    assert format_graph(m.graph) == f"""graph g (%h0: f32[N,6]) -> (%y) {{
  init %b: f32[6] = tensor<f32[6]>{BIAS}
  %y: f32[N,6] = com.microsoft::BiasGelu(%h0, %b) @gelu
}}"""
    (reason,) = decided(ctx, "fused").values()
    assert reason.endswith("-> BiasGelu(%h0, %b) (bias bias_add (Add) folded)")
    assert m.opset_imports == {"": 18, "com.microsoft": 1}


def test_gelu_without_bias_folding_keeps_the_add() -> None:
    m, _ = run_passes(_gelu("div"), "fuse_transformer", fold_bias=False)
    assert [(n.op_type, n.name) for n in m.graph.nodes] == [("Add", "bias_add"), ("Gelu", "gelu")]
    assert m.graph.nodes[1].inputs[0] is m.graph.nodes[0].outputs[0]


def test_gelu_numerics_within_float32_rounding() -> None:
    feeds = {"h0": (RNG.standard_normal((64, 6)) * 3).astype(np.float32)}
    x = (feeds["h0"] + np.float32(BIAS)).astype(np.float32)  # the one rounding both graphs share
    bound = gelu_bound(x)
    for folded in (True, False):
        fused, _ = run_passes(_gelu("div"), "fuse_transformer", fold_bias=folded)
        for orig, new in zip(both_runs(_gelu("div"), feeds), both_runs(fused, feeds)):
            assert np.all(np.abs(orig["y"].astype(np.float64) - new["y"]) <= bound)


@pytest.mark.parametrize(("sqrt2", "reason"), [
    ("1.5", "div (Div) scales by 1.5, not sqrt(2)"),
    ("1.4142", "div (Div) scales by 1.41419995, not sqrt(2)"),
])
def test_gelu_with_other_constants_is_kept(sqrt2: str, reason: str) -> None:
    g = _gelu("div", sqrt2)
    before = format_graph(g.graph)
    m, ctx = run_passes(g, "fuse_transformer")
    assert format_graph(m.graph) == before
    assert decided(ctx, "kept") == {"erf (Erf)": reason}


def test_gelu_whose_inner_value_is_shared_is_kept() -> None:
    text = _GELU.format(bias=BIAS, sqrt2="1.4142135", body=_GELU_FORMS["div"]).replace(
        "-> (%y)", "-> (%y, %a)")
    m, ctx = run_passes(Model(parse_graph(text), opset_imports={"": 18}), "fuse_transformer")
    assert "Erf" in {n.op_type for n in m.graph.nodes}
    assert decided(ctx, "kept") == {"erf (Erf)": "%a is not read by one Mul"}


# -- SkipLayerNormalization --------------------------------------------------------------------------------------

_LN = """graph g (%h: f32[B,S,6], %r: f32[B,S,{rdim}]) -> ({outs}) {{
  init %c: f32[6] = tensor<f32[6]>{bias}
  init %gamma: f32[6] = tensor<f32[6]>[1.5, 0.5, -1.0, 2.0, 1.0, 0.75]
  init %beta: f32[6] = tensor<f32[6]>[0.1, -0.2, 0.0, 0.3, 1.0, -1.0]
  %x: f32[B,S,6] = Add(%h, %c) @out_bias
  %s: f32[{sdims}] = Add(%x, %r) @residual
  %y: f32[{sdims}] = LayerNormalization(%s, %gamma, %beta) {{axis={axis}, epsilon=1e-05}} @ln
}}"""


def _ln(rdim: str = "6", axis: int = -1, outs: str = "%y") -> Model:
    text = _LN.format(bias=BIAS, rdim=rdim, axis=axis, outs=outs, sdims="B,S,6")
    if rdim != "6":
        text = text.replace("%r: f32[B,S,6]", f"%r: f32[{rdim}]").replace("f32[B,S,6]) -> (", "")
    return Model(parse_graph(text), opset_imports={"": 18})


def test_residual_layer_norm_becomes_skip_layer_norm_with_the_bias() -> None:
    m, ctx = run_passes(_ln(), "fuse_transformer")
    assert format_graph(m.graph).splitlines()[-2:] == [
        "  %y: f32[B,S,6] = com.microsoft::SkipLayerNormalization(%h, %r, %gamma, %beta, %c) {epsilon=1e-05} @ln",
        "}",
    ]
    assert len(m.graph.nodes) == 1
    assert decided(ctx, "fused") == {"ln (LayerNormalization)": "residual (Add) + LayerNormalization -> "
                                     "SkipLayerNormalization(%h, %r, bias %c) (bias out_bias (Add) folded)"}
    m2, _ = run_passes(_ln(), "fuse_transformer", fold_bias=False)
    assert [n.op_type for n in m2.graph.nodes] == ["Add", "SkipLayerNormalization"]
    assert [v.name for v in m2.graph.nodes[1].inputs] == ["x", "r", "gamma", "beta"]


def test_skip_layer_norm_numerics_within_float32_rounding() -> None:
    feeds = {"h": (RNG.standard_normal((2, 5, 6)) * 2).astype(np.float32),
             "r": (RNG.standard_normal((2, 5, 6)) + 3).astype(np.float32)}  # a mean that is not 0
    g = _ln().graph
    gamma, beta = (g.initializers[n].const.numpy() for n in ("gamma", "beta"))  # type: ignore[union-attr]
    bound = layer_norm_bound([feeds["h"], np.float32(BIAS), feeds["r"]], gamma, beta, 1e-5)
    for folded in (True, False):
        fused, _ = run_passes(_ln(), "fuse_transformer", fold_bias=folded)
        for orig, new in zip(both_runs(_ln(), feeds), both_runs(fused, feeds)):
            assert np.all(np.abs(orig["y"].astype(np.float64) - new["y"]) <= bound)


def test_skip_layer_norm_declines_say_why() -> None:
    cases = {
        # the embeddings' position term: [1, S', D] broadcast over the batch
        "1,S,6": "residual (Add) adds [B, S, 6] and [1, S, 6], not two [B, S, 6] tensors",
    }
    for rdim, reason in cases.items():
        text = _LN.format(bias=BIAS, rdim=rdim, axis=-1, outs="%y", sdims="B,S,6").replace(
            f"%r: f32[B,S,{rdim}]", f"%r: f32[{rdim}]")
        m, ctx = run_passes(Model(parse_graph(text), opset_imports={"": 18}), "fuse_transformer")
        assert "SkipLayerNormalization" not in {n.op_type for n in m.graph.nodes}
        assert decided(ctx, "kept") == {"ln (LayerNormalization)": reason}
    m, ctx = run_passes(_ln(outs="%y, %s"), "fuse_transformer")
    assert decided(ctx, "kept") == {
        "ln (LayerNormalization)": "the sum %s is also read elsewhere (pre-norm residual): kept"}
    text = _LN.format(bias=BIAS, rdim="6", axis=1, outs="%y", sdims="B,S,6")
    m, ctx = run_passes(Model(parse_graph(text), opset_imports={"": 18}), "fuse_transformer")
    assert decided(ctx, "kept") == {"ln (LayerNormalization)": "normalizes from axis 1, not over the last axis only"}


# -- keep_layer_norm ---------------------------------------------------------------------------------------------


def test_keep_layer_norm_writes_the_residual_as_sum(tmp_path) -> None:
    m, ctx = run_passes(_ln(), "keep_layer_norm")
    assert [(n.op_type, n.name, n.outputs[0].name) for n in m.graph.nodes] == [
        ("Add", "out_bias", "x"), ("Sum", "residual", "s"), ("LayerNormalization", "ln", "y")]
    assert decided(ctx, "rewritten") == {"ln (LayerNormalization)": "its input residual (Add) is now Sum: ORT keeps "
                                         "LayerNormalization instead of fusing the slower SkipLayerNormalization"}
    feeds = {"h": RNG.standard_normal((2, 5, 6)).astype(np.float32),
             "r": RNG.standard_normal((2, 5, 6)).astype(np.float32)}
    # Sum of two tensors is the same addition as Add: the executor gives identical bits. ONNX Runtime runs the
    # original as its own SkipLayerNormalization, so there the two LayerNorm kernels' roundings differ.
    import qcompiler

    np.testing.assert_array_equal(qcompiler.run(_ln(), feeds)["y"], qcompiler.run(m, feeds)["y"])
    g = m.graph
    gamma, beta = (g.initializers[n].const.numpy() for n in ("gamma", "beta"))  # type: ignore[union-attr]
    bound = layer_norm_bound([feeds["h"], np.float32(BIAS), feeds["r"]], gamma, beta, 1e-5)
    assert np.all(np.abs(ort_run(_ln(), feeds)["y"].astype(np.float64) - ort_run(m, feeds)["y"]) <= bound)
    # What it is for: ONNX Runtime fuses Add + LayerNormalization, but not Sum + LayerNormalization.
    from qcompiler.backends.onnxruntime.session import make_session
    from qcompiler.frontends.onnx_io import model_to_proto

    for model, want in ((_ln(), "SkipLayerNormalization"), (m, "LayerNormalization")):
        path = tmp_path / f"{want}.onnx"
        make_session(model_to_proto(model).SerializeToString(), optimized_path=path)
        import onnx

        assert want in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_keep_layer_norm_leaves_other_inputs() -> None:
    m, ctx = run_passes(_ln(outs="%y, %s"), "keep_layer_norm")
    assert "Sum" not in {n.op_type for n in m.graph.nodes}
    assert decided(ctx, "kept") == {
        "ln (LayerNormalization)": "the sum %s is also read elsewhere; ORT does not fuse it either"}


# -- options and the shape evaluator -------------------------------------------------------------------------------


def test_rules_can_be_switched_off_and_bad_options_are_named() -> None:
    m, ctx = run_passes(_gelu("div"), "fuse_transformer", gelu=False)
    assert "Erf" in {n.op_type for n in m.graph.nodes} and not ctx.decisions
    with pytest.raises(ConfigError, match="unknown option 'bias'; valid options: attention, fold_bias, gelu, "
                                          "skip_layer_norm"):
        get_pass("fuse_transformer", bias=True)


def test_shape_entries_follow_shape_slice_gather_concat() -> None:
    from passes._shape_expr import shape_entries

    g = parse_graph("""graph g (%x: f32[B,S,8], %u: f32[B,?,8]) -> (%s1, %s2, %s3) {
  init %lo: i64[1] = tensor<i64[1]>[-9223372036854775808]
  init %m2: i64[1] = tensor<i64[1]>[-2]
  init %one: i64[] = tensor<i64[]>1
  init %minus1: i64[1] = tensor<i64[1]>[-1]
  %sh: i64[3] = Shape(%x) @shape
  %head: i64[2] = Slice(%sh, %lo, %m2) @head
  %mid: i64[] = Gather(%sh, %one) {axis=0} @mid
  %mid1: i64[1] = Unsqueeze(%mid, %minus1) @mid1
  %s1: i64[4] = Concat(%head, %minus1, %mid1) {axis=0} @cat
  %s2: i64[1] = Shape(%x) {start=-1} @last
  %s3: i64[2] = Shape(%u) {end=2} @unknown
}""")
    out = {v.name: v for v in g.outputs}
    ids: set[int] = set()
    assert shape_entries(out["s1"], ids) == ["B", -1, "S"]  # head is Shape[:-2] = [B]
    assert shape_entries(out["s2"], ids) == [8]
    u = g.inputs[1]
    assert shape_entries(out["s3"], ids) == ["B", ("@", id(u), 1)]  # an unnamed dim is named by its value/axis


def test_ort_runs_the_fused_ops() -> None:
    """The contrib ops as emitted load and run in ONNX Runtime (input order and attributes as its schemas)."""
    fused, _ = run_passes(_ln(), "fuse_transformer")
    out = ort_run(fused, {"h": np.ones((1, 2, 6), np.float32), "r": np.zeros((1, 2, 6), np.float32)})
    assert out["y"].shape == (1, 2, 6) and np.isfinite(out["y"]).all()
