"""Neural-network ops of the op table against ONNX Runtime's CPU kernels (onnx's reference evaluator where
ORT has no kernel for an opset).

Bounds: exact ops (Relu, PRelu, pools' max, Hardmax) agree bit for bit. Activations built from exp/tanh/erf
get TRANS_ULP float32 ulps relative (plus absolute near zero). A K-term float32 sum (conv windows, pool
windows, normalization statistics) differs between two summation orders by about sqrt(K)*eps*sum|terms|;
we allow 4x that (see `sum_atol`). Normalizations divide by a standard deviation, which scales the error of
the mean by 1/std; inputs are kept O(1) with std O(1), so the bound carries over.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from .harness import check_node

EPS = float(np.finfo(np.float32).eps)
TRANS_ULP = 4
RNG = np.random.default_rng(4321)


def f32(*shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def sum_atol(k: int, term_max: float) -> float:
    """Difference bound for two float32 sums of k terms each at most term_max in magnitude."""
    return 4 * np.sqrt(k) * EPS * k * term_max


TRANS = {"rtol": TRANS_ULP * EPS, "atol": TRANS_ULP * EPS}


# ------------------------------------------------------------------------------------------------ activations


def test_relu_float_and_int() -> None:
    check_node("Relu", [f32(3, 4)])
    check_node("Relu", [RNG.integers(-100, 100, size=(3, 4)).astype(np.int8)], opset=14)
    check_node("Relu", [RNG.integers(-100, 100, size=(3, 4)).astype(np.int32)], opset=14)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.3}), ("Sigmoid", {}), ("HardSigmoid", {}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("Elu", {}), ("Elu", {"alpha": 0.5}),
        ("Selu", {}), ("Selu", {"alpha": 1.5, "gamma": 2.0}), ("Celu", {"alpha": 0.7}), ("Softplus", {}),
        ("Softsign", {}), ("Mish", {}), ("ThresholdedRelu", {"alpha": 0.5}),
        ("Gelu", {"approximate": "tanh"}), ("Shrink", {"bias": 0.2, "lambd": 0.7}),
    ],
)
def test_activation(op: str, attrs: dict) -> None:
    x = f32(4, 9, lo=-6, hi=6)
    x[0, :3] = [0.0, 0.5, -0.5]
    check_node(op, [x], attrs, **TRANS)


def test_gelu_exact_tail() -> None:
    # 0.5 x (1 + erf(x / sqrt 2)) cancels for x << 0: an erf error of 2 ulp(1) becomes |x| eps absolute,
    # in each implementation.
    x = f32(6, 9, lo=-6, hi=6)
    check_node("Gelu", [x], rtol=TRANS_ULP * EPS, atol=2 * 6 * EPS)


def test_swish_opset_24() -> None:
    check_node("Swish", [f32(3, 7, lo=-6, hi=6)], {"alpha": 1.3}, opset=24, **TRANS)


def test_shrink_int() -> None:
    check_node("Shrink", [np.arange(-5, 6, dtype=np.int32)], {"bias": 1.0, "lambd": 2.0})


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (5,)])
def test_prelu(slope_shape: tuple[int, ...]) -> None:
    check_node("PRelu", [f32(2, 3, 4, 5), f32(*slope_shape)])


# ------------------------------------------------------------------------------------------------ softmax


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_family(op: str, axis: int | None, opset: int) -> None:
    x = f32(2, 3, 4, lo=-5, hi=5)
    attrs = {} if axis is None else {"axis": axis}
    # exp, a K-term sum (K <= 24 when opset 11 flattens) and a division: a few ulp plus sqrt(K) eps.
    check_node(op, [x], attrs, opset=opset, rtol=TRANS_ULP * EPS + sum_atol(24, 1.0), atol=TRANS_ULP * EPS)


def test_hardmax_ties_pick_first() -> None:
    x = np.array([[1, 3, 3, 2], [5, 5, 5, 5]], np.float32)
    (got,) = check_node("Hardmax", [x])
    np.testing.assert_array_equal(got, [[0, 1, 0, 0], [1, 0, 0, 0]])


# ------------------------------------------------------------------------------------------------ conv


CONV_CASES = [
    # (x shape, w shape, attrs)
    ((1, 2, 7), (3, 2, 3), {}),
    ((2, 3, 8, 7), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 3, 8, 7), (4, 3, 3, 2), {"pads": [0, 1, 2, 0], "strides": [2, 1]}),
    ((1, 4, 9, 9), (4, 1, 3, 3), {"group": 4, "dilations": [2, 2]}),
    ((1, 4, 9, 8), (6, 2, 3, 3), {"group": 2, "strides": [2, 3], "auto_pad": "SAME_UPPER"}),
    ((1, 4, 9, 8), (6, 2, 3, 3), {"group": 2, "strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 9, 8), (3, 2, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((1, 2, 5, 6, 4), (3, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1], "strides": [1, 2, 1]}),
]


@pytest.mark.parametrize("xs, ws, attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict, bias: bool) -> None:
    x, w = f32(*xs, lo=-1, hi=1), f32(*ws, lo=-1, hi=1)
    inputs = [x, w] + ([f32(ws[0], lo=-1, hi=1)] if bias else [])
    k = int(np.prod(ws[1:])) + 1
    check_node("Conv", inputs, attrs, atol=sum_atol(k, 1.0))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_same_with_dilation(auto_pad: str) -> None:
    # ORT refuses auto_pad SAME with dilations; the ONNX spec (and its reference) define it with the
    # dilated kernel extent (k - 1) * d + 1.
    x, w = f32(1, 2, 9, 8, lo=-1, hi=1), f32(3, 2, 4, 3, lo=-1, hi=1)
    check_node("Conv", [x, w], {"auto_pad": auto_pad, "dilations": [2, 1], "strides": [2, 1]},
               reference="reference", atol=sum_atol(24, 1.0))


CONV_T_CASES = [
    ((1, 2, 5), (2, 3, 3), {}),
    ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2]}),
    ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 3], "output_padding": [1, 2]}),
    ((1, 4, 4, 5), (4, 2, 3, 2), {"group": 2, "strides": [2, 1], "dilations": [1, 2]}),
    ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [9, 10]}),
    ((1, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [8, 10], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 4, 5), (2, 3, 4, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 4, 5), (2, 3, 4, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2], "pads": [0, 1, 0, 1, 0, 1]}),
]


@pytest.mark.parametrize("xs, ws, attrs", CONV_T_CASES)
def test_conv_transpose(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict) -> None:
    x, w, b = f32(*xs, lo=-1, hi=1), f32(*ws, lo=-1, hi=1), f32(ws[1] * attrs.get("group", 1), lo=-1, hi=1)
    k = int(np.prod(ws[2:])) * ws[0] + 1
    check_node("ConvTranspose", [x, w, b], attrs, atol=sum_atol(k, 1.0))


# ------------------------------------------------------------------------------------------------ pooling


POOL_CASES = [
    ((1, 2, 9), {"kernel_shape": [3]}),
    ((2, 3, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "strides": [2, 1]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 8, 8), {"kernel_shape": [3, 3], "strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 2, 9, 9), {"kernel_shape": [2, 3], "dilations": [2, 2]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 7, 8), {"kernel_shape": [4, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "auto_pad": "VALID"}),
    ((1, 2, 5, 6, 4), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [1, 1, 0, 0, 1, 1]}),
]


@pytest.mark.parametrize("xs, attrs", POOL_CASES)
def test_max_pool(xs: tuple[int, ...], attrs: dict) -> None:
    x = f32(*xs)
    check_node("MaxPool", [x], attrs, n_outputs=2, opset=12)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices_storage_order(storage_order: int) -> None:
    x = f32(2, 3, 6, 5)
    check_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 1], "pads": [1, 0, 0, 1],
                                "storage_order": storage_order}, n_outputs=2)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_max_pool_int8(dtype: type) -> None:
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max, size=(1, 2, 6, 6), dtype=dtype, endpoint=True)
    check_node("MaxPool", [x], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})


@pytest.mark.parametrize("xs, attrs", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(xs: tuple[int, ...], attrs: dict, count_include_pad: int) -> None:
    x = f32(*xs)
    k = int(np.prod(attrs["kernel_shape"]))
    # window sum (k terms <= 2) then one division
    check_node("AveragePool", [x], {**attrs, "count_include_pad": count_include_pad}, opset=19,
               atol=sum_atol(k, 2.0), rtol=2 * EPS)


@pytest.mark.parametrize("xs, attrs", POOL_CASES[:6])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool(xs: tuple[int, ...], attrs: dict, p: int) -> None:
    x = f32(*xs)
    k = int(np.prod(attrs["kernel_shape"]))
    # sum of k terms |x|^p <= 2^p, then a p-th root (which shrinks relative error by 1/p)
    check_node("LpPool", [x], {**attrs, "p": p}, opset=18, atol=sum_atol(k, 2.0**p), rtol=TRANS_ULP * EPS)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 2, 4, 6), (1, 2, 3, 2, 4)])
def test_global_pools(op: str, shape: tuple[int, ...]) -> None:
    check_node(op, [f32(*shape)], atol=sum_atol(48, 4.0), rtol=TRANS_ULP * EPS)


# ------------------------------------------------------------------------------------------------ normalization


def test_batch_norm_inference() -> None:
    x, scale, b, mean = f32(2, 3, 4, 5), f32(3), f32(3), f32(3, lo=-0.5, hi=0.5)
    var = f32(3, lo=0.2, hi=2.0)
    # (x - m) * s/sqrt(v + eps) + b, evaluated in a different association by ORT: a few roundings of
    # terms bounded by |x - m| |s| / sqrt(v) + |b| <= 2.5 * 2 / 0.44 + 2 ~ 13.
    check_node("BatchNormalization", [x, scale, b, mean, var], {"epsilon": 1e-3}, atol=8 * EPS * 13)
    check_node("BatchNormalization", [f32(4, 3), scale, b, mean, var], atol=8 * EPS * 13, opset=9)


def test_batch_norm_training_mode() -> None:
    # ORT's CPU kernel has no training mode in inference builds; onnx's reference defines it.
    x, scale, b, mean, var = f32(4, 3, 2, 2), f32(3), f32(3), f32(3), f32(3, lo=0.5, hi=2)
    check_node("BatchNormalization", [x, scale, b, mean, var], {"training_mode": 1, "momentum": 0.8},
               n_outputs=3, reference="reference", opset=15, atol=sum_atol(16, 4.0) * 8, rtol=8 * EPS)


def test_instance_norm() -> None:
    x = f32(2, 3, 4, 5)
    check_node("InstanceNormalization", [x, f32(3), f32(3)], {"epsilon": 1e-4}, atol=sum_atol(20, 4.0) * 4)


@pytest.mark.parametrize("axis", [-1, 1, 2])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(axis: int, with_bias: bool) -> None:
    x = f32(2, 3, 8)
    norm_shape = x.shape[axis:]
    inputs = [x, f32(*norm_shape)] + ([f32(*norm_shape)] if with_bias else [])
    # statistics are sums over <= 24 terms of magnitude <= 4; the normalized value is ~ unit size
    check_node("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}, n_outputs=3, opset=17,
               atol=sum_atol(24, 4.0) * 4, rtol=8 * EPS)


def test_layer_norm_float16_stash() -> None:
    x = f32(2, 16).astype(np.float16)
    # computed in float32 (stash_type 1) and rounded once to float16: half an fp16 ulp each side
    check_node("LayerNormalization", [x, f32(16).astype(np.float16), f32(16).astype(np.float16)],
               n_outputs=3, opset=17, rtol=float(np.finfo(np.float16).eps), atol=float(np.finfo(np.float16).eps))


@pytest.mark.parametrize("axis", [-1, 1])
def test_rms_norm(axis: int) -> None:
    x = f32(2, 3, 8)
    check_node("RMSNormalization", [x, f32(*x.shape[axis:])], {"axis": axis, "epsilon": 1e-4}, opset=23,
               atol=sum_atol(24, 4.0) * 4, rtol=8 * EPS)


def test_group_norm_opset_21() -> None:
    x = f32(2, 6, 3, 4)
    check_node("GroupNormalization", [x, f32(6), f32(6)], {"num_groups": 3, "epsilon": 1e-4}, opset=21,
               atol=sum_atol(24, 4.0) * 4, rtol=8 * EPS)


def test_group_norm_opset_18_per_group_affine() -> None:
    x = f32(2, 6, 3, 4)
    check_node("GroupNormalization", [x, f32(2), f32(2)], {"num_groups": 2}, opset=18, reference="reference",
               atol=sum_atol(36, 4.0) * 4, rtol=8 * EPS)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size: int) -> None:
    x = f32(2, 6, 3, 4)
    check_node("LRN", [x], {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 1.5},
               atol=sum_atol(size, 4.0), rtol=TRANS_ULP * EPS)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size(size: int) -> None:
    # ORT only takes odd sizes and onnx's reference loops over the batch instead of the channels, so the
    # spec's formula is written out here: channels [c - floor((size-1)/2), c + ceil((size-1)/2)].
    from .harness import run_ours, single_node_model

    x = f32(2, 6, 3, 4)
    attrs = {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 1.5}
    model, feeds = single_node_model("LRN", [x], attrs)
    (got,) = run_ours(model, feeds)
    x64 = x.astype(np.float64)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.stack([(x64[:, max(0, c - lo):c + hi + 1] ** 2).sum(axis=1) for c in range(6)], axis=1)
    expect = x64 / (1.5 + 0.01 / size * sq) ** 0.6
    np.testing.assert_allclose(got, expect, rtol=TRANS_ULP * EPS + sum_atol(size, 4.0), atol=0)


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1, 2]])
def test_mean_variance_normalization(axes: list[int] | None) -> None:
    x = f32(2, 3, 4, 5)
    attrs = {} if axes is None else {"axes": axes}
    check_node("MeanVarianceNormalization", [x], attrs, atol=sum_atol(120, 4.0) * 4, rtol=8 * EPS)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_lp_normalization(p: int, axis: int) -> None:
    check_node("LpNormalization", [f32(3, 5)], {"p": p, "axis": axis}, atol=sum_atol(5, 4.0), rtol=4 * EPS)


# ------------------------------------------------------------------------------------------------ attention


def _attn_tol(kv_len: int, head: int) -> dict[str, float]:
    # QK^T: head-term dot products of |q k| <= 1; softmax adds a few ulps; PV: kv_len terms of |p v| <= 1.
    return {"atol": sum_atol(head, 1.0) * 2 + sum_atol(kv_len, 1.0), "rtol": TRANS_ULP * EPS}


def _qkv4(b: int, hq: int, hk: int, sq: int, skv: int, d: int) -> list[np.ndarray]:
    return [f32(b, hq, sq, d, lo=-1, hi=1), f32(b, hk, skv, d, lo=-1, hi=1), f32(b, hk, skv, d, lo=-1, hi=1)]


@pytest.mark.parametrize("is_causal", [0, 1])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
def test_attention_4d(is_causal: int, heads: tuple[int, int]) -> None:
    q, k, v = _qkv4(2, heads[0], heads[1], 5, 5, 8)
    check_node("Attention", [q, k, v], {"is_causal": is_causal}, opset=23, n_outputs=1, **_attn_tol(5, 8))


def test_attention_3d_gqa_scale() -> None:
    q, k, v = f32(2, 4, 4 * 8, lo=-1, hi=1), f32(2, 6, 2 * 8, lo=-1, hi=1), f32(2, 6, 2 * 8, lo=-1, hi=1)
    attrs = {"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.3}
    check_node("Attention", [q, k, v], attrs, opset=23, n_outputs=1, **_attn_tol(6, 8))


@pytest.mark.parametrize("mask_kind", ["bool", "float", "bool_short", "float_4d"])
def test_attention_masks(mask_kind: str) -> None:
    q, k, v = _qkv4(2, 2, 2, 4, 6, 8)
    if mask_kind == "bool":
        mask = RNG.integers(0, 2, size=(4, 6)).astype(bool)
        mask[:, 0] = True  # no fully masked row
    elif mask_kind == "bool_short":
        mask = np.ones((4, 5), bool)  # padded to 6 with "masked"
        mask[1, 2] = False
    elif mask_kind == "float":
        mask = f32(4, 6, lo=-3, hi=1)
    else:
        mask = f32(2, 1, 4, 6, lo=-3, hi=1)
    # ORT insists on a full-length mask; the shorter one (padded with "masked") is checked against onnx.
    check_node("Attention", [q, k, v, mask], {}, opset=23, n_outputs=1,
               reference="reference" if mask_kind == "bool_short" else "ort", **_attn_tol(6, 8))


@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_past_kv(is_causal: int) -> None:
    q, k, v = _qkv4(1, 4, 2, 3, 3, 8)
    pk, pv = f32(1, 2, 5, 8, lo=-1, hi=1), f32(1, 2, 5, 8, lo=-1, hi=1)
    check_node("Attention", [q, k, v, None, pk, pv], {"is_causal": is_causal}, opset=23, n_outputs=3,
               **_attn_tol(8, 8))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_output_modes(mode: int) -> None:
    q, k, v = _qkv4(1, 2, 2, 4, 4, 8)
    mask = f32(4, 4, lo=-2, hi=0)
    check_node("Attention", [q, k, v, mask], {"qk_matmul_output_mode": mode, "softcap": 2.0}, opset=23,
               n_outputs=4, **_attn_tol(4, 8))


def test_attention_softcap() -> None:
    q, k, v = _qkv4(1, 2, 2, 4, 4, 8)
    check_node("Attention", [q, k, v], {"softcap": 1.5, "is_causal": 1}, opset=23, n_outputs=1,
               **_attn_tol(4, 8))


def test_attention_nonpad_kv_seqlen_opset_24() -> None:
    q, k, v = _qkv4(2, 2, 2, 3, 6, 8)
    lens = np.array([6, 4], np.int64)
    check_node("Attention", [q, k, v, None, None, None, lens], {"is_causal": 1}, opset=24, n_outputs=1,
               **_attn_tol(6, 8))


@pytest.mark.parametrize("attrs", [{"left_window_size": 2}, {"left_window_size": 1, "right_window_size": 1},
                                   {"is_causal": 1, "left_window_size": 2}, {"softmax_precision": 1}])
def test_attention_sliding_window_opset_25(attrs: dict) -> None:
    q, k, v = _qkv4(1, 2, 2, 5, 5, 8)
    check_node("Attention", [q, k, v], attrs, opset=25, n_outputs=1, **_attn_tol(5, 8))


def test_attention_causal_cross_lengths() -> None:
    # No cache: the causal mask is top-left aligned (offset 0) even when S_q != S_kv.
    q, k, v = _qkv4(1, 2, 2, 3, 5, 8)
    check_node("Attention", [q, k, v], {"is_causal": 1}, opset=23, n_outputs=1, **_attn_tol(5, 8))


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("form", ["4d", "3d", "3d_partial"])
def test_rotary_embedding_onnx(interleaved: int, form: str) -> None:
    b, s, h, d, max_pos = 2, 5, 3, 8, 12
    rot = 4 if form == "3d_partial" else d
    theta = RNG.uniform(0, 6, size=(max_pos, rot // 2))
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    pos = RNG.integers(0, max_pos, size=(b, s)).astype(np.int64)
    attrs = {"interleaved": interleaved}
    if form == "4d":
        x = f32(b, h, s, d)
    else:
        x = f32(b, s, h * d)
        attrs["num_heads"] = h
        if form == "3d_partial":
            attrs["rotary_embedding_dim"] = rot
    # each output is cos*a - sin*b: two products and one subtraction of terms <= 2
    check_node("RotaryEmbedding", [x, cos, sin, pos], attrs, opset=23, atol=4 * EPS * 4)


def test_rotary_embedding_onnx_without_position_ids() -> None:
    b, s, h, d = 2, 4, 2, 6
    theta = RNG.uniform(0, 6, size=(b, s, d // 2))
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    check_node("RotaryEmbedding", [f32(b, h, s, d), cos, sin], {}, opset=23, atol=4 * EPS * 4)


def test_layer_norm_output_types() -> None:
    x = f32(2, 4)
    got = check_node("LayerNormalization", [x, f32(4)], n_outputs=3, opset=17,
                     output_types=[TensorProto.FLOAT] * 3, atol=sum_atol(4, 4.0) * 4, rtol=8 * EPS)
    assert got[1].shape == (2, 1) and got[2].shape == (2, 1)


# ------------------------------------------------------------------------------------------------ float16


EPS16 = float(np.finfo(np.float16).eps)


def h16(*shape: int) -> np.ndarray:
    return RNG.uniform(-1, 1, size=shape).astype(np.float16)


# (op, inputs, attrs, opset, fp16 roundings): ops that compute in float32 and round once may differ from
# ORT by the two half-ulp roundings (1 ulp); ops computed step by step in float16 here (the norms' affine
# part, BatchNorm, LpPool) by one ulp per step.
FP16_CASES = [
    ("Conv", lambda: [h16(1, 2, 5, 5), h16(3, 2, 3, 3), h16(3)], {"pads": [1, 1, 1, 1]}, 21, 2),
    ("ConvTranspose", lambda: [h16(1, 2, 3, 3), h16(2, 2, 3, 3)], {"strides": [2, 2]}, 21, 2),
    ("MaxPool", lambda: [h16(1, 2, 5, 5)], {"kernel_shape": [2, 2]}, 21, 0),
    ("AveragePool", lambda: [h16(1, 2, 5, 5)], {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}, 21, 2),
    ("Softmax", lambda: [h16(2, 5)], {}, 21, 1),
    ("Gelu", lambda: [h16(9)], {}, 21, 1),
    ("HardSwish", lambda: [h16(9)], {}, 21, 2),
    ("Sigmoid", lambda: [h16(9)], {}, 21, 1),
    ("BatchNormalization",
     lambda: [h16(2, 3, 4), h16(3), h16(3), h16(3), (np.abs(h16(3)) + 0.5).astype(np.float16)], {}, 21, 4),
    ("InstanceNormalization", lambda: [h16(1, 2, 5), h16(2), h16(2)], {}, 21, 4),
    ("GroupNormalization", lambda: [h16(2, 4, 3), h16(4), h16(4)], {"num_groups": 2}, 21, 2),
    ("RMSNormalization", lambda: [h16(2, 8), h16(8)], {}, 23, 2),
    ("LpPool", lambda: [h16(1, 2, 5, 5)], {"kernel_shape": [2, 2]}, 21, 4),
    ("Attention", lambda: [h16(1, 2, 3, 8), h16(1, 2, 3, 8), h16(1, 2, 3, 8)], {}, 23, 4),
]


@pytest.mark.parametrize("op, make, attrs, opset, ulps", FP16_CASES, ids=[c[0] for c in FP16_CASES])
def test_float16(op: str, make, attrs: dict, opset: int, ulps: int) -> None:
    # |outputs| <= ~4 here; an ulp of v is <= eps16 * |v| (rtol) and eps16 / 2 below 1 (atol).
    check_node(op, make(), attrs, opset=opset, rtol=ulps * EPS16, atol=ulps * EPS16 / 2)


# ------------------------------------------------------------------------------------------------ gradients


GRAD_CASES = [
    ("Conv", [(1, 2, 4, 4), (2, 2, 2, 2), (2,)], {"pads": [0, 1, 1, 0], "strides": [2, 1]}),
    ("ConvTranspose", [(1, 2, 3, 3), (2, 2, 3, 3)], {"strides": [2, 2], "output_padding": [1, 0]}),
    ("MaxPool", [(1, 1, 4, 4)], {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1}),
    ("AveragePool", [(1, 1, 5, 5)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("LpPool", [(1, 2, 4, 4)], {"kernel_shape": [2, 2], "p": 3}),
    ("LayerNormalization", [(2, 6), (6,), (6,)], {"stash_type": 11}),  # keep float64 for gradcheck
    ("GroupNormalization", [(2, 4, 3), (4,), (4,)], {"num_groups": 2, "stash_type": 11}),
    ("Softmax", [(2, 5)], {}),
    ("Gelu", [(7,)], {}),
    ("Attention", [(1, 2, 3, 4), (1, 1, 5, 4), (1, 1, 5, 4)], {"is_causal": 1}),
    ("RotaryEmbedding", [(1, 2, 3, 4), (3, 2), (3, 2), None], {}),
    ("InstanceNormalization", [(1, 2, 5), (2,), (2,)], {}),
]


@pytest.mark.parametrize("op, shapes, attrs", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_ops_are_differentiable(op: str, shapes: list, attrs: dict) -> None:
    # QAT backpropagates through the executor: the torch functions must carry correct gradients.
    import torch

    from qcompiler.ir import Node
    from qcompiler.runtime import OpContext, lookup
    from qcompiler.runtime.registry import _load_ops

    _load_ops()
    entry = lookup(op, "", 23)
    assert entry is not None
    ctx = OpContext(Node(op, outputs=1), 23)
    gen = torch.Generator().manual_seed(0)
    args = [None if s is None else torch.rand(s, generator=gen, dtype=torch.float64) - 0.5 for s in shapes]
    if op == "RotaryEmbedding":  # cos/sin caches of shape (B, S, d/2) without position ids
        args = args[:1] + [torch.rand(1, 3, 2, generator=gen, dtype=torch.float64)] * 2
    for a in args:
        if a is not None:
            a.requires_grad_(True)

    def first_output(*xs: torch.Tensor) -> torch.Tensor:
        out = entry.fn(ctx, *xs, **attrs)
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(first_output, tuple(args), eps=1e-6, atol=1e-5)
