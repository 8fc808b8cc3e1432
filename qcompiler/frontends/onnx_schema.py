"""Type checks from ONNX's operator schemas: a verifier rule that catches ill-typed graphs.

For each node of the standard domains whose schema is known at the model's opset: the input/output counts
are in range, each typed input's element type is allowed by its type constraint, and inputs bound to the
same type variable (Add's `T`) agree. Values of unknown type are skipped (nothing to check).
"""

from __future__ import annotations

from functools import cache, lru_cache

import onnx

from ..ir import DType, Model, Node, TensorType
from ..ir.verifier import Rule

_STD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


@lru_cache(maxsize=4096)
def _schema(op_type: str, domain: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


@cache
def _tensor_type_str(dtype: DType) -> str:
    return "tensor(" + onnx.helper.tensor_dtype_to_string(int(dtype)).removeprefix("TensorProto.").lower() + ")"


def schema_rule(model: Model) -> Rule:
    """A verifier rule checking nodes against ONNX schemas at this model's opsets."""

    def check(node: Node) -> str | None:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in _STD_DOMAINS:
            return None
        opset = model.opset(domain)
        if opset is None:
            return None
        schema = _schema(node.op_type, domain, opset)
        if schema is None:
            return None
        n_in = len(node.inputs)
        while n_in and node.inputs[n_in - 1] is None:
            n_in -= 1
        if n_in < schema.min_input or n_in > schema.max_input:
            span = f"{schema.min_input}..{schema.max_input}"
            return f"has {n_in} inputs; {node.op_type}-{schema.since_version} takes {span}"
        bound: dict[str, tuple[str, int]] = {}
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        formals = list(schema.inputs)
        for i, v in enumerate(node.inputs):
            if v is None or not isinstance(v.type, TensorType) or v.type.dtype is DType.UNDEFINED:
                continue
            if not formals:
                break
            formal = formals[min(i, len(formals) - 1)]
            tstr = _tensor_type_str(v.type.dtype)
            var = formal.type_str
            if var in allowed:
                if tstr not in allowed[var]:
                    return f"input {i} %{v.name} has type {v.type.dtype.short}, which {var} does not allow"
                homogeneous = formal.option != onnx.defs.OpSchema.FormalParameterOption.Variadic or (
                    formal.is_homogeneous
                )
                if homogeneous and var in bound and bound[var][0] != tstr:
                    j = bound[var][1]
                    return (
                        f"input {i} %{v.name} has type {v.type.dtype.short} but input {j} "
                        f"%{node.inputs[j].name} has {_short(bound[var][0])}; both are {var}"  # type: ignore[union-attr]
                    )
                bound.setdefault(var, (tstr, i))
            elif var.startswith("tensor(") and tstr != var:
                return f"input {i} %{v.name} has type {v.type.dtype.short}; {node.op_type} needs {_short(var)}"
        return None

    return check


def _short(tstr: str) -> str:
    inner = tstr.removeprefix("tensor(").removesuffix(")")
    for d in DType:
        if d.name.lower() == inner:
            return d.short
    return inner
