"""Semantic equality of two ONNX models: what a lossless round trip must keep."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def tensor_bytes(t: onnx.TensorProto, base_dir: str | None = None) -> tuple[int, tuple[int, ...], bytes]:
    """(data type, dims, value bytes) of a tensor, inline or external — bit-exact comparison material."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        import os

        n = int(info["length"])
        with open(os.path.join(base_dir or ".", info["location"]), "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(n)
        return t.data_type, tuple(t.dims), raw
    if t.data_type == onnx.TensorProto.STRING:
        return t.data_type, tuple(t.dims), b"\0".join(t.string_data)
    arr = numpy_helper.to_array(t)
    return t.data_type, tuple(t.dims), np.ascontiguousarray(arr).tobytes()


def _attr(a: onnx.AttributeProto, da: str | None, db: str | None) -> object:
    if a.type == onnx.AttributeProto.GRAPH:
        return ("graph", graph_summary(a.g, da))
    if a.type == onnx.AttributeProto.GRAPHS:
        return ("graphs", [graph_summary(g, da) for g in a.graphs])
    if a.type == onnx.AttributeProto.TENSOR:
        return ("tensor", tensor_bytes(a.t, da), a.t.name)
    if a.type == onnx.AttributeProto.TENSORS:
        return ("tensors", [tensor_bytes(t, da) for t in a.tensors])
    if a.ref_attr_name:
        return ("ref", a.ref_attr_name, a.type)
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, float):
        v = np.float32(v).tobytes()
    if isinstance(v, list) and v and isinstance(v[0], float):
        v = np.asarray(v, np.float32).tobytes()
    if hasattr(v, "SerializeToString"):
        v = v.SerializeToString()
    return (a.type, v, a.doc_string)


def _vi(vi: onnx.ValueInfoProto) -> tuple:
    return (vi.name, vi.type.SerializeToString(deterministic=True), vi.doc_string,
            [(p.key, p.value) for p in vi.metadata_props])


def graph_summary(g: onnx.GraphProto, base_dir: str | None = None) -> dict:
    return {
        "name": g.name,
        "doc": g.doc_string,
        "inputs": [_vi(vi) for vi in g.input],
        "outputs": [_vi(vi) for vi in g.output],
        "value_info": sorted(_vi(vi) for vi in g.value_info),
        "initializers": [(t.name, t.doc_string, tensor_bytes(t, base_dir)) for t in g.initializer],
        "sparse": [s.SerializeToString(deterministic=True) for s in g.sparse_initializer],
        "nodes": [
            (
                n.op_type, n.domain, n.name, n.overload, list(n.input), list(n.output), n.doc_string,
                [(k.key, k.value) for k in n.metadata_props],
                [(a.name, _attr(a, base_dir, base_dir)) for a in n.attribute],
            )
            for n in g.node
        ],
        "metadata": [(p.key, p.value) for p in g.metadata_props],
    }


def _function(f: onnx.FunctionProto) -> tuple:
    g = onnx.GraphProto(name=f.name, node=f.node)
    return (f.domain, f.name, f.overload, list(f.input), list(f.output), list(f.attribute),
            [(a.name, _attr(a, None, None)) for a in f.attribute_proto], [(o.domain, o.version) for o in f.opset_import],
            graph_summary(g)["nodes"], sorted(_vi(v) for v in f.value_info), f.doc_string)


def model_summary(m: onnx.ModelProto, base_dir: str | None = None) -> dict:
    return {
        "ir_version": m.ir_version,
        "opsets": [(o.domain, o.version) for o in m.opset_import],
        "producer": (m.producer_name, m.producer_version, m.domain, m.model_version, m.doc_string),
        "metadata": [(p.key, p.value) for p in m.metadata_props],
        "graph": graph_summary(m.graph, base_dir),
        "functions": [_function(f) for f in m.functions],
        "training_info": [t.SerializeToString(deterministic=True) for t in m.training_info],
    }


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto, dir_a: str | None = None, dir_b: str | None = None) -> None:
    sa, sb = model_summary(a, dir_a), model_summary(b, dir_b)
    for key in sa:
        if key == "graph":
            for gk in sa["graph"]:
                assert sa["graph"][gk] == sb["graph"][gk], f"graph {gk} differs"
        else:
            assert sa[key] == sb[key], f"model {key} differs"
