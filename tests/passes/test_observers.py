"""Observers on known distributions, with bounds derived from the math of each estimator."""

from __future__ import annotations

import math
from collections import Counter
from statistics import NormalDist

import numpy as np
import pytest

from qcompiler.errors import CalibrationError, ConfigError
from qcompiler.numerics import (
    AFFINE,
    SYMMETRIC,
    ZERO_RANGE_SCALE,
    PerChannel,
    PerGroup,
    PerTensor,
    compute_scale_zero_point,
    fake_quantize,
    reduce_min_max,
)
from qcompiler.passes.observers import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    get_observer,
    observer_options,
    quantization_sse,
)

HISTOGRAM_KINDS = ["percentile", "entropy", "mse"]
N01 = NormalDist()


def _batches(x: np.ndarray, n: int) -> list[np.ndarray]:
    return np.array_split(x, n)


def _qmse(x: np.ndarray, obs, fmt: str = "int8", scheme=SYMMETRIC) -> float:
    scale, zp = obs.compute(fmt, scheme)
    return float(np.mean((fake_quantize(x, scale, zp, fmt).astype(np.float64) - x) ** 2))


@pytest.fixture(scope="module")
def laplace() -> np.ndarray:
    return np.random.default_rng(0).laplace(size=1_000_000).astype(np.float32)


# ------------------------------------------------------------------------------------------------ min-max
def test_minmax_is_exact_on_streamed_data() -> None:
    x = np.random.default_rng(1).uniform(-2.0, 3.0, size=(50, 40)).astype(np.float32)
    obs = MinMaxObserver("act")
    for b in _batches(x, 7):
        obs.observe(b)
    lo, hi = obs.range("uint8", AFFINE)
    assert (lo, hi) == (float(x.min()), float(x.max()))
    slo, shi = obs.range("int8", SYMMETRIC)
    amax = float(np.abs(x).max())
    assert (slo, shi) == (-amax, amax)
    scale, zp = obs.compute("int8", SYMMETRIC)
    ref_scale, ref_zp = compute_scale_zero_point(-amax, amax, "int8", SYMMETRIC)
    assert scale == ref_scale and zp == ref_zp
    # every observed value is within scale/2 of the grid (no clipping: the range covers the data)
    err = np.abs(fake_quantize(x, scale, zp, "int8") - x)
    assert err.max() <= scale / 2 * (1 + 1e-6)


def test_minmax_per_channel_matches_reduce_min_max() -> None:
    x = np.random.default_rng(2).normal(size=(12, 3, 8)).astype(np.float32)
    obs = get_observer("minmax", "act", granularity=PerChannel(1))
    for b in (x[:5], x[5:6], x[6:]):
        obs.observe(b)
    lo, hi = obs.range("uint8", AFFINE)
    ref_lo, ref_hi = reduce_min_max(x, PerChannel(1))
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)
    # per-tensor from per-channel statistics is the extreme of the channels
    assert obs.range("uint8", AFFINE, PerTensor()) == (float(x.min()), float(x.max()))
    scale, zp = obs.compute("int8", SYMMETRIC, PerChannel(1))
    ref_scale, _ = compute_scale_zero_point(-np.maximum(-ref_lo, ref_hi), np.maximum(-ref_lo, ref_hi), "int8")
    np.testing.assert_array_equal(scale, ref_scale)
    assert scale.shape == zp.shape == (3,)


def test_minmax_granularity_shape_must_not_vary() -> None:
    obs = MinMaxObserver("conv1_out", granularity=PerChannel(1))
    obs.observe(np.ones((2, 3, 4)))
    with pytest.raises(CalibrationError, match=r"value 'conv1_out'.*\(4,\).*earlier batches \(3,\)"):
        obs.observe(np.ones((2, 4, 4)))


def test_minmax_per_group_streams_over_batches_of_equal_shape() -> None:
    x = np.random.default_rng(3).normal(size=(4, 2, 8)).astype(np.float32)
    obs = MinMaxObserver("g", granularity=PerGroup(2, 4))
    obs.observe(x[:2])
    obs.observe(x[2:])
    lo, hi = obs.range("uint8", AFFINE)
    a_lo, a_hi = reduce_min_max(x[:2], PerGroup(2, 4))
    b_lo, b_hi = reduce_min_max(x[2:], PerGroup(2, 4))
    np.testing.assert_array_equal(lo, np.minimum(a_lo, b_lo))
    np.testing.assert_array_equal(hi, np.maximum(a_hi, b_hi))


