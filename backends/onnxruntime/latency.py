"""Measured latency, with the contenders interleaved, and artifact size on disk.

Runners take turns (A B C, then B C A, ...) so that drift on a shared machine (another process, frequency
changes, a warm or cold cache) falls on all of them alike instead of on whichever ran last; the first in
line rotates each round so no runner always follows the same neighbour. Times are wall clock
(`time.perf_counter`) around one call, feeds prepared beforehand.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[Mapping[str, np.ndarray]], Any]
_clock = time.perf_counter  # one name, so a test can drive the clock


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall-clock latency of one runner: median and the 10th/90th percentiles in milliseconds over
    `runs` timed calls; `batch_size` is the leading dimension of the first input, `threads` the runner's
    intra-op thread count (None: ORT's default, one per core)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch_size: int | None
    threads: int | None

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / (self.batch_size or 1)

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, {self.runs} runs)"


def measure_latency(
    runners: Mapping[str, Runner],
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    feeds_by_runner: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    runs: int = 30,
    warmup: int = 3,
    rounds: int | None = None,
    budget_s: float | None = None,
    min_runs: int = 3,
    threads: int | None = None,
) -> dict[str, LatencyStats]:
    """Time every runner `runs` times, interleaved.

    `feeds` go to every runner; `feeds_by_runner` gives each its own (e.g. a float and a quantized model
    whose input names differ) — exactly one of the two. `warmup` untimed calls each come first (ORT
    allocates and packs weights on the first run). The timed calls go in `rounds` rounds (default: `runs`,
    one call per runner per turn); each round gives every runner runs/rounds consecutive calls.

    `budget_s` bounds the timed phase: after the round in which it is spent, measuring stops, as long as each
    runner has `min_runs` timings; `LatencyStats.runs` says how many were taken. `threads` is what the stats
    record as the thread count where a runner has no `.threads` of its own."""
    if not runners:
        raise ValueError("measure_latency: no runners given")
    if (feeds is None) == (feeds_by_runner is None):
        raise ValueError("measure_latency: give either feeds (shared) or feeds_by_runner, not both or neither")
    if runs < 1 or warmup < 0 or min_runs < 1:
        raise ValueError(f"measure_latency: runs and min_runs must be >= 1, warmup >= 0 (got {runs}, {min_runs}, "
                         f"{warmup})")
    if feeds_by_runner is not None:
        missing = [k for k in runners if k not in feeds_by_runner]
        if missing:
            raise ValueError(f"measure_latency: no feeds for runner {missing[0]!r}")
        per = {k: feeds_by_runner[k] for k in runners}
    else:
        assert feeds is not None
        per = dict.fromkeys(runners, feeds)
    rounds = runs if rounds is None else max(1, min(rounds, runs))
    burst = math.ceil(runs / rounds)
    names = list(runners)

    for _ in range(warmup):
        for k in names:
            runners[k](per[k])

    samples: dict[str, list[float]] = {k: [] for k in names}
    start = _clock()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            fn, fd, out = runners[k], per[k], samples[k]
            for _ in range(min(burst, runs - len(out))):
                t0 = _clock()
                fn(fd)
                out.append(_clock() - t0)
        enough = all(len(v) >= min_runs for v in samples.values())
        if budget_s is not None and enough and _clock() - start >= budget_s:
            break
    return {k: _stats(samples[k], _batch_size(per[k]), getattr(runners[k], "threads", None) or threads) for k in names}


def _stats(seconds: list[float], batch: int | None, threads: int | None) -> LatencyStats:
    ms = np.asarray(seconds) * 1e3
    p10, med, p90 = np.percentile(ms, [10, 50, 90])
    return LatencyStats(float(med), float(p10), float(p90), len(seconds), batch, threads)


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int | None:
    for v in feeds.values():
        shape = getattr(v, "shape", ())
        return int(shape[0]) if len(shape) else None
    return None


def model_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a model: the file itself plus every external-data file its initializers name
    (each counted once). A file that is not ONNX (an .ort or .so) is its own size."""
    path = Path(path)
    total = path.stat().st_size
    if path.suffix != ".onnx":
        return total
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    seen: set[Path] = set()
    for t in _all_tensors(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            continue
        f = (path.parent / loc).resolve()
        if f not in seen and f.is_file():
            seen.add(f)
            total += f.stat().st_size
    return total


def _all_tensors(graph: Any) -> list[Any]:
    """Initializers and tensor attributes of a graph and of its subgraphs (If/Loop bodies)."""
    out = list(graph.initializer)
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                out.append(a.t)
            out += list(a.tensors)
            if a.HasField("g"):
                out += _all_tensors(a.g)
            for g in a.graphs:
                out += _all_tensors(g)
    return out
