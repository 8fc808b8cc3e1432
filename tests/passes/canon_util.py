"""Helpers for the canonicalize pass tests: run passes with the verifier (ONNX schema rule included), list
ops, pick decisions, and the float32 rounding bounds the numeric tests use."""

from __future__ import annotations

import numpy as np

from qcompiler.frontends.onnx_schema import schema_rule
from qcompiler.ir import Graph, Model
from qcompiler.pipeline import PassContext, PassManager, get_pass

U32 = 2.0**-24  # unit roundoff of float32 (half an ulp at 1.0)


def run_passes(model: Model | Graph, *names: str, **options: object) -> tuple[Model, PassContext]:
    """Run the named passes (options go to each) through a PassManager that verifies the IR, ONNX schemas
    included, after every pass."""
    if isinstance(model, Graph):
        model = Model(model, opset_imports={"": 21})
    ctx = PassContext(progress=False)
    pm = PassManager([get_pass(n, **options) for n in names], rules_for=lambda m: [schema_rule(m)])
    return pm.run(model, ctx), ctx


def ops(model: Model) -> list[str]:
    return [n.op_type for n in model.graph.nodes]


def decided(ctx: PassContext, action: str, pass_name: str | None = None) -> dict[str, str]:
    """subject -> reason of the decisions with `action` (of `pass_name`, if given)."""
    return {d.subject: d.reason for d in ctx.decisions
            if d.action == action and (pass_name is None or d.pass_name == pass_name)}


def dot_bound(terms_abs: np.ndarray, n: int) -> np.ndarray:
    """Bound on |computed - exact| of a float32 sum of `n` terms whose absolute values sum to `terms_abs`,
    in any order: gamma_n = n*u/(1 - n*u) times that sum (Higham, Accuracy and Stability, 3.1)."""
    gamma = n * U32 / (1 - n * U32)
    return gamma * terms_abs


def channel_view(a: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along axis 1 of an `ndim`-D activation."""
    return np.asarray(a, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def abs_conv(e: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """conv2d(e, |w|) in float64: sum_k |w_k| e_k for every output (e >= 0)."""
    import torch

    return torch.nn.functional.conv2d(torch.from_numpy(np.asarray(e, np.float64)),
                                      torch.from_numpy(np.abs(w.astype(np.float64))), padding=pad).numpy()


def conv_bn_bound(inp_abs: np.ndarray, e_in: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                  bn: dict[str, np.ndarray], eps: float, pad: int) -> np.ndarray:
    """Bound on |folded Conv(+b) - unfolded Conv(+b)+BN| elementwise, when the two graphs' inputs differ by at
    most `e_in` and the unfolded one's input is `inp_abs` in magnitude (see test_fold_batchnorm's doc):
    conv(e_in, |W'|) + (2(K+1) + 16) u M, M = |s| (sum|W|(|x| + e_in) + |b| + |mean|) + |beta|."""
    s = bn["gamma"].astype(np.float64) / np.sqrt(bn["var"].astype(np.float64) + eps)
    k = w.shape[1] * w.shape[2] * w.shape[3]
    terms = abs_conv(inp_abs + e_in, w, pad) + (0.0 if b is None else channel_view(np.abs(b), 4))
    m = channel_view(np.abs(s), 4) * (terms + channel_view(np.abs(bn["mean"]), 4)) + channel_view(np.abs(bn["beta"]), 4)
    w_folded = w.astype(np.float64) * s.reshape(-1, 1, 1, 1)
    return abs_conv(e_in, w_folded, pad) + (2 * (k + 1) + 16) * U32 * m


def f32_literal(a: np.ndarray) -> str:
    """A float32 array as the IR's tensor literal."""
    dims = ",".join(str(d) for d in a.shape)
    return f"tensor<f32[{dims}]>{np.asarray(a, np.float32).tolist()}"


def grid_weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Nonzero weights on a grid of 1/64 (exact in float32 and in the text form)."""
    r = rng.standard_normal(shape)
    return (np.sign(r) * (np.round(np.abs(r) * 16) + 1) / 64).astype(np.float32)
