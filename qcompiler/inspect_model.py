"""What `qcompiler inspect` reports about a model: ops, parameters, inputs/outputs, opsets, and which nodes a
target would quantize (and why not the others)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .ir import Model, TensorType


def _shape(t: Any) -> list[Any] | None:
    if isinstance(t, TensorType) and t.shape is not None:
        return [d if d is not None else "?" for d in t.shape]
    return None


def inspect_model(model: Model, *, target: str | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the model."""
    from .recipe import QuantizeSection

    g = model.graph
    ops = Counter(n.qualified_op for n in g.all_nodes())
    params: dict[str, dict[str, int]] = {}
    for sub in g.all_graphs():
        for v in sub.initializers.values():
            t = v.const
            assert t is not None
            d = params.setdefault(t.dtype.short, {"tensors": 0, "elements": 0, "bytes": 0})
            d["tensors"] += 1
            d["elements"] += t.size
            d["bytes"] += t.nbytes
    tgt = None
    q = QuantizeSection()
    if target is not None:
        from .targets import get_target

        tgt = get_target(target)
        q = tgt.default_recipe.quantize

    plans = _plan(model, q, tgt)
    quantizable = [{"node": p.node.name, "op": p.node.op_type} for p in plans if p.quantize]
    not_quantizable = [
        {"node": p.node.name, "op": p.node.op_type, "reason": p.reason} for p in plans if not p.quantize
    ]
    reasons = Counter(p.reason for p in plans if not p.quantize)
    return {
        "ir_version": model.ir_version,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "opsets": {k or "ai.onnx": v for k, v in model.opset_imports.items()},
        "inputs": [{"name": v.name, "dtype": _dtype(v), "shape": _shape(v.type)} for v in g.inputs
                   if v.const is None],
        "outputs": [{"name": v.name, "dtype": _dtype(v), "shape": _shape(v.type)} for v in g.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": params,
        "parameter_count": int(sum(d["elements"] for k, d in params.items() if k.startswith(("f", "bf")))),
        "parameter_bytes": int(sum(d["bytes"] for d in params.values())),
        "functions": [f"{f.domain}::{f.name}" for f in model.functions.values()],
        "target": target,
        "quantizable": quantizable,
        "not_quantizable": not_quantizable,
        "not_quantizable_reasons": dict(reasons.most_common()),
    }


def _plan(model: Model, q: Any, tgt: Any) -> list[Any]:
    from qcompiler.passes.assign import plan

    return plan(model, q, tgt)


def _dtype(v: Any) -> str:
    return v.type.dtype.short if isinstance(v.type, TensorType) else "?"


def format_inspection(info: dict[str, Any], path: str) -> str:
    """The human view of `inspect_model`'s dict."""
    lines = [f"{path}", f"  ir_version {info['ir_version']}, producer {info['producer'] or 'n/a'}"]
    lines.append("  opsets: " + ", ".join(f"{k} {v}" for k, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for x in info[kind]:
            dims = "*" if x["shape"] is None else ",".join(str(d) for d in x["shape"])
            lines.append(f"  {x['name']}: {x['dtype']}[{dims}]")
    lines.append(f"ops ({info['nodes']} nodes):")
    for op, n in info["ops"].items():
        lines.append(f"  {n:6d}  {op}")
    lines.append(
        f"parameters: {info['parameter_count']:,} float elements, {_mb(info['parameter_bytes'])} in all"
    )
    for dt, d in sorted(info["parameters"].items()):
        lines.append(f"  {dt:>10}: {d['tensors']:5d} tensors {d['elements']:>14,} elements {_mb(d['bytes']):>10}")
    where = f" for target {info['target']}" if info["target"] else ""
    lines.append(f"quantizable{where}: {len(info['quantizable'])} nodes")
    qops = Counter(x["op"] for x in info["quantizable"])
    if qops:
        lines.append("  " + ", ".join(f"{op} {n}" for op, n in qops.most_common()))
    lines.append(f"not quantizable: {sum(info['not_quantizable_reasons'].values())} nodes")
    for reason, n in list(info["not_quantizable_reasons"].items())[:12]:
        lines.append(f"  {n:6d}  {reason}")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


__all__ = ["format_inspection", "inspect_model"]
