"""`keep_layer_norm`: write a residual `Add` that feeds a LayerNormalization as `Sum`, so ONNX Runtime keeps its
LayerNormalization kernel.

ORT's level-2 optimizer (`SkipLayerNormFusion`) turns `LayerNormalization(Add(a, b))` into com.microsoft
SkipLayerNormalization. On ORT 1.32's CPU provider that kernel is a scalar loop (float accumulation of sum
and sum of squares, a division per element) while LayerNormalization is vectorized: on x [8, 128, 384]
(MiniLM at batch 8), Add + LayerNormalization took 0.29 ms and the fused SkipLayerNormalization 0.86 ms
with 2 threads (0.36 ms against 1.75 ms with one); MiniLM has 12 of them. The fusion matches `Add` only,
so `Sum(a, b)`, the same elementwise addition with the same broadcasting, keeps the two fast kernels.

Pattern: LayerNormalization whose data input is produced by an ONNX Add with two inputs and read by that
LayerNormalization only (not a graph output). The rewrite is exact: Sum of two tensors is the same
float addition as Add. Every LayerNormalization gets a decision ("rewritten" or "kept" with the reason).
Use it after `fuse_transformer` with its skip_layer_norm rule off, for the ORT CPU targets.
"""

from __future__ import annotations

from qcompiler.ir import Model, Node, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import adopt_name, is_standard, replace_uses, returned_by_subgraphs, subject


@register_pass
class KeepLayerNorm(Pass):
    """Residual Add before LayerNormalization -> Sum (see the module doc)."""

    name = "keep_layer_norm"
    ensures = ("layer_norm_kept",)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self.options()
        graph = model.graph
        returned = returned_by_subgraphs(graph)
        changed = False
        for ln in [n for n in graph.nodes if is_standard(n, "LayerNormalization")]:
            add = _match(ln)
            if isinstance(add, str):
                ctx.decide(self.name, subject(ln), "kept", add)
                continue
            s = add.outputs[0]
            node = Node("Sum", list(add.inputs), [Value("")], name=add.name, doc_string=add.doc_string)
            node.metadata_props = dict(add.metadata_props)
            graph.insert_before(add, node)
            node.outputs[0].type = s.type
            replace_uses(graph, s, node.outputs[0], returned)
            graph.erase_many([add])
            adopt_name(node.outputs[0], s)
            changed = True
            ctx.decide(self.name, subject(ln), "rewritten",
                       f"its input {add.label()} is now Sum: ORT keeps LayerNormalization instead of fusing "
                       "the slower SkipLayerNormalization")
        return PassResult(model, changed)


def _match(ln: Node) -> Node | str:
    """The residual Add feeding `ln`, or why there is none to rewrite."""
    s = ln.inputs[0] if ln.inputs else None
    add = s.producer if s is not None else None
    if s is None or add is None or not is_standard(add, "Add"):
        return f"its input is not an Add output ({add.label() if add else 'a graph input or constant'})"
    if len(add.inputs) != 2 or any(v is None for v in add.inputs):
        return f"{add.label()} does not have two inputs"
    if s.is_graph_output() or len(s.uses) != 1:
        return f"the sum %{s.name} is also read elsewhere; ORT does not fuse it either"
    return add
