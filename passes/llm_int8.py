"""`llm_int8`: compute a linear layer's outlier input channels in float, the rest in int8 (the decomposition of
Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale").

Y = X·W sums over X's channels, so it splits exactly into X[:, C]·W[C, :] + X[:, R]·W[R, :] for any partition of
the channels into C and R. A per-tensor 8-bit quantization of X takes one step for every channel; when a few
channels C reach far beyond the rest (MiniLM's FFN input, GELU(h): one channel of 1536 reaches 24.8 on a few
tokens where the others stay under 6.4), those set the step, and removing them from the quantized
part divides it by the ratio of the two maxima. LLM.int8() picks C at run time (|x| >= 6 in any row) and
needs a mixed-precision kernel; ONNX Runtime has none, so C is chosen here from the calibration data
(channels whose max |X_j| exceeds `threshold` times the median channel max, at most `max_channels`), and
the split is written with ordinary ops.

It costs nothing at run time when X is an elementwise function of linear layers' outputs, as in every
transformer FFN:
    X = act(Z·U + b)            (act: Gelu, Relu, ... element by element; Z·U + b a MatMul and Add, or a Gemm)
    X = silu(Z·G) * (Z·U)       (Llama's gated unit; silu exported as g * sigmoid(g))
because channel j of X then depends on column j of each layer's weight (and bias) alone: those lose the columns
C, the readers' weights lose the rows C, and a float path computes the same elementwise ops on the channels C
from float copies of the layers' columns C (a [tokens, k] MatMul per layer, the ops on k channels, a k-row MatMul
per reader) and adds it to each reader's output, after the reader's own bias Add when it has one, so the int8
kernel still takes that bias. Constants of the elementwise ops are scalars or per-channel vectors (cut on both
sides). On MiniLM (k = 3-16 per layer) that measured +0-1 % latency at batch 1 and +1-2 % at batch 8. X read by
anything other than such readers, or made otherwise, is left as it is, with the reason (where a LayerNorm makes
X, smooth_quant is the tool). Sites are split in graph order, each planned again first: in an MLP, the next
layer's activation then reads this layer's int8 part plus its float path, two linear layers, and splits through
both.

The float path's MatMuls carry `Node.meta[KEEP_FLOAT]`, so assign_quant_types keeps them float (with this
reason in the plan). The shrunk values (U's output, the activation's, each reader's partial output) are
renamed `<name>_inliers`; each reader's full output (the sum) keeps the reader's original output name, so a
comparison with the float model by value name stays meaningful: the report measures a reader there
(`ctx.artifacts["measure_at"]`) and says why U's layer has no figure (`ctx.artifacts["unmeasured"]`). What it
did goes to `ctx.artifacts["llm_int8"]` (per X: the channels moved, max |X| before and after).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.ir import DType, Graph, Model, Node, Tensor, TensorType, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import constant, constant_vector, graph_input_ids, is_standard, set_constant, subject
from .assign import KEEP_FLOAT, quantized_linear
from .smooth_quant import channel_stats

# Activations that act element by element on their first input (other inputs constant, not per element).
ELEMENTWISE = {
    "": {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
         "Softplus", "Softsign", "Mish", "Erf", "Clip", "ThresholdedRelu"},
    "com.microsoft": {"Gelu", "QuickGelu"},
}


@dataclass(frozen=True)
class LlmInt8Options:
    """`threshold`: a channel j of X is an outlier when max|X_j| over the calibration data exceeds `threshold`
    times the median over the channels of max|X_j| (scale-free, unlike the paper's absolute 6.0, so it means the
    same for every layer). `max_channels`: at most this many per X (the largest), so the float path stays
    small. `enabled`: off keeps the pass in a recipe without effect."""

    enabled: bool = True
    threshold: float = 3.0
    max_channels: int = 16

    def __post_init__(self) -> None:
        if not self.threshold > 1.0:
            raise ValueError(f"threshold must be > 1 (a multiple of the median channel max), got {self.threshold}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {self.max_channels}")


@dataclass
class _Site:
    """X, an elementwise function (`region`, in graph order) of linear layers' outputs (`linears`: MatMul/Gemm and
    its bias Add or None), and X's MatMul/Gemm readers: what to shrink."""

    x: Value
    region: list[Node]
    linears: list[tuple[Node, Node | None]]
    readers: list[Node]
    channels: int


