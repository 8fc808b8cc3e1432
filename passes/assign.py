"""`assign_quant_types`: decide which values get which QuantType, from the recipe and the target.

What (format, scheme, granularity) comes from the recipe's activation and weight specs; where from its op
types and exclusions, and the target's kernels. The pass only writes types (with an observer name where the
range must come from data); `calibrate` fills scales, `lower_qdq` materializes them. Every node of a
quantizable kind gets a decision with its reason, which the report and `qcompiler inspect` show.

Op kinds (how an op takes quantized values on integer kernels, as ONNX Runtime fuses QDQ groups):
- linear (Conv, ConvTranspose, MatMul, Gemm): activation input(s), a constant weight (per channel along the
  output axis), an optional bias (int32, derived scale), quantized output;
- arith (Add, Mul, ...) and own-range ops (pools, Sigmoid, Concat, ...): every float input and the output
  quantized with their own ranges;
- movement (Reshape, Transpose, MaxPool, ...): the output shares the input's scale and zero point, so the
  integer tensor flows through unchanged;
- removable (Relu, Clip with 0 in range): folded into the producer's output quantization when that is exact;
- embedding (Gather from a constant float table): the table stored int8 with a scale per column, gathered as
  integers and dequantized after the Gather (only the rows read, never the whole table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from qcompiler.ir import Model, Node, QuantType, TensorType, Value
from qcompiler.numerics import PerChannel, PerGroup, PerTensor
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass
from qcompiler.recipe import QuantizeSection, TensorSpec

from ._rewrite import is_standard

LINEAR = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
ARITH = {"Add", "Mul", "Sub", "Div"}
OWN_RANGE = {
    "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu", "Concat", "Softmax", "HardSigmoid",
    "HardSwish", "Tanh", "Where", "InstanceNormalization", "LayerNormalization", "ArgMax",
}
MOVEMENT = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "Slice", "Gather", "Split",
    "Resize", "Pad", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "GlobalMaxPool",
}
REMOVABLE = {"Relu", "Clip"}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Inputs of movement ops that carry data (the rest are shapes, indices, pads).
_MOVEMENT_DATA_INPUT = 0
# Node.meta key: a pass that built a node to run in float (llm_int8's outlier path) puts the reason here.
KEEP_FLOAT = "keep_float"


@dataclass(frozen=True)
class NodePlan:
    """What the decision pass concluded for one node (also what `qcompiler inspect` prints)."""

    node: Node
    quantize: bool
    reason: str
    kind: str = ""


def op_kind(op_type: str, node: Node | None = None) -> str:
    if op_type == "Gather" and node is not None and is_constant(node.inputs[0]):
        return "embedding"
    for name, ops in (("linear", LINEAR), ("arith", ARITH), ("own_range", OWN_RANGE), ("movement", MOVEMENT),
                      ("removable", REMOVABLE)):
        if op_type in ops:
            return name
    return ""


def weight_axis(node: Node, w: Value) -> int:
    """The output-channel axis of a linear op's weight (what per-channel scales run along)."""
    rank = w.type.rank if isinstance(w.type, TensorType) and w.type.rank is not None else 2
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attr("transB", 0) else 1
    return rank - 1  # MatMul B [.., K, N]: one scale per output column


def make_quant_type(spec: TensorSpec, *, axis: int | None = None, rank: int | None = None) -> QuantType:
    """A QuantType from a recipe spec; `axis` is where per-channel/per-group granularity runs."""
    g = spec.granularity
    if g == "per_tensor" or axis is None:
        gran: object = PerTensor()
    elif g == "per_channel":
        gran = PerChannel(axis)
    elif g.startswith("per_group:"):
        # Groups run along the reduction (input) axis: for MatMul B [K, N] that is axis 0 (size K).
        red = 0 if axis == (rank or 2) - 1 else (rank or 2) - 1
        gran = PerGroup(red, int(g.split(":")[1]))
    else:
        from qcompiler.numerics import PerBlock

        r, c = (int(x) for x in g.split(":")[1].split("x"))
        gran = PerBlock((r, c))
    return QuantType(spec.format, spec.scheme, gran, observer=spec.observer)


def is_constant(v: Value | None) -> bool:
    return v is not None and v.const is not None


def plan_node(node: Node, q: QuantizeSection, kernels: dict[str, str] | None, target_name: str) -> NodePlan:
    """Whether a node of the main graph is quantized, and why (or why not)."""
    kind = op_kind(node.op_type, node)
    if node.domain not in ("", "ai.onnx"):
        return NodePlan(node, False, f"op domain {node.domain!r} has no quantized form here", kind)
    if node.op_type in QUANT_OPS:
        return NodePlan(node, False, "already a quantization op", kind)
    if node.meta.get(KEEP_FLOAT):
        return NodePlan(node, False, str(node.meta[KEEP_FLOAT]), kind)
    if not kind:
        return NodePlan(node, False, f"no integer kernel for {node.op_type}", kind)
    if kernels is not None and node.op_type not in kernels:
        return NodePlan(node, False, f"no integer kernel for {node.op_type} on target {target_name}", kind)
    if q.op_types and node.op_type not in q.op_types:
        return NodePlan(node, False, f"{node.op_type} is not in the recipe's op_types", kind)
    if node.op_type in q.exclude_op_types:
        return NodePlan(node, False, f"op type {node.op_type} excluded by the recipe", kind)
    for rx in q.exclude_nodes:
        if re.search(rx, node.name):
            return NodePlan(node, False, f"excluded by pattern {rx!r}", kind)
    float_inputs = [v for v in node.inputs if v is not None and _is_float32(v)]
    if not float_inputs:
        return NodePlan(node, False, "no float32 input to quantize", kind)
    if kind == "embedding":
        table = node.inputs[0]
        assert table is not None
        if any(u.op_type != "Gather" for u in table.users):
            return NodePlan(node, False, "its table is also read by other ops (kept float for them)", kind)
        return NodePlan(node, True, "quantized", kind)
    if kind == "linear":
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if q.activations is None and not is_constant(w):
            return NodePlan(node, False, "weight is not constant (dynamic/weight-only needs a constant weight)", kind)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and not is_constant(w):
            return NodePlan(node, False, "weight is not constant", kind)
    elif q.activations is None:
        return NodePlan(node, False, "weight-only/dynamic recipe quantizes linear layers only", kind)
    return NodePlan(node, True, "quantized", kind)


