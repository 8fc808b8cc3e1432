"""Observers: how a value's range is found from data, separately from how it is quantized (STYLE habit 12).

An observer is fed the value batch after batch (`observe(array)`, or used directly as an executor hook
`fn(value, tensor)`), keeps a state of constant size, and at the end settles on a range (`range()`) from
which `compute(fmt, scheme, granularity)` derives scale and zero point with
`qcompiler.numerics.compute_scale_zero_point`.

| name             | class                        | range                                               | granularity |
| ---------------- | ---------------------------- | --------------------------------------------------- | ----------- |
| `minmax`         | `MinMaxObserver`             | running min / max                                   | any         |
| `moving_average` | `MovingAverageMinMaxObserver`| exponential moving average of batch min / max       | any         |
| `percentile`     | `PercentileObserver`         | the `percentile`-th percentile of |x| (or two tails) | per tensor  |
| `entropy`        | `EntropyObserver`            | KL-divergence threshold (TensorRT)                  | per tensor  |
| `mse`            | `MSEObserver`                | clipping range minimizing the quantization MSE      | per tensor  |

Symmetric schemes always get a range symmetric around 0: (-amax, amax) with amax = max(|min|, |max|) for the
min-max observers, and a threshold found on the histogram of |x| for percentile and entropy. Affine schemes
get (lo, hi) from the signed data. The MSE observer evaluates the exact grid of the target scheme and format.

Histogram observers keep one *signed* histogram over [-T, T] with 2 * `num_bins` equal bins (`num_bins` bins
per side). The histogram of |x| is read from it exactly by folding the two halves, so one state serves both
symmetric (|x|) and affine (signed) ranges, and the scheme can be chosen after observing. T starts at the
first non-zero batch's max |x|. A batch reaching beyond T grows the range by re-binning: T is multiplied by
the smallest power of two 2^m covering the new max and every 2^m adjacent bins merge into one. The new edges
are a subset of the old ones, so no count moves to a wrong bin (only a value lying exactly on the old outer
edge T, which the old histogram closed into its last bin, stays one bin left of where a fresh histogram
would put it); the price is resolution: after growth at least `num_bins / 2` bins per side span the data.
State is the bin counts (2 * num_bins int64) and a few scalars, whatever the number of batches.

Empty batches (0 elements) are ignored. NaN or Inf raises `CalibrationError` naming the value. All-zero data
gives the range (0, 0), for which numerics returns the zero-range scale (1.0), never 0 or NaN.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import CalibrationError, ConfigError
from qcompiler.numerics import (
    PER_TENSOR,
    SYMMETRIC,
    Format,
    Granularity,
    PerBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    Scheme,
    compute_scale_zero_point,
    fp8_decode,
    get_format,
    quant_range,
    reduce_min_max,
)

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "EntropyOptions",
    "HistogramOptions",
    "MSEObserver",
    "MinMaxObserver",
    "MinMaxOptions",
    "MovingAverageMinMaxObserver",
    "MovingAverageOptions",
    "Observer",
    "PercentileObserver",
    "PercentileOptions",
    "get_observer",
    "observer_options",
    "quantization_sse",
]

_GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerBlock)


# ------------------------------------------------------------------------------------------------ options
def _check_granularity(kind: str, g: object, per_tensor_only: bool) -> None:
    if not isinstance(g, _GRANULARITIES):
        raise ConfigError(f"observer {kind!r}: option 'granularity' must be a PerTensor, PerChannel, PerGroup "
                          f"or PerBlock, got {g!r}")
    if per_tensor_only and not isinstance(g, PerTensor):
        raise ConfigError(f"observer {kind!r} is per-tensor only (its histogram describes the whole tensor); "
                          f"got granularity {g}. Use 'minmax' or 'moving_average' for per-channel/group ranges")


def _check_int(kind: str, key: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"observer {kind!r}: option {key!r} must be an integer >= {lo}, got {v!r}")


def _check_real(kind: str, key: str, v: object, lo: float, hi: float, lo_open: bool) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"observer {kind!r}: option {key!r} must be a number in {bracket}{lo}, {hi}], got {v!r}")
    return float(v)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MinMaxOptions:
    """`minmax`: running min and max, per granule of `granularity`."""

    granularity: Granularity = field(default_factory=PerTensor)

    def __post_init__(self) -> None:
        _check_granularity("minmax", self.granularity, per_tensor_only=False)


@dataclass(frozen=True)
class MovingAverageOptions:
    """`moving_average`: min/max <- min/max + averaging_constant * (batch min/max - min/max) (PyTorch's
    MovingAverageMinMaxObserver); the first batch sets them."""

    averaging_constant: float = 0.01
    granularity: Granularity = field(default_factory=PerTensor)

    def __post_init__(self) -> None:
        _check_real("moving_average", "averaging_constant", self.averaging_constant, 0.0, 1.0, lo_open=True)
        _check_granularity("moving_average", self.granularity, per_tensor_only=False)


@dataclass(frozen=True)
class HistogramOptions:
    """Shared by the histogram observers: `num_bins` bins per side of zero (see the module doc)."""

    num_bins: int = 2048
    granularity: Granularity = field(default_factory=PerTensor)
    kind: ClassVar[str] = "histogram"

    def __post_init__(self) -> None:
        _check_int(self.kind, "num_bins", self.num_bins, 16)
        _check_granularity(self.kind, self.granularity, per_tensor_only=True)


@dataclass(frozen=True)
class PercentileOptions(HistogramOptions):
    """`percentile`: symmetric schemes take the `percentile`-th percentile of |x|; affine schemes cut
    (100 - percentile) / 2 percent from each tail of the signed data (ONNX Runtime's rule)."""

    percentile: float = 99.99
    kind: ClassVar[str] = "percentile"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_real(self.kind, "percentile", self.percentile, 0.0, 100.0, lo_open=True)


@dataclass(frozen=True)
class EntropyOptions(HistogramOptions):
    """`entropy`: TensorRT's KL-divergence calibration over `num_bins` bins of |x|, candidate thresholds
    from `start_bin` bins up in steps of `stride` bins."""

    start_bin: int = 128
    stride: int = 1
    kind: ClassVar[str] = "entropy"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self.kind, "start_bin", self.start_bin, 1)
        _check_int(self.kind, "stride", self.stride, 1)
        if self.start_bin > self.num_bins:
            raise ConfigError(f"observer 'entropy': start_bin ({self.start_bin}) exceeds num_bins ({self.num_bins})")


