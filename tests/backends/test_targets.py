"""The ORT targets in the registry, their recipes, and the dynamic target's kernel."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.backends.onnxruntime.fusion import check_fusion
from qcompiler.backends.onnxruntime.session import OrtRunner
from qcompiler.backends.onnxruntime.targets import DYNAMIC_KERNELS, STATIC_KERNELS
from qcompiler.cli import main
from qcompiler.errors import ConfigError
from qcompiler.passes.assign import op_kind
from qcompiler.recipe import Recipe
from qcompiler.targets import get_target, list_targets


def test_cpu_int8_is_static_u8_activations_s8_per_channel_weights():
    t = get_target("cpu-int8")
    assert t.backend == "onnxruntime" and t.static
    q = t.default_recipe.quantize
    assert (q.activations.format, q.activations.scheme, q.activations.granularity) == ("uint8", "affine", "per_tensor")
    assert (q.weights.format, q.weights.scheme, q.weights.granularity) == ("int8", "symmetric", "per_channel")
    assert not q.dynamic and q.activations.observer == "percentile"
    assert [p.name for p in t.default_recipe.passes] == [
        "canonicalize", "equalize_ranges", "assign_quant_types", "calibrate", "gptq",
        "tune_ranges", "lower_qdq"]
    assert t.default_recipe.target == "cpu-int8"
    assert any("u8 x s8" in n for n in t.notes)


def test_cpu_int8_dynamic_quantizes_matmul_gemm_and_embeddings_without_calibration():
    t = get_target("cpu-int8-dynamic")
    assert t.backend == "onnxruntime" and not t.static
    q = t.default_recipe.quantize
    assert q.dynamic and q.activations is None
    assert set(q.op_types) == set(t.kernels) == {"MatMul", "Gemm", "Gather"}
    # calibrate runs, but only on the weights: the compile asks for no data when the target is not static.
    assert [p.name for p in t.default_recipe.passes] == [
        "canonicalize", "fuse_transformer", "keep_layer_norm", "smooth_quant", "llm_int8", "assign_quant_types",
        "calibrate", "gptq", "lower_qdq"]


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown target 'gpu-int8'; valid targets: .*cpu-int8, cpu-int8-dynamic"):
        get_target("gpu-int8")


@pytest.mark.parametrize("name", ["cpu-int8", "cpu-int8-dynamic"])
def test_default_recipes_round_trip_through_toml(name):
    r = get_target(name).default_recipe
    assert Recipe.from_dict(tomllib.loads(r.to_toml())) == r


@pytest.mark.parametrize("kernels", [STATIC_KERNELS, DYNAMIC_KERNELS])
def test_recipe_op_types_are_the_kernels_and_the_decision_pass_knows_them(kernels):
    name = "cpu-int8" if kernels is STATIC_KERNELS else "cpu-int8-dynamic"
    t = get_target(name)
    assert set(t.default_recipe.quantize.op_types) == set(kernels)
    unknown = [op for op in kernels if not op_kind(op)]
    assert unknown == []


def test_cli_lists_the_targets(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "cpu-int8 " in out and "cpu-int8-dynamic" in out and "static, needs --calib" in out
    assert {t.name for t in list_targets()} >= {"cpu-int8", "cpu-int8-dynamic"}


def test_dynamic_quantize_matmul_per_column_weights_within_the_activation_rounding_bound(tmp_path):
    """What lower_qdq emits for the dynamic target: DynamicQuantizeMatMul(x, int8 W, per-column scales, bias).
    ORT quantizes x to uint8 with scale s = (max(x, 0) - min(x, 0)) / 255 at run time, so each element moves by at
    most s/2 and output column j by at most s/2 * sum_k |dq(W)[k, j]| from x @ dq(W) + bias."""
    rng = np.random.default_rng(0)
    k, n = 64, 16
    w = rng.normal(size=(k, n)) * np.geomspace(0.01, 1, n)
    ws = (np.abs(w).max(0) / 127).astype(np.float32)
    wq = np.round(w / ws).astype(np.int8)
    bias = rng.normal(size=n).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "W", "ws", "wzp", "bias"], ["y"], domain="com.microsoft")],
        "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, n])],
        [numpy_helper.from_array(wq, "W"), numpy_helper.from_array(ws, "ws"),
         numpy_helper.from_array(np.zeros(n, np.int8), "wzp"), numpy_helper.from_array(bias, "bias")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    p = tmp_path / "dyn.onnx"
    p.write_bytes(m.SerializeToString())
    r = check_fusion(p)
    assert r.integer_kernels == {"DynamicQuantizeMatMul": 1} and r.unfused == [] and r.float_ops == {}
    x = rng.normal(size=(8, k)).astype(np.float32)
    y = OrtRunner(p, 1)({"x": x})["y"]
    wd = wq.astype(np.float64) * ws
    s = (max(x.max(), 0) - min(x.min(), 0)) / 255
    bound = s / 2 * np.abs(wd).sum(0) * (1 + 1e-5)
    err = np.abs(y - (x @ wd + bias))
    assert np.all(err <= bound)
    assert err.max() > 0  # quantized for real, not a float MatMul


def _tiny_mlp(path, rank=3):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.normal(size=s) * 0.1).astype(np.float32), n)
             for n, s in (("w1", (32, 32)), ("b1", (32,)), ("w2", (32, 16)))]
    g = helper.make_graph([
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
        helper.make_node("Add", ["a", "b1"], ["ab"], name="fc1_bias"),
        helper.make_node("Relu", ["ab"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ], "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32][-rank:])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16][-rank:])], inits)
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_dynamic_target_compiles_without_data_to_fused_kernels(tmp_path):
    """End to end through the default recipe: no calibration data, every MatMul an integer kernel."""
    from qcompiler.compiler import CompileOptions, compile

    src, out = tmp_path / "mlp.onnx", tmp_path / "mlp.dyn.onnx"
    _tiny_mlp(src)
    compile(src, target="cpu-int8-dynamic", output=out, options=CompileOptions(progress=False, report=False))
    r = check_fusion(out)
    assert r.integer_kernels == {"DynamicQuantizeMatMul": 2} and r.unfused == []


def test_static_target_compiles_a_small_cnn_to_integer_kernels_only(tmp_path):
    """Conv, Relu, MaxPool, a residual Add (its input read by two ops), Clip(0, 6), GlobalAveragePool, Gemm:
    with the default cpu-int8 recipe, ORT runs every one of them as an integer kernel (or folds it away)."""
    import onnx

    from qcompiler.compiler import CompileOptions, compile

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.normal(size=s) * k).astype(np.float32), n) for n, s, k in (
        ("w", (16, 8, 3, 3), 0.2), ("b", (16,), 1), ("w2", (16, 16, 3, 3), 0.1), ("b2", (16,), 1),
        ("wg", (10, 16), 1), ("bg", (10,), 1))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0), ("hi", 6))]
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "p"], ["res"], name="residual"),
        helper.make_node("Clip", ["res", "lo", "hi"], ["cl"], name="relu6"),
        helper.make_node("GlobalAveragePool", ["cl"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="fc"),
    ], "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    src, out = tmp_path / "cnn.onnx", tmp_path / "cnn.q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    compile(src, target="cpu-int8", calib="random", output=out, options=CompileOptions(progress=False, report=False))
    r = check_fusion(out)
    assert r.unfused == [], r.summary()
    assert r.float_ops == {}, r.summary()
    assert r.integer_kernels == {"QLinearConv": 2, "QLinearAdd": 1, "QLinearGlobalAveragePool": 1, "QGemm": 1}
