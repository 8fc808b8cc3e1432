"""normalize_ops: ReduceMean over the spatial axes becomes GlobalAveragePool (same values, integer kernel)."""

from __future__ import annotations

import numpy as np

import qcompiler
from qcompiler.ir import Model, parse_graph
from qcompiler.pipeline import PassContext, get_pass

GRAPH = """graph g (%x: f32[N,8,5,5]) -> (%y, %z, %w) {
  init %spatial: i64[2] = tensor<i64[2]>[2, 3]
  init %channels: i64[1] = tensor<i64[1]>[1]
  %y: f32[N,8,1,1] = ReduceMean(%x, %spatial) {keepdims=1} @mean
  %z: f32[N,1,5,5] = ReduceMean(%x, %channels) {keepdims=1} @over_channels
  %w: f32[N,8] = ReduceMean(%x, %spatial) {keepdims=0} @dropped_dims
}"""


def test_spatial_mean_becomes_global_average_pool() -> None:
    model = Model(parse_graph(GRAPH), opset_imports={"": 18})
    ref_model = Model(parse_graph(GRAPH), opset_imports={"": 18})
    ctx = PassContext(progress=False)
    res = get_pass("normalize_ops")(model, ctx)
    assert res.modified
    ops = [(n.name, n.op_type) for n in model.graph.nodes]
    # Only the keepdims=1 reduction over exactly the spatial axes is rewritten; its output keeps its name.
    assert ops == [("mean", "GlobalAveragePool"), ("over_channels", "ReduceMean"), ("dropped_dims", "ReduceMean")]
    assert model.graph.outputs[0].name == "y"
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 5)).astype(np.float32)
    a, b = qcompiler.run(ref_model, {"x": x}), qcompiler.run(model, {"x": x})
    for k in ("y", "z", "w"):
        # Same 25-term mean in another summation order: a few float32 ulps.
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=25 * 2**-24 * np.abs(x).max())
