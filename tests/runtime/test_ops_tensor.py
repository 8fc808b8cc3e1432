"""Tensor and shape ops against ONNX Runtime's CPU kernels.

Bounds: these ops move, select or convert elements, so they must agree bit for bit (the harness's default
rtol = atol = 0), with three exceptions whose bound is derived where the test states it: CumSum and Range
on floats (summation order), Resize linear/cubic (weights applied per axis vs. all at once), Det (LU).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from .harness import check_model, check_node, const, finish_model, run_ours, tensor

RNG = np.random.default_rng(7)
U = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


# ------------------------------------------------------------------------------------------- basics
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.float16, np.uint8])
def test_identity(dtype: type) -> None:
    check_node("Identity", [(f32(2, 3) > 0).astype(dtype)])


@pytest.mark.parametrize(
    "attr",
    [
        {"value": helper.make_tensor("v", TP.FLOAT, [2, 2], [1.5, -2, 3, 4])},
        {"value": helper.make_tensor("v", TP.INT8, [3], [1, -2, 3])},
        {"value_float": 2.5},
        {"value_floats": [1.0, 2.0]},
        {"value_int": 7},
        {"value_ints": [1, 2, 3]},
    ],
)
def test_constant(attr: dict) -> None:
    check_node("Constant", [], attr)


def test_constant_of_shape() -> None:
    check_node("ConstantOfShape", [i64(2, 3)])
    check_node("ConstantOfShape", [i64(2, 0, 4)], {"value": helper.make_tensor("v", TP.INT32, [1], [5])})
    check_node(
        "ConstantOfShape", [np.zeros(0, np.int64)], {"value": helper.make_tensor("v", TP.FLOAT, [1], [3])}
    )


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"end": -1}, {"start": -2, "end": 10}, {"start": 5}])
def test_shape(attrs: dict) -> None:
    check_node("Shape", [f32(2, 3, 4)], attrs)


def test_size() -> None:
    check_node("Size", [f32(2, 3, 4)])
    check_node("Size", [np.zeros((0, 3), np.float32)])


# ------------------------------------------------------------------------------------------- reshaping
@pytest.mark.parametrize("shape,allowzero", [((4, -1), 0), ((0, 12), 0), ((2, 0, -1), 0), ((24,), 1)])
def test_reshape(shape: tuple, allowzero: int) -> None:
    check_node("Reshape", [f32(2, 3, 4), np.array(shape, np.int64)], {"allowzero": allowzero})


def test_reshape_allowzero_empty() -> None:
    check_node("Reshape", [np.zeros((0, 3), np.float32), i64(3, 0)], {"allowzero": 1})


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis: int) -> None:
    check_node("Flatten", [f32(2, 3, 4)], {"axis": axis})


def test_squeeze_unsqueeze_both_forms() -> None:
    x = f32(1, 3, 1, 2)
    check_node("Squeeze", [x])
    check_node("Squeeze", [x, i64(0, -2)])
    check_node("Squeeze", [x], {"axes": [2]}, opset=11)
    check_node("Unsqueeze", [f32(3, 2), i64(0, -1)])
    check_node("Unsqueeze", [f32(3, 2), i64(3, 1)])
    check_node("Unsqueeze", [f32(3, 2)], {"axes": [0, 3]}, opset=11)


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
def test_transpose(perm: list | None) -> None:
    check_node("Transpose", [f32(2, 3, 4)], {} if perm is None else {"perm": perm})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis: int) -> None:
    shapes = [[2, 3, 4] for _ in range(3)]
    for i, s in enumerate(shapes):
        s[axis] += i
    check_node("Concat", [f32(*s) for s in shapes], {"axis": axis})


def test_split_forms() -> None:
    x = f32(6, 5)
    check_node("Split", [x], {"axis": 0}, n_outputs=3, opset=13)
    check_node("Split", [x, i64(2, 4)], {"axis": 0}, n_outputs=2)
    check_node("Split", [x, i64(1, 4)], {"axis": 1}, n_outputs=2, opset=13)
    check_node("Split", [x], {"axis": 1, "split": [2, 3]}, n_outputs=2, opset=11)
    check_node("Split", [x], {"axis": 1, "num_outputs": 2}, n_outputs=2, opset=18)  # 3 + 2
    check_node("Split", [x], {"axis": 0, "num_outputs": 4}, n_outputs=4, opset=18)  # 2, 2, 2, 0


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([1], [3], [0], None),
        ([0, 1], [10, -1], [0, 2], [1, 2]),
        ([-1], [-1000], [1], [-1]),
        ([4], [0], [2], [-2]),
        ([2**62], [2**63 - 1], [0], [1]),  # start beyond the end: empty
        ([-(2**63)], [2**63 - 1], [-1], [3]),  # INT_MIN .. INT_MAX
        ([3], [-(2**63)], [0], [-1]),  # reverse through the start
    ],
)
def test_slice(starts: list, ends: list, axes: list, steps: list | None) -> None:
    ins = [f32(4, 5, 6), i64(*starts), i64(*ends), i64(*axes)]
    if steps is not None:
        ins.append(i64(*steps))
    check_node("Slice", ins)


def test_slice_opset1_attrs() -> None:
    check_node("Slice", [f32(4, 5)], {"starts": [1, 0], "ends": [3, 4], "axes": [0, 1]}, opset=9)


# ------------------------------------------------------------------------------------------- indexing
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis: int) -> None:
    x = f32(3, 4, 5)
    idx = np.array([[0, -1], [2, 1]], np.int64)
    check_node("Gather", [x, idx], {"axis": axis})
    check_node("Gather", [x, np.array(-2, np.int32)], {"axis": axis})  # scalar index drops the axis


def test_gather_elements() -> None:
    x = f32(3, 4)
    idx = RNG.integers(-3, 3, size=(2, 4)).astype(np.int64)
    check_node("GatherElements", [x, idx], {"axis": 0})
    idx = RNG.integers(-4, 4, size=(3, 6)).astype(np.int32)
    check_node("GatherElements", [x, idx], {"axis": 1})


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd(batch_dims: int) -> None:
    x = f32(2, 3, 4)
    idx = np.array([[[1, -1]], [[0, 2]]], np.int64)  # shape (2, 1, 2)
    check_node("GatherND", [x, idx], {"batch_dims": batch_dims})
    check_node("GatherND", [x, np.array([[1], [0]], np.int64)], {"batch_dims": batch_dims})


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction: str) -> None:
    x = f32(4, 3, 2)
    idx = np.array([[1], [3]], np.int64) if reduction == "none" else np.array([[1], [3], [1]], np.int64)
    upd = f32(idx.shape[0], 3, 2)
    check_node("ScatterND", [x, idx, upd], {"reduction": reduction}, opset=18)
    idx2 = np.array([[0, 1], [-1, 2]], np.int64)
    check_node("ScatterND", [x, idx2, f32(2, 2)], {"reduction": reduction}, opset=18)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements(reduction: str) -> None:
    x = f32(3, 4)
    idx = (
        np.array([[0, -1, 2, 1]], np.int64)
        if reduction == "none"
        else np.array([[0, -1, 2, 1], [0, 2, 2, 1]])
    )
    upd = f32(*idx.shape)
    check_node(
        "ScatterElements", [x, idx.astype(np.int64), upd], {"axis": 0, "reduction": reduction}, opset=18
    )


def test_scatter_deprecated() -> None:
    check_node("Scatter", [f32(3, 3), np.array([[1, 0, 2]], np.int64), f32(1, 3)], {"axis": 0}, opset=10)


@pytest.mark.parametrize("shape", [(3, 1), (2, 1, 4), (1,), (4, 1, 1)])
def test_expand(shape: tuple) -> None:
    check_node("Expand", [f32(3, 4)[:, :1], np.array(shape, np.int64)])


def test_tile() -> None:
    check_node("Tile", [f32(2, 3), i64(2, 3)])
    check_node("Tile", [np.arange(3, dtype=np.int32), i64(0)])


def test_where_nonzero_compress() -> None:
    c = f32(3, 4) > 0
    check_node("Where", [c, f32(3, 4), f32(1, 4)])
    check_node("Where", [c, np.int64(1) * np.ones((3, 1), np.int64), np.zeros((4,), np.int64)])
    check_node("NonZero", [c])
    check_node("NonZero", [np.array([0, 3, 0, -1], np.int32)])
    check_node("Compress", [f32(3, 4), np.array([True, False, True])], {"axis": 0})
    check_node("Compress", [f32(3, 4), np.array([False, True])], {"axis": 1})  # shorter condition
    check_node("Compress", [f32(3, 4), np.array([True, False, False, True, True])])


# ------------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode: str) -> None:
    x = f32(2, 3, 4)
    pads = i64(0, 1, 2, 1, 2, 3)
    check_node("Pad", [x, pads, np.array(1.5, np.float32)], {"mode": mode}, opset=19)
    check_node("Pad", [x, i64(0, -1, 1, 0, 1, -2)], {"mode": mode}, opset=19)  # negative pads crop first


def test_pad_axes_and_old_form() -> None:
    x = f32(2, 3, 4)
    check_node("Pad", [x, i64(1, 2, 0, 1), None, i64(-1, 0)], {"mode": "constant"}, opset=19)
    check_node("Pad", [x], {"pads": [0, 1, 0, 0, 2, 1], "value": -1.0}, opset=10)
    check_node("Pad", [np.arange(6, dtype=np.int32).reshape(2, 3), i64(1, 1, 1, 1), np.array(7, np.int32)])


def test_center_crop_pad() -> None:
    check_node("CenterCropPad", [f32(5, 4, 3), i64(3, 7)], {"axes": [0, 1]}, opset=18)
    check_node("CenterCropPad", [f32(4, 6), i64(5, 3)], opset=18)


# ------------------------------------------------------------------------------------------- casting
_VALUES = np.array(
    [
        0.0,
        -0.0,
        1.5,
        -2.5,
        0.1,
        3.14159,
        1e-3,
        2**-9,
        2**-17,
        300.0,
        -1000.0,
        65504.0,
        1e5,
        448.0,
        464.0,
        470.0,
        480.0,
        500.0,
        57344.0,
        59392.0,
        61440.0,
        7e4,
        np.inf,
        -np.inf,
        np.nan,
    ],
    np.float32,
)


@pytest.mark.parametrize("to", [TP.FLOAT16, TP.DOUBLE, TP.BOOL])
def test_cast_float_to_float_and_bool(to: int) -> None:
    check_node("Cast", [np.concatenate([_VALUES, f32(50) * 100])], {"to": to})


@pytest.mark.parametrize("to", [TP.INT8, TP.UINT8, TP.INT16, TP.INT32, TP.INT64, TP.UINT16])
def test_cast_float_to_int_truncates(to: int) -> None:
    # values inside every target's range: out-of-range float -> int is undefined behavior in C
    x = np.array([0.0, 1.7, -1.7, 2.5, -2.5, 99.99, 0.49, -0.51, 127.0], np.float32)
    if to in (TP.UINT8, TP.UINT16):
        x = np.abs(x)
    check_node("Cast", [x], {"to": to})


@pytest.mark.parametrize("src", [np.int64, np.int32, np.uint8, np.bool_, np.float16, np.float64])
def test_cast_to_float(src: type) -> None:
    x = np.array([0, 1, 5, 100, 3], dtype=src) if src is not np.bool_ else np.array([True, False])
    check_node("Cast", [x], {"to": TP.FLOAT})
    check_node("Cast", [x], {"to": TP.INT64})


def _cast_chain(x: np.ndarray, to: int, back: int, saturate: int = 1, opset: int = 21) -> None:
    """Cast to an element type ORT cannot return, then back to one it can: compares the first cast."""
    nodes = [
        helper.make_node("Cast", ["x"], ["y"], to=to, **({"saturate": saturate} if opset >= 19 else {})),
        helper.make_node("Cast", ["y"], ["z"], to=back),
    ]
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, list(x.shape))],
        [helper.make_tensor_value_info("z", back, None)],
    )
    check_model(finish_model(g, [helper.make_opsetid("", opset)]), {"x": x})


@pytest.mark.parametrize("to", [TP.FLOAT8E4M3FN, TP.FLOAT8E5M2])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_float8(to: int, saturate: int) -> None:
    # all values, plus random ones across the whole float8 range (subnormals included), both signs
    rnd = (RNG.standard_normal(2000) * np.exp2(RNG.uniform(-20, 17, 2000))).astype(np.float32)
    x = np.concatenate([_VALUES, -_VALUES, rnd])
    if to == TP.FLOAT8E4M3FN:
        check_node("Cast", [x], {"to": to, "saturate": saturate})  # ORT returns e4m3fn as uint8 bits
    _cast_chain(x, to, TP.FLOAT, saturate)
    with np.errstate(over="ignore"):  # values past 65504 become inf in float16, which is part of the test
        x16 = x.astype(np.float16)
    _cast_chain(x16, to, TP.FLOAT, saturate)


def test_cast_from_float8_and_bfloat16_initializers() -> None:
    vals = [0.0, 1.5, -3.25, 448.0, 0.0078125, -2.0]
    for t in (TP.FLOAT8E4M3FN, TP.FLOAT8E5M2, TP.BFLOAT16):
        for to in (TP.FLOAT, TP.FLOAT16, TP.INT32):
            check_node("Cast", [tensor(vals, t)], {"to": to})


def test_cast_bfloat16_round_trip() -> None:
    x = np.concatenate([_VALUES, f32(200) * 1000])
    _cast_chain(x, TP.BFLOAT16, TP.FLOAT)
    _cast_chain(x.astype(np.float64), TP.BFLOAT16, TP.DOUBLE)


@pytest.mark.parametrize("to", [TP.INT4, TP.UINT4])
def test_cast_int4(to: int) -> None:
    # ORT rounds half away from zero and keeps the low 4 bits (wraps) from floats; ints wrap too
    x = np.array([0, 0.5, -0.5, 1.5, 2.5, -2.5, 7.4, 7.6, -8.4, -9, 15.5, 16, 100, -100], np.float32)
    _cast_chain(x, to, TP.FLOAT)
    _cast_chain(np.arange(-20, 20, dtype=np.int32), to, TP.INT32)
    check_node(
        "Cast",
        [tensor([-8, -1, 0, 7], TP.INT4) if to == TP.INT4 else tensor([0, 1, 15], TP.UINT4)],
        {"to": TP.FLOAT},
    )


def test_cast_like() -> None:
    check_node("CastLike", [f32(3) * 10, np.zeros(1, np.int32)])
    check_node("CastLike", [f32(3), np.zeros(2, np.float16)])
    check_node("CastLike", [f32(5) * 100, tensor([0.0], TP.FLOAT8E4M3FN)], {"saturate": 0}, opset=19)


# ------------------------------------------------------------------------------------------- generators
def test_range() -> None:
    check_node("Range", [np.array(2, np.int64), np.array(17, np.int64), np.array(3, np.int64)])
    check_node("Range", [np.array(10, np.int32), np.array(-3, np.int32), np.array(-4, np.int32)])
    check_node("Range", [np.array(5, np.int64), np.array(1, np.int64), np.array(1, np.int64)])  # empty
    # dyadic float steps: every value exact, so ORT's accumulation and our start + i * delta agree exactly
    check_node("Range", [np.array(-1.5, np.float32), np.array(3.0, np.float32), np.array(0.25, np.float32)])


def test_eye_like_one_hot_trilu() -> None:
    check_node("EyeLike", [f32(3, 5)], {"k": 1})
    check_node("EyeLike", [f32(4, 3)], {"k": -2, "dtype": TP.INT32})
    idx = np.array([[0, 3, -1], [5, 2, -5]], np.int64)  # 5 and -5 are out of range: all-off rows
    vals = np.array([-1.0, 2.0], np.float32)
    for axis in (-1, 0, 1):
        check_node("OneHot", [idx, np.array(4.0, np.float32), vals], {"axis": axis})
    check_node("OneHot", [np.array([1.7, 2.2], np.float32), np.array(3, np.int64), i64(0, 9)])
    x = f32(2, 4, 5)
    for upper in (0, 1):
        check_node("Trilu", [x], {"upper": upper})
        check_node("Trilu", [x, np.array(-1, np.int64)], {"upper": upper})
        check_node("Trilu", [x, np.array(2, np.int64)], {"upper": upper})


# ------------------------------------------------------------------------------------------- scans / sorting
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum(exclusive: int, reverse: int) -> None:
    x = RNG.integers(-100, 100, size=(3, 7)).astype(np.int64)
    check_node("CumSum", [x, np.array(1, np.int64)], {"exclusive": exclusive, "reverse": reverse})
    xf = f32(5, 6)
    # float: a prefix of n terms differs by at most 2 * (n-1) * u * sum|x| between two summation orders
    bound = 2 * 5 * U * np.abs(xf).sum(axis=0).max()
    check_node(
        "CumSum", [xf, np.array(-2, np.int32)], {"exclusive": exclusive, "reverse": reverse}, atol=bound
    )


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_with_ties(largest: int) -> None:
    x = RNG.integers(0, 4, size=(3, 10)).astype(np.float32)  # many ties: lower index first
    check_node("TopK", [x, i64(5)], {"axis": 1, "largest": largest}, n_outputs=2)
    check_node("TopK", [x, i64(2)], {"axis": 0, "largest": largest}, n_outputs=2)
    check_node(
        "TopK", [RNG.integers(-5, 5, size=(4, 6)).astype(np.int64), i64(3)], {"largest": largest}, n_outputs=2
    )
    check_node("TopK", [x], {"k": 4, "axis": 1}, n_outputs=2, opset=9)  # k as an attribute


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_extremes(op: str, keepdims: int, last: int) -> None:
    x = RNG.integers(0, 3, size=(3, 4, 5)).astype(np.float32)  # ties decide first vs last index
    for axis in (0, -1):
        check_node(op, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last})


def test_unique() -> None:
    x = np.array([2, 1, 1, 3, 4, 3, 2, 2], np.int64)
    check_node("Unique", [x], {"sorted": 1}, n_outputs=4)
    check_node("Unique", [x], {"sorted": 0}, n_outputs=4)
    m = np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4], [0, 1, 1]], np.float32)
    check_node("Unique", [m], {"axis": 0}, n_outputs=4)
    check_node("Unique", [m], {"axis": 0, "sorted": 0}, n_outputs=4)


# ------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space(mode: str) -> None:
    check_node("DepthToSpace", [f32(2, 8, 3, 4)], {"blocksize": 2, "mode": mode})
    check_node("SpaceToDepth", [f32(2, 3, 4, 6)], {"blocksize": 2})


def test_reverse_sequence() -> None:
    x = f32(5, 3, 2)
    check_node("ReverseSequence", [x, i64(5, 2, 1)], {"batch_axis": 1, "time_axis": 0})
    x = f32(3, 5)
    check_node("ReverseSequence", [x, i64(1, 4, 5)], {"batch_axis": 0, "time_axis": 1})


def test_det() -> None:
    # well-conditioned (I + 0.1 R): LU in float32 has backward error ~ n u; |det| in [0.5, 2] so a
    # relative 32 n u bound covers both implementations (n = 4)
    x = (np.eye(4, dtype=np.float32) + 0.1 * f32(3, 4, 4)).astype(np.float32)
    check_node("Det", [x], rtol=32 * 4 * U)


def test_dropout_inference() -> None:
    x = f32(3, 4)
    check_node("Dropout", [x], n_outputs=2)
    check_node("Dropout", [x, np.array(0.3, np.float32), np.array(False)], n_outputs=2)
    check_node("Dropout", [x], {"ratio": 0.2}, n_outputs=2, opset=10)


def test_dropout_training_mode_keeps_expectation() -> None:
    # Random, so not comparable with ORT: every output is 0 or x / (1 - ratio), and the mask agrees.
    x = np.ones((200, 200), np.float32)
    model, feeds = _single("Dropout", [x, np.array(0.25, np.float32), np.array(True)], n_outputs=2)
    y, mask = run_ours(model, feeds)
    np.testing.assert_array_equal(y, np.where(mask, x / 0.75, 0).astype(np.float32))
    # keep fraction ~ Binomial(40000, 0.75): 5 sigma = 5 * sqrt(40000 * 0.75 * 0.25) / 40000 = 0.0108
    assert abs(mask.mean() - 0.75) < 0.0108


def _single(op: str, inputs: list, attrs: dict | None = None, **kw: object) -> tuple:
    from .harness import single_node_model

    return single_node_model(op, inputs, attrs, **kw)


# ------------------------------------------------------------------------------------------- Resize
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
COORDS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
def test_resize_nearest(coord: str, nearest_mode: str) -> None:
    x = f32(1, 2, 5, 7)
    attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest_mode}
    for scales in ([1, 1, 2.0, 1.5], [1, 1, 0.6, 0.5], [1, 1, 3.0, 0.75]):
        check_node("Resize", [x, None, np.array(scales, np.float32)], attrs, opset=19)
    check_node("Resize", [x, None, None, i64(1, 2, 9, 4)], attrs, opset=19)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coord", COORDS)
def test_resize_linear_cubic(mode: str, coord: str) -> None:
    x = f32(2, 3, 6, 5)
    # linear: ORT weights all taps at once, we per axis; each side errs <= 6u * max|x| (2-D, two products
    # and an add per axis), so 12u * max|x| total. cubic: 4 taps per axis with sum|w| <= 1.5 (a=-0.75):
    # <= 7u * 1.5^2 * max|x| per side; 64u * max|x| covers both.
    bound = (12 if mode == "linear" else 64) * U * float(np.abs(x).max())
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    for scales in ([1, 1, 2.0, 1.6], [1, 1, 0.5, 0.8]):
        check_node("Resize", [x, None, np.array(scales, np.float32)], attrs, opset=19, atol=bound)
    check_node("Resize", [x, None, None, i64(2, 3, 11, 3)], attrs, opset=19, atol=bound)


def test_resize_cubic_options_and_crop() -> None:
    x = f32(1, 1, 6, 6)
    bound = 64 * U * float(np.abs(x).max())
    attrs = {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}
    check_node("Resize", [x, None, np.array([1, 1, 1.5, 0.7], np.float32)], attrs, opset=19, atol=bound)
    roi = np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], np.float32)
    for mode in ("nearest", "linear"):
        attrs = {
            "mode": mode,
            "coordinate_transformation_mode": "tf_crop_and_resize",
            "extrapolation_value": 9.0,
        }
        check_node("Resize", [x, roi, None, i64(1, 1, 5, 7)], attrs, opset=19, atol=bound)


def test_resize_axes_aspect_ratio_and_old_forms() -> None:
    x = f32(1, 2, 4, 6)
    for policy in ("not_larger", "not_smaller"):
        check_node(
            "Resize",
            [x, None, None, i64(7, 7)],
            {"axes": [2, 3], "keep_aspect_ratio_policy": policy, "mode": "nearest"},
            opset=19,
        )
    check_node("Resize", [x, np.array([1, 1, 2, 0.5], np.float32)], {"mode": "nearest"}, opset=10)
    check_node(
        "Resize",
        [x, np.array([1, 1, 2, 1.5], np.float32)],
        {"mode": "linear"},
        opset=10,
        atol=12 * U * float(np.abs(x).max()),
    )
    check_node(
        "Resize",
        [np.arange(12, dtype=np.uint8).reshape(1, 1, 3, 4), None, np.array([1, 1, 2, 2], np.float32)],
        {"mode": "nearest"},
        opset=13,
    )


def test_resize_tf_half_pixel_for_nn() -> None:
    x = f32(1, 2, 5, 6)
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"}
    check_node(
        "Resize", [x, np.array([], np.float32), np.array([1, 1, 1.6, 0.5], np.float32)], attrs, opset=11
    )


def test_upsample_opset9() -> None:
    x = f32(1, 2, 3, 4)
    check_node("Upsample", [x, np.array([1, 1, 2, 1.5], np.float32)], {"mode": "nearest"}, opset=9)
    check_node(
        "Upsample",
        [x, np.array([1, 1, 2, 2], np.float32)],
        {"mode": "linear"},
        opset=9,
        atol=12 * U * float(np.abs(x).max()),
    )


# ------------------------------------------------------------------------------------------- sequences
def _seq_model(nodes: list, inputs: list, outputs: list) -> object:
    g = helper.make_graph(nodes, "seq", inputs, outputs)
    return finish_model(g, [helper.make_opsetid("", 18)])


def test_sequence_ops() -> None:
    vi = helper.make_tensor_value_info
    a, b, c = f32(2, 3), f32(4, 3), f32(1, 3)
    nodes = [
        helper.make_node("SequenceConstruct", ["a", "b"], ["s0"]),
        helper.make_node("SequenceInsert", ["s0", "c"], ["s1"]),  # at the end
        helper.make_node("SequenceInsert", ["s1", "a", "zero"], ["s2"]),  # at the front
        helper.make_node("SequenceErase", ["s2", "one"], ["s3"]),  # drops b
        helper.make_node("SequenceLength", ["s3"], ["n"]),
        helper.make_node("SequenceAt", ["s3", "minus1"], ["last"]),
        helper.make_node("ConcatFromSequence", ["s3"], ["cat"], axis=0),
        helper.make_node("SplitToSequence", ["cat"], ["parts"], axis=0),
        helper.make_node("ConcatFromSequence", ["parts"], ["stacked"], axis=1, new_axis=1),
        helper.make_node("SequenceEmpty", [], ["empty"], dtype=TP.FLOAT),
        helper.make_node("SequenceInsert", ["empty", "c"], ["one_seq"]),
        helper.make_node("SequenceLength", ["one_seq"], ["n1"]),
        helper.make_node("SplitToSequence", ["b", "two"], ["chunks"], axis=0),
        helper.make_node("SequenceAt", ["chunks", "one"], ["chunk1"]),
        helper.make_node("SplitToSequence", ["b"], ["rows"], axis=1, keepdims=0),
        helper.make_node("SequenceAt", ["rows", "zero"], ["row0"]),
    ]
    g = helper.make_graph(
        nodes,
        "seq",
        [vi("a", TP.FLOAT, [2, 3]), vi("b", TP.FLOAT, [4, 3]), vi("c", TP.FLOAT, [1, 3])],
        [vi(n, TP.FLOAT, None) for n in ("last", "cat", "stacked", "chunk1", "row0")]
        + [vi(n, TP.INT64, None) for n in ("n", "n1")],
        [
            helper.make_tensor(n, TP.INT64, [], [v])
            for n, v in (("zero", 0), ("one", 1), ("minus1", -1), ("two", 2))
        ],
    )
    check_model(finish_model(g, [helper.make_opsetid("", 18)]), {"a": a, "b": b, "c": c})


def test_sequence_output_and_optionals() -> None:
    vi = helper.make_tensor_value_info
    seq_t = helper.make_tensor_sequence_value_info("s", TP.FLOAT, None)
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["s"], axis=1),
        helper.make_node("Optional", ["x"], ["opt"]),
        helper.make_node("OptionalHasElement", ["opt"], ["has"]),
        helper.make_node("OptionalGetElement", ["opt"], ["got"]),
        helper.make_node("Optional", [], ["none"], type=helper.make_tensor_type_proto(TP.FLOAT, [2])),
        helper.make_node("OptionalHasElement", ["none"], ["has_none"]),
    ]
    g = helper.make_graph(
        nodes,
        "opt",
        [vi("x", TP.FLOAT, [2, 5])],
        [seq_t, vi("has", TP.BOOL, []), vi("got", TP.FLOAT, None), vi("has_none", TP.BOOL, [])],
        [helper.make_tensor("sizes", TP.INT64, [2], [2, 3])],
    )
    check_model(finish_model(g, [helper.make_opsetid("", 18)]), {"x": f32(2, 5)})


def test_constant_initializer_inputs() -> None:
    # const() makes an input an initializer: ORT constant-folds nothing (optimizations off), we read it
    check_node("Gather", [f32(5, 2), const(np.array([4, 0], np.int64))])
