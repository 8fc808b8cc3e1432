"""Granule reductions and parameter shapes, checked against explicit loops and ONNX's blocked convention."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qcompiler.numerics import (
    PerBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    expand_param,
    param_shape,
    reduce_absmax,
    reduce_min_max,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 6, 13)).astype(np.float32)


def _granule_slices(shape: tuple[int, ...], tiles: tuple[int, ...]):
    """(grid index, slices) of every tile, by brute force."""
    ranges = [range(0, d, t) for d, t in zip(shape, tiles)]
    for starts in itertools.product(*ranges):
        yield (tuple(s // t for s, t in zip(starts, tiles)),
               tuple(slice(s, s + t) for s, t in zip(starts, tiles)))


CASES = [
    # granularity, expected param shape for X (3, 6, 13), tile per axis
    (PerTensor(), (), (3, 6, 13)),
    (PerChannel(0), (3,), (1, 6, 13)),
    (PerChannel(1), (6,), (3, 1, 13)),
    (PerChannel(-1), (13,), (3, 6, 1)),
    (PerGroup(2, 4), (3, 6, 4), (1, 1, 4)),  # ragged: 13 = 4 + 4 + 4 + 1
    (PerGroup(1, 4), (3, 2, 13), (1, 4, 1)),  # ragged: 6 = 4 + 2
    (PerGroup(-1, 13), (3, 6, 1), (1, 1, 13)),
    (PerGroup(2, 64), (3, 6, 1), (1, 1, 64)),  # group larger than the axis: one group
    (PerBlock((4, 5)), (3, 2, 3), (1, 4, 5)),  # 2-D tiles on the trailing axes, ragged both ways
    (PerBlock((2, 6, 13)), (2, 1, 1), (2, 6, 13)),
]


@pytest.mark.parametrize(("g", "shape", "tiles"), CASES, ids=[str(c[0]) for c in CASES])
def test_reduce_matches_loops(g, shape: tuple[int, ...], tiles: tuple[int, ...]) -> None:
    assert param_shape(X.shape, g) == shape
    lo, hi = reduce_min_max(X, g)
    amax = reduce_absmax(X, g)
    assert lo.shape == hi.shape == amax.shape == shape
    grid_lo, grid_hi, grid_amax = (a.reshape(-1) for a in (lo, hi, amax))
    count = 0
    for idx, sl in _granule_slices(X.shape, tiles):
        flat = int(np.ravel_multi_index(idx, [-(-d // t) for d, t in zip(X.shape, tiles)]))
        assert grid_lo[flat] == X[sl].min()
        assert grid_hi[flat] == X[sl].max()
        assert grid_amax[flat] == np.abs(X[sl]).max()
        count += 1
    assert count == int(np.prod(shape))


@pytest.mark.parametrize(("g", "shape", "tiles"), CASES, ids=[str(c[0]) for c in CASES])
def test_expand_puts_each_value_on_its_granule(g, shape: tuple[int, ...], tiles: tuple[int, ...]) -> None:
    p = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    full = np.broadcast_to(expand_param(p, X.shape, g), X.shape)
    for idx, sl in _granule_slices(X.shape, tiles):
        grid = [-(-d // t) for d, t in zip(X.shape, tiles)]
        assert (full[sl] == np.ravel_multi_index(idx, grid)).all()


def test_blocked_expand_equals_onnx_convention() -> None:
    # ONNX blocked quantization (onnx.reference _quant_utils.reshape_input): repeat block_size times along
    # the axis, then drop the tail of the ragged last block.
    x_shape, axis, block = (5, 13), 1, 4
    p = RNG.standard_normal((5, 4)).astype(np.float32)
    onnx_style = np.repeat(p, block, axis=axis)[:, :13]
    np.testing.assert_array_equal(expand_param(p, x_shape, PerGroup(axis, block)), onnx_style)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"per_channel\(3\): axis 3 is out of range for a tensor of rank 3"):
        param_shape(X.shape, PerChannel(3))
    with pytest.raises(ValueError, match=r"scale has shape \(4,\), but per_channel\(1\) .* needs \(6,\)"):
        expand_param(np.ones(4), X.shape, PerChannel(1), "scale")
    with pytest.raises(ValueError, match="block rank 4 exceeds tensor rank 3"):
        param_shape(X.shape, PerBlock((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="positive integer"):
        PerGroup(0, 0)
    with pytest.raises(ValueError, match="positive integers"):
        PerBlock((64, 0))
    with pytest.raises(ValueError, match="empty tensor"):
        reduce_min_max(np.zeros((0, 3)), PerTensor())


def test_per_tensor_accepts_one_element_arrays() -> None:
    assert expand_param(np.array([2.0]), (3, 4), PerTensor()).shape == ()


def test_nan_propagates_to_its_granule_only() -> None:
    x = np.ones((4, 8), dtype=np.float32)
    x[2, 5] = np.nan
    lo, hi = reduce_min_max(x, PerChannel(0))
    assert np.isnan(lo[2]) and np.isnan(hi[2])
    assert not np.isnan(np.delete(lo, 2)).any()


def test_str_forms() -> None:
    assert [str(g) for g in (PerTensor(), PerChannel(1), PerGroup(1, 32), PerBlock((128, 128)))] == [
        "per_tensor", "per_channel(1)", "per_group(1, 32)", "per_block(128x128)"]
