"""fuse_transformer's attention rule: torch's SDPA export (Shape-driven reshapes, the dynamo K transpose, the NaN
guard) becomes one MultiHeadAttention with heads and scale read from the graph; other forms and declines
with reasons; numerics against the original graph in ONNX Runtime and in the executor, within the float32
bound of `transformer_util.attention_reference`; fully masked rows."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from qcompiler.ir import Model, format_graph, parse_graph

from .canon_util import decided, run_passes
from .transformer_util import FLT_LOWEST, attention_reference, both_runs

HEADS, HEAD = 3, 4
D = HEADS * HEAD


class _Attention:
    """A torch module doing what BERT's SDPA attention does between the projections (built lazily: torch
    is only imported by the tests that export)."""

    @staticmethod
    def build() -> object:
        import torch
        import torch.nn.functional as F  # noqa: N812

        class Attention(torch.nn.Module):
            def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                b, s, d = q.shape
                t = k.shape[1]
                q4 = q.view(b, s, HEADS, -1).transpose(1, 2)
                k4 = k.view(b, t, HEADS, -1).transpose(1, 2)
                v4 = v.view(b, t, HEADS, -1).transpose(1, 2)
                keep = mask[:, None, None, :].bool().expand(b, 1, s, t)
                o = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=keep)
                return o.transpose(1, 2).reshape(b, s, d)

        return Attention()


@pytest.fixture(scope="module")
def exported() -> Model:
    import torch

    from qcompiler.frontends.torch_export import export_module

    ex = (torch.randn(2, 5, D), torch.randn(2, 5, D), torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.int64))
    proto = export_module(_Attention.build(), ex, input_names=["q", "k", "v", "mask"], output_names=["y"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("q", "k", "v", "mask")})
    return qcompiler.load(proto)


def _copy(m: Model) -> Model:
    from qcompiler.frontends.onnx_io import model_from_proto, model_to_proto

    return model_from_proto(model_to_proto(m))


def test_sdpa_export_becomes_multihead_attention(exported: Model) -> None:
    ops = [n.op_type for n in exported.graph.nodes]
    assert {"Softmax", "IsNaN", "MatMul"} <= set(ops)  # the pattern the rule is about is really there
    m, ctx = run_passes(_copy(exported), "fuse_transformer")
    mha = [n for n in m.graph.nodes if n.op_type == "MultiHeadAttention"]
    assert len(mha) == 1 and mha[0].domain == "com.microsoft"
    left = {n.op_type for n in m.graph.nodes}
    assert not left & {"Softmax", "IsNaN", "MatMul", "Transpose"}, left
    node = mha[0]
    assert [v.name if v else None for v in node.inputs[:3]] == ["q", "k", "v"]
    mask = node.inputs[5]
    assert mask is not None and mask.producer is not None and mask.producer.op_type == "Where"
    assert node.attr("num_heads") == HEADS
    # The export scales Q and K each by fl32(HEAD^-1/4); the fused scale is their product, rounded once.
    c = float(np.float32(HEAD**-0.25))
    assert node.attr("scale") == float(np.float32(c * c))
    assert m.opset_imports["com.microsoft"] == 1
    assert m.graph.outputs[0].name == "y" and m.graph.outputs[0].producer is node
    (reason,) = decided(ctx, "fused", "fuse_transformer").values()
    assert "num_heads=3, head_size=4" in reason and "NaN guard dropped: the mask is finite" in reason


@pytest.fixture(scope="module")
def fused(exported: Model) -> Model:
    return run_passes(_copy(exported), "fuse_transformer")[0]


def _feeds(keep: np.ndarray, t: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    b = keep.shape[0]
    # Scores of a few units: the softmax is neither flat nor one-hot.
    q, k, v = (rng.standard_normal((b, t, D)).astype(np.float32) * 2 for _ in range(3))
    return {"q": q, "k": k, "v": v, "mask": keep.astype(np.int64)}


def test_fused_attention_matches_within_float32_rounding(exported: Model, fused: Model) -> None:
    keep = np.ones((3, 7), bool)
    keep[1, 4:] = False  # padding at the end
    keep[2, [0, 3]] = False  # holes
    feeds = _feeds(keep)
    c = float(np.float32(HEAD**-0.25))
    ref, bound = attention_reference(feeds["q"], feeds["k"], feeds["v"], keep, HEADS, c * c)
    for orig, new in zip(both_runs(exported, feeds), both_runs(fused, feeds)):
        a, b = orig["y"].astype(np.float64), new["y"].astype(np.float64)
        assert np.all(np.abs(a - b) <= bound), np.max(np.abs(a - b) / bound)
        assert np.all(np.abs(b - ref) <= bound / 2), np.max(np.abs(b - ref) / bound)


def test_fully_masked_row_attends_uniformly_in_both_graphs(exported: Model, fused: Model) -> None:
    """The export's mask is the lowest finite float32, so a sequence with no key left has every score at
    -3.4e38: both graphs give uniform weights (the mean of V over all keys), never NaN; the NaN guard the
    fusion dropped never acts here."""
    keep = np.ones((2, 7), bool)
    keep[0] = False
    feeds = _feeds(keep)
    mean_v = feeds["v"][0].astype(np.float64).mean(0)  # [D]: the same for every query of sample 0
    c = float(np.float32(HEAD**-0.25))
    _, bound = attention_reference(feeds["q"], feeds["k"], feeds["v"], keep, HEADS, c * c)
    for orig, new in zip(both_runs(exported, feeds), both_runs(fused, feeds)):
        a, b = orig["y"][0].astype(np.float64), new["y"][0].astype(np.float64)
        assert np.isfinite(b).all()
        assert np.all(np.abs(a - b) <= bound[0])
        assert np.all(np.abs(b - mean_v) <= bound[0] / 2)


# -- hand-written graphs: other forms and declines ---------------------------------------------------------

_CORE = """graph g (%q: f32[B,S,12], %k: f32[B,S,12], %v: f32[B,S,12], %m: f32[{mask_shape}]) -> (%y) {{
  init %shape4: i64[4] = tensor<i64[4]>[0, 0, {heads}, -1]
  init %shape3: i64[3] = tensor<i64[3]>[0, 0, 12]
  init %c: f32[] = tensor<f32[]>{div}
  init %zero: f32[] = tensor<f32[]>0.0
  %q3: f32[B,S,{heads},{hd}] = Reshape(%q, %shape4) @rq
  %q4: f32[B,{heads},S,{hd}] = Transpose(%q3) {{perm=[0, 2, 1, 3]}} @tq
  %k3: f32[B,S,{heads},{hd}] = Reshape(%k, %shape4) @rk
  %k4: f32[B,{heads},S,{hd}] = Transpose(%k3) {{perm=[0, 2, 1, 3]}} @tk
  %kt: f32[B,{heads},{hd},S] = Transpose(%k4) {{perm=[0, 1, 3, 2]}} @tkt
  %v3: f32[B,S,{heads},{hd}] = Reshape(%v, %shape4) @rv
  %v4: f32[B,{heads},S,{hd}] = Transpose(%v3) {{perm=[0, 2, 1, 3]}} @tv
  %qk: f32[B,{heads},S,S] = MatMul(%q4, %kt) @qk
  %s: f32[B,{heads},S,S] = Div(%qk, %c) @scale
  %a: f32[B,{heads},S,S] = Add(%s, %m) @add_mask
  %p: f32[B,{heads},S,S] = Softmax(%a) {{axis={axis}}} @softmax
{guard}  %o: f32[B,{heads},S,{hd}] = MatMul(%{probs}, %v4) @pv
  %ot: f32[B,S,{heads},{hd}] = Transpose(%o) {{perm=[0, 2, 1, 3]}} @to
  %y: f32[B,S,12] = Reshape(%ot, %shape3) @merge
}}"""

_GUARD = """  %nan: bool[B,{heads},S,S] = IsNaN(%p) @isnan
  %pg: f32[B,{heads},S,S] = Where(%nan, %zero, %p) @guard
