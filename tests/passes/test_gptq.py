"""gptq: rounding chosen against the layer's output error. Checked on the algorithm (exactly nearest rounding
when the inputs are uncorrelated, a lower output error than nearest rounding when they are correlated) and as a
pass on Conv (dense and depthwise), Gemm and MatMul: weights stay on the calibrated grid, and the output error on
held-out data drops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qcompiler.frontends.onnx_io import model_from_proto
from qcompiler.passes.gptq import gptq_round
from qcompiler.pipeline import PassContext, PassManager, get_pass
from qcompiler.recipe import QuantizeSection, Recipe, TensorSpec

RNG = np.random.default_rng(11)


class _Samples(list):
    def batches(self, batch_size: int) -> list:
        return list(self)


def _nearest(w: np.ndarray, s: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    return np.clip(np.round(w / s), qmin, qmax)


def test_uncorrelated_inputs_give_nearest_rounding() -> None:
    # H diagonal: no column's error can be compensated by another, so GPTQ must equal round-to-nearest.
    w = RNG.standard_normal((2, 6, 16))
    h = np.zeros((2, 16, 16))
    h[:, np.arange(16), np.arange(16)] = RNG.uniform(0.5, 2.0, (2, 16))
    s = np.abs(w).max(axis=2) / 7
    q = gptq_round(torch.from_numpy(w), torch.from_numpy(h), torch.from_numpy(s), -8, 7).numpy()
    np.testing.assert_array_equal(q, _nearest(w, s[..., None], -8, 7))


def test_correlated_inputs_lower_the_output_error() -> None:
    k, r, n = 48, 16, 2000
    mix = RNG.standard_normal((4, k))

    def draw() -> np.ndarray:  # rank-4 structure + noise: a Hessian far from diagonal
        return RNG.standard_normal((n, 4)) @ mix + 0.3 * RNG.standard_normal((n, k))

    x, held_out = draw(), draw()
    w = RNG.standard_normal((r, k))
    s = np.abs(w).max(axis=1) / 7
    h = x.T @ x / n
    q = gptq_round(torch.from_numpy(w[None]), torch.from_numpy(h[None]), torch.from_numpy(s[None]), -8, 7)[0].numpy()
    assert q.min() >= -8 and q.max() <= 7 and np.array_equal(q, np.round(q))
    err_gptq = np.square((q * s[:, None] - w) @ held_out.T).mean()
    err_near = np.square((_nearest(w, s[:, None], -8, 7) * s[:, None] - w) @ held_out.T).mean()
    assert err_gptq < 0.5 * err_near, (err_gptq, err_near)


def _correlated_images(n: int, c: int, hw: int) -> list[dict[str, np.ndarray]]:
    """Channels that share a smooth common component: inputs whose Hessian is far from diagonal."""
    out = []
    for _ in range(n):
        common = RNG.standard_normal((1, 1, hw // 2, hw // 2))
        common = np.kron(common, np.ones((1, 1, 2, 2)))  # neighbouring pixels equal: spatial correlation
        x = np.abs(common + 0.4 * RNG.standard_normal((1, c, hw, hw)))  # non-negative, like post-ReLU maps
        out.append({"x": x.astype(np.float32)})
    return out


def _model(kind: str):
    c, m = 8, 8
    if kind in ("conv", "depthwise"):
        group = c if kind == "depthwise" else 1
        w = RNG.standard_normal((m, c // group, 3, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=group, name="layer")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 8, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m, 8, 8])
    elif kind == "gemm":
        w = RNG.standard_normal((m, 24)).astype(np.float32)  # [N, K] with transB
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="layer")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])
    else:
        w = RNG.standard_normal((24, m)).astype(np.float32)  # [K, N]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 24])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, m])
    inits = [numpy_helper.from_array(w, "w")]
    if kind != "matmul":
        inits.append(numpy_helper.from_array(RNG.standard_normal(m).astype(np.float32), "b"))
    graph = helper.make_graph([node], "m", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(kind: str, n: int) -> list[dict[str, np.ndarray]]:
    if kind in ("conv", "depthwise"):
        return _correlated_images(n, 8, 8)
    mix = np.random.default_rng(5).standard_normal((3, 24))  # the same structure for every draw
    rows = (RNG.standard_normal((n * 5, 3)) @ mix + 0.2 * RNG.standard_normal((n * 5, 24))).astype(np.float32)
    shape = (1, 5, 24) if kind == "matmul" else (5, 24)
    return [{"x": rows[i * 5:(i + 1) * 5].reshape(shape)} for i in range(n)]


def _layer_output(kind: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if kind == "conv":
        return torch.nn.functional.conv2d(xt, wt, padding=1).numpy()
    if kind == "depthwise":
        return torch.nn.functional.conv2d(xt, wt, padding=1, groups=8).numpy()
    if kind == "gemm":
        return (xt @ wt.T).numpy()
    return (xt @ wt).numpy()


@pytest.mark.parametrize("kind", ["conv", "depthwise", "gemm", "matmul"])
def test_pass_keeps_the_grid_and_lowers_held_out_error(kind: str) -> None:
    proto = _model(kind)
    w0 = numpy_helper.to_array(proto.graph.initializer[0]).copy()
    calib, held_out = _samples(kind, 24), _samples(kind, 8)
    # int4 weights make the rounding choice matter; activations stay float (dynamic) so only weights differ.
    q = QuantizeSection(op_types=("Conv", "Gemm", "MatMul"), activations=None, dynamic=True,
                        weights=TensorSpec("int4", "symmetric", "per_channel"))
    model = model_from_proto(proto)
    ctx = PassContext(options={"recipe": Recipe(quantize=q)}, calibration=_Samples(calib), progress=False)
    PassManager([get_pass(p) for p in ("assign_quant_types", "calibrate", "gptq")]).run(model, ctx)
    w = model.graph.initializers["w"]
    scale = w.quant.scale.const.numpy()
    axis = w.quant.granularity.axis
    shape = [1] * w0.ndim
    shape[axis] = -1
    s = scale.reshape(shape)
    ints = w.const.numpy() / s
    np.testing.assert_allclose(ints, np.round(ints), atol=1e-4)  # exactly on the calibrated grid
    assert ints.min() >= -8 - 1e-4 and ints.max() <= 7 + 1e-4
    near = _nearest(w0, s, -8, 7) * s
    x = np.concatenate([f["x"] for f in held_out])
    ref = _layer_output(kind, x, w0)
    err_gptq = np.square(_layer_output(kind, x, w.const.numpy()) - ref).mean()
    err_near = np.square(_layer_output(kind, x, near.astype(np.float32)) - ref).mean()
    assert err_gptq < 0.8 * err_near, (err_gptq, err_near)
    [d] = [d for d in ctx.decisions if d.pass_name == "gptq"]
    assert d.action == "rounded" and "dB" in d.reason


def test_without_calibration_data_nothing_changes() -> None:
    proto = _model("conv")
    w0 = numpy_helper.to_array(proto.graph.initializer[0]).copy()
    q = QuantizeSection(op_types=("Conv",), activations=None, dynamic=True,
                        weights=TensorSpec("int8", "symmetric", "per_channel"))
    model = model_from_proto(proto)
    ctx = PassContext(options={"recipe": Recipe(quantize=q)}, calibration=None, progress=False)
    PassManager([get_pass(p) for p in ("assign_quant_types", "calibrate", "gptq")]).run(model, ctx)
    np.testing.assert_array_equal(model.graph.initializers["w"].const.numpy(), w0)
    assert [(d.action, d.reason.split(":")[0]) for d in ctx.decisions if d.pass_name == "gptq"] == \
        [("skipped", "no calibration data")]
