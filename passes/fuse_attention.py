"""The attention core -> com.microsoft MultiHeadAttention (a rule of `fuse_transformer`).

Pattern, anchored on a Softmax over the last axis of a rank-4 tensor (B, N, S, T):

    Q4 = Transpose(Reshape(q, [B, S, N, H]), perm=[0, 2, 1, 3])        q: [B, S, N*H], likewise k, v ([B, T, .])
    Kt = Q4's form of k, transposed on the last two axes, as one of
         Transpose(K4, perm=[0, 1, 3, 2]) | Transpose(Reshape(k, [B, T, N, H]), perm=[0, 2, 3, 1]) |
         Reshape(Transpose(Reshape(K4, [-1, T, H]), perm=[0, 2, 1]), [B, N, H, T])   (torch dynamo's k.mT)
    s  = MatMul(Q4 (* c1), Kt (* c2)) (* or / c3)                        c1, c2, c3: scalar constants, each optional
    p  = Softmax(s + mask)                                               the mask Add is optional
    P  = Where(IsNaN(p), 0, p)                                           torch SDPA's NaN guard, optional
    y  = Reshape(Transpose(MatMul(P, V4), perm=[0, 2, 1, 3]), [B, S, N*Hv])

becomes `y = MultiHeadAttention(q, k, v, attention_bias=mask){num_heads=N, scale=c1*c2*c3 (or /c3)}`. N and H
come from the Reshape shapes, which are evaluated from the graph (constants, Shape/Slice/Concat of known
dims: `_shape_expr`); the scale from the constants; nothing is assumed. The mask must be (1|B, 1|N, S, T)
(MultiHeadAttention's attention_bias form, added after scaling, as in the pattern); a mask that broadcasts
over S or T is declined.

Semantics. Without the NaN guard the fused op computes the same expression: softmax(scale * Q K^T + mask) V
(to float32 rounding: the scale is applied once instead of on Q and K separately, and the kernel sums in
its own order). The guard `Where(IsNaN(p), 0, p)` only acts on a softmax row that contains NaN, which
happens when a row of `s + mask` holds a NaN or +inf, or is -inf everywhere. MultiHeadAttention has no
guard: such a row gives NaN in its output where the original gives zero probabilities (and so a zero
output row). The rule therefore fuses a guarded pattern only when the mask is provably finite (a constant,
or Where(cond, a, b) of finite constants, as torch's exporter builds it from a boolean mask with the
dtype's lowest value): then every row has finite entries, a fully masked row is a softmax over finite
values (both graphs give the same, near-uniform, weights) and the guard can act only when the scores
themselves are non-finite (NaN or inf activations, or float32 overflow of score + mask beyond
-3.4e38, i.e. |score| > 2^103) — on those inputs the original zeroes the affected rows and the fused op
gives NaN. A guarded pattern whose mask may hold -inf (a fully masked row would turn from zeros into NaN)
is declined with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qcompiler.ir import Attr, AttrType, DType, Graph, Node, TensorType, Value

from ._rewrite import constant, dims, is_standard, replace_uses
from ._shape_expr import Dim, dims_of, shape_entries

MS_DOMAIN = "com.microsoft"


@dataclass
class AttentionMatch:
    """A matched attention core: the MultiHeadAttention inputs and what it replaces."""

    query: Value
    key: Value
    value: Value
    mask: Value | None
    num_heads: int
    head_size: int
    scale: float
    guarded: bool
    output: Value  # the [B, S, N*Hv] value the MultiHeadAttention output replaces
    anchor: Node  # where the new node goes (the output's producer)
    name: str  # the name the new node takes (the P x V MatMul's)
    nodes: list[Node] = field(default_factory=list)  # the float nodes of the core (dead after the rewrite)

    def describe(self) -> str:
        mask = f"attention_bias %{self.mask.name}" if self.mask is not None else "no mask"
        guard = ""
        if self.guarded:
            guard = ("; NaN guard dropped: " + ("the mask is finite" if self.mask is not None else "there is no mask")
                     + ", so it acts only on rows with NaN/inf scores, where the fused op gives NaN, not zeros")
        return (f"{len(self.nodes)} nodes -> MultiHeadAttention(%{self.query.name}, %{self.key.name}, "
                f"%{self.value.name}, {mask}), num_heads={self.num_heads}, head_size={self.head_size}, "
                f"scale={self.scale:.9g}{guard}")


def match_attention(sm: Node, inputs: set[int], opset: int) -> AttentionMatch | str:
    """The attention core ending in Softmax `sm`, or why it is not one MultiHeadAttention can replace."""
    x = sm.inputs[0] if sm.inputs else None
    shape = dims(x)
    if x is None or shape is None:
        return "rank of the Softmax input is unknown"
    if len(shape) != 4:
        return f"Softmax input %{x.name} has rank {len(shape)}, not 4 (batch, heads, queries, keys)"
    axis = int(sm.attr("axis", -1 if opset >= 13 else 1))
    if axis not in (-1, 3):
        return f"Softmax over axis {axis}, not the last (keys)"
    if not _is_f32(x):
        return f"Softmax input %{x.name} is not float32 (MultiHeadAttention's CPU kernel is float32)"
    nodes: list[Node] = [sm]
    scores, mask = x, None
    add = x.producer
    if add is not None and is_standard(add, "Add") and len(add.inputs) == 2:
        a, b = add.inputs
        qk_a, qk_b = _reaches_matmul(a, inputs), _reaches_matmul(b, inputs)
        if qk_a == qk_b:
            return f"{add.label()}: cannot tell the scores Q·Kᵀ from the mask (" + (
                "both" if qk_a else "neither") + " input comes from a MatMul)"
        scores, mask = (a, b) if qk_a else (b, a)
        nodes.append(add)
    base, scale, scale_nodes = _strip_scale(scores, inputs)
    nodes += scale_nodes
    qk = base.producer if base is not None else None
    if qk is None or not is_standard(qk, "MatMul"):
        return f"the Softmax input is not (scaled) Q·Kᵀ + mask: %{base.name if base else '?'} is not a MatMul output"
    nodes.append(qk)
    q4, cq, nq = _strip_scale(qk.inputs[0], inputs)
    kt, ck, nk = _strip_scale(qk.inputs[1], inputs)
    nodes += nq + nk
    scale *= cq * ck
    q = _split_heads(q4, inputs)
    if isinstance(q, str):
        return f"query: {q}"
    k = _key_transposed(kt, inputs)
    if isinstance(k, str):
        return f"key: {k}"
    q3, nh, hs, qn = q
    k3, nh_k, hs_k, kn = k
    nodes += qn + kn
    if (nh_k, hs_k) != (nh, hs):
        return f"query has {nh} heads of {hs}, key has {nh_k} heads of {hs_k}"
    scale32 = float(np.float32(scale)) if math.isfinite(scale) else scale
    if scale32 == 0.0 or not math.isfinite(scale32):
        return f"scale {scale!r} is 0 or not finite in float32 (MultiHeadAttention reads 0 as 1/sqrt(head_size))"

    probs = sm.outputs[0]
    guarded = False
    pv = probs.users
    if len(pv) == 2:
        guard = _nan_guard(probs, inputs)
        if isinstance(guard, str):
            return guard
        guarded = True
        nodes += guard
        probs = guard[1].outputs[0]
        pv = probs.users
    if len(pv) != 1 or not is_standard(pv[0], "MatMul") or pv[0].inputs[0] is not probs:
        return f"the probabilities %{probs.name} are not read by one MatMul(P, V) alone"
    av = pv[0]
    nodes.append(av)
    v = _split_heads(av.inputs[1], inputs)
    if isinstance(v, str):
        return f"value: {v}"
    v3, nh_v, hs_v, vn = v
    nodes += vn
    if nh_v != nh:
        return f"value has {nh_v} heads, query {nh}"
    merged = _merge_heads(av.outputs[0], q3, nh, hs_v, inputs)
    if isinstance(merged, str):
        return f"output: {merged}"
    out, mn = merged
    nodes += mn

    # MultiHeadAttention's contract: q [B, S, D], k [B, T, D], v [B, T, Dv], one batch.
    qd, kd, vd = dims_of(q3), dims_of(k3), dims_of(v3)
    assert qd is not None and kd is not None and vd is not None  # _split_heads checked the ranks
    if not (qd[0] == kd[0] == vd[0]):
        return f"query, key and value batch dims differ ({_show(qd[0])}, {_show(kd[0])}, {_show(vd[0])})"
    if kd[1] != vd[1]:
        return f"key and value lengths differ ({_show(kd[1])}, {_show(vd[1])})"
    if not (_is_f32(q3) and _is_f32(k3) and _is_f32(v3)):
        return "query, key and value must be float32"
    if mask is not None:
        why = _check_mask(mask, qd[0], nh, qd[1], kd[1])
        if why:
            return why
        if guarded:
            why = _finite_mask(mask, inputs)
            if why:
                return why

    why = _private(nodes, out)
    if why:
        return why
    return AttentionMatch(q3, k3, v3, mask, nh, hs, scale32, guarded, out,
                          out.producer, av.name, nodes)  # type: ignore[arg-type]


def rewrite_attention(graph: Graph, m: AttentionMatch, returned: set[int]) -> Node:
    """Insert the MultiHeadAttention and point the output's readers at it. The replaced nodes are left
    without readers (the caller removes dead nodes)."""
    attrs = [Attr("num_heads", AttrType.INT, m.num_heads), Attr("scale", AttrType.FLOAT, m.scale)]
    ins: list[Value | None] = [m.query, m.key, m.value]
    if m.mask is not None:
        ins += [None, None, m.mask]  # bias, key_padding_mask, attention_bias
    node = Node("MultiHeadAttention", ins, [Value("")], attrs, domain=MS_DOMAIN, name=m.name)
    graph.insert_before(m.anchor, node)
    y = node.outputs[0]
    y.type = m.output.type
    replace_uses(graph, m.output, y, returned)
    return node


# -- pieces of the pattern ---------------------------------------------------------------------------------


def _is_f32(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype is DType.FLOAT


def _show(d: Dim | None) -> str:
    return "?" if d is None or isinstance(d, tuple) else str(d)


def _scalar(v: Value | None, inputs: set[int], rank: int | None) -> float | None:
    """The value of a one-element float constant that does not raise the other operand's rank."""
    t = constant(v, inputs)
    if t is None or not t.dtype.is_float or not t.dtype.is_native or t.size != 1:
        return None
    if rank is not None and len(t.shape) > rank:
        return None
    return float(np.asarray(t.numpy()).reshape(-1)[0])


