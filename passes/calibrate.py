"""`calibrate`: give every QuantType a scale and zero point.

Weights (constants) are measured directly. Activation ranges come from observers attached as executor hooks
while the float model runs on the calibration set: streaming, so memory stays constant however many samples
there are. Values that share another's quantization (the outputs of Reshape, MaxPool, ...) take its
parameters. Scales and zero points become initializers the QuantType points to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qcompiler.errors import CalibrationError
from qcompiler.ir import DType, Graph, Model, QuantType, Tensor, Value
from qcompiler.numerics import PerTensor, Scheme, get_format, quantize_tensor
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass


@dataclass(frozen=True)
class CalibrateOptions:
    progress: bool = True


def scheme_of(q: QuantType, narrow_range: bool = False) -> Scheme:
    return Scheme(q.scheme, narrow_range=narrow_range)


def zero_point_tensor(zp: np.ndarray | None, fmt_name: str, shape: tuple[int, ...]) -> Tensor:
    """The zero point as ONNX wants it: an array of the quantized type (its dtype selects Q's output type)."""
    fmt = get_format(fmt_name)
    dtype = DType(fmt.onnx_type)
    if zp is None:
        arr = np.zeros(shape, dtype=dtype.storage)
    else:
        arr = np.asarray(zp).reshape(shape).astype(dtype.storage)
    return Tensor(arr, dtype)


def attach_params(graph: Graph, v: Value, scale: np.ndarray, zp: np.ndarray | None) -> None:
    """Store scale/zero point as initializers and point `v.quant` at them."""
    q = v.quant
    assert q is not None
    scale = np.asarray(scale, dtype=np.float32)
    if isinstance(q.granularity, PerTensor):
        scale = scale.reshape(())
    base = v.name or "value"
    s = graph.make_initializer(f"{base}_scale", Tensor(scale))
    z = None
    if get_format(q.format).onnx_type is not None:
        z = graph.make_initializer(f"{base}_zero_point", zero_point_tensor(zp, q.format, scale.shape))
    v.quant = replace(q, scale=s, zero_point=z)


@register_pass
class Calibrate(Pass):
    """Scales for weights from their values, for activations from observers over the calibration set."""

    name = "calibrate"
    requires = ("quant_types",)
    ensures = ("calibrated",)
    Options = CalibrateOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: CalibrateOptions = self.options()
        graph = model.graph
        recipe = ctx.options.get("recipe")
        act_spec = recipe.quantize.activations if recipe is not None else None
        values = [v for v in graph.values() if v.quant is not None and v.quant.scale is None and not v.quant.dynamic]
        if not values:
            return PassResult(model, False)
        weights = [v for v in values if v.const is not None]
        shared = [v for v in values if "quant_shared_with" in v.meta and v.const is None]
        observed = [v for v in values if v.const is None and "quant_shared_with" not in v.meta]
        for v in weights:
            self._weight(graph, v, recipe)
        if observed:
            self._observe(model, observed, ctx, act_spec, opts)
        for v in shared:  # graph order: a chain Reshape -> Transpose resolves front to back
            src = v.meta["quant_shared_with"]
            if src.quant is None or src.quant.scale is None:
                raise CalibrationError(f"%{v.name} shares the quantization of %{src.name}, which has none")
            v.quant = src.quant
        return PassResult(model, True)

    def _weight(self, graph: Graph, v: Value, recipe: Any) -> None:
        q = v.quant
        assert q is not None and v.const is not None
        narrow = bool(recipe is not None and recipe.quantize.weights.narrow_range)
        x = v.const.numpy()
        if not np.issubdtype(x.dtype, np.floating):
            raise CalibrationError(f"weight %{v.name} has element type {v.const.dtype.short}; only float weights "
                                   "can be quantized")
        qt = quantize_tensor(x.astype(np.float32), q.format, scheme_of(q, narrow), q.granularity, name=v.name)
        attach_params(graph, v, qt.scale, qt.zero_point)

    def _observe(self, model: Model, values: list[Value], ctx: PassContext, act_spec: Any,
                 opts: CalibrateOptions) -> None:
        from qcompiler.passes.observers import get_observer
        from qcompiler.runtime import Executor

        data = ctx.calibration
        if data is None:
            names = ", ".join(f"%{v.name}" for v in values[:3])
            raise CalibrationError(
                f"static quantization needs calibration data for {len(values)} activation(s) ({names}, ...): "
                "pass --calib DATA (an .npz, a folder, module:function) or --calib random for a smoke test"
            )
        options = dict(act_spec.observer_options) if act_spec is not None else {}
        observers = {}
        for v in values:
            q = v.quant
            assert q is not None
            observers[id(v)] = get_observer(q.observer or "minmax", v.name, **options)
        executor = Executor(model)

        def hook(value: Value, tensor: Any) -> None:
            observers[id(value)].observe(tensor)

        n = ctx.observe(executor, values, hook, desc="calibrating", progress=opts.progress)
        if n == 0:
            raise CalibrationError("the calibration set is empty")
        ranges = ctx.artifacts.setdefault("ranges", {})
        for v in values:
            q = v.quant
            assert q is not None
            obs = observers[id(v)]
            scale, zp = obs.compute(q.format, scheme_of(q), q.granularity)
            lo, hi = obs.range(q.format, scheme_of(q), q.granularity)
            ranges[v.name] = (float(np.min(lo)), float(np.max(hi)))
            attach_params(model.graph, v, scale, zp)
        ctx.artifacts["calibration_batches"] = n


__all__ = ["Calibrate", "attach_params", "zero_point_tensor"]
