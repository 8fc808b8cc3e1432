"""The one module that talks to onnxruntime's session API (its options move between releases: STYLE habit 14).

Sessions run on the CPU execution provider with a fixed, stated thread count, one inter-op thread and
sequential execution, so a latency figure means the same thing from one run to the next.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcompiler.errors import ConfigError, ModelLoadError

PROVIDERS = ["CPUExecutionProvider"]

OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# ORT 1.22+ has a level between extended and all (layout transforms without NCHWc); older releases do not.
if hasattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT"):
    OPTIMIZATION_LEVELS["layout"] = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT

# Initializers at least this large go to a side file when an optimized model is saved, so models over
# protobuf's 2 GB limit can be saved too (ORT fails on them otherwise).
_EXTERNAL_MIN_BYTES = 1024


def session_options(
    *,
    threads: int | None = None,
    optimization: str = "all",
    optimized_path: str | Path | None = None,
    spinning: bool = True,
    log_level: int = 3,
) -> ort.SessionOptions:
    """SessionOptions for the CPU provider: `threads` intra-op threads (None: ORT's default, one per core),
    one inter-op thread, sequential execution, the graph optimization level by name.

    `spinning=False` makes idle worker threads sleep at once instead of spinning; use it when several
    sessions take turns on the same cores (a spinning pool steals time from the session that runs next)."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise ConfigError(
            f"unknown ONNX Runtime optimization level {optimization!r}; valid: {', '.join(OPTIMIZATION_LEVELS)}"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1 (or None for one per core), not {threads}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = log_level  # 3 = errors only: the NCHWc "hardware specific" warning is expected
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        optimized_path = Path(optimized_path)
        so.optimized_model_filepath = str(optimized_path)
        if optimized_path.suffix != ".ort":
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", optimized_path.name + ".data"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES)
            )
    return so


def make_session(
    model: str | os.PathLike[str] | bytes,
    *,
    threads: int | None = None,
    optimization: str = "all",
    optimized_path: str | os.PathLike[str] | None = None,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider. `model` is a path or the serialized model's bytes.
    With `optimized_path`, ORT writes the graph it will run there (ONNX format unless the name ends in .ort;
    initializers of 1 KiB and more go to `<name>.data` beside it).

    A model ORT cannot load raises ModelLoadError naming the file and ORT's message."""
    so = session_options(threads=threads, optimization=optimization, optimized_path=optimized_path,
                         spinning=spinning)
    where = "<model bytes>" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes):
        p = Path(model)
        if not p.is_file():
            raise ModelLoadError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
        model = str(p)
    try:
        return ort.InferenceSession(model, sess_options=so, providers=PROVIDERS)
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/NotImplemented classes
        raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {ort_message(e)}") from None


def ort_message(e: BaseException) -> str:
    """ORT's error text on one line, without the '[ONNXRuntimeError] : 1 : FAIL :' prefix."""
    msg = " ".join(str(e).split())
    if msg.startswith("[ONNXRuntimeError]"):
        parts = msg.split(" : ", 3)
        msg = parts[-1] if len(parts) == 4 else msg
    return msg


class OrtRunner:
    """A loaded model as a callable: `runner(feeds) -> {output name: array}`.

    Feeds must name every graph input exactly; a missing or unknown name is a ValueError that lists the
    model's inputs (ORT's own message names only one)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        *,
        optimization: str = "all",
        spinning: bool = True,
    ) -> None:
        self.path = Path(path)
        self.threads = threads
        self.session = make_session(self.path, threads=threads, optimization=optimization, spinning=spinning)
        self.input_names: list[str] = [i.name for i in self.session.get_inputs()]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            what = f"missing input {missing[0]!r}" if missing else f"unknown input {unknown[0]!r}"
            raise ValueError(f"{self.path}: {what}; the model's inputs are {', '.join(self.input_names)}")
        try:
            outs = self.session.run(self.output_names, dict(feeds))
        except Exception as e:  # noqa: BLE001 - ORT's InvalidArgument/Fail on bad shapes or dtypes
            raise ValueError(f"{self.path}: run failed: {ort_message(e)}") from None
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return f"OrtRunner({str(self.path)!r}, threads={self.threads})"
