"""Interleaved latency measurement (driven by a fake clock, so the numbers are exact) and model size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.backends.onnxruntime import latency
from qcompiler.backends.onnxruntime.latency import LatencyStats, measure_latency, model_size
from qcompiler.backends.onnxruntime.session import OrtRunner


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeRunner:
    """Advances the clock by its cost (seconds) per call and logs who ran."""

    def __init__(self, name, clock, log, costs, threads=None):
        self.name, self.clock, self.log, self.costs, self.threads = name, clock, log, list(costs), threads
        self.feeds = []

    def __call__(self, feeds):
        self.log.append(self.name)
        self.feeds.append(feeds)
        self.clock.t += self.costs[min(len(self.feeds) - 1, len(self.costs) - 1)]


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(latency, "_clock", c)
    return c


def _runners(clock, log, **costs):
    return {k: FakeRunner(k, clock, log, v if isinstance(v, list) else [v]) for k, v in costs.items()}


def test_runners_take_turns_and_the_first_rotates(clock):
    log = []
    rs = _runners(clock, log, A=0.001, B=0.002, C=0.003)
    measure_latency(rs, {"x": np.zeros((1, 2))}, runs=4, warmup=1)
    assert log == list("ABC" + "ABC" + "BCA" + "CAB" + "ABC")


def test_rounds_give_each_runner_a_burst(clock):
    log = []
    rs = _runners(clock, log, A=0.001, B=0.002)
    stats = measure_latency(rs, {"x": np.zeros((1, 2))}, runs=5, warmup=0, rounds=2)
    assert "".join(log) == "AAABBB" + "BBAA"
    assert stats["A"].runs == stats["B"].runs == 5


def test_statistics_are_of_the_timed_calls_only(clock):
    log = []
    # Warmup call costs 1 s (ignored); then 1..10 ms.
    rs = _runners(clock, log, A=[1.0] + [i / 1000 for i in range(1, 11)])
    s = measure_latency(rs, {"x": np.zeros((4, 3))}, runs=10, warmup=1)["A"]
    assert s.runs == 10 and s.batch_size == 4 and s.threads is None
    assert s.median_ms == pytest.approx(5.5)
    assert s.p10_ms == pytest.approx(1.9) and s.p90_ms == pytest.approx(9.1)  # numpy's linear percentiles
    assert s.per_sample_ms == pytest.approx(5.5 / 4)
    assert str(s) == "5.500 ms (p10 1.900, p90 9.100, 10 runs)"


def test_budget_stops_after_the_round_it_is_spent_in_but_not_before_min_runs(clock):
    log = []
    rs = _runners(clock, log, A=0.005, B=0.001)
    stats = measure_latency(rs, {"x": np.zeros(1)}, runs=100, warmup=0, budget_s=0.010, min_runs=3)
    # Each round costs 6 ms: 12 ms after round 2 is over budget, but 3 runs each are required.
    assert stats["A"].runs == stats["B"].runs == 3
    stats = measure_latency(rs, {"x": np.zeros(1)}, runs=100, warmup=0, budget_s=0.020, min_runs=1)
    assert stats["A"].runs == 4  # 24 ms after round 4 >= 20 ms


def test_each_runner_gets_its_own_feeds(clock):
    log = []
    rs = _runners(clock, log, f=0.001, q=0.001)
    fa, fb = {"a": np.zeros((2, 1))}, {"b": np.zeros((3, 1))}
    stats = measure_latency(rs, feeds_by_runner={"f": fa, "q": fb}, runs=2, warmup=1)
    assert all(f is fa for f in rs["f"].feeds) and all(f is fb for f in rs["q"].feeds)
    assert stats["f"].batch_size == 2 and stats["q"].batch_size == 3


def test_threads_come_from_the_runner_or_the_argument(clock):
    rs = {"a": FakeRunner("a", clock, [], [0.001], threads=3), "b": FakeRunner("b", clock, [], [0.001])}
    s = measure_latency(rs, {"x": np.zeros(1)}, runs=1, warmup=0, threads=2)
    assert s["a"].threads == 3 and s["b"].threads == 2


def test_argument_errors(clock):
    rs = _runners(clock, [], a=0.001)
    with pytest.raises(ValueError, match="either feeds"):
        measure_latency(rs)
    with pytest.raises(ValueError, match="either feeds"):
        measure_latency(rs, {"x": np.zeros(1)}, feeds_by_runner={"a": {}})
    with pytest.raises(ValueError, match="no feeds for runner 'a'"):
        measure_latency(rs, feeds_by_runner={"b": {}})
    with pytest.raises(ValueError, match="no runners"):
        measure_latency({}, {})
    with pytest.raises(ValueError, match="runs and min_runs must be >= 1"):
        measure_latency(rs, {"x": np.zeros(1)}, runs=0)


def _matmul_model(path, n=64, external=False):
    w = numpy_helper.from_array(np.ones((n, n), np.float32), "w")
    w2 = numpy_helper.from_array(np.full((n, n), 2, np.float32), "w2")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w, w2],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="mm.bin",
                  size_threshold=0)
    else:
        onnx.save(m, str(path))


def test_model_size_counts_external_data_once(tmp_path):
    inline, ext = tmp_path / "a.onnx", tmp_path / "b.onnx"
    _matmul_model(inline)
    _matmul_model(ext, external=True)
    data = tmp_path / "mm.bin"
    assert data.stat().st_size == 2 * 64 * 64 * 4  # both weights in one file
    assert model_size(ext) == ext.stat().st_size + data.stat().st_size
    assert model_size(inline) == inline.stat().st_size
    other = tmp_path / "x.ort"
    other.write_bytes(b"12345")
    assert model_size(other) == 5


def test_measures_real_sessions(tmp_path):
    p = tmp_path / "m.onnx"
    _matmul_model(p)
    rs = {"one": OrtRunner(p, 1), "again": OrtRunner(p, 1)}
    stats = measure_latency(rs, {"x": np.ones((1, 64), np.float32)}, runs=5, warmup=1)
    for s in stats.values():
        assert isinstance(s, LatencyStats) and s.runs == 5 and s.threads == 1 and s.batch_size == 1
        assert 0 < s.p10_ms <= s.median_ms <= s.p90_ms
