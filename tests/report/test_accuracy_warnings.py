"""The report warns when an output is far from the float model's: naming the dynamic target where static int8
activations meet attention, the per-layer table and --exclude otherwise; nothing for a good compile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.compiler import CompileOptions
from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.measure import accuracy_warnings
from qcompiler.report.model import OutputMetrics
from qcompiler.targets import get_target

from ..passes.test_quantize_passes import cnn


def _scores_graph():
    """x -> MatMul -> Softmax: an attention-like model (one softmax)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    return model_from_proto(proto).graph


def test_static_target_on_attention_names_the_dynamic_target() -> None:
    g, static = _scores_graph(), get_target("cpu-int8")
    [w] = accuracy_warnings(g, [OutputMetrics("y", 6.6), OutputMetrics("z", 31.0)], static)
    assert "'y'" in w and "6.6 dB" in w and "--target cpu-int8-dynamic" in w and "1 attention/softmax" in w
    assert accuracy_warnings(g, [OutputMetrics("y", 20.5)], static) == []  # above 20 dB: no warning


def test_other_low_outputs_point_to_the_layer_table() -> None:
    attention, conv = _scores_graph(), model_from_proto(cnn()).graph
    # The dynamic target on attention, and a static CNN: only below 10 dB, and without a target to switch to.
    for graph, target in ((attention, get_target("cpu-int8-dynamic")), (conv, get_target("cpu-int8"))):
        [w] = accuracy_warnings(graph, [OutputMetrics("y", 8.0)], target)
        assert "8.0 dB" in w and "--exclude" in w and "--target" not in w
        assert accuracy_warnings(graph, [OutputMetrics("y", 12.0)], target) == []
    # Unmeasured or exact outputs say nothing.
    assert accuracy_warnings(attention, [OutputMetrics("y", None), OutputMetrics("y2", float("inf"))],
                             get_target("cpu-int8")) == []


def test_the_compile_report_carries_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qcompiler.measure as measure

    seen = []

    def fake(graph, outputs, target):  # noqa: ANN001, ANN202 - records what build_report passes
        seen.append(([o.name for o in outputs], target.name))
        return ["far from float"]

    monkeypatch.setattr(measure, "accuracy_warnings", fake)
    art = qcompiler.compile(cnn(), target="cpu-int8", calib="random",
                            options=CompileOptions(measure_latency=False, progress=False))
    assert seen and seen[0][1] == "cpu-int8" and seen[0][0]
    assert "far from float" in art.report.warnings
