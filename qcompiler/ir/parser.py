"""Reads the text form written by `qcompiler.ir.printer` back into a Graph or Model.

Tests build small graphs from text (`parse_graph`), and compare a pass's result with `format_graph`.
Values may be used before the line that defines them only inside quant annotations (scale=%s).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .graph import Attr, AttrType, Function, Graph, Model, Node, Opaque, Value
from .quant import QuantType, parse_granularity
from .tensor import Tensor
from .types import Dim, DType, MapType, OptionalType, SequenceType, SparseTensorType, TensorType, ValueType

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>-?inf(?![A-Za-z0-9_.])|nan(?![A-Za-z0-9_.])|-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<id>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>::|->|[()\[\]{}<>,=:~@%*?])
    """,
    re.VERBOSE,
)


class ParseError(ValueError):
    """The text is not in the IR's text form; says where."""


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ParseError(f"unexpected character {text[pos]!r} at {self._where(pos)}")
            kind = m.lastgroup
            assert kind is not None
            if kind != "ws":
                val = m.group()
                self.toks.append((kind, val, pos))
            pos = m.end()
        self.i = 0

    def _where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def peek(self, k: int = 0) -> tuple[str, str, int]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "", len(self.text))

    def next(self) -> tuple[str, str, int]:
        t = self.peek()
        self.i += 1
        return t

    def at(self, value: str) -> bool:
        kind, val, _ = self.peek()
        return val == value and kind != "str"

    def accept(self, value: str) -> bool:
        if self.at(value):
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        kind, val, pos = self.next()
        if val != value or kind == "str":
            raise ParseError(f"expected {value!r}, found {val!r} at {self._where(pos)}")

    def error(self, what: str) -> ParseError:
        _, val, pos = self.peek()
        return ParseError(f"{what}, found {val!r} at {self._where(pos)}")


class _Scope:
    """Name -> Value, chained to the enclosing graph's scope (subgraphs see outer values)."""

    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.values: dict[str, Value] = {}
        self.fixups: list[Callable[[], None]] = []

    def lookup(self, name: str) -> Value | None:
        s: _Scope | None = self
        while s is not None:
            if name in s.values:
                return s.values[name]
            s = s.parent
        return None


def parse_graph(text: str) -> Graph:
    """Parse one `graph ... { ... }` block."""
    toks = _Tokens(text)
    g = _Parser(toks).graph(_Scope())
    if toks.peek()[0] != "eof":
        raise toks.error("expected end of text after the graph")
    return g


def parse_model(text: str) -> Model:
    """Parse a `model ...` header, its functions, and its graph."""
    toks = _Tokens(text)
    m = _Parser(toks).model()
    if toks.peek()[0] != "eof":
        raise toks.error("expected end of text after the model")
    return m


