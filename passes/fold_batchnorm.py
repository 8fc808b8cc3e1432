"""`fold_batchnorm`: an inference BatchNormalization after a Conv / ConvTranspose / Gemm / 2-D MatMul with a
constant weight is folded into that weight and a bias.

With s = gamma / sqrt(var + eps) per output channel (computed in float64, stored in the weight's type):

    W' = W * s            (along the output-channel axis of W)
    b' = (b - mean) * s + beta      (b = 0 when the layer has no bias: one is created)

Conv weights are [M, C/g, k...] (channel axis 0); ConvTranspose weights [C, M/g, k...] (output channel
g*(M/g)+m is W[g*C/g + c, m]); Gemm's B is [K, N] or [N, K] with transB; a MatMul weight is [K, N], and its
bias becomes an Add node (which `fuse_matmul_add` turns into a Gemm). BatchNormalization scales axis 1,
which is MatMul's feature axis only for a 2-D output: other ranks are declined.

The folded output keeps the BatchNormalization output's name (the value downstream readers and graph
outputs know); the layer's own output name goes away. A weight read only by this layer is rewritten in
place (it keeps its name); a shared one is copied to `<name>_bn`. Declines, with the reason in the report:
training mode, spatial=0, statistics outputs in use, a non-constant or non-f16/f32/f64 weight or BN
parameter, a layer output with other readers, a channel count that does not match.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Attr, AttrType, Graph, Model, Node, Tensor, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import (
    adopt_name,
    constant,
    dims,
    drop_if_unused,
    graph_input_ids,
    is_standard,
    native_float_array,
    replace_uses,
    returned_by_subgraphs,
    set_constant,
    subject,
)

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@register_pass
class FoldBatchNorm(Pass):
    """BatchNormalization folding (see the module doc)."""

    name = "fold_batchnorm"
    ensures = ("batchnorm_folded",)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self.options()
        graph = model.graph
        inputs = graph_input_ids(graph)
        opset = model.opset("") or 21
        returned = returned_by_subgraphs(graph)
        changed = False
        for bn in list(graph.nodes):
            if not is_standard(bn, "BatchNormalization"):
                continue
            plan = _match(bn, inputs, opset, returned)
            if isinstance(plan, str):
                ctx.decide(self.name, subject(bn), "kept", plan)
                continue
            layer = plan.layer
            how = _rewrite(graph, bn, plan, returned)
            changed = True
            ctx.decide(self.name, subject(bn), "folded", f"into {layer.label()}: {how}")
        return PassResult(model, changed)


class _Plan:
    """What the check found: the layer, its weight and bias arrays, and the per-channel scale and shift."""

    def __init__(self, layer: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, shift: np.ndarray) -> None:
        self.layer, self.w, self.b, self.s, self.shift = layer, w, b, s, shift


def _match(bn: Node, inputs: set[int], opset: int, returned: set[int]) -> _Plan | str:
    """The fold plan, or the reason there is none."""
    if bn.attr("training_mode", 0):
        return "training_mode=1: it normalizes with batch statistics"
    if opset < 7 and not bn.attr("is_test", 0):
        return "is_test=0 (opset < 7): training mode"
    if not bn.attr("spatial", 1):
        return "spatial=0: per-activation statistics cannot fold into per-channel weights"
    for v in bn.outputs[1:]:
        if v.name and (v.uses or v.is_graph_output()):
            return f"its statistics output %{v.name} is read"
    x = bn.inputs[0] if bn.inputs else None
    layer = x.producer if x is not None else None
    if x is None or layer is None or not is_standard(layer, *LAYERS) or layer.outputs[0] is not x:
        what = f"{layer.label()}" if layer is not None else "a graph input or initializer"
        return f"its input is produced by {what}, not Conv/ConvTranspose/Gemm/MatMul"
    if len(x.uses) != 1 or x.is_graph_output() or id(x) in returned:
        others = [u.label() for u in x.users if u is not bn][:3]
        others += ["the graph outputs"] if x.is_graph_output() else []
        others += ["a subgraph's outputs"] if id(x) in returned else []
        return f"{layer.label()} output %{x.name} has other readers ({', '.join(others)})"
    params = []
    for i, role in enumerate(("scale", "bias", "mean", "var")):
        v = bn.inputs[i + 1] if i + 1 < len(bn.inputs) else None
        t = constant(v, inputs)
        arr = native_float_array(t) if t is not None else None
        if arr is None:
            name = f"%{v.name}" if v is not None else "(missing)"
            return f"{role} {name} is not a constant f16/f32/f64 tensor"
        params.append(np.asarray(arr, np.float64).reshape(-1))
    gamma, beta, mean, var = params
    eps = float(bn.attr("epsilon", 1e-5))
    if len({p.size for p in params}) != 1:
        return f"its parameters have different lengths {[p.size for p in params]}"
    s = gamma / np.sqrt(var + eps)
    shift = beta - mean * s
    wv = layer.inputs[1] if len(layer.inputs) > 1 else None
    wt = constant(wv, inputs)
    if wt is None or wv is None:
        return f"{layer.label()} weight is not constant"
    if wv.quant is not None:
        return f"{layer.label()} weight %{wv.name} already has a quantization type"
    w = native_float_array(wt)
    if w is None:
        return f"{layer.label()} weight %{wv.name} is {wt.dtype.short}; folding needs f16/f32/f64"
    b: np.ndarray | None = None
    if len(layer.inputs) > 2 and layer.inputs[2] is not None:
        bt = constant(layer.inputs[2], inputs)
        b = native_float_array(bt) if bt is not None else None
        if b is None:
            return f"{layer.label()} bias %{layer.inputs[2].name} is not a constant f16/f32/f64 tensor"
    channels = _out_channels(layer, w)
    if isinstance(channels, str):
        return channels
    if channels != s.size:
        return f"{layer.label()} has {channels} output channels but the BatchNormalization has {s.size}"
    return _Plan(layer, w, b, s, shift)


def _out_channels(layer: Node, w: np.ndarray) -> int | str:
    op = layer.op_type
    if op == "Conv":
        return int(w.shape[0]) if w.ndim >= 3 else f"{layer.label()} weight has rank {w.ndim}"
    if op == "ConvTranspose":
        return int(w.shape[1]) * int(layer.attr("group", 1)) if w.ndim >= 3 else \
            f"{layer.label()} weight has rank {w.ndim}"
    if w.ndim != 2:
        return f"{layer.label()} weight has rank {w.ndim}, not 2"
    if op == "Gemm":
        return int(w.shape[0] if layer.attr("transB", 0) else w.shape[1])
    shape = dims(layer.inputs[0])
    if shape is None:
        return f"{layer.label()}: rank of its input %{layer.inputs[0].name} is unknown"  # type: ignore[union-attr]
    if len(shape) != 2:
        return (f"{layer.label()} output has rank {len(shape)}: BatchNormalization normalizes axis 1, which is "
                "not the MatMul's feature axis")
    return int(w.shape[1])


def _rewrite(graph: Graph, bn: Node, p: _Plan, returned: set[int]) -> str:
    layer, s, shift = p.layer, p.s, p.shift
    w = np.asarray(p.w, np.float64)
    wv, bv = layer.inputs[1], layer.inputs[2] if len(layer.inputs) > 2 else None
    op = layer.op_type
    if op == "Conv":
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        g = int(layer.attr("group", 1))
        c, m = w.shape[0], w.shape[1]
        w = (w.reshape((g, c // g, m) + w.shape[2:]) * s.reshape((g, 1, m) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif op == "Gemm" and layer.attr("transB", 0):
        w = w * s[:, None]
    else:  # Gemm (transB=0), MatMul: B is [K, N]
        w = w * s[None, :]
    new_w = set_constant(graph, layer, 1, w.astype(p.w.dtype), wv, "_bn", returned=returned)
    x, y = bn.inputs[0], bn.outputs[0]
    assert x is not None
    bn_params = list(bn.inputs[1:])
    if op == "MatMul":
        bias = graph.make_initializer(_bias_name(layer), Tensor(shift.astype(p.w.dtype)))
        add = Node("Add", [x, bias], [Value("")], name=bn.name or f"{layer.name}_bias")
        graph.insert_before(bn, add)
        replace_uses(graph, y, add.outputs[0], returned)
        graph.erase(bn)
        adopt_name(add.outputs[0], y)
        drop_if_unused(graph, bn_params)
        return f"weight %{new_w.name} scaled, bias %{bias.name} added"
    if op == "Gemm":
        beta = float(layer.attr("beta", 1.0))
        # alpha*A@(B*s) + 1*C' = s*(alpha*A@B + beta*C) + shift when C' = s*beta*C + shift: alpha stays,
        # beta becomes 1 (C broadcasts along N, the last axis, as s does).
        c = np.asarray(p.b, np.float64) * beta if p.b is not None and beta != 0.0 else 0.0
        bias_arr = s * c + shift
        if beta != 1.0:
            layer.attrs["beta"] = Attr("beta", AttrType.FLOAT, 1.0)
    else:
        bias_arr = shift if p.b is None else np.asarray(p.b, np.float64) * s + shift
    dtype = p.w.dtype if p.b is None else p.b.dtype
    new_b = set_constant(graph, layer, 2, np.asarray(bias_arr).astype(dtype), bv, "_bn", name=_bias_name(layer),
                         returned=returned)
    replace_uses(graph, y, x, returned)
    graph.erase(bn)
    adopt_name(x, y)
    drop_if_unused(graph, bn_params)
    return f"weight %{new_w.name} scaled, bias %{new_b.name} {'updated' if bv is not None else 'created'}"


def _bias_name(layer: Node) -> str:
    """A name for a created bias: 'conv1.weight' -> 'conv1.bias' (made unique by the graph)."""
    w = layer.inputs[1]
    base = w.name if w is not None else (layer.name or layer.op_type)
    return base[: -len("weight")] + "bias" if base.endswith("weight") else f"{base}_bias"