def _strip_scale(v: Value | None, inputs: set[int]) -> tuple[Value | None, float, list[Node]]:
    """Walk up through Mul/Div by scalar constants: (the value scaled, the product of the factors, the nodes).
    Accumulated in float64; the fused op gets it rounded once to float32."""
    factor, nodes = 1.0, []
    while v is not None and v.producer is not None:
        p = v.producer
        rank = len(dims(v) or ()) if dims(v) is not None else None
        if is_standard(p, "Mul") and len(p.inputs) == 2:
            c0, c1 = _scalar(p.inputs[0], inputs, rank), _scalar(p.inputs[1], inputs, rank)
            if c1 is not None:
                factor, v = factor * c1, p.inputs[0]
            elif c0 is not None:
                factor, v = factor * c0, p.inputs[1]
            else:
                break
        elif is_standard(p, "Div") and len(p.inputs) == 2:
            c = _scalar(p.inputs[1], inputs, rank)
            if c is None or c == 0.0:
                break
            factor, v = factor / c, p.inputs[0]
        else:
            break
        nodes.append(p)
    return v, factor, nodes


def _reaches_matmul(v: Value | None, inputs: set[int]) -> bool:
    base, _, _ = _strip_scale(v, inputs)
    return base is not None and base.producer is not None and is_standard(base.producer, "MatMul")


