"""The IR's text form: one node a line, values with their types (and quant types after `~`).

    graph main (%x: f32[N,4]) -> (%y: f32[N,2]) {
      init %w: f32[4,2] = [[0.5, ...], ...]
      %y: f32[N,2] = MatMul(%x, %w) @"fc/MatMul"
    }

`qcompiler.ir.parser.parse_graph` reads it back. Constants over `elide` elements print as `<elided ...>`
and cannot be parsed back: print with `elide=None` for an exact round trip. Doc strings and metadata are not
part of the text form (the ONNX round trip keeps them).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .graph import Attr, AttrType, Function, Graph, Model, Node, Opaque, Value
from .tensor import Tensor
from .types import DType, TensorType

_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
DEFAULT_ELIDE = 16


def format_model(model: Model, *, elide: int | None = DEFAULT_ELIDE) -> str:
    head = [f"ir_version={model.ir_version}", "opset=" + json.dumps(model.opset_imports, sort_keys=False)]
    for key in ("producer_name", "producer_version", "domain", "doc_string"):
        val = getattr(model, key)
        if val:
            head.append(f"{key}={json.dumps(val)}")
    if model.model_version:
        head.append(f"model_version={model.model_version}")
    if model.metadata_props:
        head.append("metadata=" + json.dumps(model.metadata_props))
    lines = ["model " + " ".join(head)]
    for fn in model.functions.values():
        lines.append(format_function(fn, elide=elide))
    lines.append(format_graph(model.graph, elide=elide))
    return "\n".join(lines) + "\n"


def format_function(fn: Function, *, elide: int | None = DEFAULT_ELIDE) -> str:
    head = f"function {_ident(fn.domain)}::{_ident(fn.name)}"
    if fn.overload:
        head += f":{_ident(fn.overload)}"
    attrs = [_ident(a) for a in fn.attributes] + [
        f"{_ident(k)}={_attr_value(a, elide, 1)}" for k, a in fn.attribute_defaults.items()
    ]
    head += f" opset={json.dumps(fn.opset_imports)} attrs=[{', '.join(attrs)}]"
    return head + " " + format_graph(fn.graph, elide=elide)


def format_graph(graph: Graph, *, elide: int | None = DEFAULT_ELIDE, indent: int = 0) -> str:
    pad = "  " * indent
    ins = ", ".join(_decl(v) for v in graph.inputs)
    outs = ", ".join(_ref(v) for v in graph.outputs)
    lines = [f"graph {_ident(graph.name) if graph.name else '_'} ({ins}) -> ({outs}) {{"]
    for v in graph.initializers.values():
        lines.append(f"{pad}  init {_decl(v)} = {_tensor_literal(v.const, elide)}")
    for n in graph.nodes:
        lines.append(pad + "  " + format_node(n, elide=elide, indent=indent + 1))
    lines.append(pad + "}")
    return "\n".join(lines)


def format_node(node: Node, *, elide: int | None = DEFAULT_ELIDE, indent: int = 0) -> str:
    outs = ", ".join(_decl(v) for v in node.outputs)
    op = node.op_type if node.domain in ("",) else f"{_ident(node.domain)}::{node.op_type}"
    if node.overload:
        op += f":{_ident(node.overload)}"
    args = ", ".join("_" if v is None else _ref(v) for v in node.inputs)
    text = f"{outs} = {op}({args})" if outs else f"= {op}({args})"
    if node.attrs:
        text += " {" + ", ".join(_attr(a, elide, indent) for a in node.attrs.values()) + "}"
    if node.name:
        text += f" @{_ident(node.name)}"
    return text


def _ident(name: str) -> str:
    if name and set(name) <= _PLAIN and not name[0].isdigit():
        return name
    return json.dumps(name)


def _ref(v: Value) -> str:
    return "%" + _ident(v.name)


def _decl(v: Value) -> str:
    text = _ref(v)
    if v.type is not None:
        text += f": {v.type}"
    if v.quant is not None:
        text += f" ~ {v.quant}"
    return text


def _attr(a: Attr, elide: int | None, indent: int) -> str:
    if a.ref_attr_name is not None:
        return f"{_ident(a.name)}=@{_ident(a.ref_attr_name)}:{a.type.name}"
    return f"{_ident(a.name)}={_attr_value(a, elide, indent)}"


def _attr_value(a: Attr, elide: int | None, indent: int) -> str:
    t, v = a.type, a.value
    if t is AttrType.INT:
        return str(int(v))
    if t is AttrType.FLOAT:
        return _float(v)
    if t is AttrType.STRING:
        return _string(v)
    if t is AttrType.INTS:
        return "[" + ", ".join(str(int(x)) for x in v) + "]" if v else "ints[]"
    if t is AttrType.FLOATS:
        return "[" + ", ".join(_float(x) for x in v) + "]" if v else "floats[]"
    if t is AttrType.STRINGS:
        return "[" + ", ".join(_string(x) for x in v) + "]" if v else "strings[]"
    if t is AttrType.TENSOR:
        return _tensor_literal(v, elide)
    if t is AttrType.TENSORS:
        return "[" + ", ".join(_tensor_literal(x, elide) for x in v) + "]" if v else "tensors[]"
    if t is AttrType.GRAPH:
        return format_graph(v, elide=elide, indent=indent)
    if t is AttrType.GRAPHS:
        if not v:
            return "graphs[]"
        return "[" + ", ".join(format_graph(g, elide=elide, indent=indent) for g in v) + "]"
    if isinstance(v, Opaque):
        return _opaque(v)
    if isinstance(v, list) and t in (AttrType.SPARSE_TENSORS, AttrType.TYPE_PROTOS):
        return f"{t.name.lower()}[" + ", ".join(_opaque(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute {a.name} of type {t.name}")


def _opaque(o: Opaque) -> str:
    import base64

    return f"opaque<{o.kind}>{json.dumps(base64.b64encode(o.data).decode())}"


def _float(x: float) -> str:
    s = str(np.float32(x))
    if s in ("nan", "inf", "-inf"):
        return s
    return s if any(c in s for c in ".e") else s + ".0"


def _string(s: str | bytes) -> str:
    if isinstance(s, bytes):
        s = s.decode("utf-8", "surrogateescape")
    return json.dumps(s)


def _tensor_literal(t: Tensor | None, elide: int | None) -> str:
    if t is None:
        return "<none>"
    head = f"tensor<{TensorType(t.dtype, t.shape)}>"
    if elide is not None and t.size > elide:
        digest = hashlib.sha1(t.raw_bytes()).hexdigest()[:12]
        return f"{head}<elided sha1={digest}>"
    arr = t.numpy()
    return head + _nested(arr, t.dtype)


def _nested(arr: np.ndarray, dtype: DType) -> str:
    if not isinstance(arr, np.ndarray):  # an element of an object (string) array
        return _scalar(arr, dtype)
    if arr.ndim == 0:
        return _scalar(arr.item(), dtype)
    return "[" + ", ".join(_nested(a, dtype) for a in arr) + "]"


def _scalar(x: object, dtype: DType) -> str:
    if dtype is DType.STRING:
        return _string(x)  # type: ignore[arg-type]
    if dtype is DType.BOOL:
        return "true" if x else "false"
    if dtype in (DType.FLOAT, DType.FLOAT16, DType.DOUBLE):
        if dtype is DType.DOUBLE:
            s = repr(float(x))  # type: ignore[arg-type]
            return s if any(c in s for c in ".en") else s + ".0"
        return _float(x)  # type: ignore[arg-type]
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        c = complex(x)  # type: ignore[arg-type]
        return f"complex({c.real!r}, {c.imag!r})"
    return str(int(x))  # type: ignore[call-overload]
