"""lower_qdq folds a MatMul's bias Add into DynamicQuantizeMatMul (when fuse_matmul_add's pairing still holds),
and the cpu-int8-dynamic recipe on a transformer layer: fused ops, quantized linear layers with their biases,
LayerNormalization kept, and the report measuring each folded layer after its bias."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from qcompiler.compiler import CompileOptions
from qcompiler.frontends.onnx_schema import schema_rule
from qcompiler.ir import Model, parse_graph
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.targets import get_target

from .transformer_util import U32, bert_layer_proto, ort_run

RNG = np.random.default_rng(11)

_LINEAR = """graph g (%x: f32[B,S,4]) -> ({outs}) {{
  init %w: f32[4,3] = tensor<f32[4,3]>[[0.5, -1.0, 0.25], [1.5, 0.75, -0.5], [-0.25, 2.0, 1.0], [1.0, 0.0, -1.5]]
  init %b: f32[3] = tensor<f32[3]>[0.1, -2.0, 3.0]
  %mm: f32[B,S,3] = MatMul(%x, %w) @fc
  %lin: f32[B,S,3] = Add(%mm, %b) @fc_bias
  %y: f32[B,S,3] = Relu(%lin) @act
}}"""


def _lower(model: Model, *extra: str) -> tuple[Model, PassContext]:
    recipe = get_target("cpu-int8-dynamic").default_recipe
    ctx = PassContext(options={"recipe": recipe}, progress=False)
    names = ("canonicalize", *extra, "assign_quant_types", "calibrate", "lower_qdq")
    pm = PassManager([get_pass(n) for n in names], rules_for=lambda m: [schema_rule(m)])
    return pm.run(model, ctx), ctx


def _linear(outs: str = "%y") -> Model:
    return Model(parse_graph(_LINEAR.format(outs=outs)), opset_imports={"": 18})


def test_bias_add_goes_into_dynamic_quantize_matmul() -> None:
    q, ctx = _lower(_linear())
    assert [n.op_type for n in q.graph.nodes] == ["DynamicQuantizeMatMul", "Relu"]
    dq = q.graph.nodes[0]
    assert len(dq.inputs) == 5 and dq.inputs[4] is not None
    np.testing.assert_array_equal(dq.inputs[4].const.numpy(), np.float32([0.1, -2.0, 3.0]))  # type: ignore[union-attr]
    # The layer keeps the MatMul output's name; the report compares it with the float model's Add output.
    assert dq.outputs[0].name == "mm" and q.graph.nodes[1].inputs[0] is dq.outputs[0]
    assert ctx.artifacts["folded_into"] == {"lin": "mm"}
    assert ctx.artifacts["dequantized"]["lin"] == "mm"
    (reason,) = [d.reason for d in ctx.decisions if d.pass_name == "lower_qdq" and d.action == "lowered"]
    assert reason.endswith("; bias fc_bias (Add) folded into its bias input")


def test_folded_bias_matches_the_separate_add() -> None:
    """Same activation quantization and int8 product either way; the fused kernel adds the bias in its output
    stage. The unfused graph rounds t = the dequantized product, then t + b; the fused one rounds t + b, perhaps
    in one FMA with the scaling: the two differ by at most u |t| + 2u |t + b| (Relu is 1-Lipschitz)."""
    feeds = {"x": RNG.standard_normal((2, 5, 4)).astype(np.float32)}
    folded, _ = _lower(_linear())
    unfused, _ = _lower_unpaired(_linear())
    assert [n.op_type for n in unfused.graph.nodes] == ["DynamicQuantizeMatMul", "Add", "Relu"]
    a = ort_run(folded, feeds)["y"].astype(np.float64)
    b = ort_run(unfused, feeds)["y"].astype(np.float64)
    lin = ort_run(_with_output(unfused, "lin"), feeds)["lin"].astype(np.float64)
    t = lin - np.float64([0.1, -2.0, 3.0])
    assert np.all(np.abs(a - b) <= U32 * (np.abs(t) + 2 * np.abs(lin)))


def _lower_unpaired(model: Model) -> tuple[Model, PassContext]:
    """cpu-int8-dynamic's lowering with the MatMul/Add pairing forgotten after canonicalize."""
    recipe = get_target("cpu-int8-dynamic").default_recipe
    ctx = PassContext(options={"recipe": recipe}, progress=False)
    model = PassManager([get_pass("canonicalize")]).run(model, ctx)
    for n in model.graph.nodes:
        n.meta.pop("bias", None)
    pm = PassManager([get_pass(n) for n in ("assign_quant_types", "calibrate", "lower_qdq")])
    return pm.run(model, ctx), ctx


def _with_output(model: Model, name: str) -> Model:
    from qcompiler.frontends.onnx_io import model_from_proto, model_to_proto

    m = model_from_proto(model_to_proto(model))
    m.graph.outputs.append(m.graph.find_value(name))  # type: ignore[arg-type]
    return m


def test_bias_add_that_is_a_graph_output_keeps_its_name() -> None:
    q, ctx = _lower(_linear("%y, %lin"))
    assert [n.op_type for n in q.graph.nodes] == ["DynamicQuantizeMatMul", "Relu"]
    assert q.graph.nodes[0].outputs[0].name == "lin" and [v.name for v in q.graph.outputs] == ["y", "lin"]
    assert "folded_into" not in ctx.artifacts


@pytest.fixture(scope="module")
def layer() -> object:
    return bert_layer_proto()


def test_dynamic_recipe_on_a_transformer_layer(layer: object) -> None:
    art = qcompiler.compile(layer, target="cpu-int8-dynamic",
                            options=CompileOptions(progress=False, threads=1, measure_latency=False))
    ops = [n.op_type for n in art.model.graph.nodes]
    assert ops.count("DynamicQuantizeMatMul") == 6 and ops.count("MultiHeadAttention") == 1
    assert ops.count("Gelu") == 1 and ops.count("LayerNormalization") == 2 and ops.count("Sum") == 2
    assert not {"Softmax", "Erf", "MatMul", "SkipLayerNormalization", "IsNaN"} & set(ops)
    dq = [n for n in art.model.graph.nodes if n.op_type == "DynamicQuantizeMatMul"]
    assert all(len(n.inputs) == 5 and n.inputs[4] is not None for n in dq)  # every bias folded
    # The report measured every linear layer after its bias (SQNR present, not silently skipped).
    layers = [e for e in art.report.layers if e.op_type == "MatMul"]
    assert len(layers) == 6 and all(e.sqnr_db is not None and np.isfinite(e.sqnr_db) for e in layers)
    feeds = {"x": RNG.standard_normal((3, 9, 16)).astype(np.float32), "mask": np.ones((3, 9), np.int64)}
    feeds["mask"][1, 6:] = 0
    y = ort_run(art.model, feeds)["y"]
    assert y.shape == (3, 9, 16) and np.isfinite(y).all()
