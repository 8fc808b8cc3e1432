"""Granularity: which elements share one scale, and how per-granule parameters are shaped.

Parameter shapes follow ONNX QuantizeLinear/DequantizeLinear:
  PerTensor            -> ()                                   (a scalar)
  PerChannel(axis)     -> (x.shape[axis],)                     (per-axis, 1-D)
  PerGroup(axis, size) -> x.shape with dim[axis] = ceil(dim / size)   (ONNX "blocked", block_size=size)
  PerBlock(shape)      -> ceil(x.shape[i] / block[i]) on every axis   (2-D tiles; ONNX has no QDQ form)
A ragged last group/block is allowed: it holds the remaining elements.

Internally every granularity becomes a *tile* (one block size per axis of x), so one reduction and one
expansion serve all four.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    def __str__(self) -> str:
        return "per_tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (e.g. axis 0 of a Conv weight, the output channels)."""

    axis: int

    def __str__(self) -> str:
        return f"per_channel({self.axis})"


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements along ``axis`` (every other index separate)."""

    axis: int
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"PerGroup size must be a positive integer, got {self.size!r}")

    def __str__(self) -> str:
        return f"per_group({self.axis}, {self.size})"


@dataclass(frozen=True)
class PerBlock:
    """One scale per tile of ``shape`` over the trailing ``len(shape)`` axes (e.g. (128, 128) for FP8
    block-wise weight scaling); leading axes are not shared."""

    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if not self.shape or any(not isinstance(s, int) or s < 1 for s in self.shape):
            raise ValueError(f"PerBlock shape must be a non-empty tuple of positive integers, "
                             f"got {self.shape!r}")

    def __str__(self) -> str:
        return f"per_block({'x'.join(map(str, self.shape))})"


Granularity = PerTensor | PerChannel | PerGroup | PerBlock
PER_TENSOR = PerTensor()


def _norm_axis(axis: int, ndim: int, g: Granularity) -> int:
    if not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"{g}: axis {axis!r} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def tile_shape(shape: tuple[int, ...], g: Granularity) -> tuple[int, ...]:
    """The block size along every axis of a tensor of ``shape`` that one parameter covers."""
    shape = tuple(shape)
    if isinstance(g, PerTensor):
        return tuple(max(d, 1) for d in shape)
    if isinstance(g, PerChannel):
        axis = _norm_axis(g.axis, len(shape), g)
        return tuple(1 if i == axis else max(d, 1) for i, d in enumerate(shape))
    if isinstance(g, PerGroup):
        axis = _norm_axis(g.axis, len(shape), g)
        return tuple(g.size if i == axis else 1 for i in range(len(shape)))
    if isinstance(g, PerBlock):
        if len(g.shape) > len(shape):
            raise ValueError(f"{g}: block rank {len(g.shape)} exceeds tensor rank {len(shape)}")
        return (1,) * (len(shape) - len(g.shape)) + g.shape
    raise TypeError(f"unknown granularity {g!r}; use PerTensor, PerChannel, PerGroup or PerBlock")


def _grid_shape(shape: tuple[int, ...], g: Granularity) -> tuple[int, ...]:
    return tuple(-(-d // t) for d, t in zip(shape, tile_shape(shape, g)))


def param_shape(shape: tuple[int, ...], g: Granularity) -> tuple[int, ...]:
    """Shape of the scale / zero point of a tensor of ``shape`` (ONNX convention, see module doc)."""
    grid = _grid_shape(tuple(shape), g)
    if isinstance(g, PerTensor):
        return ()
    if isinstance(g, PerChannel):
        return (grid[_norm_axis(g.axis, len(shape), g)],)
    return grid


def _reduce(x: np.ndarray, g: Granularity, fn: np.ufunc) -> np.ndarray:
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"cannot reduce an empty tensor of shape {x.shape} {g}")
    tiles = tile_shape(x.shape, g)
    grid = _grid_shape(x.shape, g)
    pad = [(0, gr * t - d) for d, t, gr in zip(x.shape, tiles, grid)]
    if any(p for _, p in pad):
        # Edge padding repeats the last element of the ragged block, so min/max/absmax are unchanged.
        x = np.pad(x, pad, mode="edge")
    split = [n for gr, t in zip(grid, tiles) for n in (gr, t)]
    out = fn.reduce(x.reshape(split), axis=tuple(range(1, 2 * x.ndim, 2)))
    return out.reshape(param_shape(x.shape, g))


def reduce_min_max(x: np.ndarray, g: Granularity) -> tuple[np.ndarray, np.ndarray]:
    """Per-granule (min, max) of ``x``, each of shape ``param_shape(x.shape, g)``. NaN propagates."""
    return _reduce(x, g, np.minimum), _reduce(x, g, np.maximum)


def reduce_absmax(x: np.ndarray, g: Granularity) -> np.ndarray:
    """Per-granule max |x|, of shape ``param_shape(x.shape, g)``. NaN propagates."""
    return _reduce(np.abs(np.asarray(x)), g, np.maximum)


def expand_param(
    p: np.ndarray, shape: tuple[int, ...], g: Granularity, what: str = "parameter"
) -> np.ndarray:
    """Per-granule ``p`` made broadcastable against a tensor of ``shape`` (full shape for groups/blocks)."""
    shape = tuple(shape)
    p = np.asarray(p)
    want = param_shape(shape, g)
    if isinstance(g, PerTensor) and p.size == 1:
        return p.reshape(())
    if p.shape != want:
        raise ValueError(f"{what} has shape {p.shape}, but {g} of a tensor of shape {shape} needs {want}")
    if isinstance(g, PerChannel):
        axis = _norm_axis(g.axis, len(shape), g)
        return p.reshape([shape[i] if i == axis else 1 for i in range(len(shape))])
    if isinstance(g, PerTensor):
        return p
    for axis, t in enumerate(tile_shape(shape, g)):
        if t > 1:
            p = np.repeat(p, t, axis=axis)
    return p[tuple(slice(0, d) for d in shape)]
