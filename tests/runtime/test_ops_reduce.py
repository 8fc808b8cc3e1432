"""Reductions against ONNX Runtime, in both forms (axes attribute before opset 13/18, axes input after).

Bounds: Max/Min and integer reductions are exact. A float32 sum of K terms differs between two summation
orders by about sqrt(K)*eps*sum|terms| (4x allowed, see `sum_atol`); Mean divides that by K; L2 and
LogSum take a square root / log of such a sum (relative error halves / becomes absolute); LogSumExp adds
the exp/log ulps.
"""

from __future__ import annotations

import numpy as np
import pytest

from .harness import check_node

EPS = float(np.finfo(np.float32).eps)
RNG = np.random.default_rng(99)
OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
       "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
SHAPE = (3, 4, 5)


def sum_atol(k: int, term_max: float) -> float:
    return 4 * np.sqrt(k) * EPS * k * term_max


def _tol(op: str, k: int) -> dict[str, float]:
    """Bounds for inputs in [0.5, 1.5] (positive, so LogSum is defined; products stay O(1)^k)."""
    if op in ("ReduceMax", "ReduceMin"):
        return {}
    if op == "ReduceProd":
        return {"rtol": 2 * k * EPS}  # k roundings of relative eps/2 each, in each implementation
    term = {"ReduceSumSquare": 2.25, "ReduceL2": 2.25, "ReduceLogSumExp": 4.5}.get(op, 1.5)
    atol = sum_atol(k, term)
    if op == "ReduceMean":
        atol /= k
    return {"atol": atol, "rtol": 4 * EPS}


def _x() -> np.ndarray:
    return RNG.uniform(0.5, 1.5, size=SHAPE).astype(np.float32)


AXES = [None, [], [0], [1], [-1], [0, 2], [2, 0, 1]]


def _k(axes: list[int] | None) -> int:
    if not axes:
        return int(np.prod(SHAPE))
    return int(np.prod([SHAPE[a] for a in axes]))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axes", AXES)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_input(op: str, axes: list[int] | None, keepdims: int) -> None:
    x = _x()
    inputs = [x] if axes is None else [x, np.array(axes, np.int64)]
    check_node(op, inputs, {"keepdims": keepdims}, opset=18, **_tol(op, _k(axes)))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axes", [None, [1], [0, -1]])
def test_reduce_axes_attribute(op: str, axes: list[int] | None) -> None:
    x = _x()
    attrs = {} if axes is None else {"axes": axes}
    check_node(op, [x], {**attrs, "keepdims": 0}, opset=11 if op == "ReduceSum" else 13, **_tol(op, _k(axes)))


@pytest.mark.parametrize("op", OPS)
def test_noop_with_empty_axes(op: str) -> None:
    # No reduction, but the elementwise part stays (SumSquare -> x*x, L1 -> |x|, LogSum -> log x):
    # single libm calls, so a few ulp.
    x = _x() * RNG.choice([-1, 1], size=SHAPE).astype(np.float32)
    if op == "ReduceLogSum":
        x = np.abs(x)
    check_node(op, [x, np.array([], np.int64)], {"noop_with_empty_axes": 1}, opset=18, rtol=4 * EPS)


def test_reduce_sum_axes_input_opset_13() -> None:
    x = _x()
    check_node("ReduceSum", [x, np.array([1], np.int64)], opset=13, **_tol("ReduceSum", 4))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                "ReduceSumSquare", "ReduceL2"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_reduce_int(op: str, dtype: type) -> None:
    # Integer results keep the input dtype; the mean truncates toward zero.
    x = RNG.integers(-9, 9, size=(3, 4)).astype(dtype)
    check_node(op, [x, np.array([1], np.int64)], opset=18)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, bool])
def test_reduce_max_min_small_types(op: str, dtype: type) -> None:
    x = RNG.integers(0, 2 if dtype is bool else 120, size=(3, 4)).astype(dtype)
    check_node(op, [x, np.array([0], np.int64)], opset=20)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_min_propagate_nan(op: str) -> None:
    # ORT's kernel returns NaN only when the NaN comes first in the row (a compare-and-keep loop); we
    # propagate NaN wherever it is, like numpy and onnx's reference.
    x = np.array([[1, np.nan, 3], [4, 5, 6], [np.nan, 1, 2]], np.float32)
    (got,) = check_node(op, [x, np.array([1], np.int64)], opset=18, reference="reference")
    assert np.isnan(got[0, 0]) and np.isnan(got[2, 0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's mean of an empty slice, in the reference
@pytest.mark.parametrize("op", OPS)
def test_reduce_empty_set(op: str) -> None:
    # Reducing a zero-size axis gives the op's identity element (ONNX 1.16+ semantics).
    x = np.zeros((2, 0, 3), np.float32)
    check_node(op, [x, np.array([1], np.int64)], opset=18, reference="reference")


def test_reduce_large_magnitude_logsumexp() -> None:
    # The max-shift keeps exp from overflowing at |x| ~ 100.
    x = RNG.uniform(80, 100, size=(4, 6)).astype(np.float32)
    check_node("ReduceLogSumExp", [x, np.array([1], np.int64)], opset=18, rtol=8 * EPS)