def _is_float32(v: Value) -> bool:
    from qcompiler.ir import DType

    return isinstance(v.type, TensorType) and v.type.dtype is DType.FLOAT


def plan(model: Model, q: QuantizeSection, target: object = None) -> list[NodePlan]:
    """Decisions for every node of the main graph, in graph order (the first/last policy applied)."""
    kernels = getattr(target, "kernels", None) or None
    tname = getattr(target, "name", "")
    plans = [plan_node(n, q, kernels, tname) for n in model.graph.nodes]
    if q.first_last == "float":
        linear = [i for i, p in enumerate(plans) if p.quantize and p.kind == "linear"]
        for i in {linear[0], linear[-1]} if linear else set():
            plans[i] = NodePlan(plans[i].node, False, "first/last quantizable layer kept float by the recipe",
                                plans[i].kind)
    return plans


def quantized_linear(model: Model, ctx: PassContext) -> set[int]:
    """ids of the MatMul/Gemm nodes the recipe will quantize (all with a constant weight, without a recipe)."""
    recipe = ctx.options.get("recipe")
    if recipe is None:
        return {id(n) for n in model.graph.nodes if is_standard(n, "MatMul", "Gemm") and not n.meta.get(KEEP_FLOAT)}
    return {id(p.node) for p in plan(model, recipe.quantize, ctx.target) if p.quantize and p.kind == "linear"}


@register_pass
class AssignQuantTypes(Pass):
    """Give QuantTypes to the inputs/outputs of the nodes the recipe quantizes."""

    name = "assign_quant_types"
    ensures = ("quant_types",)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        recipe = ctx.options["recipe"]
        q: QuantizeSection = recipe.quantize
        modified = False
        plans = plan(model, q, ctx.target)
        # Compute ops first; movement ops second, so they only carry quantization that is already there
        # (a Reshape between two float ops must not get a Q/DQ pair of its own).
        for p in sorted(plans, key=lambda p: p.kind == "movement"):
            if not p.quantize:
                if p.kind:
                    ctx.decide(self.name, p.node.label(), "kept float", p.reason)
                continue
            if self._assign(p, q):
                modified = True
                ctx.decide(self.name, p.node.label(), "quantized", p.kind)
            else:
                ctx.decide(self.name, p.node.label(), "kept float", "its input is not quantized")
        for sub in (n for n in model.graph.nodes if any(True for _ in n.subgraphs())):
            ctx.decide(self.name, sub.label(), "kept float", "ops inside subgraphs are not quantized")
        return PassResult(model, modified)

    def _assign(self, p: NodePlan, q: QuantizeSection) -> bool:
        node, kind = p.node, p.kind
        act = q.activations
        if kind == "linear":
            x, w = node.inputs[0], node.inputs[1]
            if act is not None and x is not None:
                _set_act(x, act)
            if is_constant(w):
                axis = weight_axis(node, w)  # type: ignore[arg-type]
                rank = w.type.rank if isinstance(w.type, TensorType) else None  # type: ignore[union-attr]
                _set(w, make_quant_type(q.weights, axis=axis, rank=rank))  # type: ignore[arg-type]
            elif act is not None and w is not None:
                _set_act(w, act)  # MatMul of two activations (attention scores)
            if q.dynamic:
                node.meta["quantize_dynamic"] = True
            elif act is not None:
                self._quantize_output(node, act)
            return True
        if kind == "embedding":
            # Scales per column (the last axis): DequantizeLinear after the Gather can follow those, not per-row
            # ones; a column is one hidden unit, and those are where embedding outliers live.
            table = node.inputs[0]
            assert table is not None and isinstance(table.type, TensorType) and table.type.rank is not None
            gran = "per_tensor" if q.weights.granularity == "per_tensor" else "per_channel"
            spec = replace(q.weights, granularity=gran)
            _set(table, make_quant_type(spec, axis=table.type.rank - 1, rank=table.type.rank))
            node.meta["quantized_table"] = True
            return True
        assert act is not None
        if kind == "movement":
            # Processed after every compute op: share the input's quantization if it has one.
            x = node.inputs[_MOVEMENT_DATA_INPUT]
            if x is None or x.quant is None or x.const is not None:
                return False
            for out in node.outputs:
                out.quant = x.quant
                out.meta["quant_shared_with"] = x
            return True
        if kind == "removable":
            x = node.inputs[0]
            if x is not None and _is_float32(x):
                _set_act(x, act)
            _set_act(node.outputs[0], act)
            return True
        for v in node.inputs:
            if v is not None and _is_float32(v):
                _set_act(v, act)
        self._quantize_output(node, act)
        return True

    @staticmethod
    def _quantize_output(node: Node, act: TensorSpec) -> None:
        out = node.outputs[0]
        if _is_float32(out):
            _set_act(out, act)


def _set_act(v: Value, spec: TensorSpec) -> None:
    if v.quant is None:
        v.quant = make_quant_type(spec)


def _set(v: Value, qt: QuantType) -> None:
    if v.quant is None:
        v.quant = qt