@register_pass
class LlmInt8(Pass):
    """Outlier input channels of a linear layer computed in float, chosen from calibration data (module doc)."""

    name = "llm_int8"
    Options = LlmInt8Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: LlmInt8Options = self.options()
        if self.skipped(ctx, enabled=opts.enabled, needs_data=True):
            return PassResult(model, False)
        eligible = quantized_linear(model, ctx)
        inputs = graph_input_ids(model.graph)
        planned = self._plan(model, ctx, eligible, inputs)
        if not planned:
            return PassResult(model, False)
        stats = channel_stats(model, planned, ctx, desc="llm_int8: channel ranges")
        changed = False
        for x in planned:
            st = stats.get(id(x))
            if st is None:
                ctx.decide(self.name, f"%{x.name}", "kept", "the calibration runs never computed it")
                continue
            a = st.amax.numpy()
            picked, why = _outliers(a, opts)
            if not picked:
                ctx.decide(self.name, f"%{x.name}", "kept", why)
                continue
            # Planned again on the graph as it is now: an earlier split may have changed this chain (in an MLP,
            # this site's up projection is the previous site's reader, whose output has a float path added).
            site = _site(x, eligible, inputs)
            if isinstance(site, str):
                ctx.decide(self.name, f"%{x.name}", "kept", f"after an earlier split: {site}")
                continue
            name = site.x.name
            rest = np.delete(a, picked)
            ups = [up.outputs[0].name for up, _ in site.linears]
            measure_at = _split(model.graph, site, picked, inputs,
                                f"llm_int8: outlier channels {picked} of %{name} computed in float")
            ctx.artifacts.setdefault("measure_at", {}).update(measure_at)
            for up_out in ups:
                ctx.artifacts.setdefault("unmeasured", {})[up_out] = (
                    f"its output lost channels {picked} to llm_int8's float path: no float counterpart")
            changed = True
            ctx.artifacts.setdefault("llm_int8", {})[name] = {
                "channels": picked, "max_before": float(a.max()), "max_after": float(rest.max()),
                "median": float(np.median(a)), "readers": [n.name for n in site.readers]}
            through = ", ".join(subject(up) for up, _ in site.linears)
            ctx.decide(self.name, f"%{name}", "split",
                       f"{why}; max|X| {float(a.max()):.3g} -> {float(rest.max()):.3g} for the int8 part, channels "
                       f"{picked} through {through} and {len(site.readers)} reader(s) in float")
        if changed:
            model.graph.forget_names()
        return PassResult(model, changed)

    def _plan(self, model: Model, ctx: PassContext, eligible: set[int], inputs: set[int]) -> list[Value]:
        """The values X that can be split (in graph order); the others get a decision saying why not."""
        seen: set[int] = set()
        sites = []
        for n in model.graph.nodes:
            x = n.inputs[0] if id(n) in eligible and n.inputs else None
            if x is None or id(x) in seen:
                continue
            seen.add(id(x))
            why = _site(x, eligible, inputs)
            if isinstance(why, str):
                ctx.decide(self.name, f"%{x.name}", "kept", why)
            else:
                sites.append(x)
        return sites


# -- which values, which channels ----------------------------------------------------------------------------


def _site(x: Value, eligible: set[int], inputs: set[int]) -> _Site | str:
    """The split plan for X, or why X cannot be split without run-time cost."""
    if not isinstance(x.type, TensorType) or x.type.dtype is not DType.FLOAT:
        return f"%{x.name} is not float32"
    if x.is_graph_output():
        return f"%{x.name} is a graph output"
    readers = []
    for n, i in x.uses:
        if i != 0 or id(n) not in eligible or _linear(n, inputs) is not None:
            return (f"%{x.name} is also read by {subject(n)} (input {i}), not only by int8 MatMul/Gemm with a "
                    "constant weight")
        readers.append(n)
    k = readers[0].inputs[1].const.shape[_axes(readers[0])[0]]  # type: ignore[union-attr]
    if any(r.inputs[1].const.shape[_axes(r)[0]] != k for r in readers):  # type: ignore[union-attr]
        return f"the readers' weights of %{x.name} disagree on its channel count"
    found = _region(x, k, inputs)
    if isinstance(found, str):
        return found
    region, linears = found
    return _Site(x, region, linears, readers, k)


