"""Did ONNX Runtime fuse the Q/DQ pairs into integer kernels?

A QDQ model only runs fast when ORT's optimizer turns each DQ -> op -> Q group into an integer kernel
(QLinearConv, QLinearMatMul, QGemm, ...). A group it does not fuse runs the op in float between a
DequantizeLinear and a QuantizeLinear, which is slower than the float model. `check_fusion` lets ORT
optimize the model, saves the graph it would run, and reads it back: which integer kernels are there, which
ops stay float, and every DequantizeLinear/QuantizeLinear that is left, with why it is (or is not) a problem.

What ORT 1.32's CPU provider fuses is measured in FUSION.md beside this file.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto

from qcompiler.errors import ModelLoadError

from .session import make_session, ort_message

# Ops that compute on integer tensors (ONNX standard and com.microsoft contrib kernels).
INTEGER_KERNELS = frozenset({
    "QLinearConv", "NhwcQLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearWhere", "QLinearReduceMean", "QAttention", "ConvInteger", "QLinearConvTranspose",
    "DynamicQuantizeLSTM", "MatMulNBits", "MatMulBnb4", "QMoE", "QEmbedLayerNormalization",
    "QOrderedMatMul", "QuickGelu_Int8",
})
# Integer kernels whose (first) output is float: the dequantization is inside the kernel.
_FLOAT_OUT = frozenset({
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM", "MatMulNBits",
    "MatMulBnb4", "QMoE", "QEmbedLayerNormalization",
})
_INT32_OUT = frozenset({"MatMulInteger", "ConvInteger"})
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Ops that only look at shapes: a float input to them is not float compute.
_SHAPE_ONLY = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "EyeLike"})
_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
_UNKNOWN = 0


@dataclass(frozen=True)
class UnfusedPair:
    """A DequantizeLinear or QuantizeLinear left in the optimized graph. `node` is its name, `op_type` the
    float op it stands next to ("" for a graph input/output), `reason` says which kind it is."""

    node: str
    op_type: str
    reason: str


@dataclass
class FusionReport:
    """What the optimized graph runs. `unfused` holds the Q/DQ nodes that cost time (a float op between them);
    `benign` those that belong there (a Q at a graph input, a DQ at a graph output, a Q feeding an integer
    op). `level` is the optimization level whose graph was read; `notes` says when that is not the level asked
    for, and what the analysis does not cover."""

    path: str
    level: str
    integer_kernels: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, int] = field(default_factory=dict)
    quant_ops: dict[str, int] = field(default_factory=dict)
    unfused: list[UnfusedPair] = field(default_factory=list)
    benign: list[UnfusedPair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fully_fused(self) -> bool:
        return not self.unfused

    def summary(self) -> str:
        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"

        lines = [
            f"ONNX Runtime fusion of {self.path} (optimization level {self.level}):",
            f"  integer kernels: {counts(self.integer_kernels)}",
            f"  float ops: {counts(self.float_ops)}",
            f"  unfused Q/DQ: {len(self.unfused)}" + (f"; benign Q/DQ: {len(self.benign)}" if self.benign else ""),
        ]
        lines += [f"    {u.node}: {u.reason}" for u in self.unfused]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_fusion(path: str | os.PathLike[str], *, threads: int = 1, level: str = "all") -> FusionReport:
    """Let ORT optimize `path` at `level`, save the optimized graph (ONNX format) and analyze it.

    Some layout-optimized graphs cannot be saved; then the graph optimized at "extended" (same QDQ fusions,
    no layout transforms) is analyzed instead and `notes` says so."""
    path = Path(path)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qc-fusion-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        try:
            make_session(path, threads=threads, optimization=level, optimized_path=out)
        except ModelLoadError as e:
            if level in ("disable", "basic", "extended") or not path.is_file():
                raise
            # The model loads at a lower level when only saving the layout-optimized graph failed.
            notes.append(f"the graph optimized at {level!r} cannot be saved ({e}); analyzed 'extended' instead")
            level = "extended"
            out.unlink(missing_ok=True)
            make_session(path, threads=threads, optimization=level, optimized_path=out)
        try:
            proto = onnx.load(str(out), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - a file ORT wrote but onnx cannot parse
            raise ModelLoadError(f"{path}: cannot read ORT's optimized graph back: {ort_message(e)}") from None
    report = analyze_graph(proto.graph)
    report.path = str(path)
    report.level = level
    report.notes = notes + report.notes
    return report


def analyze_graph(graph: onnx.GraphProto) -> FusionReport:
    """The fusion analysis of an (optimized) graph; `check_fusion` without running ORT."""
    dtypes = _infer_elem_types(graph)
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for o in n.output:
            if o:
                producer[o] = n
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}
    constants = initializers | {o for n in graph.node if n.op_type == "Constant" for o in n.output}

    rep = FusionReport(path="", level="")
    kernels: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    quant: Counter[str] = Counter()
    for n in graph.node:
        name = _qualified(n)
        if n.op_type in INTEGER_KERNELS and n.domain in ("", "ai.onnx", "com.microsoft"):
            kernels[name] += 1
        elif n.op_type in QUANT_OPS:
            quant[n.op_type] += 1
        elif n.op_type not in _SHAPE_ONLY and any(
            dtypes.get(i) in _FLOATS and i not in constants for i in n.input if i
        ):  # float data flows through it (a float constant alone, e.g. Resize's scales, is not compute)
            floats[name] += 1
    rep.integer_kernels, rep.float_ops, rep.quant_ops = dict(kernels), dict(floats), dict(quant)
    if not kernels and not quant:
        rep.notes.append("no Q/DQ and no integer kernel in the graph: nothing runs quantized")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        rep.notes.append("ops inside subgraphs (If/Loop/Scan bodies) are not analyzed")
    if any(n.domain == "com.microsoft.nchwc" for n in graph.node):
        rep.notes.append("com.microsoft.nchwc ops are ORT's blocked-layout float kernels (NCHWc), not integer ones")

    def label(n: onnx.NodeProto) -> str:
        return f"{n.op_type} {n.name!r}" if n.name else n.op_type

    for n in graph.node:
        if n.op_type == "DequantizeLinear":
            x, y = n.input[0], n.output[0]
            users = consumers.get(y, [])
            const = x in constants
            if not users:
                kind = "DQ at graph output" if y in graph_outputs else "DQ whose output nobody reads"
                rep.benign.append(UnfusedPair(n.name, "", kind))
                continue
            for u in users:
                if const:
                    what = "bias" if dtypes.get(x) == TensorProto.INT32 else "weight"
                    rep.unfused.append(UnfusedPair(n.name, u.op_type, f"{what} DQ left before float op {label(u)}"))
                elif any(w.op_type == "QuantizeLinear" for o in u.output for w in consumers.get(o, [])):
                    rep.unfused.append(UnfusedPair(
                        n.name, u.op_type, f"activation Q->DQ pair around {label(u)} not fused: it runs in float"
                    ))
                else:
                    rep.unfused.append(UnfusedPair(
                        n.name, u.op_type, f"activation DQ before float op {label(u)}: it runs in float"
                    ))
        elif n.op_type == "QuantizeLinear":
            x, y = n.input[0], n.output[0]
            users = consumers.get(y, [])
            src = producer.get(x)
            if x in graph_inputs and src is None:
                rep.benign.append(UnfusedPair(n.name, "", "Q at graph input"))
            elif not users:
                kind = "Q at graph output" if y in graph_outputs else "Q whose output nobody reads"
                rep.benign.append(UnfusedPair(n.name, src.op_type if src is not None else "", kind))
            elif users and all(u.op_type == "DequantizeLinear" for u in users):
                after = f" after {label(src)}" if src is not None else ""
                rep.unfused.append(UnfusedPair(
                    n.name, src.op_type if src is not None else "",
                    f"Q->DQ round trip{after}: no integer kernel reads the quantized tensor",
                ))
            else:
                rep.benign.append(UnfusedPair(
                    n.name, src.op_type if src is not None else "", "Q feeding integer ops"
                ))
    return rep


def _qualified(n: onnx.NodeProto) -> str:
    return n.op_type if n.domain in ("", "ai.onnx", "com.microsoft") else f"{n.domain}.{n.op_type}"


def _infer_elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor name, propagated through the graph in order. ORT's optimized graph has
    contrib ops onnx's shape inference does not know, so this uses what each op family is known to produce."""
    t: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            t[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        t[init.name] = init.data_type
    for n in graph.node:
        attrs = {a.name: a for a in n.attribute}
        first = next((t.get(i, _UNKNOWN) for i in n.input if i), _UNKNOWN)
        op = n.op_type
        if op == "QuantizeLinear":
            zp = n.input[2] if len(n.input) > 2 and n.input[2] else ""
            out = t.get(zp) or (attrs["output_dtype"].i if "output_dtype" in attrs else TensorProto.UINT8)
            outs = [out]
        elif op == "DequantizeLinear":
            outs = [t.get(n.input[1], TensorProto.FLOAT)]
        elif op == "DynamicQuantizeLinear":
            outs = [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8]
        elif op in _FLOAT_OUT:
            outs = [TensorProto.FLOAT]
        elif op in _INT32_OUT:
            outs = [TensorProto.INT32]
        elif op == "QGemm":  # without y_scale it dequantizes inside and returns float
            outs = [first if len(n.input) > 7 and n.input[7] else TensorProto.FLOAT]
        elif op == "Cast":
            outs = [attrs["to"].i]
        elif op in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
            outs = [TensorProto.INT64]
        elif op == "Constant" and "value" in attrs:
            outs = [attrs["value"].t.data_type]
        else:
            outs = [first]
        for i, o in enumerate(n.output):
            if o and o not in t:
                t[o] = outs[min(i, len(outs) - 1)]
    return t
