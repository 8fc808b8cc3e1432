"""Tensor and shape ops: creation, reshaping, indexing, casting, resizing, sequences and optionals.

Semantics follow ONNX (opsets 13 .. 23, older forms where models still use them) as ONNX Runtime 1.32
computes them; where ONNX leaves a choice open (tie order of TopK, Unique's order) the comment says what
is done. Index inputs may be int32 or int64 and negative.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...ir import DType
from ..dtypes import cast, ir_dtype, round_half_away, torch_dtype
from ..registry import OpContext, register

MOVE = ("data_movement",)


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _scalar(t: torch.Tensor) -> Any:
    return t.reshape(-1)[0].item()


# ------------------------------------------------------------------------------------------- basics
@register("Identity", since=1, traits=MOVE)
def identity(ctx: OpContext, x: Any) -> Any:
    return x


@register("Constant", since=1)
def constant(
    ctx: OpContext,
    value: torch.Tensor | None = None,
    value_float: float | None = None,
    value_floats: list[float] | None = None,
    value_int: int | None = None,
    value_ints: list[int] | None = None,
    value_string: Any = None,
    value_strings: Any = None,
    sparse_value: Any = None,
) -> torch.Tensor:
    if value is not None:
        return value
    if value_float is not None:
        return torch.tensor(value_float, dtype=torch.float32)
    if value_floats is not None:
        return torch.tensor(value_floats, dtype=torch.float32)
    if value_int is not None:
        return torch.tensor(value_int, dtype=torch.int64)
    if value_ints is not None:
        return torch.tensor(value_ints, dtype=torch.int64)
    if value_string is not None or value_strings is not None:
        raise ctx.fail("string constants are not supported by the torch executor")
    raise ctx.fail("sparse or missing Constant value is not supported")


@register("ConstantOfShape", since=9)
def constant_of_shape(ctx: OpContext, shape: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
    dims = _ints(shape)
    if value is None:
        return torch.zeros(dims, dtype=torch.float32, device=shape.device)
    return value.reshape(-1)[:1].repeat(math.prod(dims)).reshape(dims)


@register("Shape", since=1, traits=("shape",))
def shape_op(ctx: OpContext, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
    # Python slicing clamps and wraps negative bounds exactly as ONNX specifies for start/end.
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


@register("Size", since=1, traits=("shape",))
def size_op(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


# ------------------------------------------------------------------------------------------- reshaping
@register("Reshape", since=5, traits=MOVE)
def reshape(ctx: OpContext, data: torch.Tensor, shape: torch.Tensor, allowzero: int = 0) -> torch.Tensor:
    dims = _ints(shape)
    if not allowzero:
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


@register("Flatten", since=1, traits=MOVE)
def flatten(ctx: OpContext, x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    axis = _axis(axis, x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Squeeze", since=1, until=13, traits=MOVE)
def squeeze_attr(ctx: OpContext, data: torch.Tensor, axes: list[int] | None = None) -> torch.Tensor:
    return _squeeze(data, axes)


@register("Squeeze", since=13, traits=MOVE)
def squeeze(ctx: OpContext, data: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    return _squeeze(data, None if axes is None else _ints(axes))


# Squeeze/Unsqueeze through torch's own ops: always views, where reshape would copy a strided input
# (a Transpose or Expand output).
def _squeeze(data: torch.Tensor, axes: list[int] | None) -> torch.Tensor:
    if axes is None:
        return data.squeeze()
    return data.squeeze(tuple(_axis(a, data.dim()) for a in axes))


@register("Unsqueeze", since=1, until=13, traits=MOVE)
def unsqueeze_attr(ctx: OpContext, data: torch.Tensor, axes: list[int]) -> torch.Tensor:
    return _unsqueeze(data, axes)


@register("Unsqueeze", since=13, traits=MOVE)
def unsqueeze(ctx: OpContext, data: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    return _unsqueeze(data, _ints(axes))


def _unsqueeze(data: torch.Tensor, axes: list[int]) -> torch.Tensor:
    rank = data.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        data = data.unsqueeze(a)
    return data


@register("Transpose", since=1, traits=MOVE)
def transpose(ctx: OpContext, data: torch.Tensor, perm: list[int] | None = None) -> torch.Tensor:
    if perm is None:
        perm = list(range(data.dim()))[::-1]
    # Contiguous, not a strided view: a MatMul reading a transposed view takes another BLAS path whose sums
    # differ in the last bit (AVX-512), and then a graph computes other values than its constant-folded self.
    return data.permute(perm).contiguous()


@register("Concat", since=4, traits=MOVE)
def concat(ctx: OpContext, *inputs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(inputs, dim=axis)


@register("Split", since=2, until=13, traits=MOVE)
def split_attr(ctx: OpContext, x: torch.Tensor, axis: int = 0, split: list[int] | None = None) -> tuple:
    return _split(ctx, x, axis, split, None)


@register("Split", since=13, until=18, traits=MOVE)
def split13(ctx: OpContext, x: torch.Tensor, split: torch.Tensor | None = None, axis: int = 0) -> tuple:
    return _split(ctx, x, axis, None if split is None else _ints(split), None)


@register("Split", since=18, traits=MOVE)
def split18(
    ctx: OpContext,
    x: torch.Tensor,
    split: torch.Tensor | None = None,
    axis: int = 0,
    num_outputs: int | None = None,
) -> tuple:
    return _split(ctx, x, axis, None if split is None else _ints(split), num_outputs)


def _split(ctx: OpContext, x: torch.Tensor, axis: int, sizes: list[int] | None, num: int | None) -> tuple:
    axis = _axis(axis, x.dim())
    if sizes is None:
        n = num if num is not None else ctx.n_outputs
        dim = x.shape[axis]
        if num is None:
            if dim % n:
                raise ctx.fail(f"cannot split axis {axis} of size {dim} into {n} equal parts")
            sizes = [dim // n] * n
        else:  # opset 18: ceil-sized chunks, the last one smaller
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return tuple(torch.split(x, sizes, dim=axis))


@register("Slice", since=1, until=10, traits=MOVE)
def slice_attr(
    ctx: OpContext, data: torch.Tensor, starts: list[int], ends: list[int], axes: list[int] | None = None
) -> torch.Tensor:
    return _slice(data, starts, ends, axes, None)


@register("Slice", since=10, traits=MOVE)
def slice_op(
    ctx: OpContext,
    data: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    axes: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    return _slice(
        data,
        _ints(starts),
        _ints(ends),
        None if axes is None else _ints(axes),
        None if steps is None else _ints(steps),
    )


def _slice(
    data: torch.Tensor, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None
) -> torch.Tensor:
    rank = data.dim()
    axes = list(range(len(starts))) if axes is None else [_axis(a, rank) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    idx: list[Any] = [slice(None)] * rank
    neg: list[tuple[int, int, int, int]] = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        dim = data.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            idx[a] = slice(s, e, st)
        else:  # torch slices forward only: gather the indices instead
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            neg.append((a, s, e, st))
    out = data[tuple(idx)]
    for a, s, e, st in neg:
        out = out.index_select(a, torch.arange(s, e, st, device=data.device))
    return out


# ------------------------------------------------------------------------------------------- indexing
def _fix_index(idx: torch.Tensor, dim: int) -> torch.Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + dim, idx)


@register("Gather", since=1, traits=MOVE)
def gather(ctx: OpContext, data: torch.Tensor, indices: torch.Tensor, axis: int = 0) -> torch.Tensor:
    axis = _axis(axis, data.dim())
    idx = _fix_index(indices, data.shape[axis])
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(data.shape[:axis] + idx.shape + data.shape[axis + 1 :])


@register("GatherElements", since=11, traits=MOVE)
def gather_elements(ctx: OpContext, data: torch.Tensor, indices: torch.Tensor, axis: int = 0) -> torch.Tensor:
    axis = _axis(axis, data.dim())
    return torch.gather(data, axis, _fix_index(indices, data.shape[axis]))


def _nd_linear(data_shape: tuple[int, ...], indices: torch.Tensor) -> torch.Tensor:
    """Linear offsets into the first k dims of `data_shape` for an index tensor of shape (..., k)."""
    k = indices.shape[-1]
    lin = torch.zeros(indices.shape[:-1], dtype=torch.int64, device=indices.device)
    for j in range(k):
        lin = lin * data_shape[j] + _fix_index(indices[..., j], data_shape[j])
    return lin


@register("GatherND", since=11, traits=MOVE)
def gather_nd(ctx: OpContext, data: torch.Tensor, indices: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    b = batch_dims
    batch = data.shape[:b]
    nb = math.prod(batch)
    k = indices.shape[-1]
    inner = data.shape[b:]
    mid = indices.shape[b:-1]
    d2 = data.reshape(nb, math.prod(inner[:k]), *inner[k:])
    lin = _nd_linear(inner, indices.reshape(nb, -1, k))  # (nb, n_mid)
    rows = torch.arange(nb, device=data.device).unsqueeze(1)
    out = d2[rows, lin]
    return out.reshape(*batch, *mid, *inner[k:])


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register("ScatterND", since=11)
def scatter_nd(
    ctx: OpContext, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "none"
) -> torch.Tensor:
    k = indices.shape[-1]
    rest = data.shape[k:]
    d2 = data.reshape(math.prod(data.shape[:k]), *rest)
    lin = _nd_linear(data.shape, indices).reshape(-1)
    u2 = updates.reshape(-1, *rest).to(data.dtype)
    if reduction == "none":
        out = d2.index_put((lin,), u2)
    elif reduction == "add":
        out = d2.index_put((lin,), u2, accumulate=True)
    elif reduction in _SCATTER_REDUCE:
        index = lin.reshape(-1, *([1] * len(rest))).expand_as(u2)
        out = d2.scatter_reduce(0, index, u2, _SCATTER_REDUCE[reduction], include_self=True)
    else:
        raise ctx.fail(f"reduction {reduction!r} is not supported")
    return out.reshape(data.shape)


@register("ScatterElements", since=11)
@register("Scatter", since=9, until=11)
def scatter_elements(
    ctx: OpContext,
    data: torch.Tensor,
    indices: torch.Tensor,
    updates: torch.Tensor,
    axis: int = 0,
    reduction: str = "none",
) -> torch.Tensor:
    axis = _axis(axis, data.dim())
    idx = _fix_index(indices, data.shape[axis])
    updates = updates.to(data.dtype)
    if reduction == "none":
        return data.scatter(axis, idx, updates)
    if reduction not in _SCATTER_REDUCE:
        raise ctx.fail(f"reduction {reduction!r} is not supported")
    return data.scatter_reduce(axis, idx, updates, _SCATTER_REDUCE[reduction], include_self=True)


@register("Expand", since=8, traits=MOVE)
def expand(ctx: OpContext, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    # Bidirectional broadcast: a 1 in `shape` keeps the input's size.
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@register("Tile", since=6, traits=MOVE)
def tile(ctx: OpContext, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat(_ints(repeats))


@register("Where", since=9, traits=("elementwise",))
def where(ctx: OpContext, condition: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(condition, x, y)


@register("NonZero", since=9)
def nonzero(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0:
        return torch.zeros((0, int(bool(x))), dtype=torch.int64, device=x.device)
    return torch.nonzero(x).T.contiguous()


@register("Compress", since=9, traits=MOVE)
def compress(
    ctx: OpContext, x: torch.Tensor, condition: torch.Tensor, axis: int | None = None
) -> torch.Tensor:
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = _axis(axis, x.dim())
    cond = condition.reshape(-1)[: x.shape[axis]].to(torch.bool)
    return x.index_select(axis, torch.nonzero(cond).reshape(-1))


# ------------------------------------------------------------------------------------------- padding
@register("Pad", since=2, until=11)
def pad_attr(
    ctx: OpContext, data: torch.Tensor, pads: list[int], mode: str = "constant", value: float = 0.0
) -> torch.Tensor:
    return _pad(ctx, data, pads, mode, value, None)


@register("Pad", since=11)
def pad(
    ctx: OpContext,
    data: torch.Tensor,
    pads: torch.Tensor,
    constant_value: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
    mode: str = "constant",
) -> torch.Tensor:
    value = 0 if constant_value is None or constant_value.numel() == 0 else _scalar(constant_value)
    return _pad(ctx, data, _ints(pads), mode, value, None if axes is None else _ints(axes))


def _pad(
    ctx: OpContext, data: torch.Tensor, pads: list[int], mode: str, value: Any, axes: list[int] | None
) -> torch.Tensor:
    rank = data.dim()
    axes = list(range(rank)) if axes is None else [_axis(a, rank) for a in axes]
    n = len(axes)
    begin = dict.fromkeys(range(rank), 0)
    end = dict.fromkeys(range(rank), 0)
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + n]
    if mode == "constant":
        flat: list[int] = []
        for a in reversed(range(rank)):  # F.pad lists the last axis first
            flat += [begin[a], end[a]]
        return F.pad(data, flat, value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise ctx.fail(f"pad mode {mode!r} is not supported")
    out = data
    for a in range(rank):
        if begin[a] == 0 and end[a] == 0:
            continue
        # negative pads crop first; the padding then reflects/wraps within what is left (as ORT does)
        lo, hi = max(-begin[a], 0), max(-end[a], 0)
        if lo or hi:
            out = out.narrow(a, lo, out.shape[a] - lo - hi)
        dim = out.shape[a]
        pos = torch.arange(-max(begin[a], 0), dim + max(end[a], 0), device=data.device)
        if mode == "edge":
            src = pos.clamp(0, dim - 1)
        elif mode == "wrap":
            src = pos.remainder(dim)
        else:  # reflect about the first and last element (period 2 * (dim - 1))
            period = max(2 * (dim - 1), 1)
            m = pos.remainder(period)
            src = torch.where(m >= dim, period - m, m)
        out = out.index_select(a, src)
    return out


@register("CenterCropPad", since=18)
def center_crop_pad(
    ctx: OpContext, x: torch.Tensor, shape: torch.Tensor, axes: list[int] | None = None
) -> torch.Tensor:
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [_axis(a, rank) for a in axes]
    out = x
    for a, want in zip(axes, _ints(shape)):
        have = out.shape[a]
        if want < have:  # crop: the extra element goes to the end (ONNX rounds the start down)
            start = (have - want) // 2
            out = out.narrow(a, start, want)
        elif want > have:
            before = (want - have) // 2
            flat = [0, 0] * (rank - 1 - a) + [before, want - have - before]
            out = F.pad(out, flat)
    return out


# ------------------------------------------------------------------------------------------- casting
@register("Cast", since=6, traits=("cast",))
def cast_op(
    ctx: OpContext, x: torch.Tensor, to: int, saturate: int = 1, round_mode: str = "up"
) -> torch.Tensor:
    try:
        return cast(x, DType(to), saturate=bool(saturate))
    except TypeError as e:
        raise ctx.fail(str(e)) from None


@register("CastLike", since=15, traits=("cast",))
def cast_like(
    ctx: OpContext, x: torch.Tensor, target: torch.Tensor, saturate: int = 1, round_mode: str = "up"
) -> torch.Tensor:
    to = ctx.in_dtype(1) or ir_dtype(target.dtype)
    try:
        return cast(x, to, saturate=bool(saturate))
    except TypeError as e:
        raise ctx.fail(str(e)) from None


# ------------------------------------------------------------------------------------------- generators
@register("Range", since=11)
def range_op(ctx: OpContext, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    s, lim, d = _scalar(start), _scalar(limit), _scalar(delta)
    n = max(math.ceil((lim - s) / d), 0)
    if start.is_floating_point():
        # start + i * delta, computed in double and rounded once (ORT accumulates in the type: equal
        # whenever the values are exact, as for the dyadic steps models use)
        vals = torch.arange(n, dtype=torch.float64) * d + s
        return vals.to(start.dtype)
    return torch.arange(s, s + n * d, d, dtype=start.dtype)[:n]


@register("EyeLike", since=9)
def eye_like(ctx: OpContext, x: torch.Tensor, dtype: int | None = None, k: int = 0) -> torch.Tensor:
    rows, cols = x.shape
    eye = torch.arange(rows).unsqueeze(1) + k == torch.arange(cols).unsqueeze(0)
    return eye.to(torch_dtype(DType(dtype)) if dtype is not None else x.dtype)


@register("OneHot", since=9)
def one_hot(
    ctx: OpContext, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor, axis: int = -1
) -> torch.Tensor:
    d = int(_scalar(depth))
    idx = indices.to(torch.int64)  # float indices truncate, as ORT casts them
    idx = torch.where(idx < 0, idx + d, idx)
    hot = idx.unsqueeze(-1) == torch.arange(d, device=idx.device)  # out-of-range rows stay all off
    hot = torch.movedim(hot, -1, _axis(axis, indices.dim() + 1))
    return torch.where(hot, values[1], values[0])


@register("Trilu", since=14)
def trilu(ctx: OpContext, x: torch.Tensor, k: torch.Tensor | None = None, upper: int = 1) -> torch.Tensor:
    diag = 0 if k is None else int(_scalar(k))
    return torch.triu(x, diag) if upper else torch.tril(x, diag)


# ------------------------------------------------------------------------------------------- scans / sorting
@register("CumSum", since=11)
def cumsum(
    ctx: OpContext, x: torch.Tensor, axis: torch.Tensor, exclusive: int = 0, reverse: int = 0
) -> torch.Tensor:
    a = _axis(int(_scalar(axis)), x.dim())
    y = x.flip(a) if reverse else x
    c = torch.cumsum(y, dim=a, dtype=x.dtype)
    if exclusive:
        c = torch.cat([torch.zeros_like(c.narrow(a, 0, 1)), c.narrow(a, 0, c.shape[a] - 1)], dim=a)
    return c.flip(a) if reverse else c


@register("TopK", since=10)
def topk(
    ctx: OpContext, x: torch.Tensor, k: torch.Tensor, axis: int = -1, largest: int = 1, sorted: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    return _topk(x, int(_scalar(k)), axis, bool(largest))


@register("TopK", since=1, until=10)
def topk1(ctx: OpContext, x: torch.Tensor, k: int, axis: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    return _topk(x, k, axis, True)


def _topk(x: torch.Tensor, k: int, axis: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # A stable sort puts equal values in index order, which is ONNX's tie rule (ORT agrees). The
    # output is sorted even when sorted=0 (ONNX leaves that order unspecified).
    vals, idx = torch.sort(x, dim=axis, descending=largest, stable=True)
    return vals.narrow(axis, 0, k), idx.narrow(axis, 0, k)


def _arg(x: torch.Tensor, axis: int, keepdims: int, select_last_index: int, fn: Any) -> torch.Tensor:
    axis = _axis(axis, x.dim())
    if select_last_index:
        n = x.shape[axis]
        out = (n - 1) - fn(x.flip(axis), dim=axis, keepdim=bool(keepdims))
    else:
        out = fn(x, dim=axis, keepdim=bool(keepdims))  # torch returns the first extreme index
    return out


@register("ArgMax", since=1)
def argmax(
    ctx: OpContext, data: torch.Tensor, axis: int = 0, keepdims: int = 1, select_last_index: int = 0
) -> torch.Tensor:
    return _arg(data, axis, keepdims, select_last_index, torch.argmax)


@register("ArgMin", since=1)
def argmin(
    ctx: OpContext, data: torch.Tensor, axis: int = 0, keepdims: int = 1, select_last_index: int = 0
) -> torch.Tensor:
    return _arg(data, axis, keepdims, select_last_index, torch.argmin)


@register("Unique", since=11)
def unique(ctx: OpContext, x: torch.Tensor, axis: int | None = None, sorted: int = 1) -> tuple:
    """Outputs Y, indices (first occurrence), inverse_indices, counts; sorted=0 orders Y by first use."""
    if axis is None:
        flat = x.reshape(-1)
        y, inv, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
        ax, n = 0, flat.shape[0]
    else:
        ax = _axis(axis, x.dim())
        y, inv, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True, dim=ax)
        n = x.shape[ax]
    pos = torch.arange(n, device=x.device)
    first = torch.full((y.shape[ax],), n, dtype=torch.int64, device=x.device).scatter_reduce(
        0, inv, pos, "amin", include_self=True
    )
    if not sorted:
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=x.device)
        y, first, counts, inv = y.index_select(ax, order), first[order], counts[order], rank[inv]
    return y, first, inv.to(torch.int64), counts.to(torch.int64)


# ------------------------------------------------------------------------------------------- layout
@register("DepthToSpace", since=1, traits=MOVE)
def depth_to_space(ctx: OpContext, x: torch.Tensor, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    b, c, h, w = x.shape
    bs = blocksize
    if mode == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:  # CRD
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


@register("SpaceToDepth", since=1, traits=MOVE)
def space_to_depth(ctx: OpContext, x: torch.Tensor, blocksize: int) -> torch.Tensor:
    b, c, h, w = x.shape
    bs = blocksize
    t = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * bs * bs, h // bs, w // bs)


@register("ReverseSequence", since=10, traits=MOVE)
def reverse_sequence(
    ctx: OpContext, x: torch.Tensor, sequence_lens: torch.Tensor, batch_axis: int = 1, time_axis: int = 0
) -> torch.Tensor:
    t_len, n = x.shape[time_axis], x.shape[batch_axis]
    t = torch.arange(t_len, device=x.device).unsqueeze(1)  # (T, 1)
    lens = sequence_lens.to(torch.int64).reshape(1, n)
    src = torch.where(t < lens, lens - 1 - t, t)  # (T, B): time index to read
    if time_axis > batch_axis:
        src = src.T
    shape = [1] * x.dim()
    shape[time_axis], shape[batch_axis] = t_len, n
    return torch.gather(x, time_axis, src.reshape(shape).expand_as(x))


@register("Det", since=11)
def det(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.det(x)


# ------------------------------------------------------------------------------------------- dropout
@register("Dropout", since=7, until=12)
def dropout_attr(ctx: OpContext, data: torch.Tensor, ratio: float = 0.5, is_test: int = 0) -> Any:
    # Inference semantics from opset 7 on. ORT returns an all-False mask here (an all-True one from
    # opset 12); ONNX's reference says True. We follow ORT.
    if ctx.n_outputs < 2:
        return data
    return data, torch.zeros(data.shape, dtype=torch.bool, device=data.device)


@register("Dropout", since=12, traits=("random",))
def dropout(
    ctx: OpContext,
    data: torch.Tensor,
    ratio: torch.Tensor | None = None,
    training_mode: torch.Tensor | None = None,
    seed: int | None = None,
) -> Any:
    training = training_mode is not None and bool(_scalar(training_mode))
    r = 0.5 if ratio is None else float(_scalar(ratio))
    return _dropout(ctx, data, r, training)


def _dropout(ctx: OpContext, data: torch.Tensor, ratio: float, training: bool) -> Any:
    if training and ratio > 0:
        mask = torch.rand_like(data, dtype=torch.float32) >= ratio
        out = data * mask.to(data.dtype) / (1.0 - ratio)
    else:
        out = data
        mask = None
    if ctx.n_outputs < 2:
        return out
    if mask is None:
        mask = torch.ones(data.shape, dtype=torch.bool, device=data.device)
    return out, mask


# ------------------------------------------------------------------------------------------- Resize
_COORD = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
    "tf_half_pixel_for_nn",
)


@register("Upsample", since=7, until=10)
def upsample7(
    ctx: OpContext, x: torch.Tensor, scales: torch.Tensor | list[float] | None = None, mode: str = "nearest"
) -> torch.Tensor:
    sc = [
        float(s) for s in (scales.reshape(-1).tolist() if isinstance(scales, torch.Tensor) else scales or [])
    ]
    return _resize(ctx, x, None, sc, None, mode=mode, coord="asymmetric", nearest="simple")


@register("Resize", since=10, until=11)
def resize10(ctx: OpContext, x: torch.Tensor, scales: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    return _resize(
        ctx,
        x,
        None,
        [float(s) for s in scales.tolist()],
        None,
        mode=mode,
        coord="asymmetric",
        nearest="simple",
    )


@register("Resize", since=11)
def resize(
    ctx: OpContext,
    x: torch.Tensor,
    roi: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
    antialias: int = 0,
    axes: list[int] | None = None,
    coordinate_transformation_mode: str = "half_pixel",
    cubic_coeff_a: float = -0.75,
    exclude_outside: int = 0,
    extrapolation_value: float = 0.0,
    keep_aspect_ratio_policy: str = "stretch",
    mode: str = "nearest",
    nearest_mode: str = "round_prefer_floor",
) -> torch.Tensor:
    if antialias:
        raise ctx.fail("antialias=1 is not supported")
    rank = x.dim()
    ax = list(range(rank)) if axes is None else [_axis(a, rank) for a in axes]
    sc = None if scales is None or scales.numel() == 0 else [float(s) for s in scales.tolist()]
    sz = None if sizes is None or sizes.numel() == 0 else _ints(sizes)
    r = None if roi is None or roi.numel() == 0 else [float(v) for v in roi.tolist()]
    full_scales = [1.0] * rank
    full_sizes: list[int] | None = None
    if sc is not None:
        for a, s in zip(ax, sc):
            full_scales[a] = s
    elif sz is not None:
        full_sizes = list(x.shape)
        # ORT computes scales and sizes in float32: do the same so tie-breaking coordinates agree.
        if keep_aspect_ratio_policy == "stretch":
            for a, s in zip(ax, sz):
                full_sizes[a] = s
                full_scales[a] = float(np.float32(s) / np.float32(x.shape[a]))
        else:
            ratios = [np.float32(s) / np.float32(x.shape[a]) for a, s in zip(ax, sz)]
            common = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
            for a in ax:
                full_scales[a] = float(common)
                full_sizes[a] = int(np.floor(common * np.float32(x.shape[a]) + np.float32(0.5)))
    else:
        raise ctx.fail("Resize needs scales or sizes")
    full_roi = None
    if r is not None:
        n = len(ax)
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(ax):
            full_roi[a], full_roi[a + rank] = r[i], r[i + n]
    return _resize(
        ctx,
        x,
        full_roi,
        full_scales,
        full_sizes,
        mode=mode,
        coord=coordinate_transformation_mode,
        nearest=nearest_mode,
        cubic_a=cubic_coeff_a,
        exclude_outside=bool(exclude_outside),
        extrapolation=extrapolation_value,
    )


def _resize(
    ctx: OpContext,
    x: torch.Tensor,
    roi: list[float] | None,
    scales: list[float],
    sizes: list[int] | None,
    *,
    mode: str,
    coord: str,
    nearest: str,
    cubic_a: float = -0.75,
    exclude_outside: bool = False,
    extrapolation: float = 0.0,
) -> torch.Tensor:
    """Separable N-d resize, one axis at a time, with coordinates computed in float32 as ORT does (so the
    nearest index chosen at a tie is the same)."""
    if coord not in _COORD:
        raise ctx.fail(f"coordinate_transformation_mode {coord!r} is not supported")
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.fail(f"mode {mode!r} is not supported")
    if mode != "nearest" and not x.is_floating_point():
        raise ctx.fail(f"mode {mode!r} on {x.dtype} input is not supported")
    rank = x.dim()
    out_shape = [
        sizes[a] if sizes is not None else int(np.float32(x.shape[a]) * np.float32(scales[a]))
        for a in range(rank)
    ]
    if out_shape == list(x.shape):
        return x  # ORT copies the input whenever the output shape equals it, whatever the scales say
    out = x
    for a in range(rank):
        in_len = x.shape[a]
        out_len = out_shape[a]  # floor(in * scale), the product in float32 as ORT computes it
        scale = scales[a]
        if out_len == in_len and scale == 1.0 and coord != "tf_crop_and_resize":
            continue
        xo = _orig_coord(coord, out_len, in_len, scale, None if roi is None else (roi[a], roi[a + rank]))
        outside = (xo < 0) | (xo > in_len - 1) if coord == "tf_crop_and_resize" else None
        if mode == "nearest":
            idx = _nearest_index(nearest, xo, scale < 1).clamp(0, in_len - 1)
            out = out.index_select(a, idx)
        elif mode == "linear":
            # ORT's weights: |x - x0| and |x - x1|, both 0.5 where the two taps coincide at the edge
            xc = xo.clamp(0, in_len - 1)
            i0 = xc.to(torch.int64).clamp(max=in_len - 1)
            i1 = (i0 + 1).clamp(max=in_len - 1)
            w1 = (xc - i0.to(torch.float32)).abs()
            w0 = (xc - i1.to(torch.float32)).abs()
            same = i0 == i1
            half = torch.full_like(w0, 0.5)
            w0, w1 = torch.where(same, half, w0), torch.where(same, half, w1)
            out = _combine(out, a, [i0, i1], [w0, w1])
        else:
            base = xo.floor()
            t = xo - base
            taps = [base.to(torch.int64) + k for k in (-1, 0, 1, 2)]
            ws = _cubic_weights(t, cubic_a)
            if exclude_outside:
                ws = [torch.where((i >= 0) & (i < in_len), w, torch.zeros_like(w)) for i, w in zip(taps, ws)]
                total = ws[0] + ws[1] + ws[2] + ws[3]
                ws = [w / total for w in ws]
            taps = [i.clamp(0, in_len - 1) for i in taps]
            out = _combine(out, a, taps, ws)
        if outside is not None and outside.any():
            shape = [1] * rank
            shape[a] = out_len
            fill = torch.tensor(extrapolation, dtype=out.dtype, device=out.device)
            out = torch.where(outside.reshape(shape), fill, out)
    return out


def _orig_coord(
    coord: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None
) -> torch.Tensor:
    xr = torch.arange(out_len, dtype=torch.float32)
    s = torch.tensor(scale, dtype=torch.float32)
    if coord == "half_pixel":
        return (xr + 0.5) / s - 0.5
    if coord == "half_pixel_symmetric":
        adj = torch.tensor(out_len, dtype=torch.float32) / (s * in_len)
        center = torch.tensor(in_len / 2, dtype=torch.float32)
        offset = center * (1 - adj)
        # ORT finishes this one in double (its 0.5 literals are doubles) and rounds once to float
        d = torch.float64
        return (offset.to(d) + (xr.to(d) + 0.5) / s.to(d) - 0.5).to(torch.float32)
    if coord == "pytorch_half_pixel":
        return (xr + 0.5) / s - 0.5 if out_len > 1 else torch.zeros_like(xr)
    if coord == "align_corners":
        if out_len == 1:
            return torch.zeros_like(xr)
        return xr * float(in_len - 1) / float(out_len - 1)
    if coord == "asymmetric":
        return xr / s
    if coord == "tf_half_pixel_for_nn":  # deprecated in opset 13, still in older detection models
        return (xr + 0.5) / s
    # tf_crop_and_resize
    start, end = roi if roi is not None else (0.0, 1.0)
    s0, e0 = np.float32(start), np.float32(end)
    if out_len > 1:
        return float(s0 * np.float32(in_len - 1)) + xr * float(e0 - s0) * float(in_len - 1) / float(
            out_len - 1
        )
    return torch.full_like(xr, float(np.float32(0.5 * float(s0 + e0) * (in_len - 1))))


def _nearest_index(mode: str, xo: torch.Tensor, downsample: bool) -> torch.Tensor:
    if mode in ("round_prefer_floor", "round_prefer_ceil"):
        # ORT (since its fix of issue 28291) takes a fraction within 1e-6 of 0.5 as a tie; else C round()
        fl = torch.floor(xo)
        tie = (xo - fl - 0.5).abs() <= 1e-6
        r = torch.where(tie, fl + 1 if mode == "round_prefer_ceil" else fl, round_half_away(xo))
    elif mode == "floor":
        r = torch.floor(xo)
    elif mode == "ceil":
        r = torch.ceil(xo)
    elif mode == "simple":  # Resize-10 / Upsample: ORT truncates, or takes the ceiling when shrinking
        r = torch.ceil(xo) if downsample else torch.trunc(xo)
    else:
        raise ValueError(f"nearest_mode {mode!r} is not supported")
    return r.to(torch.int64)


def _cubic_weights(t: torch.Tensor, a: float) -> list[torch.Tensor]:
    """Keys cubic convolution weights of the taps at offsets -1, 0, 1, 2 from floor(x), t = x - floor(x)."""

    def near(d: torch.Tensor) -> torch.Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: torch.Tensor) -> torch.Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _combine(
    x: torch.Tensor, axis: int, taps: list[torch.Tensor], weights: list[torch.Tensor]
) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    acc = None
    for i, w in zip(taps, weights):
        term = x.index_select(axis, i) * w.to(x.dtype).reshape(shape)
        acc = term if acc is None else acc + term
    assert acc is not None
    return acc


# ------------------------------------------------------------------------------------------- sequences
@register("SequenceEmpty", since=11)
def sequence_empty(ctx: OpContext, dtype: int | None = None) -> list:
    return []


@register("SequenceConstruct", since=11)
def sequence_construct(ctx: OpContext, *inputs: torch.Tensor) -> list:
    return list(inputs)


def _pos(seq: list, position: torch.Tensor | None, insert: bool = False) -> int:
    if position is None:
        return len(seq) if insert else len(seq) - 1
    p = int(_scalar(position))
    return p + len(seq) if p < 0 else p


@register("SequenceAt", since=11)
def sequence_at(ctx: OpContext, seq: list, position: torch.Tensor) -> torch.Tensor:
    return seq[_pos(seq, position)]


@register("SequenceInsert", since=11)
def sequence_insert(
    ctx: OpContext, seq: list, tensor: torch.Tensor, position: torch.Tensor | None = None
) -> list:
    out = list(seq)  # sequences are values: never modify the input list
    out.insert(_pos(seq, position, insert=True), tensor)
    return out


@register("SequenceErase", since=11)
def sequence_erase(ctx: OpContext, seq: list, position: torch.Tensor | None = None) -> list:
    out = list(seq)
    del out[_pos(seq, position)]
    return out


@register("SequenceLength", since=11)
def sequence_length(ctx: OpContext, seq: list) -> torch.Tensor:
    return torch.tensor(len(seq), dtype=torch.int64)


@register("SplitToSequence", since=11)
def split_to_sequence(
    ctx: OpContext, x: torch.Tensor, split: torch.Tensor | None = None, axis: int = 0, keepdims: int = 1
) -> list:
    axis = _axis(axis, x.dim())
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        return [p.squeeze(axis) for p in parts] if not keepdims else parts
    if split.dim() == 0:
        return list(torch.split(x, int(split), dim=axis))
    return list(torch.split(x, _ints(split), dim=axis))


@register("ConcatFromSequence", since=11)
def concat_from_sequence(ctx: OpContext, seq: list, axis: int, new_axis: int = 0) -> torch.Tensor:
    if new_axis:
        return torch.stack(seq, dim=_axis(axis, seq[0].dim() + 1))
    return torch.cat(seq, dim=axis)


# ------------------------------------------------------------------------------------------- optionals
@register("Optional", since=15)
def optional(ctx: OpContext, x: Any = None, type: Any = None) -> Any:
    return x  # an empty optional is None


@register("OptionalHasElement", since=15)
def optional_has_element(ctx: OpContext, x: Any = None) -> torch.Tensor:
    return torch.tensor(x is not None)


@register("OptionalGetElement", since=15)
def optional_get_element(ctx: OpContext, x: Any) -> Any:
    if x is None:
        raise ctx.fail("OptionalGetElement on an empty optional")
    return x