"""


def _core(heads: int = 2, mask_shape: str = "B,1,S,S", div: float = 2.449489742783178, axis: int = -1,
          guard: bool = False, split: str = "") -> Model:
    """The attention core with K transposed by perm [0, 1, 3, 2] and the scores divided by `div`; `split`
    replaces the head-split shape [0, 0, heads, -1]."""
    text = _CORE.format(heads=heads, hd=12 // heads, mask_shape=mask_shape, div=div, axis=axis,
                        guard=_GUARD.format(heads=heads) if guard else "", probs="pg" if guard else "p")
    if split:
        text = text.replace(f"[0, 0, {heads}, -1]", split)
    return Model(parse_graph(text), opset_imports={"": 18})


def test_heads_scale_and_transpose_form_come_from_the_graph() -> None:
    """2 heads of 6 (from the constant shape [0, 0, 2, -1]), scores divided by sqrt(6) after the MatMul,
    K transposed with perm [0, 1, 3, 2]; no guard, so a mask of any values is fine."""
    m, ctx = run_passes(_core(), "fuse_transformer")
    assert format_graph(m.graph) == """graph g (%q: f32[B,S,12], %k: f32[B,S,12], %v: f32[B,S,12], %m: f32[B,1,S,S]) -> (%y) {
  %y: f32[B,S,12] = com.microsoft::MultiHeadAttention(%q, %k, %v, _, _, %m) {num_heads=2, scale=0.40824828} @pv
}"""
    node = m.graph.nodes[-1]
    assert node.op_type == "MultiHeadAttention" and len(m.graph.nodes) == 1
    assert node.attr("num_heads") == 2
    assert node.attr("scale") == float(np.float32(1 / np.float64(np.float32(2.449489742783178))))
    assert [v.name if v else None for v in node.inputs] == ["q", "k", "v", None, None, "m"]
    (reason,) = decided(ctx, "fused").values()
    assert "num_heads=2, head_size=6" in reason and "NaN guard" not in reason

    keep = np.ones((2, 5), bool)
    keep[1, 3:] = False
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((2, 5, 12)).astype(np.float32) for n in "qkv"}
    feeds["m"] = np.where(keep, 0.0, FLT_LOWEST).astype(np.float32)[:, None, None, :].repeat(5, axis=2)
    scale = 1 / float(np.float32(2.449489742783178))
    _, bound = attention_reference(feeds["q"], feeds["k"], feeds["v"], keep, 2, scale)
    for orig, new in zip(both_runs(_core(), feeds), both_runs(m, feeds)):
        assert np.all(np.abs(orig["y"].astype(np.float64) - new["y"]) <= bound)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"mask_shape": "B,1,1,S"}, "mask %m has shape ['B', '1', '1', 'S']; attention_bias must be (B|1, N|1, S, T)"),
    ({"axis": 2}, "Softmax over axis 2, not the last (keys)"),
    ({"split": "[0, 0, 5, -1]"}, "query: rq (Reshape): [5, -1] does not split hidden size 12 into heads"),
    ({"split": "[0, 1, 2, -1]"}, "query: rq (Reshape) does not keep axis 1 (1 vs S)"),
    ({"div": 0.0}, "add_mask (Add): cannot tell the scores Q·Kᵀ from the mask (neither input comes from a MatMul)"),
])
def test_declines_say_why(kwargs: dict, reason: str) -> None:
    g = _core(**kwargs)
    before = format_graph(g.graph)
    m, ctx = run_passes(g, "fuse_transformer")
    assert format_graph(m.graph) == before
    (got,) = decided(ctx, "kept", "fuse_transformer").values()
    assert got.startswith(reason), got


def test_guard_with_a_mask_that_may_be_minus_inf_is_kept() -> None:
    """The mask is a graph input: it may hold -inf, and a row that is -inf everywhere would turn from the
    guard's zeros into MultiHeadAttention's NaN."""
    m, ctx = run_passes(_core(guard=True), "fuse_transformer")
    assert "MultiHeadAttention" not in {n.op_type for n in m.graph.nodes}
    (reason,) = decided(ctx, "kept").values()
    assert reason.startswith("the NaN guard turns fully masked rows into zeros, and mask %m may hold -inf")


def test_guard_with_minus_inf_where_mask_is_kept_and_finite_one_fused() -> None:
    for fill, fused in ((-np.inf, False), (FLT_LOWEST, True)):
        g = _core(guard=True).graph
        text = format_graph(g).replace("%m: f32[B,1,S,S]", "%keep: bool[B,1,S,S]").replace(
            "  %q3:", "  %m: f32[B,1,S,S] = Where(%keep, %zero, %fill) @mask\n  %q3:").replace(
            "  init %zero:", f"  init %fill: f32[] = tensor<f32[]>{'-inf' if fill < -3.5e38 else repr(fill)}\n"
                             "  init %zero:")
        m, ctx = run_passes(Model(parse_graph(text), opset_imports={"": 18}), "fuse_transformer")
        assert ("MultiHeadAttention" in {n.op_type for n in m.graph.nodes}) is fused
        if not fused:
            (reason,) = decided(ctx, "kept").values()
            assert "mask (Where) chooses between values that are not all finite constants" in reason