@dataclass(frozen=True)
class MSEOptions(HistogramOptions):
    """`mse`: the clipping range whose quantization grid (for the target format and scheme) gives the least
    mean squared error over the histogram; `candidates` thresholds are scanned coarsely, then refined to
    single bins around the best."""

    candidates: int = 256
    kind: ClassVar[str] = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self.kind, "candidates", self.candidates, 8)


# ------------------------------------------------------------------------------------------------ base
def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array or torch tensor (torch imported by the caller, never here)."""
    if hasattr(x, "detach"):
        t = x.detach()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16") or "float8" in str(t.dtype):
            t = t.float()  # numpy has no bfloat16/float8; float16 is widened below anyway
        x = t.cpu().numpy()
    a = np.asarray(x)
    if a.dtype == np.float16:
        return a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64)
    return a


class Observer(abc.ABC):
    """Streaming range statistics of one value; see the module doc.

    Subclasses implement `_update(x)` (x: a non-empty, finite float array) and `_range(fmt, scheme)`.
    """

    kind: ClassVar[str] = ""
    options: Any

    def __init__(self, name: str) -> None:
        self.name = name
        self.num_batches = 0  # non-empty batches observed
        self.num_elements = 0
        self.min_val = math.inf  # over everything observed (for the report and for clipping thresholds)
        self.max_val = -math.inf

    @property
    def granularity(self) -> Granularity:
        return self.options.granularity

    def observe(self, x: Any) -> None:
        """Add one batch (numpy array or torch tensor) to the statistics."""
        a = _to_numpy(x)
        if a.size == 0:
            return  # a value that is sometimes empty (e.g. no detections) says nothing about its range
        finite = np.isfinite(a)
        if not finite.all():
            n_nan = int(np.isnan(a).sum())
            n_inf = int(a.size - finite.sum()) - n_nan
            raise CalibrationError(
                f"value {self.name!r}: batch {self.num_batches} holds {n_nan} NaN and {n_inf} Inf of {a.size} "
                f"elements; observers need finite activations (check the calibration data, or an overflow "
                f"upstream of this value)")
        self._update(a)
        self.num_batches += 1
        self.num_elements += int(a.size)
        self.min_val = min(self.min_val, float(a.min()))
        self.max_val = max(self.max_val, float(a.max()))

    def __call__(self, value: Any, tensor: Any) -> None:
        """Executor hook form: `executor.add_hook(name, observer)` observes and never replaces."""
        self.observe(tensor)

    def range(
        self, fmt: Format | str = "int8", scheme: Scheme = SYMMETRIC, granularity: Granularity | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) the observer settled on for quantizing to `fmt` under `scheme`, float64 arrays of the
        granularity's parameter shape; symmetric schemes get lo == -hi."""
        if self.num_batches == 0:
            raise CalibrationError(f"value {self.name!r}: the {self.kind} observer saw no data (never run, or "
                                   f"every batch was empty); it has no range")
        self._check_compute_granularity(granularity)
        lo, hi = self._range(get_format(fmt), scheme, granularity)
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if scheme.symmetric:
            amax = np.maximum(np.abs(lo), np.abs(hi))
            return -amax, amax
        return lo, hi

    def compute(
        self, fmt: Format | str, scheme: Scheme = SYMMETRIC, granularity: Granularity | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(scale, zero_point) for `fmt` / `scheme` from `range()`; zero point None for fp8 / nf4."""
        lo, hi = self.range(fmt, scheme, granularity)
        return compute_scale_zero_point(lo, hi, fmt, scheme, name=self.name)

    def state_nbytes(self) -> int:
        """Bytes of array state held (constant once the first batch has fixed the shapes)."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def _check_compute_granularity(self, g: Granularity | None) -> None:
        if g is not None and g != self.granularity and not isinstance(g, PerTensor):
            raise ConfigError(f"value {self.name!r}: the {self.kind} observer collected {self.granularity} "
                              f"statistics; it cannot give a {g} range (only that one, or per_tensor)")

    @abc.abstractmethod
    def _update(self, x: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _range(self, fmt: Format, scheme: Scheme, g: Granularity | None) -> tuple[Any, Any]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.options}, batches={self.num_batches})"


