"""tune_ranges: activation scales fitted to the model's output. A range that min-max stretched over a channel
the next layer all but ignores is tightened and the held-out output error drops; a fit that does not lower the
loss leaves the calibrated scales as they were."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.ir import Tensor
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.recipe import QuantizeSection, Recipe, TensorSpec

RNG = np.random.default_rng(4)


class _Samples(list):
    def batches(self, batch_size: int) -> list:
        return [{"x": np.concatenate([f["x"] for f in self[i:i + batch_size]])} for i in range(0, len(self), batch_size)]


def _mlp():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    rng = np.random.default_rng(7)  # the same weights on every call: two compiles compare like with like
    w1 = rng.standard_normal((16, 32)) * 0.3
    w1[3] *= 1e-3  # input channel 3 is huge but barely read: its range should not set everyone's step
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((32, 4)) * 0.3).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return helper.make_model(helper.make_graph(nodes, "m", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def _data(n: int) -> _Samples:
    xs = [RNG.standard_normal((1, 16)).astype(np.float32) for _ in range(n)]
    for x in xs:
        x[0, 3] *= 40.0
    return _Samples({"x": x} for x in xs)


def _compile(calib: _Samples, passes: tuple[str, ...], **tune: object):
    q = QuantizeSection(op_types=("MatMul",), activations=TensorSpec("uint8", "affine", "per_tensor", observer="minmax"),
                        weights=TensorSpec("int8", "symmetric", "per_channel"))
    model = model_from_proto(_mlp())
    ctx = PassContext(options={"recipe": Recipe(quantize=q)}, calibration=calib, progress=False)
    pm = PassManager([get_pass(p, **(tune if p == "tune_ranges" else {})) for p in passes])
    return pm.run(model, ctx), ctx


def _held_out_error(model, held: _Samples, reference=None) -> float:
    """Mean squared output error of the simulated quantized model (activations fake-quantized, weights as
    stored) against `reference` run in float (default: `model` itself run in float)."""
    import torch

    from qcompiler.passes.bias_correction import fake_quant_hook
    from qcompiler.runtime import Executor

    ref_exec, sim = Executor(model if reference is None else reference), Executor(model)
    handle = fake_quant_hook(sim, model)
    try:
        errs = []
        for f in held:
            with torch.no_grad():
                errs.append(np.mean((sim.run(f)["y"] - ref_exec.run(f)["y"]) ** 2))
    finally:
        handle.remove()
    return float(np.mean(errs))


def test_range_set_by_an_ignored_channel_is_tightened_and_error_drops() -> None:
    calib, held = _data(96), _data(64)
    base, _ = _compile(calib, ("assign_quant_types", "calibrate"))
    x_scale0 = float(base.graph.inputs[0].quant.scale.const.numpy())
    tuned, ctx = _compile(calib, ("assign_quant_types", "calibrate", "tune_ranges"), epochs=20, lr=0.05,
                          weight_scales=False)
    x_scale = float(tuned.graph.inputs[0].quant.scale.const.numpy())
    assert x_scale < 0.3 * x_scale0  # channel 3 is clipped: it no longer sets the input's step
    err0, err1 = _held_out_error(base, held), _held_out_error(tuned, held)
    assert err1 < 0.5 * err0, (err0, err1)
    summary = [d for d in ctx.decisions if d.pass_name == "tune_ranges" and d.subject == "model"]
    assert summary and summary[0].action == "tuned" and "dB" in summary[0].reason
    # Every activation scale got a line; weights keep their calibrated scales (weight_scales=False).
    from qcompiler.passes.bias_correction import simulated_activations

    act_scales = {f"%{v.quant.scale.name}" for v in simulated_activations(tuned)}
    assert {d.subject for d in ctx.decisions if d.action == "tuned" and d.subject != "model"} == act_scales
    assert "%x_scale" in act_scales
    np.testing.assert_array_equal(tuned.graph.initializers["w1"].quant.scale.const.numpy(),
                                  base.graph.initializers["w1"].quant.scale.const.numpy())


def test_weight_scales_fit_the_float_model_and_the_integers_stay() -> None:
    # A systematic gain error per output channel of fc2's weights (what rounding and upstream clipping leave),
    # integers unchanged, with the float weights in the meta as gptq leaves them: fitting the weight scales
    # removes it; fitting activation scales alone cannot.
    from qcompiler.passes.bias_correction import _weight_dq
    from qcompiler.passes.gptq import FLOAT_CONST

    calib, held = _data(96), _data(64)
    float_model, _ = _compile(calib, ("assign_quant_types", "calibrate"))
    gain = np.array([1.15, 0.9, 1.0, 1.08], np.float32)
    results = {}
    for fit in (False, True):
        model, ctx = _compile(calib, ("assign_quant_types", "calibrate"))
        w2 = model.graph.initializers["w2"]
        w0 = w2.const.numpy().copy()
        on_grid = _weight_dq(w2.quant, w0)
        w2.meta[FLOAT_CONST] = Tensor(w0)
        w2.const = Tensor((on_grid * gain).astype(np.float32))
        w2.quant.scale.const = Tensor(w2.quant.scale.const.numpy() * gain.reshape(w2.quant.scale.const.shape))
        ints = w2.const.numpy() / w2.quant.scale.const.numpy().reshape(1, -1)
        model = get_pass("tune_ranges", epochs=20, weight_lr=0.01, weight_scales=fit)(model, ctx).model
        fitted = w2.const.numpy() / w2.quant.scale.const.numpy().reshape(1, -1)
        np.testing.assert_allclose(fitted, ints, atol=1e-4)  # the integers are the same
        np.testing.assert_allclose(fitted, np.round(fitted), atol=1e-4)
        results[fit] = (_held_out_error(model, held, reference=float_model), w2.quant.scale.const.numpy().ravel(), ctx)
    (err_fixed, _, _), (err_fit, scale, ctx) = results[False], results[True]
    true_scale = float_model.graph.initializers["w2"].quant.scale.const.numpy().ravel()
    np.testing.assert_allclose(scale / true_scale, 1.0, atol=0.03)  # the gains are undone
    assert err_fit < 0.2 * err_fixed, (err_fit, err_fixed)
    [line] = [d for d in ctx.decisions if d.pass_name == "tune_ranges" and d.subject == "weights"]
    assert line.action == "tuned" and "integers kept" in line.reason


def test_no_gain_keeps_the_calibrated_scales() -> None:
    calib = _data(16)
    base, _ = _compile(calib, ("assign_quant_types", "calibrate"))
    kept, ctx = _compile(calib, ("assign_quant_types", "calibrate", "tune_ranges"), epochs=0)
    assert float(kept.graph.inputs[0].quant.scale.const.numpy()) == float(base.graph.inputs[0].quant.scale.const.numpy())
    assert [d.action for d in ctx.decisions if d.pass_name == "tune_ranges"] == ["kept"]


def test_without_calibration_data_it_says_so() -> None:
    q = QuantizeSection(op_types=("MatMul",), activations=None, dynamic=True,
                        weights=TensorSpec("int8", "symmetric", "per_channel"))
    model = model_from_proto(_mlp())
    ctx = PassContext(options={"recipe": Recipe(quantize=q)}, calibration=None, progress=False)
    PassManager([get_pass(p) for p in ("assign_quant_types", "calibrate", "tune_ranges")]).run(model, ctx)
    assert [(d.action, d.reason) for d in ctx.decisions if d.pass_name == "tune_ranges"] == \
        [("skipped", "no calibration data")]


def test_a_folded_clip_stays_folded() -> None:
    # Conv -> Clip(0, 6) -> Conv: the Clip output's calibrated range lies inside [0, 6], so lower_qdq folds the
    # Clip into the quantization. However far the fit moves that scale, its range must stay inside [0, 6].
    rng = np.random.default_rng(2)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * 2).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1))).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="relu6"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    proto = helper.make_model(helper.make_graph(nodes, "m", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    calib = _Samples({"x": (rng.standard_normal((1, 4, 6, 6)) * 2).astype(np.float32)} for _ in range(24))
    q = QuantizeSection(op_types=("Conv", "Clip"), activations=TensorSpec("uint8", "affine", "per_tensor"),
                        weights=TensorSpec("int8", "symmetric", "per_channel"))
    model = model_from_proto(proto)
    ctx = PassContext(options={"recipe": Recipe(quantize=q)}, calibration=calib, progress=False)
    PassManager([get_pass("assign_quant_types"), get_pass("calibrate")]).run(model, ctx)
    scale = model.graph.find_value("r").quant.scale
    scale.const = Tensor(scale.const.numpy() / 8)  # a range far too tight: the fit pushes it up hard, toward 6
    for p in (get_pass("tune_ranges", epochs=10, lr=0.5), get_pass("lower_qdq")):  # the same compile, continued
        model = p(model, ctx).model
    assert [d.action for d in ctx.decisions if d.pass_name == "lower_qdq" and "relu6" in d.subject] == ["folded"]
    assert all(n.op_type != "Clip" for n in model.graph.nodes)


def _reference_runs(monkeypatch, calib, **tune: object) -> tuple[list[int], np.ndarray]:
    """Run counts of the pass's two executors (the float reference is created first) and the tuned x scale."""
    from qcompiler.runtime import Executor

    counts: dict[int, int] = {}
    run_torch = Executor.run_torch

    def counted(self, *args, **kwargs):
        counts[id(self)] = counts.get(id(self), 0) + 1
        return run_torch(self, *args, **kwargs)

    monkeypatch.setattr(Executor, "run_torch", counted)
    tuned, _ = _compile(calib, ("assign_quant_types", "calibrate", "tune_ranges"), epochs=3, **tune)
    return list(counts.values()), tuned.graph.inputs[0].quant.scale.const.numpy()