def _perm(n: Node) -> list[int] | None:
    p = n.attr("perm")
    return None if p is None else [int(i) for i in p]


def _head_split(r: Node, inputs: set[int]) -> tuple[Value, int, int] | str:
    """Reshape(x, [B, S, N, H]) of x [B, S, N*H], keeping the first two axes: (x, N, H)."""
    x = r.inputs[0]
    xd = dims_of(x)
    if x is None or xd is None or len(xd) != 3:
        return f"{r.label()} does not reshape a rank-3 [batch, seq, hidden] tensor"
    hidden = xd[2]
    if not isinstance(hidden, int):
        return f"hidden size of %{x.name} is not a known integer ({_show(hidden)})"
    e = shape_entries(r.inputs[1] if len(r.inputs) > 1 else None, inputs)
    if e is None:
        return f"cannot evaluate the shape of {r.label()} from the graph"
    if len(e) != 4:
        return f"{r.label()} reshapes to rank {len(e)}, not 4"
    copy_zero = not int(r.attr("allowzero", 0))
    for i in (0, 1):
        if not (e[i] == xd[i] or (copy_zero and e[i] == 0)):
            return f"{r.label()} does not keep axis {i} ({_show(e[i])} vs {_show(xd[i])})"
    n, h = e[2], e[3]
    if not (isinstance(n, int) and isinstance(h, int)):
        return f"{r.label()}: head count and size are not constants ({_show(n)}, {_show(h)})"
    if n == -1 and h > 0 and hidden % h == 0:
        n = hidden // h
    elif h == -1 and n > 0 and hidden % n == 0:
        h = hidden // n
    if n <= 0 or h <= 0 or n * h != hidden:
        return f"{r.label()}: [{e[2]}, {e[3]}] does not split hidden size {hidden} into heads"
    return x, n, h


