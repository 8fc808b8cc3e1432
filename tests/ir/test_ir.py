"""The IR core: use lists and the mutation API, the text form's round trip, the verifier."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qcompiler.errors import GraphError
from qcompiler.ir import (
    Attr,
    AttrType,
    DType,
    Graph,
    Node,
    ParseError,
    Tensor,
    TensorType,
    Value,
    format_graph,
    format_model,
    parse_graph,
    parse_model,
    verify,
)
from qcompiler.numerics.granularity import PerChannel

ROOT = Path(__file__).resolve().parents[2]


def _chain() -> tuple[Graph, Value, Node, Node]:
    x = Value("x", TensorType(DType.FLOAT, ("N", 4)))
    g = Graph([x], name="g")
    a = g.append(Node("Relu", [x], 1, name="relu"))
    b = g.append(Node("Neg", [a.outputs[0]], 1, name="neg"))
    g.outputs = [b.outputs[0]]
    return g, x, a, b


def test_use_lists_follow_edits() -> None:
    g, x, relu, neg = _chain()
    assert x.uses == ((relu, 0),)
    assert relu.outputs[0].users == [neg]
    assert relu.outputs[0].name == "relu_out0"  # fresh names from the node's name
    # Insert a node between and rewire through the API.
    sig = Node("Sigmoid", [x], 1, name="sig")
    g.insert_before(relu, sig)
    relu.set_input(0, sig.outputs[0])
    assert x.uses == ((sig, 0),)
    assert sig.outputs[0].uses == ((relu, 0),)
    # replace_all_uses_with moves every reader, graph outputs included.
    neg.outputs[0].replace_all_uses_with(relu.outputs[0])
    assert g.outputs == [relu.outputs[0]]
    g.erase(neg)
    assert neg.graph is None and relu.outputs[0].uses == ()
    verify(g)
    assert [n.name for n in g.nodes] == ["sig", "relu"]


def test_erase_refuses_node_with_users() -> None:
    g, _, relu, _ = _chain()
    with pytest.raises(ValueError, match=r"cannot erase relu \(Relu\): %relu_out0 is used by neg \(Neg\)"):
        g.erase(relu)


def test_fresh_names_are_unique_across_subgraphs() -> None:
    g, x, _, _ = _chain()
    body = Graph([], name="body")
    inner = body.append(Node("Identity", [x], [Value("taken")]))
    body.outputs = [inner.outputs[0]]
    g.append(Node("If", [x], 1, [Attr("then_branch", AttrType.GRAPH, body)], name="if"))
    assert g.fresh_name("taken") == "taken_1"
    assert g.fresh_name("x") == "x_1"
    assert g.fresh_name("new") == "new"


COMPLEX = """model ir_version=10 opset={"": 21, "com.microsoft": 1, "local": 1} producer_name="test" metadata={"a": "b"}
function local::Scale opset={"": 21} attrs=[alpha, beta=2.0] graph Scale (%v) -> (%o) {
  %o = Mul(%v, %v) {alpha=@alpha:FLOAT}
}
graph main (%x: f32[N,"seq len",4], %mask: bool[*], %s: seq<f32[?]>) -> (%y, %z) {
  init %w: f32[2,4] ~ int8 sym per_channel(0) scale=%w_scale = tensor<f32[2,4]>[[0.5, -1.0, 1e-05, inf], [-inf, nan, 3.0, 0.0]]
  init %w_scale: f32[2] = tensor<f32[2]>[0.0078125, 0.015625]
  init %shape: i64[2] = tensor<i64[2]>[-1, 4]
  init %names: str[2] = tensor<str[2]>["a\\"b", "ü"]
  init %h: f16[] = tensor<f16[]>0.33325195
  %t: f32[N,"seq len",2] ~ uint8 affine per_tensor observer=minmax = MatMul(%x, %w) @"fc/MatMul:0"
  %u, %"" = com.microsoft::Foo(%t, _, %shape) {f=1.5, i=-3, s="str", fs=[1.0, 2.5], is=[1, -2], ss=["p", "q"], e=floats[], tv=tensor<i32[3]>[1, 2, 3], ts=[tensor<u8[]>7, tensor<bool[2]>[true, false]]}
  %y = If(%mask) {then_branch=graph then () -> (%a) {
    %a: f32[*] = Relu(%u)
  }, else_branch=graph _ () -> (%u) {
  }}
  %z = local::Scale(%u) {alpha=0.5}
}
"""


def test_text_form_round_trips() -> None:
    m = parse_model(COMPLEX)
    verify(m)
    text = format_model(m, elide=None)
    assert format_model(parse_model(text), elide=None) == text
    t = m.graph.find_value("t")
    assert t is not None and t.quant is not None
    assert str(t.quant) == "uint8 affine per_tensor observer=minmax"
    w = m.graph.initializers["w"]
    assert w.quant is not None and w.quant.scale is m.graph.initializers["w_scale"]
    assert w.quant.granularity == PerChannel(0)
    assert m.graph.inputs[0].type == TensorType(DType.FLOAT, ("N", "seq len", 4))
    arr = w.const.numpy()
    assert np.isnan(arr[1, 1]) and np.isposinf(arr[0, 3]) and arr[0, 2] == np.float32(1e-05)
    assert m.graph.initializers["h"].const.numpy().dtype == np.float16
    foo = m.graph.nodes[1]
    assert foo.domain == "com.microsoft" and foo.inputs[1] is None and foo.outputs[1].name == ""
    assert foo.attrs["e"].type is AttrType.FLOATS and foo.attrs["e"].value == []
    assert foo.attrs["fs"].type is AttrType.FLOATS and foo.attrs["is"].type is AttrType.INTS
    assert m.functions[("local", "Scale", "")].attribute_defaults["beta"].value == 2.0
    # The else branch returns an outer value directly; the subgraph sees %u.
    els = m.graph.nodes[2].attrs["else_branch"].value
    assert els.outputs[0] is foo.outputs[0]


def test_elided_constants_do_not_parse_back() -> None:
    g = Graph(name="g")
    g.make_initializer("big", Tensor(np.zeros(100, np.float32)))
    text = format_graph(g)
    assert "<elided sha1=" in text
    with pytest.raises(ParseError, match="elided"):
        parse_graph(text)


def test_parse_errors_say_where() -> None:
    with pytest.raises(ParseError, match=r"%nope is used before it is defined \(at line 2"):
        parse_graph("graph g (%x: f32[2]) -> (%y) {\n  %y = Relu(%nope)\n}")
    with pytest.raises(ParseError, match="unknown element type 'f33'|expected"):
        parse_graph("graph g (%x: f33[2]) -> () {\n}")


def test_verifier_names_problem_and_pass() -> None:
    g, x, relu, neg = _chain()
    # Reorder by hand (bypassing the API) to put a use before its definition.
    g.nodes.reverse()
    with pytest.raises(GraphError, match=r"after fold_bn: neg \(Neg\) input 0 %relu_out0 is used before it is defined"):
        verify(g, where="fold_bn")
    g.toposort()
    verify(g)
    assert g.nodes == [relu, neg]


def test_toposort_reports_a_cycle() -> None:
    g, x, relu, neg = _chain()
    relu.set_input(0, neg.outputs[0])
    with pytest.raises(GraphError, match="cycle"):
        g.toposort()


def test_verifier_rejects_duplicate_names_and_bad_quant() -> None:
    g, x, relu, neg = _chain()
    neg.outputs[0].name = "relu_out0"
    with pytest.raises(GraphError, match="value name 'relu_out0' is defined twice"):
        verify(g)
    g2 = parse_graph(
        "graph g (%x: f32[2,3]) -> (%y) {\n"
        "  init %s: i32[] = tensor<i32[]>1\n"
        "  %y: f32[2,3] ~ int8 sym per_channel(1) = Relu(%x)\n}"
    )
    verify(g2)
    y = g2.outputs[0]
    from dataclasses import replace

    y.quant = replace(y.quant, scale=g2.initializers["s"])
    with pytest.raises(GraphError, match="quant scale %s has element type i32, not a float"):
        verify(g2)


def test_rules_extend_the_verifier() -> None:
    g, *_ = _chain()
    with pytest.raises(GraphError, match=r"neg \(Neg\): no Neg allowed"):
        verify(g, rules=[lambda n: "no Neg allowed" if n.op_type == "Neg" else None])


def test_core_imports_numpy_only() -> None:
    """STYLE habit 6: qcompiler/ir and qcompiler/numerics import no framework."""
    banned = re.compile(r"^\s*(import|from)\s+(torch|onnx|onnxruntime|tvm|ml_dtypes)\b", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for d in ("qcompiler/ir", "qcompiler/numerics")
        for p in (ROOT / d).rglob("*.py")
        if banned.search(p.read_text())
    ]
    assert offenders == []


def test_tensor_storage_of_exotic_types() -> None:
    # int4 is held unpacked one per byte and packs two per byte, low nibble first (ONNX order).
    t = Tensor(np.array([1, -2, 7], np.int8), DType.INT4)
    assert t.nbytes == 2
    assert bytes(t.raw_bytes()) == bytes([0x01 | (0xE << 4), 0x07])
    from qcompiler.ir.tensor import unpack_storage

    assert unpack_storage(t.raw_bytes(), DType.INT4, (3,)).tolist() == [1, -2, 7]
    bf = Tensor(np.array([0x3F80], np.uint16), DType.BFLOAT16)  # 1.0 in bfloat16
    assert bf.nbytes == 2 and bf.numpy().dtype == np.uint16


def test_networkx_view_and_analyses() -> None:
    from qcompiler.ir.analysis import ancestors, dominators, match_chains, regions, to_networkx

    g = parse_graph("graph g (%x: f32[1,3,8,8]) -> () {\n  init %w: f32[1] = tensor<f32[1]>[0.0]\n}")
    x = g.inputs[0]
    conv = g.append(Node("Conv", [x, g.initializers["w"]], 1, name="conv"))
    bn = g.append(Node("BatchNormalization", [conv.outputs[0]], 1, name="bn"))
    relu = g.append(Node("Relu", [bn.outputs[0]], 1, name="relu"))
    side = g.append(Node("Sigmoid", [conv.outputs[0]], 1, name="side"))
    add = g.append(Node("Add", [relu.outputs[0], side.outputs[0]], 1, name="add"))
    g.outputs = [add.outputs[0]]
    nxg = to_networkx(g)
    assert nxg.number_of_nodes() == 5 and nxg.number_of_edges() == 5
    assert ancestors(g, add) == {conv, bn, relu, side}
    assert dominators(g)[add] is conv
    # conv's output has two readers, so Conv->BN is not a single-use chain; BN->Relu is.
    assert match_chains(g, ["Conv", "BatchNormalization"]) == []
    assert match_chains(g, ["BatchNormalization", "Relu"]) == [[bn, relu]]
    assert regions(g, lambda n: n.op_type in ("Relu", "Add", "Sigmoid")) == [[relu, side, add]]
