"""`fold_constants`: nodes computed from constants become initializers; then dead code goes.

One walk over the main graph in order (the graph is topologically sorted, so a node's constant inputs are
already folded when it is reached):

* a `Constant` node becomes an initializer of the same name (read straight from its attribute);
* `Shape` / `Size` of a value whose type gives the needed dims become int64 initializers;
* any other node whose inputs are all initializers (not graph inputs, which a user may override) and that
  is deterministic is evaluated by the executor on a one-node graph, and its outputs become initializers
  of the same names (graph outputs keep their names).

It declines, with the reason in the report, nodes that are random, quantization ops (folding
DequantizeLinear would store float weights in place of the int8 ones the model ships), ops the executor
lacks, control flow, and outputs too big: over `max_bytes` added to the model, or larger than
`max_growth` x their constant inputs plus `small_bytes` (ConstantOfShape / Expand / Tile / Range blow-ups;
their output size is predicted before anything runs). Afterwards nodes nobody reads and initializers
nobody reads are removed.

Not done: folding inside If/Loop/Scan bodies and model-local functions (their Constant nodes stay nodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import qcompiler
from qcompiler.ir import DType, Graph, Model, Node, Tensor, TensorType, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass
from qcompiler.runtime import lookup

from ._rewrite import (
    constant,
    graph_input_ids,
    is_standard,
    remove_dead,
    replace_uses,
    returned_by_subgraphs,
    subject,
)

# Ops whose output changes from run to run (the executor's "random" trait covers those it implements).
NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})
# Ops that carry the model's own quantization: their constant inputs must stay as they are.
QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_MiB = 1 << 20


@dataclass(frozen=True)
class FoldConstantsOptions:
    """`max_bytes`: most bytes one fold may add to the model (its outputs minus the constant inputs only it
    reads). `max_growth`, `small_bytes`: an output may be at most `max_growth` x its constant inputs +
    `small_bytes` (shape arithmetic and small tables always fold; a 2048x2048 mask from a 4-element shape
    does not)."""

    max_bytes: int = 64 * _MiB
    max_growth: float = 2.0
    small_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.small_bytes < 0 or self.max_growth < 0:
            raise ValueError("max_bytes, max_growth and small_bytes must be >= 0")


@register_pass
class FoldConstants(Pass):
    """Constant folding (see the module doc)."""

    name = "fold_constants"
    ensures = ("constants_folded",)
    Options = FoldConstantsOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: FoldConstantsOptions = self.options()
        graph = model.graph
        inputs = graph_input_ids(graph)
        outputs = {id(v) for v in graph.outputs}
        returned = returned_by_subgraphs(graph)
        folded = 0
        for node in list(graph.nodes):
            if not any(v.uses or id(v) in outputs or id(v) in returned for v in node.outputs):
                continue  # dead: removed below without evaluating it
            result = _fold(model, node, inputs, opts)
            if result is None:
                continue
            if isinstance(result, str):
                ctx.decide(self.name, subject(node), "kept", result)
                continue
            arrays, how = result
            for v, arr in zip(node.outputs, arrays):
                if arr is not None:
                    _replace_with_initializer(graph, v, arr, returned)
            folded += 1
            ctx.decide(self.name, subject(node), "folded", how)
        n_nodes, n_inits = remove_dead(graph)
        if n_nodes or n_inits:
            ctx.decide(self.name, graph.name or "<graph>", "removed dead code",
                       f"{n_nodes} node(s) and {n_inits} initializer(s) nobody reads")
        return PassResult(model, bool(folded or n_nodes or n_inits))


_Folded = tuple[list["np.ndarray | Tensor | None"], str]


def _fold(model: Model, node: Node, inputs: set[int], opts: FoldConstantsOptions) -> _Folded | str | None:
    """The outputs' values and how they were found; a reason when declining; None when the node is not a
    candidate at all (some input is not constant: the ordinary case, not worth a report line)."""
    if is_standard(node, "Constant"):
        return _constant_node(node)
    if is_standard(node, "Shape", "Size"):
        arr = _static_shape(node)
        if arr is not None:
            return [arr], "the input's shape is static"
    ins = [v for v in node.inputs if v is not None]
    if any(constant(v, inputs) is None for v in ins):
        return None
    if node.domain in ("", "ai.onnx") and node.op_type in NONDETERMINISTIC:
        return f"{node.op_type} is random"
    if any(True for _ in node.subgraphs()):
        return "control flow is not folded"
    if node.op_type in QUANTIZATION_OPS and node.domain in ("", "ai.onnx", "com.microsoft"):
        return "quantization op: folding it would replace the model's quantized constant with floats"
    if model.function(node.domain, node.op_type, node.overload) is not None:
        return f"calls the model-local function {node.domain}::{node.op_type}, which is not folded"
    domain = "" if node.domain == "ai.onnx" else node.domain
    opset = model.opset(domain) or (1 if domain else 21)
    entry = lookup(node.op_type, domain, opset)
    if entry is None:
        return f"{node.qualified_op} (opset {opset}) is not in the executor's op table"
    if "random" in entry.traits and not _inference_dropout(node, inputs):
        return f"{node.op_type} is random here (training mode)"
    distinct = list({id(v): v for v in ins}.values())
    in_bytes = sum(v.const.nbytes for v in distinct)  # type: ignore[union-attr]

    def freed() -> int:  # bytes of constant inputs only this node reads (computed only when it matters:
        # walking the use list of an initializer shared by thousands of nodes each time would be quadratic)
        return sum(v.const.nbytes for v in distinct  # type: ignore[union-attr]
                   if all(u is node for u, _ in v.uses) and not v.is_graph_output())
    predicted = _predicted_bytes(node)
    if predicted is not None:
        reason = _too_big(predicted, in_bytes, freed, opts)
        if reason:
            return reason
    try:
        arrays = _evaluate(model, node)
    except Exception as e:  # the op itself fails on these constants: leave it for the user's run to report
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"the executor could not evaluate it: {first}"
    out_bytes = 0
    for v, arr in zip(node.outputs, arrays):
        if arr is None:
            continue
        if not isinstance(arr, np.ndarray):
            return f"output %{v.name} is a {type(arr).__name__}, not a tensor"
        dtype = _out_dtype(v, arr)
        if dtype is None:
            return f"output %{v.name}: the executor gave {arr.dtype}, which does not match its declared type"
        out_bytes += (arr.size * dtype.bitwidth + 7) // 8
    reason = _too_big(out_bytes, in_bytes, freed, opts)
    if reason:
        return reason
    shapes = ", ".join(str(TensorType(_out_dtype(v, a) or DType.UNDEFINED, a.shape))
                       for v, a in zip(node.outputs, arrays) if a is not None)
    return [a if a is None else Tensor(a, _out_dtype(v, a)) for v, a in zip(node.outputs, arrays)], \
        f"all inputs constant -> {shapes}"


def _too_big(out_bytes: int, in_bytes: int, freed: Callable[[], int], opts: FoldConstantsOptions) -> str:
    if out_bytes > opts.max_bytes and (added := out_bytes - freed()) > opts.max_bytes:
        return (f"its output ({_fmt(out_bytes)}) would add {_fmt(added)} to the model, over "
                f"max_bytes={_fmt(opts.max_bytes)}")
    if out_bytes > opts.max_growth * in_bytes + opts.small_bytes:
        return (f"its output ({_fmt(out_bytes)}) is over {opts.max_growth:g}x its constant inputs "
                f"({_fmt(in_bytes)}) + {_fmt(opts.small_bytes)}: materializing it would grow the model")
    return ""


def _fmt(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", _MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _constant_node(node: Node) -> _Folded | str:
    a = next(iter(node.attrs.values()), None)
    if len(node.attrs) != 1 or a is None or a.ref_attr_name is not None:
        return "Constant node without exactly one value attribute"
    kinds = {
        "value_float": DType.FLOAT, "value_floats": DType.FLOAT, "value_int": DType.INT64,
        "value_ints": DType.INT64, "value_string": DType.STRING, "value_strings": DType.STRING,
    }
    if a.name == "value":
        return [a.value], "Constant node"
    if a.name in kinds:
        dtype = kinds[a.name]
        val = list(a.value) if a.name.endswith("s") else a.value
        if dtype is DType.STRING:
            val = [s.decode() if isinstance(s, bytes) else s for s in val] if isinstance(val, list) \
                else (val.decode() if isinstance(val, bytes) else val)
        return [Tensor(np.array(val, dtype=dtype.storage), dtype)], "Constant node"
    return f"Constant with a {a.name} attribute is not folded"


def _static_shape(node: Node) -> np.ndarray | None:
    x = node.inputs[0] if node.inputs else None
    t = x.type if x is not None else None
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    if node.op_type == "Size":
        return np.array(math.prod(t.shape), np.int64) if t.is_static else None  # type: ignore[arg-type]
    start, end = node.attr("start", 0), node.attr("end", None)
    dims = list(t.shape)[start:end]  # Python slicing clamps and wraps as ONNX specifies
    if not all(isinstance(d, int) for d in dims):
        return None
    return np.array(dims, np.int64)


def _inference_dropout(node: Node, inputs: set[int]) -> bool:
    if not is_standard(node, "Dropout"):
        return False
    mode = node.inputs[2] if len(node.inputs) > 2 else None
    if mode is None:
        return True
    t = constant(mode, inputs)
    return t is not None and not bool(np.asarray(t.numpy()).reshape(-1)[0])


def _predicted_bytes(node: Node) -> int | None:
    """The output size in bytes, computed from the inputs before running, for the ops that can blow up;
    else from the declared output type when static; None when unknown."""
    out = node.outputs[0].type if node.outputs else None
    width = out.dtype.bitwidth if isinstance(out, TensorType) and out.dtype.bitwidth else _input_width(node)

    def val(i: int) -> np.ndarray:
        v = node.inputs[i]
        assert v is not None and v.const is not None
        return np.asarray(v.const.numpy())

    def shape(i: int) -> tuple[int, ...]:
        v = node.inputs[i]
        assert v is not None and v.const is not None
        return v.const.shape

    n: int | None = None
    try:
        if is_standard(node, "ConstantOfShape"):
            n = math.prod(int(d) for d in val(0).reshape(-1))
        elif is_standard(node, "Expand"):
            n = math.prod(np.broadcast_shapes(shape(0), tuple(int(d) for d in val(1).reshape(-1))))
        elif is_standard(node, "Tile"):
            n = math.prod(shape(0)) * math.prod(int(r) for r in val(1).reshape(-1))
        elif is_standard(node, "Range"):
            s, lim, d = (float(val(i).reshape(-1)[0]) for i in range(3))
            n = max(math.ceil((lim - s) / d), 0) if d else None
        elif isinstance(out, TensorType) and out.is_static:
            n = out.numel()
    except (ValueError, IndexError, TypeError, AssertionError, OverflowError):
        return None  # malformed: let the executor say what is wrong
    return None if n is None else (max(n, 0) * width + 7) // 8


def _input_width(node: Node) -> int:
    """Bits per output element when the output type is not declared: ConstantOfShape's value (f32 when
    absent), else the first input's type (Expand, Tile, Range), else 64 to be safe."""
    if is_standard(node, "ConstantOfShape"):
        v = node.attr("value")
        return v.dtype.bitwidth if v is not None else 32
    first = node.inputs[0] if node.inputs else None
    if first is not None and first.const is not None and first.const.dtype.bitwidth:
        return first.const.dtype.bitwidth
    return 64


