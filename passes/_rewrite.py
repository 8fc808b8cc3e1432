"""Small graph-editing helpers shared by the canonicalize passes (fold_constants, fold_batchnorm,
remove_identity, fuse_matmul_add).

Every edit of use lists goes through the IR's API (`replace_all_uses_with`, `set_input`, `erase_many`,
`remove_initializer`); the helpers here add what the passes share on top of it (constness checks, dims,
dead-code removal, decisions' subjects).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from qcompiler.ir import DType, Graph, Node, Tensor, TensorType, Value, captured_values

STANDARD_DOMAINS = ("", "ai.onnx")


def is_standard(node: Node, *ops: str) -> bool:
    """Whether `node` is an ONNX-domain op among `ops` (a com.microsoft 'Gelu' is not ONNX's)."""
    return node.domain in STANDARD_DOMAINS and node.op_type in ops


def subject(node: Node) -> str:
    """How a decision names a node: its label, plus its first output for unnamed nodes."""
    if node.name or not node.outputs:
        return node.label()
    return f"{node.label()} -> %{node.outputs[0].name}"


def graph_input_ids(graph: Graph) -> set[int]:
    return {id(v) for v in graph.inputs}


def constant(v: Value | None, inputs: set[int]) -> Tensor | None:
    """The tensor of an initializer that the user cannot override (not also a graph input), else None."""
    if v is None or v.const is None or id(v) in inputs:
        return None
    return v.const


def constant_vector(v: Value | None, inputs: set[int], length: int | None = None) -> bool:
    """Whether v is a constant float32 vector (of `length` entries, when given) that the user cannot override."""
    t = constant(v, inputs)
    return t is not None and t.dtype is DType.FLOAT and len(t.shape) == 1 and (length is None or t.shape[0] == length)


def native_float_array(t: Tensor) -> np.ndarray | None:
    """The values of a float tensor numpy can compute with (f16/f32/f64), else None (bf16, fp8 bits)."""
    if not (t.dtype.is_float and t.dtype.is_native):
        return None
    return t.numpy()


def set_constant(
    graph: Graph, node: Node, index: int, array: np.ndarray, like: Value | None, suffix: str, *, name: str = "",
    returned: set[int] | frozenset[int] = frozenset(),
) -> Value:
    """Make `node` read `array` at input `index`.

    When the old input `like` is an initializer read only by `node` (and is neither a graph input nor
    output, nor returned by a subgraph: `returned`), its tensor is replaced in place, so the weight keeps its
    name; otherwise a new initializer named after it plus `suffix` (or `name` when there is no old input) is
    created, and the old one is left to its other readers."""
    dtype = like.const.dtype if like is not None and like.const is not None else None
    tensor = Tensor(array, dtype)
    private = (
        like is not None
        and like.const is not None
        and len(like.uses) == 1
        and not like.is_graph_input
        and not like.is_graph_output()
        and id(like) not in returned
    )
    if private:
        assert like is not None
        like.const = tensor
        like.type = TensorType(tensor.dtype, tensor.shape)
        return like
    new_name = f"{like.name}{suffix}" if like is not None else (name or f"{node.name or node.op_type}{suffix}")
    new = graph.make_initializer(new_name, tensor)
    if index < len(node.inputs):
        node.set_input(index, new)
    else:
        while len(node.inputs) < index:
            node.append_input(None)
        node.append_input(new)
    return new


def returned_by_subgraphs(graph: Graph) -> set[int]:
    """ids of the values that some If/Loop/Scan body (at any depth) returns directly as an output."""
    refs: set[int] = set()
    for n in graph.nodes:
        for sub in n.subgraphs():
            for g in sub.all_graphs():
                refs.update(id(v) for v in g.outputs)
    return refs


def replace_uses(graph: Graph, old: Value, new: Value, returned: set[int]) -> None:
    """`old.replace_all_uses_with(new)` (which also rewrites subgraph bodies that return `old` directly).
    `returned` (ids of values subgraphs return, from `returned_by_subgraphs`) is kept up to date for callers
    that consult it."""
    old.replace_all_uses_with(new)
    if id(old) in returned:
        returned.add(id(new))


def adopt_name(keep: Value, gone: Value) -> None:
    """Give `keep` (a node output) the name of `gone`, a value that just left the graph, so graph outputs
    and the value names downstream readers know stay as they were."""
    assert keep.producer is not None, "only node outputs are renamed (initializer names are dict keys)"
    keep.name = gone.name
    if gone.type is not None:
        keep.type = gone.type
    if gone.quant is not None and keep.quant is None:
        keep.quant = gone.quant
    keep.emit_value_info = keep.emit_value_info or gone.emit_value_info


def remove_dead(graph: Graph) -> tuple[int, int]:
    """Remove nodes whose outputs nobody reads (and that are not graph outputs), then initializers nobody
    reads that are not graph inputs. Returns (nodes removed, initializers removed).

    One backward sweep suffices because the graph is in topological order (the verifier checks it).
    Nodes without outputs are kept: they do nothing visible, but nothing says why they are there."""
    live: set[int] = {id(v) for v in graph.outputs}
    dead: list[Node] = []
    for n in reversed(graph.nodes):
        if n.outputs and not any(id(v) in live for v in n.outputs):
            dead.append(n)
            continue
        for v in n.inputs:
            if v is not None:
                live.add(id(v))
        for sub in n.subgraphs():
            live.update(id(v) for v in captured_values(sub))
    removed = graph.erase_many(dead)
    inputs = graph_input_ids(graph)
    unused = [v for v in graph.initializers.values() if not v.uses and id(v) not in inputs and id(v) not in live]
    for v in unused:
        graph.remove_initializer(v)
    return removed, len(unused)


def drop_if_unused(graph: Graph, values: Iterable[Value | None]) -> None:
    """Remove those of `values` that are initializers no one reads any more (not graph inputs or outputs)."""
    for v in values:
        if (
            v is not None
            and v.const is not None
            and v.graph is graph
            and v.name in graph.initializers
            and not v.uses
            and not v.is_graph_input
            and not v.is_graph_output()
        ):
            graph.remove_initializer(v)


def dims(v: Value | None) -> tuple | None:
    """The shape of a tensor value (dims may be symbols or None), or None when the rank is unknown."""
    t = v.type if v is not None else None
    return t.shape if isinstance(t, TensorType) else None
