"""Codebook (lookup-table) formats such as NF4: nearest level index and back."""

from __future__ import annotations

import numpy as np


def _levels(levels: tuple[float, ...] | np.ndarray) -> np.ndarray:
    table = np.asarray(levels, dtype=np.float32)
    if table.ndim != 1 or table.size < 2 or not (np.diff(table) > 0).all():
        raise ValueError("a codebook must be a strictly increasing 1-D table of at least 2 levels")
    return table


def codebook_encode(y: np.ndarray, levels: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """uint8 index of the level nearest to each element of ``y`` (already divided by its scale).

    A value exactly halfway between two levels takes the lower one, as bitsandbytes' ``dQuantizeNF4``
    (it moves to the upper code only when x > midpoint). Values beyond the table clamp to its ends.
    """
    table = _levels(levels)
    if table.size > 256:
        raise ValueError(f"a codebook of {table.size} levels does not fit uint8 indices")
    mids = ((table[:-1].astype(np.float64) + table[1:]) / 2.0).astype(np.float32)
    return np.searchsorted(mids, np.asarray(y, dtype=np.float32), side="left").astype(np.uint8)


def codebook_decode(idx: np.ndarray, levels: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """float32 level of each index."""
    table = _levels(levels)
    idx = np.asarray(idx)
    if idx.size and (idx.min() < 0 or idx.max() >= table.size):
        raise ValueError(f"codebook indices must lie in [0, {table.size - 1}], "
                         f"got [{idx.min()}, {idx.max()}]")
    return table[idx]
