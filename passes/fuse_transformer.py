"""`fuse_transformer`: rewrite a transformer's float subgraphs into ONNX Runtime's fused contrib ops.

Three rules (pattern + check with a reason + rewrite), each on by default (options `gelu`, `skip_layer_norm`,
`attention`), run in that order:

* **GELU** (anchored on each Erf): `x * 0.5 * (1 + erf(x / sqrt(2)))` in the associations exporters write
  (`Mul(x, Mul(0.5, 1 + erf))`, `Mul(Mul(x, 1 + erf), 0.5)`, `Mul(Mul(x, 0.5), 1 + erf)`; `x / sqrt(2)` also
  as `x * (1/sqrt(2))`) -> com.microsoft `Gelu(x)`; with `fold_bias`, an `x = Add(h, b)` with a constant
  b of shape [C] (C = x's last dim) whose only readers are the GELU's -> `BiasGelu(h, b)`. The constants
  must be sqrt(2) (or its inverse) to within 2 float32 ulps, 0.5 and 1 exactly.
* **SkipLayerNormalization** (anchored on each LayerNormalization over the last axis, stash_type 1):
  `LayerNorm(a + b)` with a, b of the same rank-3 shape, gamma (and beta) of shape [D] and the sum read by
  the LayerNorm only -> com.microsoft `SkipLayerNormalization(a, b, gamma, beta)`; with `fold_bias`, an
  operand `a = Add(h, c)` with a constant c of shape [D] read only by the residual Add ->
  `SkipLayerNormalization(h, b, gamma, beta, c)`. (The embeddings' sum, whose position term is
  [1, S', D], does not match: ORT needs skip in the input's shape.) On ORT 1.32's CPU provider this op is
  slower than Add + LayerNormalization (see `keep_layer_norm`): the cpu-int8-dynamic recipe turns it off.
* **attention** (anchored on each Softmax): the core between the Q/K/V projections and the output
  projection -> com.microsoft `MultiHeadAttention`; the pattern, its checks and what happens to the NaN
  guard are in `passes/fuse_attention.py`.

Every anchor gets a decision: "fused" with what was made, or "kept" with the reason. The model gets the
`com.microsoft` opset import (version 1) when a contrib op is emitted. A bias folded into a fused op is
removed from its MatMul's `meta["bias"]` (the linear-layer pairing `fuse_matmul_add` records), so a later
pass does not fold it a second time.

Numerics: each fused op computes the same function; differences are float32 rounding (ORT's Gelu uses
its own erf; SkipLayerNormalization adds input + skip + bias in one expression; MultiHeadAttention applies
the scale once). The tests bound them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcompiler.ir import Attr, AttrType, DType, Graph, Model, Node, TensorType, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import (
    adopt_name,
    constant,
    dims,
    graph_input_ids,
    is_standard,
    remove_dead,
    replace_uses,
    returned_by_subgraphs,
    subject,
)
from .fuse_attention import MS_DOMAIN, match_attention, rewrite_attention

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class FuseTransformerOptions:
    """Which rules run; `fold_bias`: absorb a constant-bias Add before the GELU / in the residual into
    BiasGelu / SkipLayerNormalization (off: the bias Add stays with its MatMul, for the quantizer to fold)."""

    gelu: bool = True
    skip_layer_norm: bool = True
    attention: bool = True
    fold_bias: bool = True


@register_pass
class FuseTransformer(Pass):
    """GELU, residual Add + LayerNorm and the attention core -> ORT contrib ops (see the module doc)."""

    name = "fuse_transformer"
    ensures = ("transformer_fused",)
    Options = FuseTransformerOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: FuseTransformerOptions = self.options()
        graph = model.graph
        inputs = graph_input_ids(graph)
        returned = returned_by_subgraphs(graph)
        opset = model.opset("") or 1
        fused = 0
        rules = []
        if opts.gelu:
            rules.append(("Erf", lambda n: _gelu(graph, n, inputs, returned, opts.fold_bias)))
        if opts.skip_layer_norm:
            rules.append(("LayerNormalization", lambda n: _skip_ln(graph, n, inputs, returned, opts.fold_bias)))
        if opts.attention:
            rules.append(("Softmax", lambda n: _attention(graph, n, inputs, returned, opset)))
        for anchor_op, rule in rules:
            before = fused
            for node in list(graph.nodes):
                if node.graph is not graph or not is_standard(node, anchor_op):
                    continue
                label = subject(node)
                action, reason = rule(node)
                ctx.decide(self.name, label, action, reason)
                fused += action == "fused"
            if fused > before:
                remove_dead(graph)  # the replaced nodes, so the next rule sees true reader counts
        if fused:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        return PassResult(model, fused > 0)


# -- GELU ---------------------------------------------------------------------------------------------------


def _f32_scalar(v: Value | None, inputs: set[int]) -> float | None:
    t = constant(v, inputs)
    if t is None or not t.dtype.is_float or not t.dtype.is_native or t.size != 1 or len(t.shape) > 1:
        return None
    return float(np.asarray(t.numpy()).reshape(-1)[0])


def _other(node: Node, v: Value) -> Value | None:
    """The other input of a binary node that reads `v` once."""
    a, b = (node.inputs + (None, None))[:2]
    return b if a is v else a if b is v else None


def _only_reader(v: Value) -> Node | None:
    if v.is_graph_output() or len(v.uses) != 1:
        return None
    return v.uses[0][0]


def _gelu(graph: Graph, erf: Node, inputs: set[int], returned: set[int], fold_bias: bool) -> tuple[str, str]:
    m = _match_gelu(erf, inputs)
    if isinstance(m, str):
        return "kept", m
    x, y, nodes = m
    bias = _bias_of(x, set(map(id, nodes)), inputs) if fold_bias else None
    if bias is not None:
        h, b, add = bias
        node = Node("BiasGelu", [h, b], [Value("")], domain=MS_DOMAIN, name=y.producer.name)  # type: ignore[union-attr]
        what = f"BiasGelu(%{h.name}, %{b.name}) (bias {add.label()} folded)"
        _unpair(h, add)
    else:
        node = Node("Gelu", [x], [Value("")], domain=MS_DOMAIN, name=y.producer.name)  # type: ignore[union-attr]
        what = f"Gelu(%{x.name})"
    _replace(graph, y, node, returned)
    return "fused", f"{' -> '.join(n.op_type for n in nodes)} -> {what}"


def _match_gelu(erf: Node, inputs: set[int]) -> tuple[Value, Value, list[Node]] | str:
    """(x, the GELU output, the nodes) for the erf-GELU around `erf`, or why not."""
    d = erf.inputs[0] if erf.inputs else None
    pre = d.producer if d is not None else None
    if pre is None or d is None:
        return "Erf input is not computed (not x / sqrt(2))"
    if is_standard(pre, "Div") and len(pre.inputs) == 2:
        c, x = _f32_scalar(pre.inputs[1], inputs), pre.inputs[0]
        want = _SQRT2
    elif is_standard(pre, "Mul") and len(pre.inputs) == 2:
        c0, c1 = _f32_scalar(pre.inputs[0], inputs), _f32_scalar(pre.inputs[1], inputs)
        c, x = (c1, pre.inputs[0]) if c1 is not None else (c0, pre.inputs[1])
        want = 1 / _SQRT2
    else:
        return f"Erf input comes from {pre.label()}, not x / sqrt(2)"
    if c is None or x is None:
        return f"{pre.label()} does not scale by a scalar constant"
    if abs(c - want) > 2 * float(np.spacing(np.float32(want))):  # two float32 ulps
        return f"{pre.label()} scales by {c:.9g}, not {'1/' if want < 1 else ''}sqrt(2)"
    if _only_reader(d) is not erf:
        return f"%{d.name} has readers besides the Erf"
    add = _only_reader(erf.outputs[0])
    if add is None or not is_standard(add, "Add") or _f32_scalar(_other(add, erf.outputs[0]), inputs) != 1.0:
        return "the Erf output is not read by one Add(erf, 1)"
    one_plus = add.outputs[0]
    m1 = _only_reader(one_plus)
    if m1 is None or not is_standard(m1, "Mul"):
        return f"%{one_plus.name} is not read by one Mul"
    nodes = [pre, erf, add, m1]
    o = _other(m1, one_plus)
    half = _f32_scalar(o, inputs)
    if half == 0.5:  # Mul(x, Mul(0.5, 1 + erf))
        m2 = _only_reader(m1.outputs[0])
        if m2 is None or not is_standard(m2, "Mul") or _other(m2, m1.outputs[0]) is not x:
            return f"%{m1.outputs[0].name} is not multiplied by %{x.name}"
        nodes.append(m2)
    elif o is x:  # Mul(Mul(x, 1 + erf), 0.5)
        m2 = _only_reader(m1.outputs[0])
        if m2 is None or not is_standard(m2, "Mul") or _f32_scalar(_other(m2, m1.outputs[0]), inputs) != 0.5:
            return f"%{m1.outputs[0].name} is not multiplied by 0.5"
        nodes.append(m2)
    elif o is not None and o.producer is not None and is_standard(o.producer, "Mul"):  # Mul(Mul(x, 0.5), 1+erf)
        xh = o.producer
        if _other(xh, x) is None or _f32_scalar(_other(xh, x), inputs) != 0.5 or _only_reader(o) is not m1:
            return f"{xh.label()} is not a private x * 0.5"
        nodes.insert(0, xh)
        m2 = m1
    else:
        return f"{m1.label()} does not multiply 1 + erf by 0.5 or by %{x.name}"
    # x may feed nothing else: the GELU replaces every reader of x the pattern has, and others stay valid.
    y = m2.outputs[0]
    if _shape_of(y) != _shape_of(x) or _shape_of(x) is None:
        return f"%{y.name} does not have the shape of %{x.name} (a constant broadcasts)"
    if not _is_float(x):
        return f"%{x.name} is not float32"
    return x, y, nodes


# -- SkipLayerNormalization -----------------------------------------------------------------------------------


def _skip_ln(graph: Graph, ln: Node, inputs: set[int], returned: set[int], fold_bias: bool) -> tuple[str, str]:
    m = _match_skip_ln(ln)
    if isinstance(m, str):
        return "kept", m
    a, b, add = m
    gamma = ln.inputs[1]
    beta = ln.inputs[2] if len(ln.inputs) > 2 else None
    bias = None
    if fold_bias:
        for first, second in ((a, b), (b, a)):
            found = _bias_of(first, {id(add)}, inputs)
            if found is not None:
                bias, a, b = found, first, second
                break
    eps = Attr("epsilon", AttrType.FLOAT, float(ln.attr("epsilon", 1e-5)))
    if bias is not None:
        h, c, badd = bias
        ins: list[Value | None] = [h, b, gamma, beta, c]
        what = f"SkipLayerNormalization(%{h.name}, %{b.name}, bias %{c.name}) (bias {badd.label()} folded)"
        _unpair(h, badd)
    else:
        ins = [a, b, gamma, beta]
        what = f"SkipLayerNormalization(%{a.name}, %{b.name})"
    node = Node("SkipLayerNormalization", ins, [Value("")], [eps], domain=MS_DOMAIN, name=ln.name)
    _replace(graph, ln.outputs[0], node, returned)
    return "fused", f"{add.label()} + LayerNormalization -> {what}"


def _match_skip_ln(ln: Node) -> tuple[Value, Value, Node] | str:
    """(a, b, the Add) for LayerNorm(a + b) that SkipLayerNormalization computes, or why not."""
    s = ln.inputs[0] if ln.inputs else None
    sd = _shape_of(s)
    if s is None or sd is None:
        return "rank of the LayerNormalization input is unknown"
    if len(sd) != 3:
        return f"input %{s.name} has rank {len(sd)}; SkipLayerNormalization takes [batch, seq, hidden]"
    if int(ln.attr("axis", -1)) not in (-1, 2):
        return f"normalizes from axis {ln.attr('axis')}, not over the last axis only"
    if int(ln.attr("stash_type", 1)) != 1:
        return "stash_type is not 1 (float32 statistics)"
    if any(v.uses or v.is_graph_output() for v in ln.outputs[1:]):
        return "its mean / inv_std_dev outputs are read"
    hidden = sd[2]
    if not isinstance(hidden, int) or not _is_float(s):
        return f"%{s.name} is not float32 with a known hidden size"
    for name, v in (("scale", ln.inputs[1] if len(ln.inputs) > 1 else None),
                    ("bias", ln.inputs[2] if len(ln.inputs) > 2 else None)):
        if v is None and name == "bias":
            continue
        if _shape_of(v) != (hidden,):
            return f"{name} %{v.name if v else '?'} is not of shape [{hidden}]"
    add = s.producer
    if add is None or not is_standard(add, "Add") or len(add.inputs) != 2:
        return f"input %{s.name} is not a residual Add"
    if _only_reader(s) is not ln:
        return f"the sum %{s.name} is also read elsewhere (pre-norm residual): kept"
    a, b = add.inputs
    if a is None or b is None or _shape_of(a) != sd or _shape_of(b) != sd:
        shapes = [_fmt(_shape_of(v)) for v in (a, b)]
        return f"{add.label()} adds {shapes[0]} and {shapes[1]}, not two {_fmt(sd)} tensors"
    if a is b:
        return f"{add.label()} adds a value to itself"
    return a, b, add


# -- shared -------------------------------------------------------------------------------------------------


def _attention(graph: Graph, sm: Node, inputs: set[int], returned: set[int], opset: int) -> tuple[str, str]:
    m = match_attention(sm, inputs, opset)
    if isinstance(m, str):
        return "kept", m
    node = rewrite_attention(graph, m, returned)
    adopt_name(node.outputs[0], m.output)
    return "fused", m.describe()


def _bias_of(x: Value, readers: set[int], inputs: set[int]) -> tuple[Value, Value, Node] | None:
    """x = Add(h, c) with c a constant of shape [C] (C = x's last dim), h of x's shape, and x read only by
    `readers`: (h, c, the Add). Else None."""
    add = x.producer
    if add is None or not is_standard(add, "Add") or len(add.inputs) != 2 or x.is_graph_output():
        return None
    if any(id(u) not in readers for u in x.users):
        return None
    xd = _shape_of(x)
    for h, c in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        t = constant(c, inputs)
        if h is None or c is None or t is None or xd is None or not xd:
            continue
        if t.shape == (xd[-1],) and t.dtype is DType.FLOAT and _shape_of(h) == xd:
            return h, c, add
    return None


def _unpair(h: Value, add: Node) -> None:
    """Forget `fuse_matmul_add`'s pairing of h's MatMul with `add`, which a fused op has just absorbed."""
    mm = h.producer
    if mm is not None and mm.meta.get("bias") is add:
        del mm.meta["bias"]


def _replace(graph: Graph, old: Value, node: Node, returned: set[int]) -> None:
    """Insert `node` before `old`'s producer and give its output old's readers, type and name."""
    graph.insert_before(old.producer, node)  # type: ignore[arg-type]
    y = node.outputs[0]
    y.type = old.type
    replace_uses(graph, old, y, returned)
    adopt_name(y, old)


def _shape_of(v: Value | None) -> tuple | None:
    """The shape when every dim is known (an int or a symbol), else None."""
    d = dims(v)
    if d is None or any(x is None for x in d):
        return None
    return tuple(d)


def _fmt(shape: tuple | None) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _is_float(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype is DType.FLOAT
