"""`bias_correction`: remove the mean output shift that weight quantization causes (Nagel et al., 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction", empirical variant).

For a linear layer y = W x + b, quantized weights give y_q = W_q x + b: an error (W_q - W) x whose mean
over the data is not zero, and which a network of depthwise convolutions accumulates layer after layer.
With the calibrated model simulated (activations and weights fake-quantized by the executor's hooks), each
layer's E[(W_q - W) x_q] per output channel is measured on the calibration set and subtracted from its bias.
Runs after `calibrate`, before `lower_qdq` (which then quantizes the corrected bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qcompiler.ir import Model, Node, QuantType, Tensor, TensorType, Value
from qcompiler.numerics import dequantize, get_format, quantize
from qcompiler.numerics.scheme import Scheme, quant_range
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from .gptq import FLOAT_CONST

CORRECTED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class BiasCorrectionOptions:
    samples: int = 64  # calibration samples used (the error's mean converges quickly)


def _weight_dq(q: QuantType, w: np.ndarray) -> np.ndarray:
    scale, zp = q.scale_array(), q.zero_point_array()
    fmt = get_format(q.format)
    return dequantize(quantize(w, scale, zp, fmt, q.granularity), scale, zp, fmt, q.granularity)


def _act_params(q: QuantType) -> tuple[torch.Tensor, torch.Tensor | None, int, int, int | None]:
    s = torch.from_numpy(q.scale_array())
    zp = q.zero_point_array()
    z = None if zp is None else torch.from_numpy(np.asarray(zp).astype(np.float32))
    qmin, qmax = quant_range(get_format(q.format), Scheme(q.scheme))
    return s, z, qmin, qmax, getattr(q.granularity, "axis", None)


def simulated_activations(model: Model) -> list[Value]:
    """The activations the artifact will quantize, with their calibrated QuantTypes (integer formats). A value
    read only by a Relu/Clip that lower_qdq folds is left out: in the artifact the Relu/Clip output's
    quantization is all there is, and simulating both would add noise the model will not have."""
    from .lower_qdq import activation_fold

    folded = {id(n.inputs[0]) for n in model.graph.nodes if activation_fold(n) == ""}
    return [v for v in model.graph.values() if v.quant is not None and v.const is None and v.quant.scale is not None
            and get_format(v.quant.format).is_integer and id(v) not in folded]


def fake_quant_hook(executor: Any, model: Model) -> Any:
    """Hook that fake-quantizes every simulated activation (see `simulated_activations`) as it is computed: the
    executor then runs the model as it will run quantized (weights aside). Returns the hook's handle."""
    from qcompiler.runtime.fake_quant import fake_quantize

    acts = simulated_activations(model)
    params = {id(v): _act_params(v.quant) for v in acts}  # type: ignore[arg-type]

    def fq(value: Value, t: torch.Tensor) -> torch.Tensor:
        s, z, lo, hi, axis = params[id(value)]
        return fake_quantize(t, s, z, lo, hi, axis)

    return executor.add_hook(acts, fq)


