"""`fuse_matmul_add`: mark linear layers so quantization treats weight and bias as one layer.

Pattern: MatMul(A, W) with W a constant 2-D [K, N] float tensor, whose output has exactly one reader, an
Add with a constant bias of shape [N] (leading 1s allowed, rank no more than the output's: it broadcasts
along the last axis only).

* A is 2-D: rewritten to Gemm(A, W, bias) (ONNX Runtime quantizes Gemm directly). The Gemm takes the
  MatMul's node name and the Add output's value name.
* A has rank >= 3 (transformers): left as MatMul + Add; `matmul.meta["bias"]` is set to the Add node so
  later passes find the bias. This changes no IR (the pass reports `modified=False` for it); the pairing
  is recomputed by each run, and `meta` is never saved.

Gemm normalization, only where exact or a constant absorbs it: alpha != 1 with a constant B becomes
B' = alpha*B (exact when alpha is a power of two; otherwise one extra rounding of B); beta != 1 with a
constant C becomes C' = beta*C (likewise), or is dropped when C is absent; transA=1 with a constant A
becomes a transposed A. Anything else is left as is, with the reason.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import (
    adopt_name,
    constant,
    dims,
    graph_input_ids,
    is_standard,
    native_float_array,
    replace_uses,
    returned_by_subgraphs,
    set_constant,
    subject,
)


@register_pass
class FuseMatMulAdd(Pass):
    """Linear-layer recognition and Gemm normalization (see the module doc)."""

    name = "fuse_matmul_add"
    ensures = ("linear_layers_marked",)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self.options()
        graph = model.graph
        inputs = graph_input_ids(graph)
        returned = returned_by_subgraphs(graph)
        changed = False
        for node in list(graph.nodes):
            if node.graph is not graph:
                continue  # removed by an earlier rewrite in this walk
            if is_standard(node, "MatMul"):
                node.meta.pop("bias", None)
                match = _match(node, inputs, returned)
                if isinstance(match, str):
                    ctx.decide(self.name, subject(node), "kept", match)
                    continue
                add, bias, rank = match
                if rank == 2:
                    gemm = _to_gemm(graph, node, add, bias, returned)
                    changed = True
                    ctx.decide(self.name, subject(node), "fused",
                               f"MatMul + {add.label()} -> Gemm with bias %{bias.name}; output %{gemm.outputs[0].name}")
                else:
                    node.meta["bias"] = add
                    ctx.decide(self.name, subject(node), "paired",
                               f"rank-{rank} input: kept MatMul + {add.label()}, bias %{bias.name} in meta['bias']")
            elif is_standard(node, "Gemm"):
                notes, modified = _normalize_gemm(graph, node, inputs, returned)
                changed = changed or modified
                for action, reason in notes:
                    ctx.decide(self.name, subject(node), action, reason)
        return PassResult(model, changed)


def _match(mm: Node, inputs: set[int], returned: set[int]) -> tuple[Node, Value, int] | str:
    """(the Add, the bias value, the rank of A), or why this MatMul is not a linear layer with a bias."""
    a, w = (mm.inputs + (None, None))[:2]
    wt = constant(w, inputs)
    if w is None or wt is None:
        return "weight is not constant"
    if len(wt.shape) != 2:
        return f"weight %{w.name} has rank {len(wt.shape)}, not 2"
    if not wt.dtype.is_float:
        return f"weight %{w.name} is {wt.dtype.short}, not a float type"
    y = mm.outputs[0]
    if y.is_graph_output() or id(y) in returned:
        return f"output %{y.name} is a graph output"
    if len(y.uses) != 1:
        return f"output %{y.name} has {len(y.uses)} readers, not one Add"
    add, slot = y.uses[0]
    if not is_standard(add, "Add") or len(add.inputs) != 2:
        return f"no bias Add follows (its reader is {add.label()})"
    bias = add.inputs[1 - slot]
    bt = constant(bias, inputs)
    n = wt.shape[1]
    if bias is None or bt is None:
        return f"{add.label()} adds a non-constant %{bias.name if bias is not None else '?'}"
    if bt.dtype != wt.dtype:
        return f"bias %{bias.name} is {bt.dtype.short}, weight is {wt.dtype.short}"
    shape = dims(a)
    if shape is None:
        return f"rank of the input %{a.name if a is not None else '?'} is unknown"
    rank = len(shape)
    squeezed = list(bt.shape)
    while squeezed and squeezed[0] == 1 and len(squeezed) > 1:
        squeezed.pop(0)
    if squeezed != [n] or len(bt.shape) > max(rank, 2):
        return f"bias %{bias.name} has shape {list(bt.shape)}, not [{n}] along the last axis"
    if rank < 2:
        return f"input %{a.name} has rank {rank}; Gemm needs 2 and there is no batch of rows"  # type: ignore[union-attr]
    return add, bias, rank


def _to_gemm(graph: Graph, mm: Node, add: Node, bias: Value, returned: set[int]) -> Node:
    a, w = mm.inputs[0], mm.inputs[1]
    gemm = Node("Gemm", [a, w, bias], [Value("")], name=mm.name, doc_string=mm.doc_string)
    gemm.metadata_props = dict(mm.metadata_props)
    graph.insert_before(add, gemm)
    y = add.outputs[0]
    replace_uses(graph, y, gemm.outputs[0], returned)
    graph.erase(add)
    graph.erase(mm)
    adopt_name(gemm.outputs[0], y)
    return gemm


def _normalize_gemm(
    graph: Graph, gemm: Node, inputs: set[int], returned: set[int]
) -> tuple[list[tuple[str, str]], bool]:
    notes: list[tuple[str, str]] = []
    changed = False
    ins = list(gemm.inputs) + [None] * (3 - len(gemm.inputs))
    alpha = float(gemm.attr("alpha", 1.0))
    beta = float(gemm.attr("beta", 1.0))
    if gemm.attr("transA", 0):
        a = native_float_array(t) if (t := constant(ins[0], inputs)) is not None else None
        if a is None or a.ndim != 2:
            notes.append(("kept", "transA=1 with an A that is not a constant f16/f32/f64 matrix: normalizing "
                                  "needs a Transpose node"))
        else:
            new = set_constant(graph, gemm, 0, np.ascontiguousarray(a.T), ins[0], "_T", returned=returned)
            del gemm.attrs["transA"]
            changed = True
            notes.append(("normalized", f"transA=1: A stored transposed as %{new.name}"))
    if alpha != 1.0:
        b = native_float_array(t) if (t := constant(ins[1], inputs)) is not None else None
        if b is None:
            notes.append(("kept", f"alpha={alpha:g} with a B that is not a constant f16/f32/f64 tensor"))
        else:
            new = set_constant(graph, gemm, 1, (np.asarray(b, np.float64) * alpha).astype(b.dtype), ins[1],
                               "_scaled", returned=returned)
            del gemm.attrs["alpha"]
            changed = True
            notes.append(("normalized", f"alpha={alpha:g} folded into B %{new.name}"))
    if beta != 1.0:
        c = native_float_array(t) if (t := constant(ins[2], inputs)) is not None else None
        if ins[2] is None:
            del gemm.attrs["beta"]
            changed = True
            notes.append(("normalized", f"beta={beta:g} dropped: there is no C"))
        elif c is None:
            notes.append(("kept", f"beta={beta:g} with a C that is not a constant f16/f32/f64 tensor"))
        else:
            new = set_constant(graph, gemm, 2, (np.asarray(c, np.float64) * beta).astype(c.dtype), ins[2],
                               "_scaled", returned=returned)
            del gemm.attrs["beta"]
            changed = True
            notes.append(("normalized", f"beta={beta:g} folded into C %{new.name}"))
    return notes, changed