def _split_heads(x4: Value | None, inputs: set[int]) -> tuple[Value, int, int, list[Node]] | str:
    """x4 = Transpose(Reshape(x, [B, S, N, H]), perm=[0, 2, 1, 3]): (x, N, H, nodes)."""
    t = x4.producer if x4 is not None else None
    if t is None or not is_standard(t, "Transpose") or _perm(t) != [0, 2, 1, 3]:
        return f"%{x4.name if x4 else '?'} is not Transpose(perm=[0, 2, 1, 3]) of a head split"
    r = t.inputs[0].producer if t.inputs[0] is not None else None
    if r is None or not is_standard(r, "Reshape"):
        return f"{t.label()} does not read a Reshape"
    hs = _head_split(r, inputs)
    if isinstance(hs, str):
        return hs
    return hs[0], hs[1], hs[2], [r, t]


def _key_transposed(kt: Value | None, inputs: set[int]) -> tuple[Value, int, int, list[Node]] | str:
    """Kᵀ per head, [B, N, H, T], in the three forms the module doc lists: (k, N, H, nodes)."""
    p = kt.producer if kt is not None else None
    if p is None:
        return f"%{kt.name if kt else '?'} is not computed from a head split"
    if is_standard(p, "Transpose") and _perm(p) == [0, 1, 3, 2]:
        inner = _split_heads(p.inputs[0], inputs)
        return inner if isinstance(inner, str) else (*inner[:3], inner[3] + [p])
    if is_standard(p, "Transpose") and _perm(p) == [0, 2, 3, 1]:
        r = p.inputs[0].producer if p.inputs[0] is not None else None
        if r is None or not is_standard(r, "Reshape"):
            return f"{p.label()} does not read a Reshape"
        hs = _head_split(r, inputs)
        return hs if isinstance(hs, str) else (*hs, [r, p])
    if is_standard(p, "Reshape"):
        # torch dynamo's k.transpose(-2, -1) under matmul: flatten the batch dims, swap, restore.
        t1 = p.inputs[0].producer if p.inputs[0] is not None else None
        if t1 is None or not is_standard(t1, "Transpose") or _perm(t1) != [0, 2, 1]:
            return f"{p.label()} is not Reshape(Transpose(perm=[0, 2, 1]))"
        r1 = t1.inputs[0].producer if t1.inputs[0] is not None else None
        if r1 is None or not is_standard(r1, "Reshape"):
            return f"{t1.label()} does not read a Reshape"
        k4 = r1.inputs[0]
        kd = dims_of(k4)
        if kd is None or len(kd) != 4:
            return f"%{k4.name if k4 else '?'} is not rank 4"
        e1 = shape_entries(r1.inputs[1] if len(r1.inputs) > 1 else None, inputs)
        e2 = shape_entries(p.inputs[1] if len(p.inputs) > 1 else None, inputs)
        if e1 != [-1, kd[2], kd[3]]:
            return f"{r1.label()} does not flatten the batch axes of %{k4.name}"  # type: ignore[union-attr]
        if e2 != [kd[0], kd[1], kd[3], kd[2]]:
            return f"{p.label()} does not restore the batch axes with the last two swapped"
        inner = _split_heads(k4, inputs)
        return inner if isinstance(inner, str) else (*inner[:3], inner[3] + [r1, t1, p])
    return f"%{kt.name} ({p.label()}) is not a transposed head split of the key"  # type: ignore[union-attr]