# ------------------------------------------------------------------------------------------------ min-max
class MinMaxObserver(Observer):
    """Running min/max per granule (`reduce_min_max`); exact on the data seen."""

    kind = "minmax"

    def __init__(self, name: str = "tensor", *, granularity: Granularity = PER_TENSOR) -> None:
        super().__init__(name)
        self.options = MinMaxOptions(granularity)
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None

    def _batch_min_max(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            lo, hi = reduce_min_max(x, self.granularity)
        except ValueError as e:
            raise CalibrationError(f"value {self.name!r}: {e}") from None
        if self._lo is not None and lo.shape != self._lo.shape:
            raise CalibrationError(
                f"value {self.name!r}: a batch of shape {x.shape} has {self.granularity} parameters of shape "
                f"{lo.shape}, earlier batches {self._lo.shape}; the granularity must not depend on a dimension "
                f"that varies between batches")
        return lo.astype(np.float64), hi.astype(np.float64)

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self._batch_min_max(x)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
        else:
            np.minimum(self._lo, lo, out=self._lo)
            np.maximum(self._hi, hi, out=self._hi)

    def _range(self, fmt: Format, scheme: Scheme, g: Granularity | None) -> tuple[np.ndarray, np.ndarray]:
        assert self._lo is not None and self._hi is not None
        if isinstance(g, PerTensor) and not isinstance(self.granularity, PerTensor):
            return self._lo.min(), self._hi.max()
        return self._lo, self._hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """PyTorch's MovingAverage(PerChannel)MinMaxObserver: the first batch sets min/max; each later batch
    moves them by `averaging_constant` towards its own min/max. After n batches of constant min m (following
    a first batch with min m0): min = m + (m0 - m) * (1 - c)^(n - 1)."""

    kind = "moving_average"

    def __init__(
        self, name: str = "tensor", *, averaging_constant: float = 0.01, granularity: Granularity = PER_TENSOR
    ) -> None:
        super().__init__(name, granularity=granularity)
        self.options = MovingAverageOptions(averaging_constant, granularity)

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self._batch_min_max(x)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
            return
        c = self.options.averaging_constant
        self._lo += c * (lo - self._lo)
        self._hi += c * (hi - self._hi)

    def _range(self, fmt: Format, scheme: Scheme, g: Granularity | None) -> tuple[np.ndarray, np.ndarray]:
        assert self._lo is not None and self._hi is not None
        if isinstance(g, PerTensor) and not isinstance(self.granularity, PerTensor):
            # Averages of per-granule extremes; their extremes are the natural per-tensor summary.
            return self._lo.min(), self._hi.max()
        return self._lo, self._hi


# ------------------------------------------------------------------------------------------------ histogram
class _Histogram:
    """Signed histogram over [-limit, limit], 2 * n equal bins, grown by power-of-two re-binning."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.counts = np.zeros(2 * n, dtype=np.int64)
        self.limit = 0.0  # 0 until a batch with a non-zero element arrives
        self.zeros = 0  # elements seen while limit == 0 (all exact zeros)
        self.growths = 0

    @property
    def width(self) -> float:
        return self.limit / self.n

    def edges(self) -> np.ndarray:
        return np.linspace(-self.limit, self.limit, 2 * self.n + 1)

    def add(self, x: np.ndarray) -> None:
        amax = float(np.max(np.abs(x)))
        if amax == 0.0:
            if self.limit == 0.0:
                self.zeros += x.size
            else:
                self.counts[self.n] += x.size  # bin [0, w)
            return
        if self.limit == 0.0:
            self.limit = amax
            self.counts[self.n] += self.zeros
            self.zeros = 0
        elif amax > self.limit:
            self._grow(amax)
        self.counts += np.histogram(x, bins=2 * self.n, range=(-self.limit, self.limit))[0]

    def _grow(self, amax: float) -> None:
        k = 1 << max(1, math.ceil(math.log2(amax / self.limit)))
        while self.limit * k < amax:  # guard against log2 rounding down
            k <<= 1
        signed = np.arange(-self.n, self.n)
        merged = np.zeros_like(self.counts)
        np.add.at(merged, np.floor_divide(signed, k) + self.n, self.counts)
        self.counts = merged
        self.limit *= k  # a power-of-two factor: the new edges are exactly old edges
        self.growths += 1

    def folded(self) -> np.ndarray:
        """Counts of |x| over [0, limit] in n bins of the same width (bin j: j*w <= |x| < (j+1)*w)."""
        if self.limit == 0.0:
            out = np.zeros(self.n, dtype=np.int64)
            out[0] = self.zeros
            return out
        return self.counts[self.n:] + self.counts[: self.n][::-1]


def _quantile(counts: np.ndarray, start: float, width: float, q: float) -> float:
    """The q-quantile (0 < q <= 1) of a histogram with bins [start + j*w, start + (j+1)*w), linear within
    the bin where the cumulative count crosses q * total."""
    cum = np.cumsum(counts)
    target = q * cum[-1]
    j = min(int(np.searchsorted(cum, target, side="left")), counts.size - 1)
    below = cum[j] - counts[j]
    frac = (target - below) / counts[j] if counts[j] > 0 else 1.0
    return start + (j + min(max(frac, 0.0), 1.0)) * width


class _HistogramObserver(Observer):
    def __init__(self, name: str, options: HistogramOptions) -> None:
        super().__init__(name)
        self.options = options
        self._hist = _Histogram(options.num_bins)

    def _update(self, x: np.ndarray) -> None:
        self._hist.add(x.reshape(-1))

    def state_nbytes(self) -> int:
        return super().state_nbytes() + self._hist.counts.nbytes

    def _check_compute_granularity(self, g: Granularity | None) -> None:
        if g is not None and not isinstance(g, PerTensor):
            raise ConfigError(f"value {self.name!r}: the {self.kind} observer is per-tensor only; "
                              f"cannot give a {g} range (use 'minmax' or 'moving_average')")

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of the signed histogram (a copy), for plots and tests."""
        return self._hist.counts.copy(), self._hist.edges()

    def _range(self, fmt: Format, scheme: Scheme, g: Granularity | None) -> tuple[float, float]:
        lo, hi = self.min_val, self.max_val
        if lo == hi or self._hist.limit == 0.0:
            return lo, hi  # constant (or all-zero) data: its exact value is the best range
        if scheme.symmetric:
            t = min(self._threshold(fmt, scheme), max(-lo, hi))
            return -t, t
        return self._affine_range(fmt, scheme)

    @abc.abstractmethod
    def _threshold(self, fmt: Format, scheme: Scheme) -> float:
        """Clipping threshold for |x| (symmetric schemes)."""

    @abc.abstractmethod
    def _affine_range(self, fmt: Format, scheme: Scheme) -> tuple[float, float]: ...


class PercentileObserver(_HistogramObserver):
    """Range from percentiles of the data (ONNX Runtime's and TensorRT's 'percentile' calibration), read from
    the streaming histogram with linear interpolation inside a bin, so the estimate is within one bin width
    of the empirical percentile; the result is clipped to the observed min/max."""

    kind = "percentile"

    def __init__(
        self, name: str = "tensor", *, percentile: float = 99.99, num_bins: int = 2048,
        granularity: Granularity = PER_TENSOR,
    ) -> None:
        super().__init__(name, PercentileOptions(num_bins, granularity, percentile))

    def _threshold(self, fmt: Format, scheme: Scheme) -> float:
        h = self._hist
        return _quantile(h.folded(), 0.0, h.width, self.options.percentile / 100.0)

    def _affine_range(self, fmt: Format, scheme: Scheme) -> tuple[float, float]:
        h = self._hist
        tail = (100.0 - self.options.percentile) / 200.0
        lo = _quantile(h.counts, -h.limit, h.width, tail) if tail > 0 else self.min_val
        hi = _quantile(h.counts, -h.limit, h.width, 1.0 - tail)
        # Monotone quantiles clipped to [min, max] keep lo <= hi.
        return min(max(lo, self.min_val), self.max_val), min(max(hi, self.min_val), self.max_val)


def _kl_threshold_bin(hist: np.ndarray, levels: int, start_bin: int, stride: int) -> int:
    """TensorRT's entropy calibration (pytorch_quantization `_compute_amax_entropy`) on a histogram of |x|:
    for each candidate i (bins [0, i) kept), P = hist[:i] with the clipped tail added to its last bin;
    Q = hist[:i] merged into `levels` equal groups, each group's count spread evenly over its non-empty bins;
    return the i minimizing KL(P || Q) (the largest on ties). The threshold is edge i."""
    hist = hist.astype(np.float64)
    # TensorRT replaces the first bin by the second: a spike of exact zeros (ReLU outputs) would otherwise
    # dominate the divergence and push every threshold down.
    hist[0] = hist[1]
    nonzero = np.flatnonzero(hist)
    stop = int(nonzero[-1]) + 1 if nonzero.size else hist.size
    first = max(start_bin, levels)
    if first >= stop:
        return stop  # fewer occupied bins than levels: the grid resolves the histogram, clip nothing
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_i, best_kl = stop, math.inf
    for i in range(first, stop + 1, stride):
        kept = hist[:i]
        p = kept.copy()
        p[-1] += tail[i]
        group = (np.arange(i) * levels) // i
        nz = kept > 0
        sums = np.bincount(group, weights=kept, minlength=levels)
        nnz = np.bincount(group, weights=nz, minlength=levels)
        q = np.where(nz, sums[group] / np.maximum(nnz[group], 1), 0.0)
        if q.sum() == 0:
            continue
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        kl = math.inf if (q[mask] == 0).any() else float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return best_i


class EntropyObserver(_HistogramObserver):
    """KL-divergence ('entropy') calibration as TensorRT and ONNX Runtime do it: the threshold whose
    quantized distribution (`levels` uniform steps) diverges least from the clipped reference.

    Integer formats only. Levels: symmetric -> (qmax - qmin + 1) // 2 steps over |x| (int8: 128, as
    TensorRT); affine on one-sided data (all >= 0, e.g. after ReLU, or all <= 0) -> qmax - qmin + 1 steps
    (uint8: 256, TensorRT's unsigned case) and range (min, threshold); affine on two-sided data -> the
    symmetric threshold t, range (max(min, -t), min(max, t)) as ONNX Runtime clips it.

    As in TensorRT, a candidate whose last kept bin is empty while data lies beyond it has infinite
    divergence (Q is 0 where P is not), so thresholds land on occupied bins: outliers separated from the bulk
    by empty bins are not clipped by this method (use 'percentile' or 'mse' for such values).
    """

    kind = "entropy"

    def __init__(
        self, name: str = "tensor", *, num_bins: int = 2048, start_bin: int = 128, stride: int = 1,
        granularity: Granularity = PER_TENSOR,
    ) -> None:
        super().__init__(name, EntropyOptions(num_bins, granularity, start_bin, stride))

    def _levels(self, fmt: Format, scheme: Scheme, one_sided: bool) -> int:
        if not fmt.is_integer:
            raise ConfigError(f"value {self.name!r}: the entropy observer calibrates integer formats (a uniform "
                              f"grid), not {fmt.name}; use 'mse' or 'percentile'")
        qmin, qmax = quant_range(fmt, scheme)
        return (qmax - qmin + 1) if one_sided else (qmax - qmin + 1) // 2

    def _kl_threshold(self, levels: int) -> float:
        h = self._hist
        i = _kl_threshold_bin(h.folded(), levels, self.options.start_bin, self.options.stride)
        return i * h.width

    def _threshold(self, fmt: Format, scheme: Scheme) -> float:
        return self._kl_threshold(self._levels(fmt, scheme, one_sided=False))

    def _affine_range(self, fmt: Format, scheme: Scheme) -> tuple[float, float]:
        lo, hi = self.min_val, self.max_val
        if lo >= 0 or hi <= 0:
            t = self._kl_threshold(self._levels(fmt, scheme, one_sided=True))
            return (lo, min(hi, t)) if lo >= 0 else (max(lo, -t), hi)
        t = self._kl_threshold(self._levels(fmt, scheme, one_sided=False))
        return max(lo, -t), min(hi, t)


# ------------------------------------------------------------------------------------------------ MSE
@cache
def _unit_levels(fmt: Format) -> np.ndarray:
    """The values a format represents at scale 1 (integers for integer formats, before the zero point)."""
    if fmt.is_integer:
        assert fmt.qmin is not None and fmt.qmax is not None
        return np.arange(fmt.qmin, fmt.qmax + 1, dtype=np.float64)
    if fmt.is_codebook:
        assert fmt.levels is not None
        return np.asarray(fmt.levels, dtype=np.float64)
    values = fp8_decode(np.arange(256, dtype=np.uint8), fmt).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


def quantization_sse(counts: np.ndarray, edges: np.ndarray, levels: np.ndarray) -> float:
    """Expected sum of squared errors of rounding to the nearest of `levels` (sorted; values beyond the
    ends saturate to them), for data spread uniformly inside each histogram bin [edges[j], edges[j+1]).

    Exact under that assumption: with cells (mid_{k-1}, mid_k] around each level L_k, the antiderivative
    F(x) = A_k + (x - L_k)^3 / 3 of the squared error is continuous (A_{k+1} = A_k + (L_{k+1} - L_k)^3 / 12),
    and bin j contributes counts_j * (F(b) - F(a)) / (b - a)."""
    return _SSE(counts, edges)(levels)


class _SSE:
    """`quantization_sse` with the occupied span of bins extracted once, for scanning many grids."""

    def __init__(self, counts: np.ndarray, edges: np.ndarray) -> None:
        idx = np.flatnonzero(counts)
        span = slice(idx[0], idx[-1] + 1) if idx.size else slice(0, 0)
        self.edges = edges[span.start: span.stop + 1] if idx.size else edges[:0]
        self.density = counts[span].astype(np.float64) / np.diff(self.edges)

    def __call__(self, levels: np.ndarray) -> float:
        if self.density.size == 0:
            return 0.0
        mids = (levels[1:] + levels[:-1]) / 2.0
        steps = np.diff(levels)
        acc = np.concatenate([[0.0], np.cumsum(steps * steps * steps / 12.0)])
        k = np.searchsorted(mids, self.edges)
        d = self.edges - levels[k]
        antideriv = acc[k] + d * d * d / 3.0  # at every edge of the span; bins share their edges
        return float(np.dot(self.density, np.diff(antideriv)))


def _scan(sse: _SSE, los: np.ndarray, his: np.ndarray, fmt: Format, scheme: Scheme, coarse: int) -> int:
    """Index of the candidate range (los[i], his[i]) (sorted by width) with the least `sse` of the grid
    that quantize-dequantize would use: every `stride`-th candidate, then every one around the best."""
    units = _unit_levels(fmt)

    def best_of(idx: np.ndarray) -> int:
        # The grid is the full format range (`quantize` clamps to it; narrow range only shapes the scale).
        scale, zp = compute_scale_zero_point(los[idx], his[idx], fmt, scheme)
        zps = np.zeros(idx.size) if zp is None else zp.astype(np.float64)
        costs = [sse((units - z) * float(s)) for s, z in zip(scale, zps)]
        return int(idx[int(np.argmin(costs))])

    n = los.size
    stride = max(1, -(-n // coarse))
    best = best_of(np.unique(np.append(np.arange(0, n, stride), n - 1)))
    if stride > 1:
        best = best_of(np.arange(max(0, best - stride + 1), min(n, best + stride)))
    return best


class MSEObserver(_HistogramObserver):
    """The clipping range minimizing the expected quantization MSE (`quantization_sse`) over the histogram,
    evaluated on the exact grid the target format and scheme produce (any format: integer, fp8, nf4).

    Symmetric: thresholds t at every bin edge up to max |x| (coarse scan then single-bin refinement).
    Affine: coordinate descent, alternately the best hi for the current lo and the best lo for the current hi
    over the bin edges, from (min, max), until neither moves (at most 4 rounds)."""

    kind = "mse"

    def __init__(
        self, name: str = "tensor", *, num_bins: int = 2048, candidates: int = 256,
        granularity: Granularity = PER_TENSOR,
    ) -> None:
        super().__init__(name, MSEOptions(num_bins, granularity, candidates))

    def _threshold(self, fmt: Format, scheme: Scheme) -> float:
        h = self._hist
        amax = max(-self.min_val, self.max_val)
        edges = np.arange(1, h.n + 1) * h.width
        ts = np.append(edges[edges < amax], amax)
        return float(ts[_scan(_SSE(h.counts, h.edges()), -ts, ts, fmt, scheme, self.options.candidates)])

    def _affine_range(self, fmt: Format, scheme: Scheme) -> tuple[float, float]:
        edges = self._hist.edges()
        sse = _SSE(self._hist.counts, edges)
        lo, hi = self.min_val, self.max_val
        his = np.append(edges[(edges > 0) & (edges < hi)], hi) if hi > 0 else np.array([hi])
        los = np.append(lo, edges[(edges < 0) & (edges > lo)]) if lo < 0 else np.array([lo])
        coarse = self.options.candidates
        for _ in range(4):
            new_hi = float(his[_scan(sse, np.full(his.size, lo), his, fmt, scheme, coarse)])
            new_lo = float(los[_scan(sse, los, np.full(los.size, new_hi), fmt, scheme, coarse)])
            if (new_lo, new_hi) == (lo, hi):
                break
            lo, hi = new_lo, new_hi
        return lo, hi


# ------------------------------------------------------------------------------------------------ registry
OBSERVERS: dict[str, tuple[type[Observer], type]] = {
    "minmax": (MinMaxObserver, MinMaxOptions),
    "moving_average": (MovingAverageMinMaxObserver, MovingAverageOptions),
    "percentile": (PercentileObserver, PercentileOptions),
    "entropy": (EntropyObserver, EntropyOptions),
    "mse": (MSEObserver, MSEOptions),
}


def _lookup(name: str) -> tuple[type[Observer], type]:
    try:
        return OBSERVERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown observer {name!r}; valid observers: {', '.join(OBSERVERS)}") from None


def observer_options(name: str, **options: Any) -> Any:
    """The validated frozen options of observer `name` (ConfigError names an unknown or bad option)."""
    _, opts_cls = _lookup(name)
    valid = [f.name for f in dataclasses.fields(opts_cls)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"observer {name!r}: unknown option {key!r}; valid options: {', '.join(valid)}")
    return opts_cls(**options)


def get_observer(name: str, value_name: str = "tensor", **options: Any) -> Observer:
    """A new observer of kind `name` (minmax, moving_average, percentile, entropy, mse) for the value called
    `value_name`, with `options` as in its options dataclass."""
    cls, _ = _lookup(name)
    opts = observer_options(name, **options)
    return cls(value_name, **{f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)})
