"""Control flow: If, Loop, Scan, SequenceMap. Bodies run through `ctx.run_subgraph`, which the executor
binds to the enclosing scope, so a body reads outer values directly (ONNX's lexical scoping)."""

from __future__ import annotations

from typing import Any

import torch

from ...ir import Graph, TensorType
from ..dtypes import torch_dtype
from ..registry import OpContext, register

CONTROL = ("control_flow",)


def _out(values: list[Any]) -> Any:
    return tuple(values)


@register("If", since=1, traits=CONTROL)
def if_op(ctx: OpContext, cond: torch.Tensor, then_branch: Graph, else_branch: Graph) -> Any:
    branch = then_branch if bool(cond.reshape(-1)[0]) else else_branch
    return _out(ctx.run_subgraph(branch, []))


@register("Loop", since=1, traits=CONTROL)
def loop(
    ctx: OpContext,
    M: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    *v_initial: Any,
    body: Graph,
) -> Any:
    """Runs while (M absent or i < M) and cond; body(i, cond, *carried) -> (cond, *carried, *scan_outputs).
    Scan outputs are stacked along a new axis 0."""
    n_carried = len(v_initial)
    n_scan = len(body.outputs) - 1 - n_carried
    trip = None if M is None else int(M.reshape(-1)[0])
    keep_going = True if cond is None else bool(cond.reshape(-1)[0])
    carried = list(v_initial)
    scans: list[list[torch.Tensor]] = [[] for _ in range(n_scan)]
    cond_t = torch.tensor(keep_going)
    i = 0
    while keep_going and (trip is None or i < trip):
        outs = ctx.run_subgraph(body, [torch.tensor(i, dtype=torch.int64), cond_t, *carried])
        cond_t = outs[0]
        keep_going = bool(cond_t.reshape(-1)[0])
        carried = list(outs[1 : 1 + n_carried])
        for k in range(n_scan):
            scans[k].append(outs[1 + n_carried + k])
        i += 1
    stacked = [torch.stack(s) if s else _empty_scan(body, 1 + n_carried + k) for k, s in enumerate(scans)]
    return _out(carried + stacked)


def _empty_scan(body: Graph, out_index: int) -> torch.Tensor:
    """A zero-iteration scan output: shape (0, *element shape) when the body declares it, else (0,)."""
    t = body.outputs[out_index].type
    if isinstance(t, TensorType):
        dims = [d if isinstance(d, int) else 0 for d in (t.shape or ())]
        return torch.zeros((0, *dims), dtype=torch_dtype(t.dtype))
    return torch.zeros((0,))


@register("Scan", since=9, traits=CONTROL)
def scan(
    ctx: OpContext,
    *inputs: torch.Tensor,
    body: Graph,
    num_scan_inputs: int,
    scan_input_axes: list[int] | None = None,
    scan_input_directions: list[int] | None = None,
    scan_output_axes: list[int] | None = None,
    scan_output_directions: list[int] | None = None,
) -> Any:
    """body(*state, *scan_slices) -> (*state, *scan_output_slices), once per position along each scan
    input's axis (reversed where its direction is 1); scan outputs are stacked along their axis."""
    m = num_scan_inputs
    n_state = len(inputs) - m
    state = list(inputs[:n_state])
    xs = list(inputs[n_state:])
    in_axes = [a + x.dim() if a < 0 else a for a, x in zip(scan_input_axes or [0] * m, xs)]
    in_dirs = scan_input_directions or [0] * m
    n_out = len(body.outputs) - n_state
    out_axes = scan_output_axes or [0] * n_out
    out_dirs = scan_output_directions or [0] * n_out
    length = xs[0].shape[in_axes[0]] if xs else 0
    ys: list[list[torch.Tensor]] = [[] for _ in range(n_out)]
    for t in range(length):
        slices = [x.select(a, length - 1 - t if d else t) for x, a, d in zip(xs, in_axes, in_dirs)]
        outs = ctx.run_subgraph(body, [*state, *slices])
        state = list(outs[:n_state])
        for k in range(n_out):
            ys[k].append(outs[n_state + k])
    results = []
    for k in range(n_out):
        seq = ys[k][::-1] if out_dirs[k] else ys[k]
        if not seq:
            results.append(_empty_scan(body, n_state + k))
            continue
        rank = seq[0].dim() + 1
        axis = out_axes[k] + rank if out_axes[k] < 0 else out_axes[k]
        results.append(torch.stack(seq, dim=axis))
    return _out(state + results)


@register("SequenceMap", since=17, traits=CONTROL)
def sequence_map(ctx: OpContext, input_sequence: list, *additional_inputs: Any, body: Graph) -> Any:
    """body runs once per element; sequence inputs give their i-th element, tensors are passed whole."""
    n = len(input_sequence)
    outs: list[list[torch.Tensor]] = [[] for _ in body.outputs]
    for i in range(n):
        args = [input_sequence[i]] + [a[i] if isinstance(a, list) else a for a in additional_inputs]
        for k, o in enumerate(ctx.run_subgraph(body, args)):
            outs[k].append(o)
    return _out(outs)
