"""Test harness for the op table: run one ONNX node in ONNX Runtime (or onnx.reference) and in our op
table, and compare. Bounds are the callers': state them from the op's math, never from the output."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import qcompiler
from qcompiler.frontends.onnx_io import model_from_proto


def single_node_model(
    op_type: str,
    inputs: list[np.ndarray | None],
    attrs: dict[str, Any] | None = None,
    *,
    n_outputs: int = 1,
    opset: int = 21,
    domain: str = "",
    output_types: list[int] | None = None,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model with one node; every non-None input is a graph input (fed), None = omitted optional input."""
    in_names, vis, feeds = [], [], {}
    for i, x in enumerate(inputs):
        if x is None:
            in_names.append("")
            continue
        name = f"in{i}"
        in_names.append(name)
        elem = helper.np_dtype_to_tensor_dtype(x.dtype)
        vis.append(helper.make_tensor_value_info(name, elem, list(x.shape)))
        feeds[name] = x
    out_names = [f"out{i}" for i in range(n_outputs)]
    outs = [
        helper.make_tensor_value_info(n, output_types[i], None) if output_types else onnx.ValueInfoProto(name=n)
        for i, n in enumerate(out_names)
    ]
    node = helper.make_node(op_type, in_names, out_names, domain=domain, **(attrs or {}))
    opsets = [helper.make_opsetid("", opset if domain == "" else 21)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph([node], "single", vis, outs)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(model.ir_version, 10)
    return model, feeds


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


def check_node(
    op_type: str,
    inputs: list[np.ndarray | None],
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
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        r = np.asarray(r)
        assert g.shape == r.shape, f"{op_type} output {i}: shape {g.shape} != {r.shape}"
        assert g.dtype == r.dtype, f"{op_type} output {i}: dtype {g.dtype} != {r.dtype}"
        if r.dtype.kind in "fc":
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"{op_type} output {i}")
        else:
            np.testing.assert_array_equal(g, r, err_msg=f"{op_type} output {i}")
    return got
