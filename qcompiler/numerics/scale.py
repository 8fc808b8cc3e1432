"""Scale and zero point from a range (min, max), for every format and scheme.

Integer formats (q in [qmin, qmax] of the scheme):
  symmetric: scale = amax / ((qmax - qmin) / 2), zero_point = round((qmin + qmax) / 2)
             (0 for signed formats; 128 for uint8, 8 for uint4 as ONNX Runtime does). This is PyTorch's and
             ORT's rule: every x in [-amax, amax] lands within scale/2 of a code (int8: amax / 127.5;
             narrow-range int8: amax / 127).
  affine:    the range is widened to include 0 (so 0 is exact, as ONNX/PyTorch require),
             scale = (max - min) / (qmax - qmin), zero_point = clip(round(qmin - min / scale), qmin, qmax).
Float formats (fp8): scale = amax / format max, no zero point.
Codebook formats (nf4): scale = amax (absmax scaling to [-1, 1]), no zero point.

Scales are float32 and never 0, NaN or Inf: an all-zero range gets ``ZERO_RANGE_SCALE`` (1.0; every x of
such a granule is 0, which any positive scale represents exactly) and a tiny nonzero range is raised to
``MIN_SCALE`` (the smallest normal float32) so that the scale keeps full float32 precision.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.numerics.formats import Format
from qcompiler.numerics.scheme import SYMMETRIC, Scheme, check_scheme, quant_range

ZERO_RANGE_SCALE = 1.0
MIN_SCALE = float(np.finfo(np.float32).tiny)


def _check_range(lo: np.ndarray, hi: np.ndarray, what: str) -> None:
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f" at granule {idx}" if idx else ""
        raise QuantizationError(f"{what}: range holds NaN or Inf{where} (min={lo[idx]}, max={hi[idx]}); "
                                f"cannot compute a quantization scale ({int(bad.sum())} granule(s) affected)")
    inverted = lo > hi
    if inverted.any():
        idx = tuple(int(i) for i in np.argwhere(inverted)[0])
        raise ValueError(f"{what}: range min {lo[idx]} exceeds max {hi[idx]} at granule {idx}")


def _finalize_scale(scale: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        s32 = scale.astype(np.float32)
    if not np.isfinite(s32).all():
        raise QuantizationError(f"{what}: range is too large for a float32 scale (max scale {scale.max()})")
    s32 = np.where(scale == 0, np.float32(ZERO_RANGE_SCALE), np.maximum(s32, np.float32(MIN_SCALE)))
    return s32.astype(np.float32)


def compute_scale_zero_point(
    min_val: np.ndarray | float,
    max_val: np.ndarray | float,
    fmt: Format | str,
    scheme: Scheme = SYMMETRIC,
    *,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(scale, zero_point) for each granule's range; see the module doc for the rules.

    ``min_val`` and ``max_val`` are broadcast together (any shape: per tensor, channel, group, block).
    Returns a float32 scale of that shape and, for integer formats, a zero point of the same shape in the
    format's storage dtype; float and codebook formats return None for the zero point.
    Raises QuantizationError (naming ``name``) for NaN/Inf in the range.
    """
    fmt = check_scheme(fmt, scheme)
    what = f"tensor {name!r}" if name else "tensor"
    lo, hi = np.broadcast_arrays(np.asarray(min_val, dtype=np.float64), np.asarray(max_val, dtype=np.float64))
    _check_range(lo, hi, what)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    if not fmt.is_integer:
        assert fmt.max_value is not None
        return _finalize_scale(amax / fmt.max_value, what), None
    qmin, qmax = quant_range(fmt, scheme)
    if scheme.symmetric:
        scale = _finalize_scale(amax / ((qmax - qmin) / 2.0), what)
        zp = np.full(scale.shape, np.rint((qmin + qmax) / 2.0))
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = _finalize_scale((hi - lo) / float(qmax - qmin), what)
        # The zero point comes from the float32 scale actually stored, so that q = x / scale + zp holds
        # for the numbers a runtime will use.
        zp = np.clip(np.rint(qmin - lo / scale.astype(np.float64)), qmin, qmax)
    return scale, zp.astype(fmt.numpy_dtype)
