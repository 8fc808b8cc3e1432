"""ONNX Runtime contrib ops (com.microsoft, and SimplifiedLayerNormalization in the onnx domain) against
ORT's CPU kernels.

Bounds as in test_ops_nn: K-term float32 sums differ by about sqrt(K)*eps*sum|terms| between two
summation orders (4x allowed, `sum_atol`); exp/tanh/erf-based activations get TRANS_ULP ulps; layer norms
divide by a std of O(1), which keeps that bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.errors import UnsupportedOpError

from .harness import check_node, run_ours, single_node_model

MS = "com.microsoft"
EPS = float(np.finfo(np.float32).eps)
TRANS_ULP = 4
RNG = np.random.default_rng(777)


def f32(*shape: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def sum_atol(k: int, term_max: float) -> float:
    return 4 * np.sqrt(k) * EPS * k * term_max


def ms(op: str, inputs: list, attrs: dict | None = None, **kw) -> list[np.ndarray]:
    return check_node(op, inputs, attrs, domain=MS, **kw)


# ------------------------------------------------------------------------------------------------ matmul, gelu


@pytest.mark.parametrize(
    "sa, sb, attrs",
    [
        ((3, 8), (8, 4), {}),
        ((8, 3), (8, 4), {"transA": 1, "alpha": 0.5}),
        ((2, 3, 8), (4, 8), {"transB": 1}),
        ((2, 8, 3), (2, 4, 8), {"transA": 1, "transB": 1, "alpha": 2.0}),
        ((3, 2, 8), (2, 8, 4), {"transBatchA": 1}),  # A read as (2, 3, 8)
        ((8, 2, 3), (2, 8, 4), {"transBatchA": 1, "transA": 1}),  # A read as (2, 3, 8)
        ((2, 3, 8), (8, 2, 4), {"transBatchB": 1}),  # B read as (2, 8, 4)
        ((2, 3, 8), (4, 2, 8), {"transBatchB": 1, "transB": 1}),
    ],
)
def test_fused_matmul(sa: tuple[int, ...], sb: tuple[int, ...], attrs: dict) -> None:
    alpha = attrs.get("alpha", 1.0)
    ms("FusedMatMul", [f32(*sa), f32(*sb)], attrs, atol=abs(alpha) * sum_atol(8, 1.0) + 2 * EPS * 8 * alpha)


def test_transpose_matmul() -> None:
    ms("TransposeMatMul", [f32(8, 3), f32(4, 8)], {"transA": 1, "transB": 1}, atol=sum_atol(8, 1.0))


ACT_TOL = {"rtol": TRANS_ULP * EPS, "atol": 2 * 5 * EPS}  # atol: 0.5x(1+erf) cancels for x<<0, |x|<=5


def test_gelu_family() -> None:
    x, bias = f32(2, 3, 8, lo=-5, hi=5), f32(8)
    ms("Gelu", [x], **ACT_TOL)
    ms("BiasGelu", [x, bias], **ACT_TOL)
    ms("FastGelu", [x], **ACT_TOL)
    ms("FastGelu", [x, bias], **ACT_TOL)
    ms("QuickGelu", [x], **ACT_TOL)
    ms("QuickGelu", [x], {"alpha": 1.1}, **ACT_TOL)


@pytest.mark.parametrize(
    "inputs, attrs",
    [
        ([(1, 2, 5, 5), (3, 2, 3, 3), (3,)], {"activation": "Relu", "pads": [1, 1, 1, 1]}),
        ([(1, 2, 5, 5), (3, 2, 3, 3), (3,), (1, 3, 5, 5)],
         {"activation": "LeakyRelu", "activation_params": [0.2], "pads": [1, 1, 1, 1]}),
        ([(1, 2, 6, 5), (4, 1, 3, 3)], {"activation": "Clip", "activation_params": [-0.3, 0.4], "group": 2,
                                        "strides": [2, 1]}),
        ([(1, 2, 5, 5), (3, 2, 3, 3)], {"activation": "HardSigmoid", "activation_params": [0.3, 0.4]}),
        ([(1, 2, 5, 5), (3, 2, 3, 3)], {"activation": "Sigmoid", "auto_pad": "SAME_UPPER"}),
    ],
)
def test_fused_conv(inputs: list[tuple[int, ...]], attrs: dict) -> None:
    k = int(np.prod(inputs[1][1:])) + 2  # window terms, bias and Z
    ms("FusedConv", [f32(*sh) for sh in inputs], attrs, atol=sum_atol(k, 1.0), rtol=TRANS_ULP * EPS)


@pytest.mark.parametrize("attrs", [{"activation": "Relu", "alpha": 0.5},
                                   {"activation": "LeakyRelu", "activation_alpha": 0.3, "transB": 1},
                                   {"activation": "Tanh", "beta": 2.0}])
def test_fused_gemm(attrs: dict) -> None:
    b = f32(5, 4) if attrs.get("transB") else f32(4, 5)
    ms("FusedGemm", [f32(3, 4), b, f32(5)], attrs, atol=2 * sum_atol(5, 1.0), rtol=TRANS_ULP * EPS)


def test_gemm_fast_gelu() -> None:
    # ORT has no CPU kernel: compare with ORT's MatMul followed by ORT's FastGelu(bias).
    from .harness import run_ort

    x, w, bias = f32(3, 8), f32(8, 5), f32(5)
    model, feeds = single_node_model("GemmFastGelu", [x, w, bias], domain=MS)
    (got,) = run_ours(model, feeds)
    model, feeds = single_node_model("MatMul", [x, w])
    (xw,) = run_ort(model, feeds)
    model, feeds = single_node_model("FastGelu", [xw, bias], domain=MS)
    (ref,) = run_ort(model, feeds)
    np.testing.assert_allclose(got, ref, atol=sum_atol(8, 1.0) * 2 + ACT_TOL["atol"], rtol=ACT_TOL["rtol"])


def test_bias_split_gelu() -> None:
    # ORT has no CPU kernel: left * gelu(right) of (x + bias), in float64 numpy.
    import math

    x, bias = f32(2, 3, 8, lo=-4, hi=4), f32(8)
    model, feeds = single_node_model("BiasSplitGelu", [x, bias], domain=MS)
    (got,) = run_ours(model, feeds)
    s = x.astype(np.float64) + bias
    left, right = s[..., :4], s[..., 4:]
    expect = left * 0.5 * right * (1 + np.vectorize(math.erf)(right / math.sqrt(2)))
    np.testing.assert_allclose(got, expect, rtol=TRANS_ULP * EPS, atol=2 * 4 * 4 * EPS)


def test_bias_add() -> None:
    # ORT has no CPU kernel; (x + bias) + skip is two IEEE additions, so numpy must agree exactly.
    x, bias, skip = f32(2, 6, 8), f32(8), f32(2, 6, 8)
    model, feeds = single_node_model("BiasAdd", [x, bias, skip], domain=MS)
    (got,) = run_ours(model, feeds)
    np.testing.assert_array_equal(got, (x + bias) + skip)


@pytest.mark.parametrize("axis, bias_shape, inner", [(1, (2, 1, 5, 6), 0), (2, (1, 3, 5, 6), 1),
                                                    (-1, (2, 1, 1, 6), 0)])
def test_bias_softmax(axis: int, bias_shape: tuple[int, ...], inner: int) -> None:
    x = f32(2, 3, 5, 6, lo=-3, hi=3)
    # ORT has no CPU kernel: softmax(x + bias) over the flattened dims axis.. written out in numpy.
    model, feeds = single_node_model("BiasSoftmax", [x, f32(*bias_shape)], {"axis": axis, "is_inner_broadcast": inner},
                                     domain=MS)
    (got,) = run_ours(model, feeds)
    s = (feeds["in0"] + feeds["in1"]).astype(np.float64)
    a = axis % 4
    flat = s.reshape(*s.shape[:a], -1)
    e = np.exp(flat - flat.max(axis=-1, keepdims=True))
    expect = (e / e.sum(axis=-1, keepdims=True)).reshape(s.shape)
    k = flat.shape[-1]
    np.testing.assert_allclose(got, expect, rtol=TRANS_ULP * EPS + sum_atol(k, 1.0), atol=EPS)


# ------------------------------------------------------------------------------------------------ layer norms


LN_TOL = {"atol": sum_atol(16, 4.0) * 4, "rtol": 8 * EPS}


@pytest.mark.parametrize("with_beta", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("skip_shape", [(2, 3, 16), (3, 16), (1, 3, 16)])
def test_skip_layer_norm(with_beta: bool, with_bias: bool, skip_shape: tuple[int, ...]) -> None:
    x, skip, gamma = f32(2, 3, 16), f32(*skip_shape), f32(16)
    beta = f32(16) if with_beta else None
    bias = f32(16) if with_bias else None
    inputs = [x, skip, gamma, beta, bias]
    while inputs[-1] is None:
        inputs.pop()
    ms("SkipLayerNormalization", inputs, {"epsilon": 1e-5}, **LN_TOL)


def test_skip_layer_norm_all_outputs() -> None:
    x, skip, gamma, beta, bias = f32(2, 3, 16), f32(2, 3, 16), f32(16), f32(16), f32(16)
    got = ms("SkipLayerNormalization", [x, skip, gamma, beta, bias], n_outputs=4, **LN_TOL)
    np.testing.assert_allclose(got[3], x + skip + bias, rtol=0, atol=2 * EPS * 3)


def test_skip_simplified_layer_norm() -> None:
    x, skip, gamma, bias = f32(2, 3, 16), f32(2, 3, 16), f32(16), f32(16)
    ms("SkipSimplifiedLayerNormalization", [x, skip, gamma], {"epsilon": 1e-6}, **LN_TOL)
    got = ms("SkipSimplifiedLayerNormalization", [x, skip, gamma, bias], n_outputs=4, **LN_TOL)
    assert got[3].shape == x.shape


@pytest.mark.parametrize("axis", [-1, 1])
def test_simplified_layer_norm(axis: int) -> None:
    x = f32(2, 3, 8)
    check_node("SimplifiedLayerNormalization", [x, f32(*x.shape[axis:])], {"axis": axis, "epsilon": 1e-5},
               n_outputs=2, **LN_TOL)


def test_layer_norm_onnx_domain_before_opset_17() -> None:
    # ORT registers LayerNormalization in the onnx domain at version 1, before the standard opset 17.
    x = f32(2, 3, 8)
    check_node("LayerNormalization", [x, f32(8), f32(8)], {"epsilon": 1e-5}, opset=13, **LN_TOL)


@pytest.mark.parametrize("with_segment", [True, False])
@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("with_position_ids", [True, False])
def test_embed_layer_norm(with_segment: bool, with_mask: bool, with_position_ids: bool) -> None:
    b, s, h, vocab, max_pos = 2, 5, 16, 30, 10
    ids = RNG.integers(0, vocab, size=(b, s)).astype(np.int32)
    seg = RNG.integers(0, 2, size=(b, s)).astype(np.int32)
    mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], np.int32)  # mask_index counts ones (3, not 1)
    pos = RNG.integers(0, max_pos, size=(b, s)).astype(np.int32)
    inputs = [ids, seg if with_segment else None, f32(vocab, h), f32(max_pos, h),
              f32(2, h) if with_segment else None, f32(h), f32(h), mask if with_mask else None,
              pos if with_position_ids else None]
    while inputs[-1] is None:
        inputs.pop()
    # ORT's schema always produces mask_index (zeros without a mask).
    got = ms("EmbedLayerNormalization", inputs, {"epsilon": 1e-5}, n_outputs=3, **LN_TOL)
    assert got[1].tolist() == ([3, 5] if with_mask else [0, 0])


# ------------------------------------------------------------------------------------------------ rotary


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("form", ["3d", "4d", "3d_partial", "scalar_pos"])
def test_ms_rotary_embedding(interleaved: int, form: str) -> None:
    b, s, n, h, max_pos = 2, 4, 2, 8, 16
    rot = 4 if form == "3d_partial" else h
    theta = RNG.uniform(0, 6, size=(max_pos, rot // 2))
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    attrs = {"interleaved": interleaved}
    if form == "scalar_pos":
        pos = np.array([3], np.int64)
    else:
        pos = RNG.integers(0, max_pos - 1, size=(b, s)).astype(np.int64)
    if form == "4d":
        x = f32(b, n, s, h)
    else:
        x = f32(b, s, n * h)
        attrs["num_heads"] = n
    if form == "3d_partial":
        attrs["rotary_embedding_dim"] = rot
    ms("RotaryEmbedding", [x, pos, cos, sin], attrs, atol=4 * EPS * 2)


# ------------------------------------------------------------------------------------------------ attention


def _attn_tol(total: int, head: int, hidden: int = 0) -> dict[str, float]:
    # projection (hidden terms), QK^T (head terms), softmax ulps, PV (total terms)
    return {"atol": sum_atol(max(hidden, 1), 1.0) * 2 + sum_atol(head, 4.0) * 2 + sum_atol(total, 4.0),
            "rtol": TRANS_ULP * EPS}


def _packed(b: int, s: int, hidden_in: int, hq: int, hv: int | None = None):
    hv = hv or hq
    return f32(b, s, hidden_in), f32(hidden_in, 2 * hq + hv, lo=-0.5, hi=0.5), f32(2 * hq + hv)


@pytest.mark.parametrize(
    "mask",
    ["none", "raw_2d", "lengths_1d", "left_right_2b", "raw_3d"],
)
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_ms_attention_masks(mask: str, unidirectional: int) -> None:
    b, s, hin, heads, hid = 2, 5, 12, 2, 8
    x, w, bias = _packed(b, s, hin, hid)
    m = {
        "none": None,
        "raw_2d": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32),
        "lengths_1d": np.array([3, 5], np.int32),
        "left_right_2b": np.array([5, 4, 1, 0], np.int32),  # ends then starts
        "raw_3d": np.tril(np.ones((b, s, s), np.int32)),
    }[mask]
    inputs = [x, w, bias] + ([] if m is None else [m])
    ms("Attention", inputs, {"num_heads": heads, "unidirectional": unidirectional}, **_attn_tol(s, 4, hin))


def test_ms_attention_past_and_scale() -> None:
    b, s, hin, heads, hid, past_len = 1, 3, 8, 2, 8, 4
    x, w, bias = _packed(b, s, hin, hid)
    past = f32(2, b, heads, past_len, hid // heads)
    mask = np.ones((b, past_len + s), np.int32)
    mask[0, 1] = 0
    ms("Attention", [x, w, bias, mask, past], {"num_heads": heads, "unidirectional": 1, "scale": 0.4},
       n_outputs=2, **_attn_tol(past_len + s, 4, hin))


def test_ms_attention_qkv_hidden_sizes_and_bias() -> None:
    b, s, hin, heads = 2, 4, 8, 2
    x = f32(b, s, hin)
    w, bias = f32(hin, 8 + 8 + 12, lo=-0.5, hi=0.5), f32(28)
    attn_bias = f32(1, heads, s, s)
    ms("Attention", [x, w, bias, None, None, attn_bias], {"num_heads": heads, "qkv_hidden_sizes": [8, 8, 12]},
       **_attn_tol(s, 4, hin))


def test_ms_attention_fully_masked_rows() -> None:
    # A row with every key masked: padding uses the finite filter value (uniform attention over the
    # padded keys), the causal rule the lowest float (future keys never get weight).
    x, w, bias = _packed(2, 4, 8, 8)
    mask = np.array([[0, 0, 0, 0], [0, 0, 1, 1]], np.int32)
    for uni in (0, 1):
        ms("Attention", [x, w, bias, mask], {"num_heads": 2, "unidirectional": uni}, **_attn_tol(4, 4, 8))
    q, k, v = _mha_inputs(2, 4, 4, 2, 4)
    ms("MultiHeadAttention", [q, k, v, None, mask], {"num_heads": 2, "unidirectional": 1}, **_attn_tol(4, 4))


def test_ms_attention_filter_value() -> None:
    # A finite filter value: a masked key keeps weight exp(filter) relative to the rest.
    x, w, bias = _packed(1, 4, 8, 8)
    mask = np.array([[1, 1, 0, 0]], np.int32)
    ms("Attention", [x, w, bias, mask], {"num_heads": 2, "mask_filter_value": -2.0}, **_attn_tol(4, 4, 8))


def _mha_inputs(b: int, s: int, l: int, n: int, h: int, hv: int | None = None):
    hv = hv or h
    return f32(b, s, n * h), f32(b, l, n * h), f32(b, l, n * hv)


@pytest.mark.parametrize("kpm", ["none", "2d", "1d"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_mha_separate_qkv(kpm: str, with_bias: bool) -> None:
    b, s, l, n, h = 2, 3, 5, 2, 4
    q, k, v = _mha_inputs(b, s, l, n, h)
    mask = {"none": None, "2d": np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.int32),
            "1d": np.array([4, 2], np.int32)}[kpm]
    inputs = [q, k, v, f32(3 * n * h) if with_bias else None, mask]
    while inputs[-1] is None:
        inputs.pop()
    ms("MultiHeadAttention", inputs, {"num_heads": n}, **_attn_tol(l, h))


def test_mha_attention_bias_and_past() -> None:
    b, s, l, n, h, p = 1, 2, 2, 2, 4, 3
    q, k, v = _mha_inputs(b, s, l, n, h)
    pk, pv = f32(b, n, p, h), f32(b, n, p, h)
    ab = f32(b, n, s, p + l)
    ms("MultiHeadAttention", [q, k, v, None, None, ab, pk, pv], {"num_heads": n, "scale": 0.3}, n_outputs=3,
       **_attn_tol(p + l, h))


def test_mha_qk_output() -> None:
    # ORT's qk output is the softmax input: scaled QK^T plus attention bias and mask.
    from onnx import TensorProto

    b, s, l, n, h = 2, 3, 4, 2, 4
    q, k, v = _mha_inputs(b, s, l, n, h)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32)
    ms("MultiHeadAttention", [q, k, v, None, mask, f32(b, n, s, l)], {"num_heads": n}, n_outputs=4,
       output_types=[TensorProto.FLOAT] * 4, **_attn_tol(l, h))


def test_mha_unidirectional() -> None:
    b, s, n, h = 2, 4, 2, 4
    q, k, v = _mha_inputs(b, s, s, n, h)
    ms("MultiHeadAttention", [q, k, v], {"num_heads": n, "unidirectional": 1}, **_attn_tol(s, h))


def test_mha_packed_qkv_and_kv() -> None:
    # ORT's CPU kernel has no packed forms: compare with ORT on the same data unpacked to (B, S, N*H).
    from .harness import run_ort

    b, s, l, n, h = 2, 3, 5, 2, 4
    qkv, q, kv = f32(b, s, n, 3, h), f32(b, s, n * h), f32(b, l, n, 2, h)
    for packed_inputs, plain_inputs in [
        ([qkv], [qkv[:, :, :, i].reshape(b, s, n * h) for i in range(3)]),
        ([q, kv], [q] + [kv[:, :, :, i].reshape(b, l, n * h) for i in range(2)]),
    ]:
        model, feeds = single_node_model("MultiHeadAttention", packed_inputs, {"num_heads": n}, domain=MS)
        (got,) = run_ours(model, feeds)
        model, feeds = single_node_model("MultiHeadAttention", plain_inputs, {"num_heads": n}, domain=MS)
        (ref,) = run_ort(model, feeds)
        np.testing.assert_allclose(got, ref, **_attn_tol(l, h))


def test_mha_bnsh_key_value() -> None:
    b, s, l, n, h = 2, 3, 5, 2, 4
    q, k, v = f32(b, s, n * h), f32(b, n, l, h), f32(b, n, l, h)
    ms("MultiHeadAttention", [q, k, v, f32(3 * n * h)], {"num_heads": n}, **_attn_tol(l, h))


def _gqa_caches(max_pos: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    theta = RNG.uniform(0, 6, size=(max_pos, half))
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("rotary", [0, 1])
def test_gqa_prompt(packed: bool, rotary: int) -> None:
    b, s, n, kvn, h = 2, 4, 4, 2, 16  # ORT's CPU kernel wants head_size % 16 == 0
    seqlens_k = np.array([s - 1, s - 1], np.int32)  # full prompts, no padding
    total = np.array(s, np.int32)
    pk = np.zeros((b, kvn, 0, h), np.float32)
    cos, sin = _gqa_caches(16, h // 2)
    q, k, v = f32(b, s, n * h), f32(b, s, kvn * h), f32(b, s, kvn * h)
    qkv = [np.concatenate([q, k, v], axis=-1), None, None] if packed else [q, k, v]
    inputs = qkv + [pk, pk.copy(), seqlens_k, total] + ([cos, sin] if rotary else [])
    ms("GroupQueryAttention", inputs, {"num_heads": n, "kv_num_heads": kvn, "do_rotary": rotary},
       n_outputs=3, **_attn_tol(s, h))


def test_gqa_prompt_right_padded() -> None:
    # seqlens_k = lengths - 1; rows past a sequence's length are unspecified in ORT, so only the valid
    # rows of the output are compared (present K/V hold every row, as given).
    from .harness import run_ort

    b, s, n, kvn, h = 2, 5, 2, 1, 16
    lens = np.array([5, 3])
    q, k, v = f32(b, s, n * h), f32(b, s, kvn * h), f32(b, s, kvn * h)
    pk = np.zeros((b, kvn, 0, h), np.float32)
    inputs = [q, k, v, pk, pk.copy(), (lens - 1).astype(np.int32), np.array(s, np.int32)]
    model, feeds = single_node_model("GroupQueryAttention", inputs, {"num_heads": n, "kv_num_heads": kvn},
                                     domain=MS, n_outputs=1)
    (got,) = run_ours(model, feeds)
    (ref,) = run_ort(model, feeds)
    for i, length in enumerate(lens):
        np.testing.assert_allclose(got[i, :length], ref[i, :length], **_attn_tol(s, h))


def test_gqa_decoding_fails_clearly() -> None:
    b, s, n, kvn, h = 1, 1, 2, 1, 4
    inputs = [f32(b, s, n * h), f32(b, s, kvn * h), f32(b, s, kvn * h), f32(b, kvn, 3, h), f32(b, kvn, 3, h),
              np.array([3], np.int32), np.array(4, np.int32)]
    model, feeds = single_node_model("GroupQueryAttention", inputs, {"num_heads": n, "kv_num_heads": kvn},
                                     domain=MS, n_outputs=3)
    with pytest.raises(UnsupportedOpError, match="prompt phase"):
        run_ours(model, feeds)
