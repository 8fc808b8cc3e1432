"""`lower_qdq`: materialize QuantTypes as QuantizeLinear/DequantizeLinear (and fused forms).

- a weight becomes a quantized initializer read through one DequantizeLinear (the float copy is dropped);
- an activation gets one Q->DQ pair right after it is produced, shared by all its readers;
- a linear op's bias becomes int32 with scale = input scale x weight scale, read through DequantizeLinear
  (what ONNX Runtime needs to fuse DQ->Conv->Q into QLinearConv);
- a Relu/Clip between a quantized producer and its quantized output is removed when the output's
  quantization clamps exactly as the activation would (ONNX Runtime's own QDQ rule);
- a linear op marked dynamic becomes com.microsoft DynamicQuantizeMatMul (activations quantized at run time).
Afterwards no value carries a QuantType: the quantization is in the graph. What was lowered how is recorded
in `ctx.artifacts["lowered"]` for the report.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import GraphError
from qcompiler.ir import Attr, AttrType, DType, Graph, Model, Node, QuantType, Tensor, TensorType, Value
from qcompiler.numerics import PerChannel, PerGroup, PerTensor, Scheme, get_format, param_shape, quantize
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

MS_DOMAIN = "com.microsoft"


def _qdtype(q: QuantType) -> DType:
    t = get_format(q.format).onnx_type
    if t is None:
        raise GraphError(f"format {q.format} has no ONNX QuantizeLinear form; it needs a dedicated lowering")
    return DType(t)


def _axis_attrs(q: QuantType) -> list[Attr]:
    g = q.granularity
    if isinstance(g, PerChannel):
        return [Attr("axis", AttrType.INT, g.axis)]
    if isinstance(g, PerGroup):
        return [Attr("axis", AttrType.INT, g.axis), Attr("block_size", AttrType.INT, g.size)]
    if isinstance(g, PerTensor):
        return []
    raise GraphError(f"granularity {g} has no QuantizeLinear form (ONNX has per-tensor, per-axis, blocked)")


def _like(v: Value, dtype: DType) -> TensorType | None:
    return TensorType(dtype, v.type.shape) if isinstance(v.type, TensorType) else None


@register_pass
class LowerQDQ(Pass):
    name = "lower_qdq"
    requires = ("quant_types",)
    ensures = ("lowered",)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        dequantized: dict[str, str] = {}  # value -> its dequantized copy, for the report
        lowered: dict[str, str] = ctx.artifacts.setdefault("lowered", {})
        typed = [v for v in graph.values() if v.quant is not None]
        if not typed:
            return PassResult(model, False)
        for v in typed:
            q = v.quant
            assert q is not None
            if q.scale is None and not q.dynamic and not any(
                n.meta.get("quantize_dynamic") for n, _ in v.uses
            ):
                raise GraphError(f"lower_qdq: %{v.name} ({q}) has no scale; run calibrate first")
            lowered[v.name] = str(q)
        self._fold_activations(graph, ctx)
        self._check_opset(model)
        for node in list(graph.nodes):
            if node.meta.get("quantize_dynamic"):
                self._dynamic_matmul(model, node, ctx)
        for node in list(graph.nodes):
            if node.op_type in ("Conv", "Gemm", "ConvTranspose") and len(node.inputs) > 2:
                self._bias(graph, node)
        for node in list(graph.nodes):
            if node.meta.get("quantized_table"):
                self._gather(graph, node)
        for v in [v for v in graph.values() if v.quant is not None and v.const is not None]:
            self._weight(graph, v)
        for v in [v for v in graph.values() if v.quant is not None]:
            if v.uses:  # a value only the graph returns needs no pair: nothing reads its dequantized copy
                self._activation(graph, v, dequantized)
        for v in graph.values():
            v.quant = None
        # value name -> the name of what its readers see now (its dequantized copy): the report compares
        # a layer's float output with that.
        seen = ctx.artifacts.setdefault("dequantized", {})
        seen.update(dequantized)
        for y, x in ctx.artifacts.get("folded_into", {}).items():
            seen[y] = dequantized.get(x, x)
        for v in list(graph.initializers.values()):  # scales of folded activations, float weights replaced
            if not v.uses and not v.is_graph_input and not v.is_graph_output():
                graph.remove_initializer(v)
        graph.toposort()
        return PassResult(model, True)

    # -- Relu/Clip folded into quantization ----------------------------------------------------------
    def _fold_activations(self, graph: Graph, ctx: PassContext) -> None:
        for node in list(graph.nodes):
            why = activation_fold(node)
            if why is None:
                continue
            if why:
                ctx.decide(self.name, node.label(), "kept", why)
                continue
            x, y = node.inputs[0], node.outputs[0]
            assert x is not None and y.quant is not None
            x.quant = y.quant
            y.replace_all_uses_with(x)
            graph.erase(node)
            ctx.artifacts.setdefault("folded_into", {})[y.name] = x.name
            ctx.decide(self.name, node.label(), "folded", "into the quantization of its input")

    # -- weights, biases, activations -----------------------------------------------------------------
    def _weight(self, graph: Graph, w: Value) -> None:
        q = w.quant
        assert q is not None and w.const is not None
        scale, zp = q.scale_array(), q.zero_point_array()
        fmt = get_format(q.format)
        qarr = quantize(w.const.numpy().astype(np.float32), scale, zp, fmt, q.granularity, name=w.name)
        dtype = _qdtype(q)
        wq = graph.make_initializer(f"{w.name}_quantized", Tensor(np.asarray(qarr).astype(dtype.storage), dtype))
        out = Value(graph.fresh_name(f"{w.name}_dequantized"), _like(w, DType.FLOAT))
        dq = Node("DequantizeLinear", [wq, q.scale, q.zero_point], [out], _axis_attrs(q),
                  name=graph.fresh_name(f"{w.name}_DequantizeLinear"))
        readers = {id(n) for n, _ in w.uses}
        first = next((n for n in graph.nodes if id(n) in readers), None)
        if first is None:
            return
        graph.insert_before(first, dq)
        w.replace_all_uses_with(out, graph_outputs=False)
        w.quant = None
        if not w.uses and not w.is_graph_output() and not w.is_graph_input:
            graph.remove_initializer(w)

    def _gather(self, graph: Graph, node: Node) -> None:
        """Gather from an int8 table, then DequantizeLinear on the rows read (never the whole table)."""
        table = node.inputs[0]
        if table is None or table.const is None or table.quant is None or table.quant.scale is None:
            return
        q = table.quant
        scale, zp = q.scale_array(), q.zero_point_array()
        qarr = quantize(table.const.numpy().astype(np.float32), scale, zp, get_format(q.format), q.granularity,
                        name=table.name)
        dtype = _qdtype(q)
        if table.name + "_quantized" in graph.initializers:
            tq = graph.initializers[table.name + "_quantized"]  # another Gather of the same table did it
        else:
            tq = graph.make_initializer(f"{table.name}_quantized",
                                        Tensor(np.asarray(qarr).astype(dtype.storage), dtype))
        out = node.outputs[0]
        rows = Value(graph.fresh_name(f"{out.name}_quantized"), _like(out, dtype))
        gather = Node("Gather", [tq, node.inputs[1]], [rows], list(node.attrs.values()), name=node.name)
        attrs = []
        if isinstance(q.granularity, PerChannel):  # per column of the table = the last axis of the rows
            rank = out.type.rank if isinstance(out.type, TensorType) and out.type.rank is not None else None
            if rank is None or q.granularity.axis % table.const.numpy().ndim != table.const.numpy().ndim - 1:
                raise GraphError(f"lower_qdq: {node.label()}: a table's scales must run along its last axis")
            attrs = [Attr("axis", AttrType.INT, rank - 1)]
        dq = Node("DequantizeLinear", [rows, q.scale, q.zero_point], 1, attrs,
                  name=graph.fresh_name(f"{out.name}_dq"))
        graph.insert_before(node, [gather, dq])
        dq.outputs[0].type = out.type
        out.replace_all_uses_with(dq.outputs[0])
        graph.erase(node)
        dq.outputs[0].name = out.name  # readers and reports keep the value's name
        graph.forget_names()
        if not table.uses and not table.is_graph_output() and not table.is_graph_input:
            table.quant = None
            graph.remove_initializer(table)

    def _bias(self, graph: Graph, node: Node) -> None:
        x, w, b = node.inputs[0], node.inputs[1], node.inputs[2]
        if b is None or b.const is None or x is None or w is None:
            return
        if x.quant is None or w.quant is None or x.quant.scale is None or w.quant.scale is None:
            return
        if node.op_type == "Gemm" and (node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0):
            return
        sx, sw = x.quant.scale_array(), w.quant.scale_array()
        bias = b.const.numpy().astype(np.float64)
        if bias.ndim != 1 or (sw.ndim == 1 and sw.shape[0] != bias.shape[0]):
            return
        scale = (np.float64(sx) * sw.astype(np.float64)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale)
        per_channel = scale.ndim == 1
        bq = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        bq_v = graph.make_initializer(f"{b.name}_quantized", Tensor(bq, DType.INT32))
        s_v = graph.make_initializer(f"{b.name}_scale", Tensor(scale if per_channel else scale.reshape(())))
        z_v = graph.make_initializer(f"{b.name}_zero_point", Tensor(np.zeros(scale.shape, np.int32), DType.INT32))
        out = Value(graph.fresh_name(f"{b.name}_dequantized"), _like(b, DType.FLOAT))
        attrs = [Attr("axis", AttrType.INT, 0)] if per_channel else []
        dq = Node("DequantizeLinear", [bq_v, s_v, z_v], [out], attrs,
                  name=graph.fresh_name(f"{b.name}_DequantizeLinear"))
        graph.insert_before(node, dq)
        node.set_input(2, out)
        if not b.uses and not b.is_graph_output() and not b.is_graph_input:
            graph.remove_initializer(b)

    def _activation(self, graph: Graph, v: Value, dequantized: dict[str, str]) -> None:
        q = v.quant
        assert q is not None
        if q.scale is None:
            return  # dynamic: quantized inside its (fused) consumer
        dtype = _qdtype(q)
        readers = list(v.uses)  # before the new Q node becomes a reader too
        qv = Value(graph.fresh_name(f"{v.name}_quantized"), _like(v, dtype))
        dv = Value(graph.fresh_name(f"{v.name}_dequantized"), _like(v, DType.FLOAT))
        attrs = _axis_attrs(q)
        qn = Node("QuantizeLinear", [v, q.scale, q.zero_point], [qv], attrs,
                  name=graph.fresh_name(f"{v.name}_QuantizeLinear"))
        dn = Node("DequantizeLinear", [qv, q.scale, q.zero_point], [dv], attrs,
                  name=graph.fresh_name(f"{v.name}_DequantizeLinear"))
        if v.producer is not None:
            graph.insert_after(v.producer, [qn, dn])
        elif graph.nodes:
            graph.insert_before(graph.nodes[0], [qn, dn])
        else:
            graph.append(qn)
            graph.append(dn)
        for n, i in readers:
            n.set_input(i, dv)
        v.quant = None
        dequantized[v.name] = dv.name

    # -- dynamic -------------------------------------------------------------------------------------
    def _dynamic_matmul(self, model: Model, node: Node, ctx: PassContext) -> None:
        """MatMul/Gemm with a quantized constant weight -> DynamicQuantizeMatMul(A, B_q, b_scale, b_zp, bias).

        A MatMul's bias Add (`node.meta["bias"]`, paired by fuse_matmul_add) goes into the bias input when it
        is still the MatMul's only reader and adds a constant float32 vector along the last axis: ORT adds it
        in the GEMM's output stage instead of a separate pass over the output. The new output takes the
        MatMul output's name (the layer the report measures) and reaches the Add's readers; the report is told
        (`folded_into`) to compare it with the float model's Add output. When the Add output is a graph output
        it keeps that name instead."""
        graph = model.graph
        x, w = node.inputs[0], node.inputs[1]
        if w is None or w.const is None or w.quant is None or w.quant.scale is None:
            return
        bias = None
        add: Node | None = None
        if node.op_type == "Gemm":
            if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0:
                ctx.decide(self.name, node.label(), "kept float", "Gemm with transA/alpha/beta has no dynamic form")
                return
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = node.inputs[2]
                if bias.const is None or bias.const.numpy().ndim != 1:
                    ctx.decide(self.name, node.label(), "kept float", "Gemm bias is not a constant vector")
                    return
        elif node.op_type != "MatMul":
            ctx.decide(self.name, node.label(), "kept float", f"{node.op_type} has no dynamic form")
            return
        q = w.quant
        arr = w.const.numpy().astype(np.float32)
        scale, zp = q.scale_array(), q.zero_point_array()
        transposed = node.op_type == "Gemm" and bool(node.attr("transB", 0))
        if arr.ndim != 2:
            ctx.decide(self.name, node.label(), "kept float", "weight is not 2-D")
            return
        qarr = quantize(arr, scale, zp, get_format(q.format), q.granularity, name=w.name)
        if transposed:
            qarr = qarr.T  # DynamicQuantizeMatMul wants B as [K, N]; the scales run along N either way
        dtype = _qdtype(q)
        b_arr = np.ascontiguousarray(qarr).astype(dtype.storage)
        b_q = graph.make_initializer(f"{w.name}_quantized", Tensor(b_arr, dtype))
        n = qarr.shape[1]
        if node.op_type == "MatMul":
            from ._bias_pairing import paired_bias

            paired = paired_bias(graph, node, n)
            if paired is not None:
                add, vec = paired
                bias = graph.make_initializer(f"{add.name or node.name or 'matmul'}_bias", Tensor(vec))
        s = scale.reshape(-1) if scale.size == n else scale.reshape(())
        s_v = graph.make_initializer(f"{w.name}_scale", Tensor(s.astype(np.float32)))
        z = np.zeros(s.shape, dtype.storage) if zp is None else np.asarray(zp).reshape(s.shape).astype(dtype.storage)
        z_v = graph.make_initializer(f"{w.name}_zero_point", Tensor(z, dtype))
        inputs: list[Value | None] = [x, b_q, s_v, z_v]
        if bias is not None:
            inputs.append(bias)
        new = Node("DynamicQuantizeMatMul", inputs, 1, domain=MS_DOMAIN,
                   name=graph.fresh_name(f"{node.name or 'matmul'}_dyn"))
        graph.insert_before(node, new)
        # With a folded bias the new node replaces the Add's output (what the readers see), else the MatMul's.
        gone = add.outputs[0] if add is not None else node.outputs[0]
        new.outputs[0].type = gone.type
        gone.replace_all_uses_with(new.outputs[0])
        # Keep the MatMul output's name (report keys stay stable), or the Add's when it is a graph output.
        old_name = node.outputs[0].name
        if add is not None:
            graph.erase(add)
            if any(v is new.outputs[0] for v in graph.outputs):
                old_name = gone.name
            else:
                ctx.artifacts.setdefault("folded_into", {})[gone.name] = old_name
        graph.erase(node)
        new.outputs[0].name = old_name
        w.quant = None
        if not w.uses and not w.is_graph_output() and not w.is_graph_input:
            graph.remove_initializer(w)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        folded = f"; bias {add.label()} folded into its bias input" if add is not None else ""
        ctx.decide(self.name, new.label(), "lowered",
                   f"DynamicQuantizeMatMul (u8 activations quantized at run time){folded}")

    @staticmethod
    def _check_opset(model: Model) -> None:
        need = 13
        for v in model.graph.values():
            q = v.quant
            if q is None:
                continue
            if isinstance(q.granularity, PerGroup) or q.format in ("int4", "uint4", "int16", "uint16"):
                need = max(need, 21)
            if q.format.startswith("fp8"):
                need = max(need, 19)
        have = model.opset("") or 0
        if have < need:
            raise GraphError(
                f"the model imports opset {have}, but its quantization needs QuantizeLinear/DequantizeLinear "
                f"from opset {need} (per-axis: 13, fp8: 19, int4/int16/blocked: 21); convert the model first "
                "(onnx.version_converter.convert_version)"
            )


def activation_fold(node: Node) -> str | None:
    """Whether `node`, a Relu/Clip between a quantized producer and its quantized output, disappears into the
    output's quantization: "" when it does, the reason when a candidate stays, None when it is no candidate."""
    if node.op_type not in ("Relu", "Clip") or not node.inputs or not node.outputs:
        return None
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.quant is None or y.quant is None or x.producer is None or len(x.uses) != 1:
        return None
    if x.is_graph_output() or y.is_graph_output() or y.quant.scale is None:
        return None
    lo, hi = _representable(y.quant)
    a, b = activation_bounds(node)
    if a is None:
        return None
    # Exact when the quantized range lies inside the clip range and starts at its floor (or below 0).
    if not (lo >= a - 1e-12 and hi <= b + 1e-6 and (lo <= 0.0 or abs(lo - a) < 1e-12)):
        return f"quantized range [{lo:g}, {hi:g}] does not clamp like it"
    if node.op_type == "Relu" and lo < 0:
        return None
    return ""