def _region(x: Value, k: int, inputs: set[int]) -> tuple[list[Node], list[tuple[Node, Node | None]]] | str:
    """The elementwise nodes that make X from linear layers' outputs (GELU(h); SiLU(g) * u as x*sigmoid(x)*u),
    and those layers; or why X is not such a function. Channel j of X then depends on column j of each layer's
    weight alone. Every value on the way must be read inside the region only (X by its readers)."""
    p = x.producer
    if p is None or not _elementwise(p, k, inputs) or x.index != 0 or len(p.outputs) != 1:
        made = "a graph input" if p is None else subject(p)
        return f"%{x.name} is made by {made}, not by an elementwise op on linear layers' outputs"
    region: dict[int, Node] = {}
    linears: dict[int, tuple[Node, Node | None]] = {}
    ends: list[Value] = []
    stack = [x]
    while stack:
        v = stack.pop()
        q = v.producer
        if q is None:
            return f"%{x.name} depends on the graph input %{v.name}"
        if id(q) in region or any(id(e) == id(v) for e in ends):
            continue
        chain = _linear_chain(v, inputs) if v is not x else "X itself"
        if not isinstance(chain, str):
            width = chain[0].inputs[1].const.shape[_axes(chain[0])[1]]  # type: ignore[union-attr]
            if width != k:  # broadcast along the channels: its columns are not X's channels
                return f"%{x.name} reads {subject(chain[0])}, whose {width} output columns are not its {k} channels"
            linears[id(chain[0])] = chain
            ends.append(v)
            continue
        if not _elementwise(q, k, inputs):
            return f"%{x.name} depends on {subject(q)}, which is neither elementwise nor a linear layer"
        region[id(q)] = q
        stack.extend(i for i in q.inputs if i is not None and constant(i, inputs) is None)
    if not linears:
        return f"%{x.name} does not depend on a linear layer"
    inside = set(region)
    for v in [n.outputs[0] for n in region.values() if n.outputs[0] is not x] + ends:
        if v.is_graph_output() or any(id(n) not in inside for n, _ in v.uses):
            return f"%{v.name} (between the linear layers and %{x.name}) is also read outside"
    order = {id(n): i for i, n in enumerate(x.producer.graph.nodes)}  # type: ignore[union-attr]
    return (sorted(region.values(), key=lambda n: order[id(n)]),
            sorted(linears.values(), key=lambda c: order[id(c[0])]))


BINARY = {"Add", "Sub", "Mul", "Div"}


def _elementwise(n: Node, k: int, inputs: set[int]) -> bool:
    """Whether n acts channel by channel on [.., k] values: an activation (ELEMENTWISE, its other inputs constant
    scalars) or Add/Sub/Mul/Div whose constant operand is a scalar or a [k] vector."""
    if n.op_type in ELEMENTWISE.get(n.domain, ()):
        return all(v is None or _const_operand(v, 1, inputs) for v in n.inputs[1:])
    if is_standard(n, *BINARY) and len(n.inputs) == 2:
        consts = [v for v in n.inputs if v is not None and constant(v, inputs) is not None]
        return len(consts) < 2 and all(_const_operand(v, k, inputs) for v in consts)
    return False


def _const_operand(v: Value, k: int, inputs: set[int]) -> bool:
    """A constant that broadcasts per channel: one element, or (k > 1) a [k] vector."""
    t = constant(v, inputs)
    return t is not None and (int(np.prod(t.shape)) == 1 or (k > 1 and tuple(t.shape) == (k,)))


def _axes(n: Node) -> tuple[int, int]:
    """(K axis, N axis) of a MatMul/Gemm weight: the axis along its input's channels, the one along its output's."""
    return (1, 0) if n.op_type == "Gemm" and n.attr("transB", 0) else (0, 1)


def _linear(n: Node, inputs: set[int]) -> str | None:
    """None when n is a MatMul, or a Gemm without transA whose C is absent or a vector, with a constant 2-D float
    weight; else why not."""
    if not is_standard(n, "MatMul", "Gemm") or len(n.inputs) < 2:
        return f"{subject(n)} is not a MatMul or Gemm"
    w = constant(n.inputs[1], inputs)
    if w is None or w.dtype is not DType.FLOAT or len(w.shape) != 2:
        return f"{subject(n)}: weight is not a constant 2-D float32 tensor"
    if n.op_type == "Gemm":
        c = n.inputs[2] if len(n.inputs) > 2 else None
        if n.attr("transA", 0):
            return f"{subject(n)}: Gemm with transA"
        if c is not None and not constant_vector(c, inputs, w.shape[_axes(n)[1]]):
            return f"{subject(n)}: Gemm's C is not a constant vector along the output columns"
    return None


