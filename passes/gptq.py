"""`gptq`: choose each integer weight's rounding to minimize the layer's output error on the data (Frantar et al.,
2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", from Optimal Brain
Quantization).

Rounding every weight to its nearest grid point (what `lower_qdq` does alone) minimizes each weight's own error,
not the layer's: for y = W x, the output error over the calibration inputs X is ||(Q - W) X||^2 = tr(E H E^T) with
H = X X^T. GPTQ quantizes the input columns of W one at a time and spreads each column's rounding error over the
columns not yet quantized, weighted by the inverse Hessian (the optimal update for a quadratic loss), so that the
later columns cancel what the earlier ones got wrong. The scales stay those `calibrate` chose; only which grid
point each weight takes changes, and the result is written back as float weights that lie exactly on the grid
(lower_qdq's round-to-nearest then reproduces GPTQ's integers).

Conv (any group count, including depthwise: one Hessian per group over its ``C/g * kh * kw`` inputs), Gemm and
MatMul with constant integer weights quantized per tensor or per output channel. The Hessians come from the
simulated quantized model (activations fake-quantized as they will run) on the calibration set. Runs after
`calibrate`, before `bias_correction` and `lower_qdq`. On MobileNetV2 (weights int8 per channel, activations
float) top-1 agreement with FP32 goes from 0.895 (nearest rounding) to 0.977.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qcompiler.ir import Model, Node, Tensor, TensorType, Value
from qcompiler.numerics import PerChannel, PerTensor, get_format
from qcompiler.numerics.scheme import Scheme, quant_range
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

ROUNDED_OPS = ("Conv", "Gemm", "MatMul")
# `Value.meta` key: the float weights a pass replaced by weights on the quantization grid.
FLOAT_CONST = "float_const"


@dataclass(frozen=True)
class GptqOptions:
    samples: int = 128  # calibration batches read to build the Hessians
    damp: float = 0.01  # added to H's diagonal, as a fraction of its mean (GPTQ's default)
    progress: bool = True


@dataclass
class _Layer:
    """One weight seen as rows (output channels) x columns (the inputs each output reads), per group."""

    node: Node
    weight: Value
    groups: int
    hessian: torch.Tensor | None = None  # [groups, K, K], sum over rows of X
    count: int = 0


def gptq_round(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
               damp: float = 0.01) -> torch.Tensor:
    """GPTQ integers for ``w`` ``[G, R, K]`` given Hessians ``h`` ``[G, K, K]`` and scales ``[G, R]``
    (symmetric: zero point 0). Returns the integers as float64 ``[G, R, K]``."""
    w = w.clone().double()
    h = h.clone().double()
    g, _, k = w.shape
    dead = torch.diagonal(h, dim1=1, dim2=2) <= 0  # inputs that were always zero: no error to spread
    idx = torch.arange(k)
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag[dead] = 1.0
    mean = diag.mean(dim=1, keepdim=True)
    h[:, idx, idx] += damp * mean
    # Upper Cholesky factor of H^-1: row i holds the weights that spread column i's error over columns > i.
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(hinv, upper=True)
    s = scale.double()
    q = torch.empty_like(w)
    for i in range(k):
        col = w[:, :, i]
        qi = torch.clamp(torch.round(col / s), qmin, qmax)
        q[:, :, i] = qi
        err = (col - qi * s) / u[:, i, i].unsqueeze(1)  # [G, R]
        w[:, :, i:] -= err.unsqueeze(2) * u[:, i, i:].unsqueeze(1)
    return q


@register_pass
class Gptq(Pass):
    name = "gptq"
    requires = ("calibrated",)
    Options = GptqOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: GptqOptions = self.options()
        if ctx.calibration is None:
            ctx.decide(self.name, "model", "skipped", "no calibration data: weights keep nearest rounding")
            return PassResult(model, False)
        layers = [lay for n in model.graph.nodes if (lay := self._layer(n, ctx)) is not None]
        if not layers:
            return PassResult(model, False)
        self._collect(model, layers, ctx, opts)
        for lay in layers:
            self._round(model, lay, ctx, opts)
        return PassResult(model, True)

    # -- which layers ---------------------------------------------------------------------------------------

    def _layer(self, n: Node, ctx: PassContext) -> _Layer | None:
        if n.op_type not in ROUNDED_OPS or len(n.inputs) < 2:
            return None
        w = n.inputs[1]
        if w is None or w.const is None or w.quant is None or w.quant.scale is None:
            return None
        q = w.quant
        if not get_format(q.format).is_integer or q.scheme != "symmetric":
            ctx.decide(self.name, n.label(), "skipped", f"weights {q.format} {q.scheme}: GPTQ here is for "
                                                       "symmetric integer weights")
            return None
        shape = w.const.shape
        gran = q.granularity
        out_axis = {"Conv": 0, "MatMul": 1, "Gemm": 0 if n.attr("transB", 0) else 1}[n.op_type]
        if not (isinstance(gran, PerTensor) or (isinstance(gran, PerChannel) and gran.axis == out_axis)):
            ctx.decide(self.name, n.label(), "skipped", f"weight granularity {gran} is not per tensor or per "
                                                       "output channel")
            return None
        if n.op_type == "Conv":
            if len(shape) != 4 or n.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
                ctx.decide(self.name, n.label(), "skipped", "only 2-D convolutions with explicit pads")
                return None
            return _Layer(n, w, int(n.attr("group", 1)))
        if len(shape) != 2 or (n.op_type == "Gemm" and n.attr("transA", 0)):
            return None
        return _Layer(n, w, 1)

    # -- the Hessians ---------------------------------------------------------------------------------------

    def _collect(self, model: Model, layers: list[_Layer], ctx: PassContext, opts: GptqOptions) -> None:

        from qcompiler.passes.bias_correction import fake_quant_hook
        from qcompiler.runtime import Executor

        executor = Executor(model)
        # Layers that read the same input the same way (the q/k/v projections of a transformer) share one
        # Hessian: it depends only on the input columns.
        shared: dict[tuple, list[_Layer]] = {}
        for lay in layers:
            shared.setdefault(_columns_key(lay), []).append(lay)
        by_input: dict[int, list[list[_Layer]]] = {}
        for group in shared.values():
            x = group[0].node.inputs[0]
            assert x is not None
            by_input.setdefault(id(x), []).append(group)

        def accumulate(value: Value, t: torch.Tensor) -> None:
            for group in by_input[id(value)]:
                cols = _columns(group[0], t.detach().double())  # [G, K, rows]
                h = cols @ cols.transpose(1, 2)
                first = group[0]
                first.hessian = h if first.hessian is None else first.hessian + h
                first.count += cols.shape[2]
                for lay in group[1:]:
                    lay.hessian, lay.count = first.hessian, first.count

        inputs = list({id(lay.node.inputs[0]): lay.node.inputs[0] for lay in layers}.values())
        with fake_quant_hook(executor, model):
            ctx.observe(executor, inputs, accumulate, limit=opts.samples, desc="gptq: hessians",
                        progress=opts.progress)

    # -- rounding -------------------------------------------------------------------------------------------

    def _round(self, model: Model, lay: _Layer, ctx: PassContext, opts: GptqOptions) -> None:
        n, w = lay.node, lay.weight
        if lay.hessian is None or lay.count == 0:
            ctx.decide(self.name, n.label(), "skipped", "its input was never computed on the calibration set")
            return
        q = w.quant
        assert q is not None and w.const is not None and q.scale is not None
        wf = w.const.numpy().astype(np.float32)
        rows = _as_rows(n, wf)  # [R, K]
        r, k = rows.shape
        scale = np.broadcast_to(q.scale_array().astype(np.float32).reshape(-1), (r,)).copy() \
            if isinstance(q.granularity, PerChannel) else np.full(r, float(q.scale_array().reshape(())), np.float32)
        if np.any(scale <= 0):
            ctx.decide(self.name, n.label(), "skipped", "a weight scale is zero")
            return
        g = lay.groups
        qmin, qmax = quant_range(get_format(q.format), Scheme(q.scheme))
        wg = torch.from_numpy(rows).view(g, r // g, k)
        sg = torch.from_numpy(scale).view(g, r // g)
        h = lay.hessian / lay.count
        ints = gptq_round(wg, h, sg, qmin, qmax, opts.damp).view(r, k)
        new_rows = ints.float().numpy() * scale[:, None]
        new = _from_rows(n, new_rows, wf.shape)
        # The output error energy per sample, before and after, from the same Hessian (tr(E H E^T) / rows).
        nearest = np.clip(np.round(rows / scale[:, None]), qmin, qmax) * scale[:, None]
        before = _energy(rows - nearest, h, g)
        after = _energy(rows - new_rows, h, g)
        if w.num_uses > 1:  # another reader sees the same weight: give this layer its own copy
            nw = model.graph.make_initializer(f"{w.name}_gptq", Tensor(new))
            nw.quant = q
            n.set_input(1, nw)
        else:
            nw = w
            w.const = Tensor(new)
            w.type = TensorType(w.const.dtype, w.const.shape)
        # The float weights stay known: later passes that fit the quantized model to the float one need them.
        nw.meta.setdefault(FLOAT_CONST, Tensor(wf))
        ctx.decide(self.name, n.label(), "rounded",
                   f"output error energy {after:.3g} vs {before:.3g} with nearest rounding "
                   f"({_db(before, after):+.1f} dB), {lay.count} input rows")


def _db(before: float, after: float) -> float:
    return float(10 * np.log10(max(before, 1e-30) / max(after, 1e-30)))


def _energy(err: np.ndarray, h: torch.Tensor, groups: int) -> float:
    r, k = err.shape
    e = torch.from_numpy(err).double().view(groups, r // groups, k)
    return float(torch.einsum("grk,gkj,grj->", e, h, e)) / r


def _columns_key(lay: _Layer) -> tuple:
    n = lay.node
    x = n.inputs[0]
    if n.op_type != "Conv":
        return (id(x), "rows", n.op_type == "Gemm" and bool(n.attr("transA", 0)))
    geometry = tuple(tuple(n.attr(a, [])) for a in ("pads", "strides", "dilations"))
    return (id(x), "conv", lay.groups, tuple(lay.weight.const.shape[2:]), geometry)  # type: ignore[union-attr]


def _as_rows(n: Node, w: np.ndarray) -> np.ndarray:
    """The weight as [outputs, inputs]: Conv [M, C/g*kh*kw]; Gemm/MatMul [N, K]."""
    if n.op_type == "Conv":
        return np.ascontiguousarray(w.reshape(w.shape[0], -1))
    if n.op_type == "Gemm" and n.attr("transB", 0):
        return np.ascontiguousarray(w)
    return np.ascontiguousarray(w.T)


def _from_rows(n: Node, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if n.op_type == "Conv" or (n.op_type == "Gemm" and n.attr("transB", 0)):
        return np.ascontiguousarray(rows.reshape(shape)).astype(np.float32)
    return np.ascontiguousarray(rows.T).astype(np.float32)


def _columns(lay: _Layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as [G, K, rows]: what each output row is a dot product with."""
    n = lay.node
    if n.op_type != "Conv":
        if n.op_type == "Gemm" and n.attr("transA", 0):
            x = x.T
        x = x.reshape(-1, x.shape[-1])
        return x.T.unsqueeze(0)
    kh, kw = lay.weight.const.shape[2:]  # type: ignore[union-attr]
    pads = list(n.attr("pads", [0, 0, 0, 0]))
    strides = list(n.attr("strides", [1, 1]))
    dil = list(n.attr("dilations", [1, 1]))
    if any(pads):  # ONNX pads are [top, left, bottom, right]; F.pad takes (left, right, top, bottom)
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    u = F.unfold(x, (kh, kw), dilation=dil, stride=strides)  # [N, C*kh*kw, L]
    nb, ck, length = u.shape
    g = lay.groups
    return u.view(nb, g, ck // g, length).permute(1, 2, 0, 3).reshape(g, ck // g, nb * length)


__all__ = ["Gptq", "GptqOptions", "gptq_round"]
