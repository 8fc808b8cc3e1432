"""Helpers for the transformer-fusion tests: run an IR model in ONNX Runtime, and the float32 rounding bounds the
numeric tests assert (each derived in its docstring; u = 2^-24 is float32's unit roundoff).

Assumption shared by the bounds: the erf and exp kernels (ORT's MLAS, torch's) are accurate to 4 units of
float32 rounding (u-relative for exp, 4u absolute for erf, whose values lie in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import qcompiler
from qcompiler.backends.onnxruntime.session import make_session
from qcompiler.frontends.onnx_io import model_to_proto
from qcompiler.ir import Model

U32 = 2.0**-24
FLT_LOWEST = float(np.finfo(np.float32).min)


def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of n float32 roundings in a row (Higham 3.1)."""
    return n * U32 / (1 - n * U32)


def ort_run(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of `model` in ONNX Runtime (CPU, one thread, all graph optimizations)."""
    sess = make_session(model_to_proto(model).SerializeToString(), threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def both_runs(model: Model, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """[ONNX Runtime's outputs, the executor's outputs]."""
    return [ort_run(model, feeds), qcompiler.run(model, dict(feeds))]


def gelu_bound(x: np.ndarray) -> np.ndarray:
    """|computed GELU - GELU(x)| for one float32 evaluation of x * 0.5 * (1 + erf(x / sqrt 2)) is at most 4.5u|x|:
    x / fl(sqrt 2) is off by 2u relative, which moves erf by at most 2u |t| erf'(t) <= u; erf itself 4u; the
    sum 1 + erf one rounding of a value <= 2 (2u); halving is exact; the product one rounding (u |y| <= u |x|):
    |x| (0.5 (u + 4u + 2u) + u) = 4.5u|x|. A fused kernel computing the same formula has the same bound, so two
    evaluations differ by at most 9u|x|. With a bias folded (BiasGelu) the one rounding of x = h + b happens in
    both graphs on the same operands."""
    return 9 * U32 * np.abs(np.asarray(x, np.float64))


def layer_norm_bound(parts: list[np.ndarray], gamma_: np.ndarray, beta: np.ndarray | None, eps: float) -> np.ndarray:
    """Bound on |LN_A(sum) - LN_B(sum)| for two float32 LayerNorms (over the last axis) of the sum of `parts`,
    each computing the sum with at most 2 roundings in any order and the statistics in one or two passes.

    Per side, with s the exact sum, n the row length, m2 = mean(s^2), sigma^2 = var(s) + eps:
    the sum is off by e_s <= 2u sum|parts|; the mean by e_mu <= gamma_n mean|s| + max e_s; the variance (one
    pass: mean(s^2) - mean^2, the worse case) by e_var <= 3 gamma_{n+2} m2 + 2 sigma max e_s; sigma by the
    relative r = e_var / (2 sigma^2) + u; z = (s - mu) / sigma by |z| (r + 2u) + (e_s + e_mu) / sigma; and
    y = z gamma + beta by |gamma| e_z + 2u (|z gamma| + |beta|). The two sides' bounds add."""
    full = np.broadcast_arrays(*(np.asarray(p, np.float64) for p in parts))
    s = np.sum(full, axis=0)
    sabs = np.sum(np.abs(full), axis=0)
    n = s.shape[-1]
    mu = s.mean(-1, keepdims=True)
    var = s.var(-1, keepdims=True)
    sigma = np.sqrt(var + eps)
    m2 = (s * s).mean(-1, keepdims=True)
    e_s = 2 * U32 * sabs
    e_s_max = e_s.max(-1, keepdims=True)
    e_mu = gamma(n) * np.abs(s).mean(-1, keepdims=True) + e_s_max
    e_var = 3 * gamma(n + 2) * m2 + 2 * sigma * e_s_max
    r = e_var / (2 * sigma**2) + U32
    z = (s - mu) / sigma
    e_z = np.abs(z) * (r + 2 * U32) + (e_s + e_mu) / sigma
    g = np.abs(np.asarray(gamma_, np.float64))
    b = 0.0 if beta is None else np.abs(np.asarray(beta, np.float64))
    return 2 * (g * e_z + 2 * U32 * (np.abs(z) * g + b))


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: np.ndarray, heads: int, scale: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """float64 (output [B, S, D], bound [B, S, D]) for the attention core with a boolean key mask `keep` [B, T]
    turned into an additive mask of the lowest float32 (as torch's exporter does), under float32 semantics:
    a masked score plus -3.4e38 rounds to -3.4e38, so a partly masked row gives masked keys probability 0 and a
    fully masked row is uniform over all T keys (every entry is exactly -3.4e38).

    Bound on |A - B| between two float32 evaluations, per output element, derived per side X: the scores are
    off by delta <= gamma_{H+3} scale max_j sum_h |q_h k_jh| (H products summed, the scale applied as one or
    two factors, its float32 rounding); the softmax of scores perturbed by at most delta is within a factor
    e^{+-2 delta} of the exact one, and its own rounding (exp 4u, a sum of T terms, a division) is (T+6)u
    relative; P V sums T terms (gamma_T). So |o_X - o| <= (e^{2 delta} (1 + (T+6)u)(1 + gamma_T) - 1)
    sum_j p_j |v_j|, and the two sides add."""
    b, s, d = q.shape
    t = k.shape[1]
    h = d // heads
    q4, k4, v4 = (np.asarray(x, np.float64).reshape(b, -1, heads, h).transpose(0, 2, 1, 3) for x in (q, k, v))
    scores = scale * q4 @ k4.transpose(0, 1, 3, 2)
    absqk = scale * np.abs(q4) @ np.abs(k4).transpose(0, 1, 3, 2)
    allowed = np.broadcast_to(keep.astype(bool)[:, None, None, :], scores.shape)
    any_allowed = allowed.any(-1, keepdims=True)
    z = np.where(allowed, scores, -np.inf)
    z = z - np.where(any_allowed, z.max(-1, keepdims=True), 0.0)
    p = np.where(any_allowed, np.exp(z), 1.0)
    p = p / p.sum(-1, keepdims=True)
    out = p @ v4
    delta = gamma(h + 3) * np.max(np.where(any_allowed, np.where(allowed, absqk, 0.0), absqk), -1, keepdims=True)
    per_side = np.exp(2 * delta) * (1 + (t + 6) * U32) * (1 + gamma(t)) - 1
    bound = 2 * per_side * (p @ np.abs(v4))
    return out.transpose(0, 2, 1, 3).reshape(b, s, d), bound.transpose(0, 2, 1, 3).reshape(b, s, d)


def bert_layer_proto(hidden: int = 16, heads: int = 4, ffn: int = 32, seed: int = 0) -> object:
    """A tiny BERT encoder layer (torch SDPA attention with a boolean key mask, post-norm residuals, erf GELU)
    exported with torch's dynamo exporter: inputs x f32[batch, seq, hidden] and mask i64[batch, seq]."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from qcompiler.frontends.torch_export import export_module

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(hidden, hidden) for _ in range(4))
            self.ln1, self.ln2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
            self.ff1, self.ff2 = torch.nn.Linear(hidden, ffn), torch.nn.Linear(ffn, hidden)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, s, d = x.shape
            q, k, v = (f(x).view(b, s, heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
            keep = mask[:, None, None, :].bool().expand(b, 1, s, s)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, s, d)
            h = self.ln1(self.o(a) + x)
            return self.ln2(self.ff2(F.gelu(self.ff1(h))) + h)

    torch.manual_seed(seed)
    example = (torch.randn(2, 5, hidden), torch.ones(2, 5, dtype=torch.int64))
    return export_module(Layer(), example, input_names=["x", "mask"], output_names=["y"],
                         dynamic_axes={"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}})
