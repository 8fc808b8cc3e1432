"""Fake quantization in torch: x -> dequantize(quantize(x)), differentiable with a straight-through
estimator, so the executor can simulate a QuantType during calibration-time corrections and QAT.

Integer formats only here (round half to even, clamp to [qmin, qmax], as ONNX QuantizeLinear). The
gradient passes straight through inside the representable range and is zero outside it (clipped STE).
"""

from __future__ import annotations

import torch


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)  # half to even

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def broadcast_along(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """A per-axis parameter (scale, zero point, gain) shaped to broadcast against x along `axis` (None: as is)."""
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return p.reshape(shape)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """dq(q(x)) with per-tensor (`axis=None`) or per-axis parameters; STE gradient."""
    s = broadcast_along(scale.to(x.dtype), x, axis)
    z = broadcast_along(zero_point.to(x.dtype), x, axis) if zero_point is not None else torch.zeros((), dtype=x.dtype)
    q = torch.clamp(_RoundSTE.apply(x / s) + z, qmin, qmax)
    return (q - z) * s