def activation_bounds(node: Node) -> tuple[float | None, float]:
    """The interval a Relu or Clip clamps to ((None, 0.0) when a Clip bound is not a constant)."""
    return (0.0, np.inf) if node.op_type == "Relu" else _clip_bounds(node)


def _representable(q: QuantType) -> tuple[float, float]:
    """The float interval a per-tensor QuantType can represent: [(qmin-zp)s, (qmax-zp)s]."""
    from qcompiler.numerics.scheme import quant_range

    s = float(np.max(q.scale_array()))
    zp = q.zero_point_array()
    z = float(np.asarray(zp).reshape(-1)[0]) if zp is not None and np.asarray(zp).size else 0.0
    qmin, qmax = quant_range(get_format(q.format), Scheme(q.scheme))
    return (qmin - z) * s, (qmax - z) * s


def _clip_bounds(node: Node) -> tuple[float | None, float]:
    lo, hi = -np.inf, np.inf
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attr("min", -np.inf)), float(node.attr("max", np.inf))
    ins = node.inputs
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(ins) > i and ins[i] is not None:
            if ins[i].const is None:
                return None, 0.0
            val = float(ins[i].const.numpy().reshape(-1)[0])
            if i == 1:
                lo = val
            else:
                hi = val
        elif i == 1:
            lo = default
    return lo, hi



__all__ = ["LowerQDQ", "param_shape"]
