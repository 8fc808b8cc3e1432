"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare.

Two forms per op: `axes` as an attribute (ReduceSum before opset 13, the others before 18) and `axes` as
an optional second input (with `noop_with_empty_axes`). No axes means all axes. Results keep the input
dtype (torch would widen integer sums to int64). Reducing an empty set gives the op's identity
(0 for sums, 1 for Prod, -inf/+inf for Max/Min and LogSumExp), as ONNX specifies.
"""

from __future__ import annotations

import torch

from ..registry import OpContext, register
from .math import _WIDE, _from_ordered, _ordered


def _norm_axes(ctx: OpContext, axes: list[int], rank: int) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise ctx.fail(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank if rank else 0)
    if len(set(out)) != len(out):
        raise ctx.fail(f"axes {axes} repeat an axis")
    return tuple(sorted(out))


def _sum(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    if x.dtype in _WIDE or x.dtype == torch.uint64:
        return _from_ordered_sum(x, dims, keep)
    return torch.sum(x, dim=dims, keepdim=keep, dtype=x.dtype)


def _from_ordered_sum(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    # Unsigned sums wrap modulo 2**bits: sum in int64 (two's complement) and cast back.
    wide = x.to(torch.int64) if x.dtype in _WIDE else x.view(torch.int64)
    s = torch.sum(wide, dim=dims, keepdim=keep)
    return s.to(x.dtype) if x.dtype in _WIDE else s.view(torch.uint64)


def _extreme(x: torch.Tensor, dims: tuple[int, ...], keep: bool, largest: bool) -> torch.Tensor:
    dt = x.dtype
    xo = _ordered(x)
    if xo.numel() == 0:
        shape = [1 if i in dims else n for i, n in enumerate(x.shape)] if keep else \
            [n for i, n in enumerate(x.shape) if i not in dims]
        if dt.is_floating_point:
            fill = float("-inf") if largest else float("inf")
        elif dt == torch.bool:
            fill = not largest
        else:
            info = torch.iinfo(xo.dtype)
            fill = info.min if largest else info.max
        return _from_ordered(torch.full(shape, fill, dtype=xo.dtype, device=x.device), dt)
    fn = torch.amax if largest else torch.amin
    return _from_ordered(fn(xo, dim=dims, keepdim=keep), dt)


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    dt = x.dtype
    y = x.to(torch.int64) if dt in _WIDE else x
    for d in sorted(dims, reverse=True):
        y = torch.prod(y, dim=d, keepdim=keep, dtype=y.dtype)
    return y.to(dt)


def _mean(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    if x.dtype.is_floating_point:
        return torch.mean(x, dim=dims, keepdim=keep)
    # Integer mean: integer sum divided by the count, truncating (ORT's integer kernels).
    count = 1
    for d in dims:
        count *= x.shape[d]
    s = _sum(x, dims, keep)
    return torch.div(s.to(torch.int64), count, rounding_mode="trunc").to(x.dtype)


_KINDS = {
    "ReduceSum": lambda x, d, k: _sum(x, d, k),
    "ReduceMean": _mean,
    "ReduceMax": lambda x, d, k: _extreme(x, d, k, True),
    "ReduceMin": lambda x, d, k: _extreme(x, d, k, False),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: _sum(torch.abs(x), d, k),
    "ReduceL2": lambda x, d, k: _l2(x, d, k),
    "ReduceLogSum": lambda x, d, k: torch.log(_sum(x, d, k)),
    "ReduceLogSumExp": lambda x, d, k: _logsumexp(x, d, k),
    "ReduceSumSquare": lambda x, d, k: _sum(x * x, d, k),
}


def _l2(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    s = _sum(x * x, dims, keep)
    if x.dtype.is_floating_point:
        return torch.sqrt(s)
    # Integer L2: sqrt in double, truncated back to the integer type (ORT: (T)sqrt(sum)).
    return torch.sqrt(s.double()).to(x.dtype)


def _logsumexp(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    if x.numel() == 0:
        return torch.log(_sum(torch.exp(x), dims, keep))  # log(0) = -inf, the empty-set value
    return torch.logsumexp(x, dim=dims, keepdim=keep)


# With noop_with_empty_axes the reduction runs over no axis: each element is reduced alone, so the
# elementwise part of the op still applies (ORT: ReduceSumSquare -> x*x, ReduceLogSum -> log x).
_SINGLE = {
    "ReduceL1": torch.abs,
    "ReduceL2": lambda x: torch.sqrt(x * x) if x.dtype.is_floating_point else torch.abs(x),
    "ReduceLogSum": torch.log,
    "ReduceLogSumExp": lambda x: torch.log(torch.exp(x)),
    "ReduceSumSquare": lambda x: x * x,
}


def _reduce(ctx: OpContext, op: str, x: torch.Tensor, axes: list[int] | None, keepdims: int,
            noop_with_empty_axes: int) -> torch.Tensor:
    if not axes:
        if noop_with_empty_axes:
            return _SINGLE.get(op, torch.clone)(x)
        dims = tuple(range(x.dim()))
    else:
        dims = _norm_axes(ctx, list(axes), x.dim())
    if x.dim() == 0:
        return _KINDS[op](x.reshape(1), (0,), False).reshape(())
    if not dims:
        return x.clone()
    return _KINDS[op](x, dims, bool(keepdims))


def _register(op: str, input_axes_since: int) -> None:
    def with_attr(ctx: OpContext, x: torch.Tensor, axes: list[int] | None = None, keepdims: int = 1
                  ) -> torch.Tensor:
        return _reduce(ctx, op, x, axes, keepdims, 0)

    def with_input(ctx: OpContext, x: torch.Tensor, axes: torch.Tensor | None = None, keepdims: int = 1,
                   noop_with_empty_axes: int = 0) -> torch.Tensor:
        # Axes decide the output shape, so they are read on the host.
        ax = None if axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        return _reduce(ctx, op, x, ax, keepdims, noop_with_empty_axes)

    for fn, form in ((with_attr, "attribute"), (with_input, "input")):
        fn.__name__ = fn.__qualname__ = f"{op.lower()}_{form}_axes"
        fn.__doc__ = f"ONNX {op} with axes as an {form}."
    register(op, since=1, until=input_axes_since)(with_attr)
    register(op, since=input_axes_since)(with_input)


for _op in _KINDS:
    _register(_op, 13 if _op == "ReduceSum" else 18)