@register_pass
class BiasCorrection(Pass):
    name = "bias_correction"
    requires = ("calibrated",)
    Options = BiasCorrectionOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from qcompiler.runtime import Executor, lookup
        from qcompiler.runtime.registry import OpContext

        opts: BiasCorrectionOptions = self.options()
        data = ctx.calibration
        if data is None:
            ctx.decide(self.name, "model", "skipped", "no calibration data")
            return PassResult(model, False)
        graph = model.graph
        layers = [n for n in graph.nodes if self._eligible(n)]
        if not layers:
            return PassResult(model, False)
        executor = Executor(model)
        # Simulate the quantized model: fake-quantized activations, dequantized quantized weights.
        handles = [fake_quant_hook(executor, model)]
        w_dq: dict[int, torch.Tensor] = {}
        delta: dict[int, torch.Tensor] = {}
        for n in layers:
            w = n.inputs[1]
            assert w is not None and w.const is not None and w.quant is not None
            wq = _weight_dq(w.quant, w.const.numpy().astype(np.float32)).astype(np.float32)
            # Against the float weights, also where gptq has already put the constant on the grid.
            wf = w.meta.get(FLOAT_CONST, w.const).numpy().astype(np.float32)
            w_dq[id(w)] = torch.from_numpy(wq)
            delta[id(n)] = torch.from_numpy(wq - wf)
        handles.append(executor.add_hook([n.inputs[1] for n in layers], lambda v, t: w_dq[id(v)]))
        stash: dict[int, torch.Tensor] = {}
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        by_input: dict[int, list[Node]] = {}
        for n in layers:
            by_input.setdefault(id(n.inputs[0]), []).append(n)

        def keep_input(value: Value, t: torch.Tensor) -> None:
            stash[id(value)] = t

        def measure(value: Value, t: torch.Tensor) -> None:
            n = value.producer
            assert n is not None
            x = stash[id(n.inputs[0])]
            entry = lookup(n.op_type, n.domain, model.opset(n.domain) or 1)
            assert entry is not None
            attrs = {k: a.value for k, a in n.attrs.items() if k not in ("alpha", "beta")}
            if n.op_type == "Gemm":
                attrs["alpha"], attrs["beta"] = n.attr("alpha", 1.0), 0.0
            err = entry.fn(OpContext(n, model.opset() or 1), x, delta[id(n)], **attrs) if n.op_type != "MatMul" \
                else torch.matmul(x, delta[id(n)])
            axis = 1 if n.op_type in ("Conv", "Gemm") else err.dim() - 1
            dims = [d for d in range(err.dim()) if d != axis]
            sums[id(n)] = sums.get(id(n), 0) + err.sum(dim=dims).double()
            counts[id(n)] = counts.get(id(n), 0) + err.numel() // err.shape[axis]

        handles.append(executor.add_hook([n.inputs[0] for n in layers], keep_input))
        handles.append(executor.add_hook([n.outputs[0] for n in layers], measure))
        try:
            for feeds in ctx.calibration_batches(limit=opts.samples):
                executor.run(feeds)
        finally:
            for h in handles:
                h.remove()
        for n in layers:
            if id(n) not in sums:
                continue
            shift = (sums[id(n)] / counts[id(n)]).numpy().astype(np.float32)
            self._apply(model, n, shift, ctx)
        return PassResult(model, True)

    @staticmethod
    def _eligible(n: Node) -> bool:
        if n.op_type not in CORRECTED_OPS or len(n.inputs) < 2:
            return False
        w = n.inputs[1]
        if w is None or w.const is None or w.quant is None or w.quant.scale is None:
            return False
        if not get_format(w.quant.format).is_integer:
            return False
        if n.op_type == "MatMul":
            return "bias" in n.meta and w.const.numpy().ndim == 2
        return True

    def _apply(self, model: Model, n: Node, shift: np.ndarray, ctx: PassContext) -> None:
        graph = model.graph
        if n.op_type == "MatMul":
            add: Node = n.meta["bias"]
            b = next((v for v in add.inputs if v is not None and v.const is not None), None)
        else:
            b = n.inputs[2] if len(n.inputs) > 2 else None
        if b is None:
            if n.op_type == "MatMul":
                return
            bias = graph.make_initializer(f"{n.name or 'layer'}.bias", Tensor(-shift))
            while len(n.inputs) < 2 + 1:
                n.append_input(None)
            n.set_input(2, bias)
        else:
            old = b.const.numpy().astype(np.float32)  # type: ignore[union-attr]
            if old.shape != shift.shape and old.size != shift.size:
                ctx.decide(self.name, n.label(), "skipped", f"bias shape {old.shape} != channels {shift.shape}")
                return
            new = (old.reshape(shift.shape) - shift).reshape(old.shape)
            if b.num_uses > 1:  # shared bias: give this layer its own copy
                nb = graph.make_initializer(f"{b.name}_corrected", Tensor(new))
                for user, i in list(b.uses):
                    if user is n or user is n.meta.get("bias"):
                        user.set_input(i, nb)
            else:
                b.const = Tensor(new)
                b.type = TensorType(b.const.dtype, b.const.shape)
        ctx.decide(self.name, n.label(), "corrected",
                   f"mean output shift {float(np.abs(shift).mean()):.3g} (max {float(np.abs(shift).max()):.3g})")
