"""bias_correction: after it, a layer's mean output error from weight quantization is zero on the data."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.numerics import PerChannel, dequantize, get_format, quantize
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.recipe import QuantizeSection, Recipe, TensorSpec

RNG = np.random.default_rng(3)


class _Samples(list):
    def batches(self, batch_size: int) -> list:
        return list(self)


def _conv_model(bias: bool = True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 10, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 10, 10])
    ins = ["x", "w", "b"] if bias else ["x", "w"]
    inits = [numpy_helper.from_array(RNG.standard_normal((6, 4, 3, 3)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(6).astype(np.float32), "b"))
    nodes = [helper.make_node("Conv", ins, ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["y"], name="sig")]
    return helper.make_model(helper.make_graph(nodes, "m", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def _run(proto, passes, samples):
    # int4 weights make the shift large enough to see clearly; uint8 activations as on the cpu target.
    q = QuantizeSection(weights=TensorSpec("int4", "symmetric", "per_channel"),
                        activations=TensorSpec("uint8", "affine", "per_tensor"))
    model = model_from_proto(proto)
    ctx = PassContext(options={"recipe": Recipe(quantize=q)}, calibration=_Samples(samples), progress=False)
    PassManager([get_pass(p) for p in passes]).run(model, ctx)
    return model, ctx


def _mean_error(model, samples, bias_name: str | None, b0: np.ndarray, w_float: np.ndarray | None = None) -> np.ndarray:
    """Mean per channel of conv(x_q, W_q) + b' - (conv(x_q, W) + b): the error quantized weights leave (W: the
    model's weights, or `w_float`)."""
    g = model.graph
    w = g.initializers["w"]
    wq = w.quant
    scale = wq.scale.const.numpy()
    w_f = w.const.numpy() if w_float is None else w_float
    w_dq = dequantize(quantize(w.const.numpy(), scale, None, get_format("int4"), PerChannel(0)), scale, None, get_format("int4"),
                      PerChannel(0))
    xq_t = g.inputs[0].quant
    s, z = float(xq_t.scale.const.numpy()), float(xq_t.zero_point.const.numpy())
    b_new = g.initializers[bias_name].const.numpy() if bias_name else np.zeros(6, np.float32)
    errs = []
    for f in samples:
        xq = (np.clip(np.rint(f["x"] / s) + z, 0, 255) - z) * s
        xt = torch.from_numpy(xq.astype(np.float32))
        yq = torch.nn.functional.conv2d(xt, torch.from_numpy(w_dq), torch.from_numpy(b_new), padding=1)
        yf = torch.nn.functional.conv2d(xt, torch.from_numpy(w_f), torch.from_numpy(b0), padding=1)
        errs.append((yq - yf).mean(dim=(0, 2, 3)).numpy())
    return np.mean(errs, axis=0)


def test_mean_error_vanishes_on_the_calibration_data() -> None:
    proto = _conv_model()
    b0 = numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float32)
    # A non-centered input makes (W_q - W) x have a clear mean.
    samples = [{"x": (RNG.standard_normal((1, 4, 10, 10)) + 1.5).astype(np.float32)} for _ in range(12)]
    before, _ = _run(proto, ["assign_quant_types", "calibrate"], samples)
    after, ctx = _run(proto, ["assign_quant_types", "calibrate", "bias_correction"], samples)
    err_before = np.abs(_mean_error(before, samples, "b", b0))
    err_after = np.abs(_mean_error(after, samples, "b", b0))
    assert err_before.max() > 0.05
    # What remains is float32 rounding of sums of ~36 terms of magnitude ~5.
    assert err_after.max() < 1e-4
    assert [d.action for d in ctx.decisions if d.pass_name == "bias_correction"] == ["corrected"]


def test_missing_bias_is_created() -> None:
    proto = _conv_model(bias=False)
    samples = [{"x": (RNG.standard_normal((1, 4, 10, 10)) + 1.5).astype(np.float32)} for _ in range(8)]
    after, _ = _run(proto, ["assign_quant_types", "calibrate", "bias_correction"], samples)
    conv = after.graph.find_node("conv")
    assert len(conv.inputs) == 3 and conv.inputs[2].name == "conv.bias"
    assert np.abs(_mean_error(after, samples, "conv.bias", np.zeros(6, np.float32))).max() < 1e-4


def test_after_gptq_the_shift_is_measured_against_the_float_weights() -> None:
    # gptq leaves weights on the grid (W_q - W_const = 0); the shift that remains is against the float weights,
    # which gptq keeps in the weight's meta.
    from qcompiler.passes.gptq import FLOAT_CONST

    proto = _conv_model()
    w0 = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float32)
    b0 = numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float32)
    samples = [{"x": (RNG.standard_normal((1, 4, 10, 10)) + 1.5).astype(np.float32)} for _ in range(12)]
    rounded, _ = _run(proto, ["assign_quant_types", "calibrate", "gptq"], samples)
    np.testing.assert_array_equal(rounded.graph.initializers["w"].meta[FLOAT_CONST].numpy(), w0)
    after, ctx = _run(proto, ["assign_quant_types", "calibrate", "gptq", "bias_correction"], samples)
    err_before = np.abs(_mean_error(rounded, samples, "b", b0, w_float=w0))
    err_after = np.abs(_mean_error(after, samples, "b", b0, w_float=w0))
    assert err_before.max() > 0.01, err_before
    assert err_after.max() < 1e-4, err_after
