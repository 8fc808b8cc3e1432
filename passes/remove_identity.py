"""`remove_identity`: Identity nodes and inference-mode Dropout go; their readers read the input directly.

Graph outputs keep their names. When the removed node's output is a graph output, its input is *renamed*
to that name (the input's own name disappears, which is safe: nothing refers to values by name but the
graph outputs and the text form). That is impossible when the input is a graph input, an initializer
(renaming either changes the model's interface or its weights' names) or already another graph output:
then the node stays, and the report says why — ONNX needs a node to give one value two names.

Dropout is removed when it cannot drop anything: opset < 7 with `is_test=1`, opsets 7-11 (inference
semantics), or opset >= 12 with `training_mode` absent or a constant false; and only when its mask
output is not read. Only the main graph is rewritten (not If/Loop/Scan bodies or functions).
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Model, Node, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import (
    adopt_name,
    constant,
    drop_if_unused,
    graph_input_ids,
    is_standard,
    replace_uses,
    returned_by_subgraphs,
    subject,
)


@register_pass
class RemoveIdentity(Pass):
    """Identity / inference Dropout removal (see the module doc)."""

    name = "remove_identity"
    ensures = ("identities_removed",)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self.options()
        graph = model.graph
        inputs = graph_input_ids(graph)
        opset = model.opset("") or 21
        returned = returned_by_subgraphs(graph)
        removed: list[Node] = []
        renames: list[tuple[Value, Value]] = []
        for node in list(graph.nodes):
            if not is_standard(node, "Identity", "Dropout"):
                continue
            reason = _check(node, inputs, opset)
            if reason:
                ctx.decide(self.name, subject(node), "kept", reason)
                continue
            x, y = node.inputs[0], node.outputs[0]
            assert x is not None
            if y.is_graph_output():
                fixed = _fixed_name(x, inputs)
                if fixed:
                    ctx.decide(self.name, subject(node), "kept",
                               f"its output %{y.name} is a graph output and its input %{x.name} is {fixed}, "
                               "whose name cannot change")
                    continue
                renames.append((x, y))
                how = f"%{x.name} renamed to the graph output %{y.name}"
            else:
                how = f"readers of %{y.name} now read %{x.name}"
            replace_uses(graph, y, x, returned)
            removed.append(node)
            ctx.decide(self.name, subject(node), "removed", how)
        params = [v for n in removed for v in n.inputs[1:]]  # Dropout's ratio and training_mode
        graph.erase_many(removed)
        drop_if_unused(graph, params)
        for x, y in renames:  # after the erase, so no two values share the name
            adopt_name(x, y)
        return PassResult(model, bool(removed))


def _check(node: Node, inputs: set[int], opset: int) -> str:
    """Why `node` must stay ('' when it can go)."""
    if not node.inputs or node.inputs[0] is None or len(node.outputs) < 1:
        return "it has no data input"
    if node.op_type == "Identity":
        return ""
    for v in node.outputs[1:]:
        if v.name and (v.uses or v.is_graph_output()):
            return f"its mask output %{v.name} is read"
    if opset < 7:
        return "" if node.attr("is_test", 0) else "is_test=0: training mode"
    if opset < 12:
        return ""
    mode = node.inputs[2] if len(node.inputs) > 2 else None
    if mode is None:
        return ""
    t = constant(mode, inputs)
    if t is None:
        return f"training_mode %{mode.name} is not a constant"
    if bool(np.asarray(t.numpy()).reshape(-1)[0]):
        return "training_mode is true: it drops values"
    return ""


def _fixed_name(x: Value, inputs: set[int]) -> str:
    if id(x) in inputs:
        return "a graph input"
    if x.const is not None or x.producer is None:
        return "an initializer"
    if x.is_graph_output():
        return "another graph output"
    return ""