class _Parser:
    def __init__(self, toks: _Tokens) -> None:
        self.t = toks

    # -- model, functions -----------------------------------------------------------------------------
    def model(self) -> Model:
        self.t.expect("model")
        kw: dict[str, Any] = {}
        while self.t.peek()[0] == "id" and self.t.peek(1)[1] == "=":
            key = self.t.next()[1]
            self.t.expect("=")
            if key in ("opset", "metadata"):
                kw[key] = self.json_object()
            elif key in ("ir_version", "model_version"):
                kw[key] = int(self.t.next()[1])
            else:
                kw[key] = self.string()
        functions = []
        while self.t.at("function"):
            functions.append(self.function())
        graph = self.graph(_Scope())
        m = Model(graph, opset_imports={k: int(v) for k, v in kw.pop("opset", {"": 18}).items()})
        m.metadata_props = kw.pop("metadata", {})
        for k, v in kw.items():
            setattr(m, k, v)
        m.functions = {f.key: f for f in functions}
        return m

    def function(self) -> Function:
        self.t.expect("function")
        domain = self.name()
        self.t.expect("::")
        name = self.name()
        overload = self.name() if self.t.accept(":") else ""
        self.t.expect("opset")
        self.t.expect("=")
        opsets = {k: int(v) for k, v in self.json_object().items()}
        self.t.expect("attrs")
        self.t.expect("=")
        self.t.expect("[")
        attrs: list[str] = []
        defaults: dict[str, Attr] = {}
        while not self.t.at("]"):
            aname = self.name()
            if self.t.accept("="):
                defaults[aname] = self.attr_value(aname, _Scope())
            else:
                attrs.append(aname)
            if not self.t.accept(","):
                break
        self.t.expect("]")
        body = self.graph(_Scope())
        return Function(domain, name, body, attrs, defaults, opsets, overload)

    def json_object(self) -> dict[str, Any]:
        # A JSON object written on one line by the printer: re-tokenize up to the matching brace.
        start = self.t.peek()[2]
        depth = 0
        while True:
            kind, val, pos = self.t.next()
            if kind == "eof":
                raise ParseError("unterminated JSON object")
            if kind == "punct" and val == "{":
                depth += 1
            elif kind == "punct" and val == "}":
                depth -= 1
                if depth == 0:
                    return json.loads(self.t.text[start : pos + 1])

    # -- graph ----------------------------------------------------------------------------------------
    def graph(self, outer: _Scope) -> Graph:
        scope = _Scope(outer)
        self.t.expect("graph")
        name = "" if self.t.accept("_") else self.name()
        g = Graph(name=name)
        self.t.expect("(")
        while not self.t.at(")"):
            v = self.decl(scope)
            g.add_input(v)
            if not self.t.accept(","):
                break
        self.t.expect(")")
        self.t.expect("->")
        self.t.expect("(")
        out_names: list[tuple[str, int]] = []
        while not self.t.at(")"):
            self.t.expect("%")
            pos = self.t.peek()[2]
            out_names.append((self.name(), pos))
            if not self.t.accept(","):
                break
        self.t.expect(")")
        self.t.expect("{")
        while not self.t.accept("}"):
            if self.t.accept("init"):
                self.initializer(g, scope)
            else:
                g.append(self.node(scope), autoname=False)
        for fix in scope.fixups:
            fix()
        outs = []
        for n, pos in out_names:
            v = scope.lookup(n)
            if v is None:
                raise ParseError(f"graph output %{n} is never defined (at {self.t._where(pos)})")
            outs.append(v)
        g.outputs = outs
        return g

    def initializer(self, g: Graph, scope: _Scope) -> None:
        self.t.expect("%")
        name = self.name()
        vtype = self.type() if self.t.accept(":") else None
        existing = scope.values.get(name)
        if existing is not None and existing.is_graph_input:
            v = existing  # an input that also has an initializer (its default)
        else:
            v = Value(name, vtype)
            scope.values[name] = v
        if self.t.accept("~"):
            v.quant = self.quant(scope, v)
        self.t.expect("=")
        v.const = self.tensor_literal()
        g.add_initializer(v)

    def node(self, scope: _Scope) -> Node:
        outs: list[Value] = []
        while not self.t.at("="):
            outs.append(self.decl(scope))
            if not self.t.accept(","):
                break
        self.t.expect("=")
        first = self.name()
        domain, op, overload = "", first, ""
        if self.t.accept("::"):
            domain, op = first, self.name()
        if self.t.accept(":"):
            overload = self.name()
        self.t.expect("(")
        ins: list[Value | None] = []
        while not self.t.at(")"):
            if self.t.accept("_"):
                ins.append(None)
            else:
                self.t.expect("%")
                _, _, pos = self.t.peek()
                n = self.name()
                v = scope.lookup(n)
                if v is None:
                    raise ParseError(f"%{n} is used before it is defined (at {self.t._where(pos)})")
                ins.append(v)
            if not self.t.accept(","):
                break
        self.t.expect(")")
        attrs: dict[str, Attr] = {}
        if self.t.accept("{"):
            while not self.t.at("}"):
                a = self.attr(scope)
                attrs[a.name] = a
                if not self.t.accept(","):
                    break
            self.t.expect("}")
        name = self.name() if self.t.accept("@") else ""
        return Node(op, ins, outs, attrs, domain=domain, name=name, overload=overload)

    def decl(self, scope: _Scope) -> Value:
        self.t.expect("%")
        _, _, pos = self.t.peek()
        name = self.name()
        if scope.lookup(name) is not None and name in scope.values:
            raise ParseError(f"%{name} is defined twice (at {self.t._where(pos)})")
        vtype = self.type() if self.t.accept(":") else None
        v = Value(name, vtype)
        v.emit_value_info = vtype is not None
        if self.t.accept("~"):
            v.quant = self.quant(scope, v)
        if name:  # "" is an omitted optional output: never referenced
            scope.values[name] = v
        return v

    def quant(self, scope: _Scope, target: Value) -> QuantType:
        """Read `FORMAT sym|affine GRANULARITY [dynamic] [observer=X] [scale=%s] [zp=%z]` for `target`."""
        fmt = self.name()
        scheme = {"sym": "symmetric", "affine": "affine"}.get(self.name())
        if scheme is None:
            raise self.t.error("expected 'sym' or 'affine'")
        gran = self.name()
        if self.t.accept("("):
            args = []
            while not self.t.at(")"):
                args.append(self.t.next()[1])
                self.t.accept(",")
            self.t.expect(")")
            gran += "(" + ",".join(args) + ")"
        kw: dict[str, Any] = {}
        refs: dict[str, str] = {}
        while self.t.peek()[1] in ("dynamic", "observer", "scale", "zp"):
            key = self.t.next()[1]
            if key == "dynamic":
                kw["dynamic"] = True
                continue
            self.t.expect("=")
            if key == "observer":
                kw["observer"] = self.name()
            else:
                self.t.expect("%")
                refs["scale" if key == "scale" else "zero_point"] = self.name()
        q = QuantType(fmt, scheme, parse_granularity(gran), **kw)
        if refs:
            # Scale and zero point may be defined later in the text: resolve once the graph is read.
            def resolve() -> None:
                found: dict[str, Value] = {}
                for key, ref in refs.items():
                    v = scope.lookup(ref)
                    if v is None:
                        raise ParseError(f"quant annotation of %{target.name} refers to undefined %{ref}")
                    found[key] = v
                target.quant = replace(q, **found)

            scope.fixups.append(resolve)
        return q

    # -- types ----------------------------------------------------------------------------------------
    def type(self) -> ValueType | None:
        if self.t.accept("?"):
            return None
        kind, word, _ = self.t.peek()
        if word in ("seq", "opt", "map", "sparse"):
            self.t.next()
            self.t.expect("<")
            if word == "map":
                key = DType.from_short(self.name())
                self.t.expect(",")
                vt: ValueType | None = MapType(key, self.type())
            elif word == "sparse":
                tt = self.type()
                assert isinstance(tt, TensorType)
                vt = SparseTensorType(tt.dtype, tt.shape)
            else:
                inner = self.type()
                vt = SequenceType(inner) if word == "seq" else OptionalType(inner)
            self.t.expect(">")
            return vt
        _, word, pos = self.t.peek()
        try:
            dtype = DType.from_short(self.name())
        except ValueError as e:
            raise ParseError(f"{e} (at {self.t._where(pos)})") from None
        self.t.expect("[")
        if self.t.accept("*"):
            self.t.expect("]")
            return TensorType(dtype, None)
        dims: list[Dim] = []
        while not self.t.at("]"):
            k, val, _ = self.t.next()
            if val == "?":
                dims.append(None)
            elif k == "num":
                dims.append(int(val))
            elif k == "str":
                dims.append(json.loads(val))
            else:
                dims.append(val)
            if not self.t.accept(","):
                break
        self.t.expect("]")
        return TensorType(dtype, tuple(dims))

    # -- attributes and literals ----------------------------------------------------------------------
    def attr(self, scope: _Scope) -> Attr:
        name = self.name()
        self.t.expect("=")
        if self.t.accept("@"):
            ref = self.name()
            self.t.expect(":")
            return Attr(name, AttrType[self.name()], None, ref_attr_name=ref)
        return self.attr_value(name, scope)

    def attr_value(self, name: str, scope: _Scope) -> Attr:
        kind, val, _ = self.t.peek()
        if val == "graph":
            return Attr(name, AttrType.GRAPH, self.graph(scope))
        if val == "tensor":
            return Attr(name, AttrType.TENSOR, self.tensor_literal())
        if val == "opaque":
            o = self.opaque()
            return Attr(name, AttrType.SPARSE_TENSOR if o.kind == "sparse_tensor" else AttrType.TYPE_PROTO, o)
        if kind == "id" and val in _EMPTY_LISTS and self.t.peek(1)[1] == "[":
            self.t.next()
            self.t.expect("[")
            items: list[Any] = []
            while not self.t.at("]"):
                items.append(self.opaque())
                self.t.accept(",")
            self.t.expect("]")
            return Attr(name, _EMPTY_LISTS[val], items)
        if val == "[":
            self.t.next()
            items = []
            while not self.t.at("]"):
                items.append(self.list_item(scope))
                if not self.t.accept(","):
                    break
            self.t.expect("]")
            kinds = {k for k, _ in items}
            if len(kinds) != 1:
                raise self.t.error(f"attribute {name}: list mixes {sorted(kinds)}")
            k = kinds.pop()
            vals = [v for _, v in items]
            if k == "num":
                if any(_is_float(v) for v in vals):
                    return Attr(name, AttrType.FLOATS, [float(v) for v in vals])
                return Attr(name, AttrType.INTS, [int(v) for v in vals])
            return Attr(name, {"str": AttrType.STRINGS, "tensor": AttrType.TENSORS, "graph": AttrType.GRAPHS}[k], vals)
        if kind == "str":
            self.t.next()
            return Attr(name, AttrType.STRING, json.loads(val))
        if kind == "num":
            self.t.next()
            if _is_float(val):
                return Attr(name, AttrType.FLOAT, float(val))
            return Attr(name, AttrType.INT, int(val))
        raise self.t.error(f"attribute {name}: expected a value")

    def list_item(self, scope: _Scope) -> tuple[str, Any]:
        kind, val, _ = self.t.peek()
        if val == "graph":
            return "graph", self.graph(scope)
        if val == "tensor":
            return "tensor", self.tensor_literal()
        self.t.next()
        if kind in ("str", "num"):
            return kind, (json.loads(val) if kind == "str" else val)
        raise self.t.error("expected a list item")

    def opaque(self) -> Opaque:
        self.t.expect("opaque")
        self.t.expect("<")
        kind = self.name()
        self.t.expect(">")
        return Opaque(kind, base64.b64decode(self.string()))

    def tensor_literal(self) -> Tensor:
        self.t.expect("tensor")
        self.t.expect("<")
        tt = self.type()
        self.t.expect(">")
        if not isinstance(tt, TensorType) or tt.shape is None or not tt.is_static:
            raise self.t.error("a constant needs a static tensor type")
        if self.t.at("<"):
            raise self.t.error("this constant was elided when printed; print with elide=None to parse it back")
        flat: list[Any] = []
        self._nested(flat)
        dt = tt.dtype
        if dt is DType.STRING:
            arr = np.array([v.encode("utf-8", "surrogateescape") for v in flat], dtype=object)
        elif dt is DType.BOOL:
            arr = np.array([v == "true" for v in flat], dtype=np.bool_)
        else:
            arr = np.array(flat, dtype=dt.storage)
        shape = tuple(int(d) for d in tt.shape)  # type: ignore[arg-type]
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise self.t.error(f"constant has {arr.size} values, its type {tt} needs {np.prod(shape)}")
        return Tensor(arr.reshape(shape), dt)

    def _nested(self, out: list[Any]) -> None:
        if self.t.accept("["):
            while not self.t.at("]"):
                self._nested(out)
                if not self.t.accept(","):
                    break
            self.t.expect("]")
            return
        kind, val, _ = self.t.next()
        if kind == "str":
            out.append(json.loads(val))
        elif val == "complex":
            self.t.expect("(")
            re_ = float(self.t.next()[1])
            self.t.expect(",")
            im = float(self.t.next()[1])
            self.t.expect(")")
            out.append(complex(re_, im))
        elif kind == "num" or val in ("true", "false"):
            out.append(val if val in ("true", "false") else (float(val) if _is_float(val) else int(val)))
        else:
            raise ParseError(f"bad constant element {val!r}")

    def name(self) -> str:
        kind, val, pos = self.t.next()
        if kind == "id":
            return val
        if kind == "str":
            return json.loads(val)
        if kind == "num":
            return val
        raise ParseError(f"expected a name, found {val!r} at {self.t._where(pos)}")

    def string(self) -> str:
        kind, val, pos = self.t.next()
        if kind != "str":
            raise ParseError(f"expected a string, found {val!r} at {self.t._where(pos)}")
        return json.loads(val)


def _is_float(tok: str) -> bool:
    return tok in ("nan", "inf", "-inf") or any(c in tok for c in ".eE")


_EMPTY_LISTS = {
    "ints": AttrType.INTS,
    "floats": AttrType.FLOATS,
    "strings": AttrType.STRINGS,
    "tensors": AttrType.TENSORS,
    "graphs": AttrType.GRAPHS,
    "sparse_tensors": AttrType.SPARSE_TENSORS,
    "type_protos": AttrType.TYPE_PROTOS,
}
