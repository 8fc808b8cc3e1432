"""equalize_ranges: channels of a ReLU6/Relu output between a conv and a depthwise conv scaled to one range. The float
model keeps its outputs, every channel then reaches the widest one's calibration maximum, the uint8 error of the
activation drops by the factor the narrow channels gained, and the report still compares layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.recipe import QuantizeSection, Recipe, TensorSpec
from qcompiler.runtime import Executor

C = 8
# Channel c of the ReLU6 output reaches about GAIN[c] / GAIN.max() of the widest: 1/40 .. 1.
GAIN = np.array([1.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8], np.float32)


class _Samples(list):
    def batches(self, batch_size: int) -> list:
        return [{"x": np.concatenate([f["x"] for f in self[i:i + batch_size]])} for i in range(0, len(self), batch_size)]


def _model(act: str = "Clip", reader: str = "depthwise", fanout: bool = False):
    rng = np.random.default_rng(3)  # the same weights on every call
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w1 = rng.standard_normal((C, 4, 1, 1)).astype(np.float32) * GAIN[:, None, None, None]
    b1 = (np.abs(rng.standard_normal(C)) * GAIN * 0.2).astype(np.float32)
    group = C if reader == "depthwise" else 1
    w2 = rng.standard_normal((C, C // group, 3, 3)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                        (np.zeros(C, np.float32), "b2"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="expand")]
    if act == "Clip":
        inits += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0.0, "lo"), (6.0, "hi"))]
        nodes.append(helper.make_node("Clip", ["h", "lo", "hi"], ["r"], name="relu6"))
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["r"], name="relu"))
    nodes.append(helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="dw", group=group, pads=[1, 1, 1, 1]))
    outputs = [out]
    if fanout:  # the activation is also read by something that cannot be divided back
        nodes.append(helper.make_node("Relu", ["r"], ["r2"], name="other"))
        outputs.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "m", [x], outputs, inits)
    return model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _data(n: int, seed: int, amp: float = 0.3) -> _Samples:
    rng = np.random.default_rng(seed)
    return _Samples({"x": (rng.standard_normal((1, 4, 8, 8)) * amp).astype(np.float32)} for _ in range(n))


def _recipe(granularity: str = "per_channel") -> Recipe:
    q = QuantizeSection(op_types=("Conv",), activations=TensorSpec("uint8", "affine", "per_tensor", observer="minmax"),
                        weights=TensorSpec("int8", "symmetric", granularity))
    return Recipe(quantize=q)


def _run(model, calib, passes=("equalize_ranges",), recipe=None, **opts):
    ctx = PassContext(options={"recipe": recipe or _recipe()}, calibration=calib, progress=False)
    pm = PassManager([get_pass(p, **(opts if p == "equalize_ranges" else {})) for p in passes])
    return pm.run(model, ctx), ctx


def _values(model, feeds: _Samples, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    ex = Executor(model)
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    values = [v for v in model.graph.values() if v.name in names]
    handle = ex.add_hook(values, lambda v, t: got[v.name].append(t.detach().numpy().copy()))
    try:
        for f in feeds:
            ex.run(f)
    finally:
        handle.remove()
    return {n: np.concatenate(a) for n, a in got.items()}


def _decisions(ctx, action: str) -> dict[str, str]:
    return {d.subject: d.reason for d in ctx.decisions if d.pass_name == "equalize_ranges" and d.action == action}


def _uint8_sqnr(r: np.ndarray) -> np.ndarray:
    """Per channel, the SQNR (dB) of a per-tensor uint8 min-max fake-quantization of r (a channel's SQNR is what
    its reader sees: dividing the channel back by s_c scales signal and error alike)."""
    lo, hi = min(float(r.min()), 0.0), max(float(r.max()), 0.0)
    step = (hi - lo) / 255
    q = np.round((r - lo) / step) * step + lo
    return np.array([10 * np.log10(np.sum(r[:, c] ** 2) / np.sum((q[:, c] - r[:, c]) ** 2)) for c in range(r.shape[1])])


@pytest.mark.parametrize("act", ["Clip", "Relu"])
def test_outputs_kept_and_every_channel_reaches_the_widest(act: str) -> None:
    calib, held = _data(32, 0), _data(16, 1)
    before = _values(_model(act), held, ("y", "r"))
    model, ctx = _run(_model(act), calib)
    after = _values(model, held, ("y", "r"))
    # Same model output (held-out data within the calibration amplitude: Clip's moved caps are not reached).
    np.testing.assert_allclose(after["y"], before["y"], rtol=1e-5, atol=1e-5 * np.abs(before["y"]).max())
    s = after["r"].max(axis=(0, 2, 3)) / before["r"].max(axis=(0, 2, 3))
    np.testing.assert_allclose(after["r"], before["r"] * s[None, :, None, None], rtol=1e-5, atol=1e-6)
    m = _values(_model(act), calib, ("r",))["r"].max(axis=(0, 2, 3))
    cal = _values(model, calib, ("r",))["r"].max(axis=(0, 2, 3))
    # Every channel reaches the widest one's maximum (for the Clip: at most 6 / headroom 2), unless the
    # default max_scale 32 stops it first.
    reach = m.max() if act == "Relu" else min(m.max(), 3.0)
    np.testing.assert_allclose(cal, np.minimum(np.maximum(reach, m), 32 * m), rtol=1e-5)
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(32.0)
    reason = _decisions(ctx, "equalized")["expand (Conv)"]
    assert f"{C} channels of %r scaled by 1-" in reason and ("Clip(0, 6)" in reason) == (act == "Clip")
    # What the graph now holds for the report: float value = graph value * rescaled.
    for name in ("h", "r"):
        np.testing.assert_allclose(ctx.artifacts["rescaled"][name].ravel(), 1.0 / s, rtol=1e-5)


def test_uint8_error_of_the_activation_drops() -> None:
    calib = _data(32, 0)
    r0 = _values(_model(), calib, ("r",))["r"]
    model, _ = _run(_model(), calib)
    r1 = _values(model, calib, ("r",))["r"]
    # Each channel gains what its scale gained (20 log10 s_c, up to the rounding noise of a few levels); the
    # narrowest (scaled by 32) about 30 dB.
    s = r1.max(axis=(0, 2, 3)) / r0.max(axis=(0, 2, 3))
    gain = _uint8_sqnr(r1) - _uint8_sqnr(r0)
    np.testing.assert_allclose(gain, 20 * np.log10(s), atol=3.0)
    assert gain[1] > 25 and gain.mean() > 12, gain


def test_clip_moves_at_least_headroom_above_the_calibration_maximum() -> None:
    calib = _data(32, 0)
    m = _values(_model(), calib, ("r",))["r"].max(axis=(0, 2, 3))
    model, ctx = _run(_model(), calib, headroom=2.0)
    s = _values(model, calib, ("r",))["r"].max(axis=(0, 2, 3)) / m
    moved_cap = 6.0 / s  # where channel c is now clipped, in the float model's units
    scaled = s > 1.0 + 1e-6
    assert scaled.sum() == C - 1 and np.all(moved_cap[scaled] >= 2.0 * m[scaled] * (1 - 1e-5))
    assert "bounds each scaled channel at >= 2x its calibration maximum" in _decisions(ctx, "equalized")["expand (Conv)"]
    # Far beyond the calibration data (10x the input) the narrow channels are clipped exactly there.
    loud = _Samples({"x": f["x"] * 10} for f in _data(4, 2))
    r0, r1 = _values(_model(), loud, ("r",))["r"], _values(model, loud, ("r",))["r"]
    np.testing.assert_allclose(r1 / s[None, :, None, None], np.minimum(r0, moved_cap[None, :, None, None]),
                               rtol=1e-5, atol=1e-6)
    assert (r0 > moved_cap[None, :, None, None]).any()  # the test reaches the moved caps


def test_max_scale_caps_the_scale() -> None:
    calib = _data(32, 0)
    before = _values(_model(), calib, ("r",))["r"].max(axis=(0, 2, 3))
    model, ctx = _run(_model(), calib, max_scale=4.0)
    after = _values(model, calib, ("r",))["r"].max(axis=(0, 2, 3))
    s = after / before
    assert s.max() == pytest.approx(4.0, rel=1e-5) and s.min() == pytest.approx(1.0, rel=1e-5)
    assert "scaled by 1-4 " in _decisions(ctx, "equalized")["expand (Conv)"]


def test_dense_reader_gets_softened_scales() -> None:
    calib, held = _data(32, 0), _data(8, 1)
    m = _values(_model(reader="dense"), calib, ("r",))["r"].max(axis=(0, 2, 3))
    before = _values(_model(reader="dense"), held, ("y",))["y"]
    model, ctx = _run(_model(reader="dense"), calib, dense_alpha=0.5)
    np.testing.assert_allclose(_values(model, held, ("y",))["y"], before, rtol=1e-5,
                               atol=1e-5 * np.abs(before).max())
    s = _values(model, calib, ("r",))["r"].max(axis=(0, 2, 3)) / m
    full = np.minimum(np.minimum(m.max(), 3.0) / m, 32.0)  # what a depthwise reader would get
    np.testing.assert_allclose(s, np.sqrt(np.maximum(full, 1.0)), rtol=1e-5)
    assert "dw (Conv) divided back" in _decisions(ctx, "equalized")["expand (Conv)"]


def test_dense_reader_or_other_reader_is_kept_with_the_reason() -> None:
    calib = _data(8, 0)
    for model, why in ((_model(reader="dense"), "dw (Conv) reads its activation and is a dense convolution"),
                       (_model(fanout=True), "other (Relu) reads its activation and cannot divide the scales back")):
        w1 = model.graph.find_node("expand").inputs[1].const.numpy().copy()
        out, ctx = _run(model, calib, dense_alpha=0.0)
        assert why in _decisions(ctx, "kept")["expand (Conv)"]
        np.testing.assert_array_equal(out.graph.find_node("expand").inputs[1].const.numpy(), w1)
        assert "rescaled" not in ctx.artifacts


def test_skipped_without_data_or_per_channel_weights() -> None:
    _, ctx = _run(_model(), None)
    assert _decisions(ctx, "skipped") == {"model": "needs calibration data (none was given)"}
    _, ctx = _run(_model(), _data(4, 0), recipe=_recipe("per_tensor"))
    assert "per_tensor" in _decisions(ctx, "skipped")["model"]


def test_report_compares_the_rescaled_layer_with_the_float_one() -> None:
    from qcompiler.measure import layer_sqnr

    calib, held = _data(32, 0), _data(8, 1)
    float_model = _model()
    model, ctx = _run(_model(), calib)
    plain = layer_sqnr(float_model, model, ["r", "y"], held)
    undone = layer_sqnr(float_model, model, ["r", "y"], held, rescaled=ctx.artifacts["rescaled"])
    assert plain["y"].sqnr_db > 90 and undone["y"].sqnr_db > 90  # the output was never rescaled
    assert plain["r"].sqnr_db < 10 < 90 < undone["r"].sqnr_db