def _linear_chain(h: Value | None, inputs: set[int]) -> tuple[Node, Node | None] | str:
    """(U's MatMul/Gemm, its bias Add or None) when h = MatMul(Z, U) [+ b] or Gemm(Z, U[, c]) (the MatMul's output
    read by the bias Add alone); else why not."""
    if h is None or h.producer is None or h.is_graph_output():
        return f"%{h.name if h is not None else '?'} is not a node's output inside the graph"
    p = h.producer
    bias_add = None
    if is_standard(p, "Add") and len(p.inputs) == 2:
        for m, b in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            made_by_matmul = m is not None and m.producer is not None and is_standard(m.producer, "MatMul")
            if made_by_matmul and constant_vector(b, inputs):
                if len(m.uses) != 1 or m.is_graph_output():
                    return f"%{m.name} is read by more than the bias Add"
                bias_add, p = p, m.producer
                break
    why = _linear(p, inputs)
    if why is not None:
        return f"the activation reads {why} (not a linear layer with a constant weight)"
    u = p.inputs[1].const  # type: ignore[union-attr]
    if bias_add is not None:
        b = _bias(bias_add)
        if b.const.shape[0] != u.shape[1]:  # type: ignore[union-attr]
            return f"the bias of {subject(bias_add)} does not have {u.shape[1]} entries"
    return p, bias_add


def _bias(add: Node) -> Value:
    """The constant input of a bias Add."""
    return next(v for v in add.inputs if v is not None and v.producer is None)


def _outliers(a: np.ndarray, opts: LlmInt8Options) -> tuple[list[int], str]:
    """(the outlier channels, largest first, and how they were chosen) or ([], why there are none)."""
    med = float(np.median(a))
    if not med > 0:
        return [], "the median channel max is 0"
    over = np.flatnonzero(a > opts.threshold * med)
    if over.size == 0:
        return [], f"no channel's max exceeds {opts.threshold:g} x the median channel max {med:.3g}"
    if over.size >= a.size:
        return [], "every channel is above the threshold"
    order = over[np.argsort(-a[over], kind="stable")][:opts.max_channels]
    why = f"{over.size} channel(s) above {opts.threshold:g} x the median channel max {med:.3g}"
    if over.size > opts.max_channels:
        why += f", the largest {opts.max_channels} taken"
    return [int(i) for i in order], why


# -- rewriting -----------------------------------------------------------------------------------------------


def _split(graph: Graph, site: _Site, picked: list[int], inputs: set[int], reason: str) -> dict[str, str]:
    """Rewrite the site; returns {reader's original output name: the name of the value that holds its full
    output again} where that is a later value (after the reader's bias Add)."""
    keep, idx = np.setdiff1d(np.arange(site.channels), picked), np.asarray(picked)
    side_of: dict[int, Value] = {}  # a value of the int8 chain -> its float-path counterpart (channels C)
    path: list[Node] = []
    narrowed: list[Value] = []
    # The linear layers: a float copy on U's columns C (with a Gemm's C entries, and the bias Add's), the
    # originals keep the columns R.
    for up, bias_add in site.linears:
        side = _sliced_copy(graph, up, idx, _axes(up)[1], reason)
        path.append(side)
        end = side.outputs[0]
        if up.op_type == "Gemm" and len(up.inputs) > 2 and up.inputs[2] is not None:
            _slice_input(graph, up, 2, keep, 0)
        narrowed.append(up.outputs[0])
        if bias_add is not None:
            b_val = _bias(bias_add)
            b_out = graph.make_initializer(f"{b_val.name}_outliers", _take(b_val, idx, 0))
            path.append(Node("Add", [end, b_out], 1, name=graph.fresh_name(f"{bias_add.name or 'Add'}_outliers")))
            end = path[-1].outputs[0]
            _slice_input(graph, bias_add, list(bias_add.inputs).index(b_val), keep, 0)
            narrowed.append(bias_add.outputs[0])
        _slice_input(graph, up, 1, keep, _axes(up)[1])
        side_of[id((bias_add or up).outputs[0])] = end
    # The elementwise region, copied on the channels C; [k] constants sliced on both sides.
    for n in site.region:
        ins: list[Value | None] = []
        for i, v in enumerate(n.inputs):
            if v is None or constant(v, inputs) is None:
                ins.append(side_of[id(v)] if v is not None else None)
            elif int(np.prod(v.const.shape)) == 1:  # type: ignore[union-attr]
                ins.append(v)
            else:
                ins.append(graph.make_initializer(f"{v.name}_outliers", _take(v, idx, 0)))
                _slice_input(graph, n, i, keep, 0)
        copy = Node(n.op_type, ins, 1, dict(n.attrs), domain=n.domain,
                    name=graph.fresh_name(f"{n.name or n.op_type}_outliers"))
        path.append(copy)
        side_of[id(n.outputs[0])] = copy.outputs[0]
        narrowed.append(n.outputs[0])
    graph.insert_after(site.x.producer, path)  # type: ignore[arg-type]
    x_out = side_of[id(site.x)]
    for v in narrowed:
        _narrow(graph, v, len(keep))
    measure_at: dict[str, str] = {}
    for r in site.readers:
        side = _sliced_copy(graph, r, idx, _axes(r)[0], reason, x_out)
        _slice_input(graph, r, 1, keep, _axes(r)[0])
        out_name = r.outputs[0].name
        full = _add_after(graph, r, side, inputs=inputs)
        if full != out_name:
            measure_at[out_name] = full
    return measure_at


