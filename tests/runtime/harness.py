"""Test harness for the op table: run one ONNX node (or a small model) in ONNX Runtime (or onnx.reference)
and in our executor, and compare. Bounds are the callers': state them from the op's math, never from the
output.

Inputs of `check_node` are numpy arrays (graph inputs, fed), None (an omitted optional input), or
constants that become initializers: an `onnx.TensorProto` (any element type: int4, float8, bfloat16, ...
which ORT's Python API cannot feed) or `const(array)`. Use `tensor(...)` to build exotic-typed constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import qcompiler
from qcompiler.frontends.onnx_io import model_from_proto


class const:  # noqa: N801 - reads as a marker in input lists: check_node("Op", [x, const(w)])
    """Marks a numpy array as an initializer instead of a fed input."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.asarray(array)


def tensor(values: Any, elem_type: int, shape: Sequence[int] | None = None) -> onnx.TensorProto:
    """A TensorProto of any ONNX element type from plain values (helper.make_tensor packs int4 and
    converts floats to float8/bfloat16 bit patterns with ONNX's rounding)."""
    arr = np.asarray(values)
    dims = list(arr.shape) if shape is None else list(shape)
    return helper.make_tensor("", elem_type, dims, arr.reshape(-1).tolist())


def single_node_model(
    op_type: str,
    inputs: list[Any],
    attrs: dict[str, Any] | None = None,
    *,
    n_outputs: int = 1,
    opset: int = 21,
    domain: str = "",
    domain_opset: int = 1,
    output_types: list[int] | None = None,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model with one node. Arrays are graph inputs (fed); None is an omitted optional input; a TensorProto
    or `const(array)` is an initializer."""
    in_names, vis, feeds, inits = [], [], {}, []
    for i, x in enumerate(inputs):
        if x is None:
            in_names.append("")
            continue
        name = f"in{i}"
        in_names.append(name)
        if isinstance(x, onnx.TensorProto | const):
            tp = (
                numpy_helper.from_array(x.array)
                if isinstance(x, const)
                else onnx.TensorProto.FromString(x.SerializeToString())
            )
            tp.name = name
            inits.append(tp)
            continue
        x = np.asarray(x)
        elem = helper.np_dtype_to_tensor_dtype(x.dtype)
        vis.append(helper.make_tensor_value_info(name, elem, list(x.shape)))
        feeds[name] = x
    out_names = [f"out{i}" for i in range(n_outputs)]
    outs = [
        helper.make_tensor_value_info(n, output_types[i], None)
        if output_types
        else onnx.ValueInfoProto(name=n)
        for i, n in enumerate(out_names)
    ]
    node = helper.make_node(op_type, in_names, out_names, domain=domain, **(attrs or {}))
    opsets = [helper.make_opsetid("", opset if domain == "" else 21)]
    if domain:
        opsets.append(helper.make_opsetid(domain, domain_opset))
    graph = helper.make_graph([node], "single", vis, outs, inits)
    return finish_model(graph, opsets), feeds


def finish_model(graph: onnx.GraphProto, opsets: list[onnx.OperatorSetIdProto]) -> onnx.ModelProto:
    """A ModelProto with an IR version ORT 1.32 reads (10, or 11 for opset 23+)."""
    model = helper.make_model(graph, opset_imports=opsets)
    onnx_opset = max((o.version for o in opsets if o.domain in ("", "ai.onnx")), default=21)
    model.ir_version = 11 if onnx_opset >= 23 else 10
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, feeds))


def run_ours(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ir = model_from_proto(model)
    out = qcompiler.run(ir, feeds)
    return [out[v.name] for v in ir.graph.outputs]


def compare(
    got: list[Any], ref: list[Any], *, rtol: float = 0.0, atol: float = 0.0, what: str = "output"
) -> None:
    """Same count, shapes, dtypes; integers and bools bit-exact; floats within (rtol, atol), NaN == NaN."""
    assert len(got) == len(ref), f"{what}: {len(got)} outputs, reference has {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        if isinstance(r, list):  # a sequence output
            assert isinstance(g, list) and len(g) == len(r), f"{what} {i}: sequence lengths differ"
            compare(g, r, rtol=rtol, atol=atol, what=f"{what} {i} element")
            continue
        r = np.asarray(r)
        assert g.shape == r.shape, f"{what} {i}: shape {g.shape} != {r.shape}"
        assert g.dtype == r.dtype, f"{what} {i}: dtype {g.dtype} != {r.dtype}"
        if r.dtype.kind in "fc":
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"{what} {i}")
        else:
            np.testing.assert_array_equal(g, r, err_msg=f"{what} {i}")


def check_model(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    reference: str = "ort",
) -> list[np.ndarray]:
    """Run a whole model both ways and compare (see `compare`). Returns ours."""
    ref = run_ort(model, feeds) if reference == "ort" else run_reference(model, feeds)
    got = run_ours(model, feeds)
    compare(got, ref, rtol=rtol, atol=atol)
    return got


def check_node(
    op_type: str,
    inputs: list[Any],
    attrs: dict[str, Any] | None = None,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    reference: str = "ort",
    **kw: Any,
) -> list[np.ndarray]:
    """Run the node both ways; assert same shapes, dtypes and values within (rtol, atol). Returns ours."""
    model, feeds = single_node_model(op_type, inputs, attrs, **kw)
    ref = run_ort(model, feeds) if reference == "ort" else run_reference(model, feeds)
    got = run_ours(model, feeds)
    compare(got, ref, rtol=rtol, atol=atol, what=f"{op_type} output")
    return got