def _evaluate(model: Model, node: Node) -> list[np.ndarray | None]:
    """Run `node` alone through the executor, its constant inputs as initializers."""
    inits: list[Value] = []
    ins: list[Value | None] = []
    for i, v in enumerate(node.inputs):
        if v is None:
            ins.append(None)
            continue
        assert v.const is not None
        c = Value(f"in{i}", TensorType(v.const.dtype, v.const.shape), const=v.const)
        inits.append(c)
        ins.append(c)
    # Omitted optional outputs keep their empty name: op functions ask `ctx.output_used`.
    outs = [Value(f"out{i}" if v.name else "", v.type) for i, v in enumerate(node.outputs)]
    single = Node(node.op_type, ins, outs, dict(node.attrs), domain=node.domain, name=node.name,
                  overload=node.overload)
    g = Graph(initializers=inits, name="fold")
    g.append(single, autoname=False)
    g.outputs = [v for v in outs if v.name]
    res = qcompiler.run(Model(g, opset_imports=dict(model.opset_imports)), {})
    return [res[o.name] if o.name else None for o in outs]


def _out_dtype(v: Value, arr: np.ndarray) -> DType | None:
    """The IR element type of a folded output: the declared one (bfloat16 comes back as uint16 bits), else
    the array's own; None when they disagree."""
    if isinstance(v.type, TensorType) and v.type.dtype is not DType.UNDEFINED:
        return v.type.dtype if arr.dtype == v.type.dtype.storage else None
    try:
        return DType.from_numpy(arr.dtype)
    except ValueError:
        return None


def _replace_with_initializer(graph: Graph, old: Value, value: np.ndarray | Tensor, returned: set[int]) -> None:
    """Point every reader (and graph output) of `old` at a new initializer of the same name. `old`'s node
    stays in the graph, unread, until dead-code removal takes it out."""
    if not old.uses and not old.is_graph_output() and id(old) not in returned:
        return
    tensor = value if isinstance(value, Tensor) else Tensor(value)
    new = Value(old.name, TensorType(tensor.dtype, tensor.shape), const=tensor)
    new.quant, new.doc_string = old.quant, old.doc_string
    new.metadata_props = dict(old.metadata_props)
    replace_uses(graph, old, new, returned)
    graph.add_initializer(new)