def test_moving_average_matches_closed_form() -> None:
    c, n = 0.1, 25
    obs = MovingAverageMinMaxObserver("act", averaging_constant=c)
    obs.observe(np.array([-4.0, 0.0, 4.0]))  # the first batch sets min/max
    for _ in range(n - 1):
        obs.observe(np.array([-1.0, 0.5, 2.0]))  # constant batch min -1, max 2
    lo, hi = obs.range("uint8", AFFINE)
    # m_k = m + (m_0 - m)(1 - c)^k after k batches of constant extreme m
    assert lo == pytest.approx(-1.0 + (-4.0 + 1.0) * (1 - c) ** (n - 1), rel=1e-12)
    assert hi == pytest.approx(2.0 + (4.0 - 2.0) * (1 - c) ** (n - 1), rel=1e-12)


def test_moving_average_per_channel_closed_form() -> None:
    c = 0.25
    obs = MovingAverageMinMaxObserver("act", averaging_constant=c, granularity=PerChannel(0))
    obs.observe(np.array([[0.0, 8.0], [-8.0, 0.0]]))
    for _ in range(3):
        obs.observe(np.array([[0.0, 4.0], [-2.0, 0.0]]))
    lo, hi = obs.range("uint8", AFFINE)
    decay = (1 - c) ** 3
    np.testing.assert_allclose(hi, [4.0 + 4.0 * decay, 0.0], rtol=1e-12)
    np.testing.assert_allclose(lo, [0.0, -2.0 - 6.0 * decay], rtol=1e-12)


# ------------------------------------------------------------------------------------------------ percentile
def test_percentile_of_gaussian_matches_analytic_quantile() -> None:
    n = 1_000_000
    x = np.random.default_rng(4).normal(size=n).astype(np.float32)
    for p in (99.0, 99.99):
        obs = PercentileObserver("act", percentile=p)
        for b in _batches(x, 20):
            obs.observe(b)
        # |x| ~ half-normal: quantile q = Phi^-1((1 + p) / 2), density 2 phi(q); the empirical quantile's
        # standard deviation is sqrt(p (1 - p) / n) / density; the histogram adds at most one bin width.
        q = N01.inv_cdf((1 + p / 100) / 2)
        sd = math.sqrt(p / 100 * (1 - p / 100) / n) / (2 * N01.pdf(q))
        width = obs.histogram[1][1] - obs.histogram[1][0]
        _, t = obs.range("int8", SYMMETRIC)
        assert abs(t - q) <= 5 * sd + width, (p, t, q)
    # affine: each tail loses (100 - p) / 2 percent, so hi = Phi^-1(1 - 0.005) for p = 99
    obs = PercentileObserver("act", percentile=99.0)
    obs.observe(x)
    q = N01.inv_cdf(0.995)
    sd = math.sqrt(0.005 * 0.995 / n) / N01.pdf(q)
    width = obs.histogram[1][1] - obs.histogram[1][0]
    lo, hi = obs.range("uint8", AFFINE)
    assert abs(hi - q) <= 5 * sd + width and abs(lo + q) <= 5 * sd + width


def test_percentile_streaming_with_growth_is_within_one_bin_of_one_shot() -> None:
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=20_000).astype(np.float32) * s for s in (1.0, 1.5, 3.0, 10.0, 11.0)]
    streamed = PercentileObserver("act", percentile=99.0)
    for b in batches:
        streamed.observe(b)
    one_shot = PercentileObserver("act", percentile=99.0)
    one_shot.observe(np.concatenate(batches))
    w_s = streamed.histogram[1][1] - streamed.histogram[1][0]
    w_o = one_shot.histogram[1][1] - one_shot.histogram[1][0]
    assert w_s > w_o  # the range did grow by re-binning
    # each estimate lies in the bin holding the empirical percentile, so they differ by at most both widths
    assert abs(streamed.range()[1] - one_shot.range()[1]) <= w_s + w_o


