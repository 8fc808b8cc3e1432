"""`normalize_ops`: rewrite ops into the equivalent form that has an integer kernel.

- ReduceMean / ReduceMax over every spatial axis of an N-D (N >= 3) tensor with keepdims=1 ->
  GlobalAveragePool / GlobalMaxPool (torch exports `x.mean((2, 3), keepdim=True)` as a ReduceMean, which ONNX
  Runtime runs in float between two Q/DQ pairs; QLinearGlobalAveragePool runs on uint8).
"""

from __future__ import annotations

from qcompiler.ir import Model, Node, TensorType
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

_GLOBAL = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}


def _reduce_axes(node: Node) -> list[int] | None:
    """The node's reduction axes when they are known constants (attribute before opset 18, else input 1)."""
    if "axes" in node.attrs:
        return list(node.attr("axes"))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = node.inputs[1].const
        return None if c is None else [int(a) for a in c.numpy().reshape(-1)]
    return None


@register_pass
class NormalizeOps(Pass):
    name = "normalize_ops"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        modified = False
        for node in list(graph.nodes):
            if node.domain not in ("", "ai.onnx") or node.op_type not in _GLOBAL:
                continue
            x = node.inputs[0]
            if x is None or not isinstance(x.type, TensorType) or x.type.rank is None or x.type.rank < 3:
                continue
            rank = x.type.rank
            axes = _reduce_axes(node)
            if axes is None or node.attr("keepdims", 1) != 1:
                continue
            if sorted(a % rank for a in axes) != list(range(2, rank)):
                continue
            new = Node(_GLOBAL[node.op_type], [x], 1, name=node.name)
            graph.insert_before(node, new)
            out = node.outputs[0]
            new.outputs[0].type = out.type
            out.replace_all_uses_with(new.outputs[0])
            graph.erase(node)
            new.outputs[0].name = out.name  # keep the value's name (reports, graph outputs)
            graph.forget_names()
            ctx.decide(self.name, new.label(), "rewritten", f"{node.op_type} over the spatial axes")
            modified = True
        return PassResult(model, modified)