def test_the_float_reference_runs_once_per_batch_and_changes_nothing(monkeypatch) -> None:
    # 32 samples in batches of 8: 4 batches, read 3 + 2 times (epochs, the loss before and after).
    calib = _data(32)
    (ref_runs, _), x_scale = _reference_runs(monkeypatch, calib)
    (ref_uncached, _), x_scale_uncached = _reference_runs(monkeypatch, calib, reference_cache_mb=0)
    assert (ref_runs, ref_uncached) == (4, 4 * 5)
    assert x_scale == x_scale_uncached  # the same fit, bit for bit

    # A source that yields other samples on every pass: nothing may be reused for the wrong batch.
    class Shifting(_Samples):
        calls = 0

        def batches(self, batch_size: int) -> list:
            Shifting.calls += 1
            rows = np.roll(np.concatenate([f["x"] for f in self]), Shifting.calls, axis=0)
            return [{"x": rows[i:i + batch_size]} for i in range(0, len(rows), batch_size)]

    shifting = Shifting(calib)
    (ref_runs, _), x_scale = _reference_runs(monkeypatch, shifting)
    Shifting.calls = 0
    _, x_scale_uncached = _reference_runs(monkeypatch, shifting, reference_cache_mb=0)
    assert ref_runs > 4
    assert x_scale == x_scale_uncached