def test_rebinning_is_exact() -> None:
    """Growing the range merges whole bins: the streamed counts equal a fresh histogram over the final range,
    except the element sitting exactly on an old outer edge (each batch's max can be one): at most 2 counts
    per growth move."""
    rng = np.random.default_rng(6)
    batches = [rng.normal(size=5_000).astype(np.float32) * s for s in (1.0, 1.5, 3.0, 10.0, 40.0)]
    obs = PercentileObserver("act", num_bins=256)
    for b in batches:
        obs.observe(b)
    counts, edges = obs.histogram
    ref = np.histogram(np.concatenate(batches), bins=edges.size - 1, range=(edges[0], edges[-1]))[0]
    growths = obs._hist.growths
    assert growths >= 2
    assert np.abs(counts - ref).sum() <= 2 * growths
    assert counts.sum() == sum(b.size for b in batches)


# ------------------------------------------------------------------------------------------------ entropy
def _trt_reference(hist: np.ndarray, levels: int, start_bin: int) -> int:
    """TensorRT's `_compute_amax_entropy` loop, transcribed literally (scipy's entropy inlined)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences, arguments = [], []
    new_density_counts = np.zeros(levels)
    for i in range(start_bin, len(bins) + 1):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        for idx, d in enumerate(digitized):
            if d != -1:
                new_density_counts[d] += bins[idx]
        for key, val in Counter(digitized).items():
            if key != -1:
                new_density_counts[key] /= val
        new_density = np.array([new_density_counts[d] if d != -1 else 0.0 for d in digitized])
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        p, q = reference / reference.sum(), new_density / new_density.sum()
        m = p > 0
        kl = np.inf if (q[m] == 0).any() else float(np.sum(p[m] * np.log(p[m] / q[m])))
        divergences.append(kl)
        arguments.append(i)
    divergences = np.array(divergences)
    return arguments[len(divergences) - 1 - int(np.argmin(divergences[::-1]))]


def test_entropy_threshold_equals_tensorrt_reference(laplace: np.ndarray) -> None:
    x = laplace[:200_000].copy()
    x[::4] = 0.0  # a spike of exact zeros (as after ReLU), which TensorRT's first-bin rule flattens
    obs = EntropyObserver("act", num_bins=384)
    obs.observe(x)
    folded = obs._hist.folded()
    i_ref = _trt_reference(folded, 128, 128)
    width = obs.histogram[1][1] - obs.histogram[1][0]
    _, t = obs.range("int8", SYMMETRIC)
    assert t == pytest.approx(min(i_ref * width, float(np.abs(x).max())), rel=1e-12)


def test_entropy_clips_laplacian_tail_and_beats_minmax(laplace: np.ndarray) -> None:
    obs = EntropyObserver("act")
    mm = MinMaxObserver("act")
    for b in _batches(laplace, 10):
        obs.observe(b)
        mm.observe(b)
    amax = float(np.abs(laplace).max())
    _, t = obs.range("int8", SYMMETRIC)
    width = obs.histogram[1][1] - obs.histogram[1][0]
    assert t <= amax - width  # the tail is clipped by at least one bin
    assert _qmse(laplace, obs) < _qmse(laplace, mm)


def test_entropy_one_sided_affine_keeps_min_and_rejects_float_formats(laplace: np.ndarray) -> None:
    relu = np.maximum(laplace, 0)
    obs = EntropyObserver("relu")
    obs.observe(relu)
    lo, hi = obs.range("uint8", AFFINE)
    assert lo == 0.0 and 0 < hi < relu.max()
    with pytest.raises(ConfigError, match=r"value 'relu'.*integer formats.*fp8_e4m3fn"):
        obs.compute("fp8_e4m3fn", SYMMETRIC)


# ------------------------------------------------------------------------------------------------ MSE
def test_quantization_sse_closed_forms() -> None:
    levels = np.arange(-4.0, 5.0)  # step 1: cells [k - 1/2, k + 1/2] tile [-4.5, 4.5]
    m = 8
    edges = np.linspace(-4.5, 4.5, 9 * m + 1)
    counts = np.full(9 * m, 3)
    # uniform data over whole cells: mean squared rounding error step^2 / 12
    assert quantization_sse(counts, edges, levels) == pytest.approx(counts.sum() / 12, rel=1e-12)
    # a bin beyond the last level saturates: c * int_1^2 u^2 du = 7c / 3
    assert quantization_sse(np.array([5]), np.array([5.0, 6.0]), levels) == pytest.approx(35 / 3, rel=1e-12)


def test_mse_beats_minmax_on_rare_outliers() -> None:
    x = np.random.default_rng(7).normal(size=1_000_000).astype(np.float32)
    x[:2] = (50.0, -50.0)  # 2 in 10^6: clipping them costs ~2 * 46^2 / 1e6, far less than a 50 / 127.5 step
    for fmt in ("int8", "int4", "nf4"):
        mse, mm = MSEObserver("act"), MinMaxObserver("act")
        for b in _batches(x, 8):
            mse.observe(b)
            mm.observe(b)
        assert _qmse(x, mse, fmt) < _qmse(x, mm, fmt), fmt
        assert _qmse(x, mse, "uint8", AFFINE) < _qmse(x, mm, "uint8", AFFINE)


def test_mse_is_near_the_brute_force_optimum(laplace: np.ndarray) -> None:
    """The histogram estimate is exact for data uniform within bins; with ~10 bins per int8 step that holds
    to well under 1%, so the chosen range is within 1% of the best threshold on a fine grid."""
    x = laplace[:200_000]
    obs = MSEObserver("act")
    for b in _batches(x, 10):
        obs.observe(b)
    achieved = _qmse(x, obs)
    amax = float(np.abs(x).max())
    best = min(
        float(np.mean((fake_quantize(x, *compute_scale_zero_point(-t, t, "int8"), "int8") - x) ** 2))
        for t in np.linspace(0.3 * amax, amax, 120)
    )
    assert achieved <= 1.01 * best
    # and it is the best of the observers on this data
    for kind in ("minmax", "percentile", "entropy"):
        other = get_observer(kind, "act")
        other.observe(x)
        assert achieved <= _qmse(x, other), kind


# ------------------------------------------------------------------------------------------------ all observers
@pytest.mark.parametrize("kind", HISTOGRAM_KINDS)
def test_histogram_streaming_equals_one_shot_when_range_is_fixed(kind: str, laplace: np.ndarray) -> None:
    x = laplace[:300_000].copy()
    i = int(np.argmax(np.abs(x)))
    x[[0, i]] = x[[i, 0]]  # the first batch holds max |x|: no growth, identical histograms
    streamed, one_shot = get_observer(kind, "a"), get_observer(kind, "a")
    for b in _batches(x, 30):
        streamed.observe(b)
    one_shot.observe(x)
    np.testing.assert_array_equal(streamed.histogram[0], one_shot.histogram[0])
    for fmt, scheme in (("int8", SYMMETRIC), ("uint8", AFFINE)):
        assert streamed.range(fmt, scheme) == one_shot.range(fmt, scheme)


@pytest.mark.parametrize("kind", list(OBSERVERS))
def test_state_size_is_constant(kind: str) -> None:
    rng = np.random.default_rng(8)
    obs = get_observer(kind, "act")
    sizes = {}
    for k in range(1000):
        obs.observe(rng.normal(size=64) * (1.01 ** k))  # the range keeps growing
        if k + 1 in (10, 1000):
            sizes[k + 1] = obs.state_nbytes()
    assert sizes[10] == sizes[1000] > 0
    obs.range("int8", SYMMETRIC)


@pytest.mark.parametrize("kind", list(OBSERVERS))
def test_symmetric_range_is_symmetric(kind: str) -> None:
    x = np.random.default_rng(9).exponential(size=50_000).astype(np.float32) - 0.5  # skewed: min -0.5
    obs = get_observer(kind, "act")
    obs.observe(x)
    lo, hi = obs.range("int8", SYMMETRIC)
    assert lo == -hi and 0 < hi <= float(np.abs(x).max())
    alo, ahi = obs.range("uint8", AFFINE)
    assert x.min() <= alo < 0 < ahi <= x.max()


@pytest.mark.parametrize("kind", list(OBSERVERS))
def test_nan_and_inf_name_the_value(kind: str) -> None:
    obs = get_observer(kind, "layer3/relu_out")
    obs.observe(np.ones(4))
    with pytest.raises(CalibrationError, match=r"value 'layer3/relu_out': batch 1 holds 1 NaN and 0 Inf of 3"):
        obs.observe(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(CalibrationError, match=r"0 NaN and 2 Inf"):
        obs.observe(np.array([np.inf, -np.inf, 2.0]))


@pytest.mark.parametrize("kind", list(OBSERVERS))
def test_zero_constant_and_empty_batches(kind: str) -> None:
    zero = get_observer(kind, "z")
    zero.observe(np.zeros((2, 8), np.float32))
    zero.observe(np.zeros((0, 8), np.float32))  # an empty batch is ignored
    for fmt, scheme in (("int8", SYMMETRIC), ("uint8", AFFINE), ("fp8_e4m3fn", SYMMETRIC)):
        if kind == "entropy" and fmt.startswith("fp8"):
            continue
        scale, _ = zero.compute(fmt, scheme)
        assert scale == ZERO_RANGE_SCALE  # never 0 or NaN
    const = get_observer(kind, "c")
    for _ in range(3):
        const.observe(np.full((4, 4), 2.5, np.float32))
    assert const.range("int8", SYMMETRIC) == (-2.5, 2.5)
    assert const.range("uint8", AFFINE) == (2.5, 2.5)
    scale, zp = const.compute("uint8", AFFINE)
    assert scale == np.float32(2.5 / 255) and zp == 0  # affine widens to include 0
    # zeros first, then data: the zeros stay counted
    late = get_observer(kind, "late")
    late.observe(np.zeros(100))
    late.observe(np.linspace(-1, 1, 101))
    assert late.num_elements == 201
    if kind in HISTOGRAM_KINDS:
        assert late.histogram[0].sum() == 201
    empty = get_observer(kind, "never")
    empty.observe(np.zeros((0,)))
    with pytest.raises(CalibrationError, match=r"value 'never'.*saw no data"):
        empty.compute("int8")


def test_torch_tensors_and_hook_form() -> None:
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 16, dtype=torch.float32)
    a, b = MinMaxObserver("x"), MinMaxObserver("x")
    a.observe(t)
    b(None, t.to(torch.bfloat16).float())  # the executor-hook call form
    b(None, t.to(torch.bfloat16))  # bfloat16 converted through float32
    assert a.range("uint8", AFFINE) == (float(t.min()), float(t.max()))
    assert b.num_batches == 2
    h = PercentileObserver("x")
    h.observe(t)
    with pytest.raises(CalibrationError, match="value 'x'"):
        h.observe(torch.tensor([float("nan"), 1.0]))


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_and_errors() -> None:
    assert set(OBSERVERS) == {"minmax", "moving_average", "percentile", "entropy", "mse"}
    obs = get_observer("percentile", "v", percentile=99.9, num_bins=512)
    assert isinstance(obs, PercentileObserver) and obs.options.percentile == 99.9 and obs.name == "v"
    assert observer_options("moving_average", averaging_constant=0.5).averaging_constant == 0.5
    with pytest.raises(ConfigError, match=r"unknown observer 'kl'; valid observers: minmax, moving_average, "
                                          r"percentile, entropy, mse"):
        get_observer("kl")
    with pytest.raises(ConfigError, match=r"observer 'percentile': unknown option 'pct'; valid options: num_bins, "
                                          r"granularity, percentile"):
        get_observer("percentile", pct=99)
    with pytest.raises(ConfigError, match=r"'percentile' must be a number in \(0.0, 100.0\], got 101"):
        get_observer("percentile", percentile=101)
    with pytest.raises(ConfigError, match=r"'averaging_constant' must be a number in \(0.0, 1.0\], got 0"):
        get_observer("moving_average", averaging_constant=0)
    with pytest.raises(ConfigError, match=r"'num_bins' must be an integer >= 16, got True"):
        get_observer("entropy", num_bins=True)
    with pytest.raises(ConfigError, match=r"start_bin \(256\) exceeds num_bins \(128\)"):
        get_observer("entropy", num_bins=128, start_bin=256)
    with pytest.raises(ConfigError, match=r"observer 'mse' is per-tensor only.*per_channel\(1\)"):
        get_observer("mse", granularity=PerChannel(1))
    h = get_observer("entropy", "e")
    h.observe(np.ones(3))
    with pytest.raises(ConfigError, match=r"value 'e': the entropy observer is per-tensor only"):
        h.compute("int8", SYMMETRIC, PerChannel(0))
    m = get_observer("minmax", "m", granularity=PerChannel(0))
    m.observe(np.ones((2, 3)))
    with pytest.raises(ConfigError, match=r"value 'm'.*per_channel\(0\) statistics.*per_group"):
        m.compute("int8", SYMMETRIC, PerGroup(1, 2))