def _take(v: Value, idx: np.ndarray, axis: int) -> Tensor:
    return Tensor(np.ascontiguousarray(np.take(v.const.numpy(), idx, axis=axis)))  # type: ignore[union-attr]


def _slice_input(graph: Graph, node: Node, i: int, keep: np.ndarray, axis: int) -> None:
    """node's constant input i keeps the entries `keep` along `axis` (in place when only node reads it)."""
    v = node.inputs[i]
    assert v is not None
    set_constant(graph, node, i, _take(v, keep, axis).numpy(), v, "_inliers")


def _sliced_copy(graph: Graph, n: Node, idx: np.ndarray, axis: int, reason: str, data: Value | None = None) -> Node:
    """A float copy of the linear op n on the weight entries idx along `axis`: U's outlier columns (with a Gemm's
    C entries) reading n's input, or a reader's outlier rows reading `data` (without the bias: the reader adds
    it once)."""
    w = n.inputs[1]
    assert w is not None
    ins: list[Value | None] = [data if data is not None else n.inputs[0],
                               graph.make_initializer(f"{w.name}_outliers", _take(w, idx, axis))]
    c = n.inputs[2] if n.op_type == "Gemm" and len(n.inputs) > 2 else None
    if data is None and c is not None:
        ins.append(graph.make_initializer(f"{c.name}_outliers", _take(c, idx, 0)))
    node = Node(n.op_type, ins, 1, dict(n.attrs), name=graph.fresh_name(f"{n.name or n.op_type}_outliers"))
    node.meta[KEEP_FLOAT] = reason
    return node


def _narrow(graph: Graph, v: Value, channels: int) -> None:
    """v now has `channels` on its last axis: its type says so and its name no longer matches the float model's."""
    if isinstance(v.type, TensorType) and v.type.shape:
        v.type = TensorType(v.type.dtype, (*v.type.shape[:-1], channels))
    v.name = graph.fresh_name(f"{v.name}_inliers")


def _add_after(graph: Graph, reader: Node, side: Node, inputs: set[int]) -> str:
    """Add `side`'s output to the reader's output, after the reader's constant-bias Add when it has one (the int8
    kernel takes that bias); the sum takes over the name and the uses of what it completes (returned)."""
    y = reader.outputs[0]
    last = reader
    if len(y.uses) == 1 and not y.is_graph_output():
        n, _ = y.uses[0]
        if is_standard(n, "Add") and len(n.inputs) == 2 and any(constant_vector(v, inputs) for v in n.inputs):
            last = n
    partial = last.outputs[0]
    total = Value(graph.fresh_name(f"{partial.name}_sum"), partial.type)
    partial.replace_all_uses_with(total)
    add = Node("Add", [partial, side.outputs[0]], [total],
               name=graph.fresh_name(f"{reader.name or 'MatMul'}_outliers_sum"))
    graph.insert_after(last, [side, add])
    full_name = partial.name
    for v in {id(reader.outputs[0]): reader.outputs[0], id(partial): partial}.values():
        v.name = graph.fresh_name(f"{v.name}_inliers")
    total.name = full_name
    return full_name


__all__ = ["ELEMENTWISE", "LlmInt8", "LlmInt8Options"]
