"""What a shape tensor holds, entry by entry, read from the graph without running it.

Exporters build Reshape targets at run time (`Concat(Shape(x)[0:1], Shape(x)[1:2], [-1], [32])`), so a
rewrite that needs to know "this Reshape splits the last axis into (-1, 32) and keeps the first two" must
evaluate that little integer program symbolically. `shape_entries(v)` does it for the ops exporters use on
shapes (Shape with start/end, Concat, Slice, Gather, Squeeze/Unsqueeze of one element, Cast, Identity) and
constants; anything else gives None (unknown), and the caller declines.

Each entry is a `Dim`: an int (a constant, or a size the value's type gives), a symbol name from the
value's type (`"batch"`; ONNX treats equal dim_param names as equal sizes), or `("@", id(value), axis)`
for a dimension nobody named (two such entries are equal only when they are the same axis of the same
value).
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Value

from ._rewrite import constant, dims, is_standard

Dim = int | str | tuple[str, int, int]

_INT64_MAX = 2**63 - 1


def dim_of(v: Value | None, axis: int) -> Dim | None:
    """Dimension `axis` of `v` as a comparable entry (None when `v`'s rank is unknown or axis is out of it)."""
    shape = dims(v)
    if v is None or shape is None:
        return None
    r = len(shape)
    if not -r <= axis < r:
        return None
    a = axis % r
    d = shape[a]
    if isinstance(d, int):
        return d
    if isinstance(d, str) and d:
        return d
    return ("@", id(v), a)


def dims_of(v: Value | None) -> list[Dim] | None:
    """All dimensions of `v` as entries, or None when its rank is unknown."""
    shape = dims(v)
    if shape is None:
        return None
    out = [dim_of(v, i) for i in range(len(shape))]
    return out if all(d is not None for d in out) else None  # type: ignore[return-value]


def shape_entries(v: Value | None, inputs: set[int], _depth: int = 0) -> list[Dim] | None:
    """The entries of a 1-D (or scalar) integer tensor `v` that describes a shape, or None when they cannot
    be read from the graph. `inputs` are the graph inputs' ids (an initializer that is also an input is not
    constant)."""
    if v is None or _depth > 32:
        return None
    t = constant(v, inputs)
    if t is not None:
        if not t.dtype.is_integer or len(t.shape) > 1:
            return None
        return [int(x) for x in np.asarray(t.numpy()).reshape(-1)]
    n = v.producer
    if n is None or n.domain not in ("", "ai.onnx"):
        return None
    ins = n.inputs
    if is_standard(n, "Shape"):
        shape = dims(ins[0])
        if shape is None:
            return None
        r = len(shape)
        start, end = _clamp(int(n.attr("start", 0)), r), _clamp(int(n.attr("end", r)), r)
        return [dim_of(ins[0], i) for i in range(start, end)]  # type: ignore[misc]
    if is_standard(n, "Concat"):
        if int(n.attr("axis", 0)) not in (0, -1):
            return None
        out: list[Dim] = []
        for x in ins:
            part = shape_entries(x, inputs, _depth + 1)
            if part is None:
                return None
            out.extend(part)
        return out
    if is_standard(n, "Identity", "Cast"):
        if n.op_type == "Cast" and int(n.attr("to", 0)) not in (6, 7):  # int32, int64
            return None
        return shape_entries(ins[0], inputs, _depth + 1)
    if is_standard(n, "Squeeze", "Unsqueeze"):
        part = shape_entries(ins[0], inputs, _depth + 1)
        return part if part is not None and len(part) == 1 else None
    if is_standard(n, "Slice"):
        return _slice(n.inputs, inputs, _depth)
    if is_standard(n, "Gather"):
        if int(n.attr("axis", 0)) != 0:
            return None
        data = shape_entries(ins[0], inputs, _depth + 1)
        idx = constant(ins[1] if len(ins) > 1 else None, inputs)
        if data is None or idx is None or not idx.dtype.is_integer or len(idx.shape) > 1:
            return None
        out = []
        for i in np.asarray(idx.numpy()).reshape(-1):
            i = int(i)
            if not -len(data) <= i < len(data):
                return None
            out.append(data[i])
        return out
    return None


def _clamp(i: int, r: int) -> int:
    """ONNX's start/end rule: negative counts from the end, then clamp to [0, r]."""
    if i < 0:
        i += r
    return min(max(i, 0), r)


def _one(v: Value | None, inputs: set[int]) -> int | None:
    t = constant(v, inputs)
    if t is None or not t.dtype.is_integer or t.size != 1:
        return None
    return int(np.asarray(t.numpy()).reshape(-1)[0])


def _slice(ins: tuple[Value | None, ...], inputs: set[int], depth: int) -> list[Dim] | None:
    data = shape_entries(ins[0], inputs, depth + 1)
    if data is None or len(ins) < 3:
        return None
    start, end = _one(ins[1], inputs), _one(ins[2], inputs)
    axis = _one(ins[3], inputs) if len(ins) > 3 and ins[3] is not None else 0
    step = _one(ins[4], inputs) if len(ins) > 4 and ins[4] is not None else 1
    if start is None or end is None or axis not in (0, -1) or step != 1:
        return None
    r = len(data)
    # Slice clamps ends beyond the axis (INT64_MAX / INT64_MIN are "to the end" / "from the start").
    return data[_clamp(start, r):_clamp(min(end, _INT64_MAX), r)]
