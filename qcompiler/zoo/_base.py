"""What every zoo model shares: the ``ZooModel`` record, runners, the on-disk cache, small helpers.

Imports numpy and the standard library only, so that a warm ``zoo.get()`` (model already built) does
not pay for importing torch or transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("qcompiler.zoo")

Feed = dict[str, np.ndarray]
Runner = Callable[[Feed], Mapping[str, np.ndarray]]
"""Anything that maps input arrays by name to output arrays by name: an ORT session, the executor, an artifact."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, shape (ints, or symbols such as ``"batch"``) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ZooModel:
    """A real model as an ONNX file, with its data and its evaluation.

    ``evaluate(run)`` scores any runner (float ORT session, the executor, a quantized artifact) on the
    same data, so float and quantized numbers compare directly; ``reference_metrics`` are what the
    float model scores on the full evaluation, measured with ONNX Runtime and written down in code.
    """

    name: str
    description: str
    onnx_path: Path
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    metric: str  # the key of evaluate()'s result that summarizes quality
    higher_is_better: bool
    reference_metrics: Mapping[str, float]
    _calibration: Callable[[int, int], list[Feed]] = field(repr=False, compare=False)
    _evaluate: Callable[[Runner, int | None, bool], dict[str, float]] = field(repr=False, compare=False)
    _torch_module: Callable[[], Any] = field(repr=False, compare=False)

    def calibration_data(self, n: int, batch_size: int = 1) -> list[Feed]:
        """``n`` samples not used by ``evaluate``, as feeds of ``batch_size`` (the last may be smaller).

        Deterministic: the same ``n`` gives the same feeds, and a larger ``n`` extends a smaller one.
        """
        if n < 1 or batch_size < 1:
            raise ValueError(f"{self.name}: calibration_data needs n >= 1 and batch_size >= 1, got {n}, {batch_size}")
        return self._calibration(n, batch_size)

    def evaluate(self, run: Runner, limit: int | None = None, *, progress: bool = False) -> dict[str, float]:
        """Score ``run`` on the evaluation set (its first ``limit`` items if given); see the model's module."""
        if limit is not None and limit < 1:
            raise ValueError(f"{self.name}: evaluate limit must be >= 1, got {limit}")
        return self._evaluate(run, limit, progress)

    def torch_module(self) -> Any:
        """The float ``torch.nn.Module`` that was exported (eval mode); loading it imports torch."""
        return self._torch_module()


def ort_runner(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """A runner for ``ZooModel.evaluate`` around an ONNX Runtime CPU session of ``path`` (the backend's
    session wrapper: the one place that sets ORT's session options)."""
    from qcompiler.backends.onnxruntime.session import OrtRunner

    return OrtRunner(path, threads=threads)


# --------------------------------------------------------------------------------------------------
# cache


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/qcompiler/zoo``, or ``~/.cache/qcompiler/zoo``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qcompiler" / "zoo"


def cache_key(name: str, version: str, dists: tuple[str, ...]) -> str:
    """``name-version-hash``: the hash covers the installed versions of ``dists``, whose upgrade changes exports."""
    versions = []
    for dist in dists:
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}==absent")
    digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:10]
    return f"{name}-{version}-{digest}"


def built_dir(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The cache folder ``key``, built once by ``build(tmp_dir)`` if missing.

    ``build`` writes into a fresh temporary folder that is renamed into place when complete, so a crash
    never leaves a half-built model; a file lock makes concurrent processes (pytest workers) wait for
    the one that builds instead of building twice.
    """
    root = cache_root()
    final = root / key
    if (final / "meta.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{key}.lock"):
        if (final / "meta.json").is_file():  # built by another process while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            start = time.perf_counter()
            logger.info("zoo: building %s into %s (once; later calls use the cache)", name, final)
            build(tmp)
            if not (tmp / "meta.json").is_file():
                raise RuntimeError(f"zoo: building {name} wrote no meta.json")  # a bug in the builder
            if final.exists():  # a stale partial folder from an old, lock-less version: replace it
                shutil.rmtree(final)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as any other
            os.replace(tmp, final)
            logger.info("zoo: built %s in %.1f s", name, time.perf_counter() - start)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename still prevents half files
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` last: its presence marks a complete build."""
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "meta.json").read_text())


def read_data(folder: Path) -> dict[str, np.ndarray]:
    """Every array of the model's ``data.npz`` (read on each call: small, and nothing stays in memory)."""
    with np.load(folder / "data.npz") as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------------------------------
# helpers for the model modules


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Forbid Hugging Face downloads while a loader runs (restored after: not a project-wide switch).

    The libraries read these variables; loaders also pass ``local_files_only=True``, which holds even
    when huggingface_hub was imported earlier with other settings.
    """
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """Hide the progress bars and load reports that transformers prints or logs while loading weights."""
    import io

    lib = logging.getLogger("transformers")
    level = lib.level
    lib.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        lib.setLevel(level)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def single_output(out: Mapping[str, np.ndarray], name: str, model: str) -> np.ndarray:
    """The output ``name`` of a runner's result, or the only output; a clear error otherwise."""
    if name in out:
        return np.asarray(out[name])
    if len(out) == 1:
        return np.asarray(next(iter(out.values())))
    raise KeyError(f"{model}: runner returned outputs {sorted(out)}, expected {name!r}")