def _merge_heads(av: Value, q3: Value, nh: int, hv: int, inputs: set[int]) -> tuple[Value, list[Node]] | str:
    """Reshape(Transpose(av, perm=[0, 2, 1, 3]), [B, S, N*Hv]): (the merged value, nodes)."""
    us = av.users
    if len(us) != 1 or not is_standard(us[0], "Transpose") or _perm(us[0]) != [0, 2, 1, 3]:
        return f"%{av.name} is not read by one Transpose(perm=[0, 2, 1, 3])"
    t = us[0]
    us = t.outputs[0].users
    if len(us) != 1 or not is_standard(us[0], "Reshape") or us[0].inputs[0] is not t.outputs[0]:
        return f"%{t.outputs[0].name} is not read by one Reshape"
    r = us[0]
    e = shape_entries(r.inputs[1] if len(r.inputs) > 1 else None, inputs)
    qd = dims_of(q3)
    if e is None or qd is None:
        return f"cannot evaluate the shape of {r.label()} from the graph"
    copy_zero = not int(r.attr("allowzero", 0))
    ok = (len(e) == 3 and all(e[i] == qd[i] or (copy_zero and e[i] == 0) for i in (0, 1))
          and e[2] in (-1, nh * hv))
    if not ok:
        return f"{r.label()} does not merge the heads into [batch, seq, {nh * hv}] (shape {[_show(d) for d in e]})"
    return r.outputs[0], [t, r]


def _nan_guard(probs: Value, inputs: set[int]) -> list[Node] | str:
    """probs read by IsNaN and Where(IsNaN(probs), 0, probs) only: [IsNaN, Where]."""
    isnan = next((u for u in probs.users if is_standard(u, "IsNaN")), None)
    where = next((u for u in probs.users if is_standard(u, "Where")), None)
    if isnan is None or where is None:
        names = ", ".join(u.label() for u in probs.users)
        return f"the probabilities %{probs.name} have two readers ({names}) that are not a NaN guard"
    zero = _scalar(where.inputs[1], inputs, 4)
    if where.inputs[0] is not isnan.outputs[0] or zero != 0.0 or where.inputs[2] is not probs:
        return f"{where.label()} is not Where(IsNaN(p), 0, p)"
    if len(isnan.outputs[0].uses) != 1:
        return f"%{isnan.outputs[0].name} has readers besides the guard"
    return [isnan, where]


def _check_mask(mask: Value, batch: Dim, heads: int, s: Dim, t: Dim) -> str | None:
    md = dims_of(mask)
    if not _is_f32(mask):
        return f"mask %{mask.name} is not float32"
    if md is None or len(md) != 4:
        return f"mask %{mask.name} is not rank 4 (attention_bias is (B|1, N|1, S, T))"
    if md[0] not in (1, batch) or md[1] not in (1, heads) or md[2] != s or md[3] != t:
        shown = [_show(d) for d in md]
        return (f"mask %{mask.name} has shape {shown}; attention_bias must be (B|1, N|1, S, T) = "
                f"({_show(batch)}|1, {heads}|1, {_show(s)}, {_show(t)}) without broadcasting over S or T")
    return None


def _finite_mask(mask: Value, inputs: set[int]) -> str | None:
    """None when every value the mask can take is finite (a constant, or Where of finite constants)."""
    t = constant(mask, inputs)
    why = (f"the NaN guard turns fully masked rows into zeros, and mask %{mask.name} may hold -inf or NaN "
           "(MultiHeadAttention would give NaN there)")
    if t is not None:
        if t.dtype.is_native and bool(np.all(np.isfinite(t.numpy()))):
            return None
        return why + ": it is a constant with non-finite values"
    p = mask.producer
    if p is not None and is_standard(p, "Where") and len(p.inputs) == 3:
        vals = [constant(p.inputs[i], inputs) for i in (1, 2)]
        if all(v is not None and v.dtype.is_native and bool(np.all(np.isfinite(v.numpy()))) for v in vals):
            return None
        return why + f": {p.label()} chooses between values that are not all finite constants"
    return why + f": it comes from {p.label() if p else 'a graph input'}"


def _private(nodes: list[Node], out: Value) -> str | None:
    """Every value inside the core is read only by the core (or by Shape, which reads no data): otherwise
    fusing would leave a second copy of the work, or change a value someone else sees."""
    inside = {id(n) for n in nodes}
    for n in nodes:
        for v in n.outputs:
            if v is out:
                continue
            if v.is_graph_output():
                return f"%{v.name} inside the attention core is a graph output"
            for u in v.users:
                if id(u) not in inside and not is_standard(u, "Shape"):
                    return f"%{v.name} inside the attention core is also read by {u.label()}"
    return None
