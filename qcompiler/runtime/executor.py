"""Runs an IR graph with torch kernels from the op table. (Minimal core; extended with hooks, batching,
subgraphs and memory bounds.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..ir import AttrType, DType, Graph, Model, Node, Value
from .registry import OpContext, _load_ops, lookup


def to_torch(array: np.ndarray, dtype: DType | None = None) -> torch.Tensor:
    """A numpy array (storage dtype) as a torch tensor of the IR element type where torch has one."""
    arr = np.ascontiguousarray(array)
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    if dtype is DType.BFLOAT16:
        return t.view(torch.bfloat16)
    if dtype is DType.FLOAT8E4M3FN:
        return t.view(torch.float8_e4m3fn)
    if dtype is DType.FLOAT8E5M2:
        return t.view(torch.float8_e5m2)
    return t


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        import ml_dtypes

        np_dt = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
                 torch.float8_e5m2: ml_dtypes.float8_e5m2}[t.dtype]
        bits = t.view(torch.uint16 if t.dtype == torch.bfloat16 else torch.uint8).numpy()
        return bits.view(np_dt)
    return t.numpy()


def _attr_value(a: Any) -> Any:
    if a.type is AttrType.TENSOR:
        return to_torch(a.value.numpy(), a.value.dtype)
    if a.type is AttrType.TENSORS:
        return [to_torch(t.numpy(), t.dtype) for t in a.value]
    return a.value


def run(model: Model | Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute the graph; feeds and results are numpy arrays keyed by value name."""
    _load_ops()
    graph = model.graph if isinstance(model, Model) else model
    opsets = model.opset_imports if isinstance(model, Model) else {"": 21}
    env: dict[int, torch.Tensor] = {}
    for v in graph.inputs:
        if v.name in feeds:
            env[id(v)] = to_torch(np.asarray(feeds[v.name]), getattr(v.type, "dtype", None))
    for v in graph.initializers.values():
        if id(v) not in env:
            assert v.const is not None
            env[id(v)] = to_torch(v.const.numpy(), v.const.dtype)
    with torch.no_grad():
        for node in graph.nodes:
            _run_node(node, env, opsets)
    return {v.name: to_numpy(env[id(v)]) for v in graph.outputs}


def _run_node(node: Node, env: dict[int, torch.Tensor], opsets: dict[str, int]) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    opset = opsets.get(domain, opsets.get("ai.onnx", 1))
    entry = lookup(node.op_type, domain, opset)
    if entry is None:
        raise UnsupportedOpError(f"node {node.label()}: op {node.qualified_op} (opset {opset}) is not in the op table")
    ins: list[torch.Tensor | None] = [None if v is None else env[id(v)] for v in node.inputs]
    while ins and ins[-1] is None:
        ins.pop()
    attrs = {k: _attr_value(a) for k, a in node.attrs.items()}
    out = entry.fn(OpContext(node, opset), *ins, **attrs)
    outs = out if isinstance(out, tuple | list) else (out,)
    for v, t in zip(node.outputs, outs):
        env[id(v)] = t


__all__ = ["Value", "run", "to_numpy", "to_torch"]
