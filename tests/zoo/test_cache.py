"""The zoo's cache: built once, atomically, by one process at a time; a version change rebuilds."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qcompiler import zoo
from qcompiler.zoo._base import built_dir, cache_key, cache_root, write_meta


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "qcompiler" / "zoo"


def _counting_build(log: Path, delay: float = 0.0) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(delay)
        (folder / "model.onnx").write_bytes(b"x" * 1000)
        write_meta(folder, {"ok": True})

    return build


def test_cache_root_follows_xdg(cache: Path) -> None:
    assert cache_root() == cache


def test_built_once_then_reused(cache: Path, tmp_path: Path) -> None:
    log = tmp_path / "builds.txt"
    first = built_dir("toy", "toy-1-abc", _counting_build(log))
    second = built_dir("toy", "toy-1-abc", _counting_build(log))
    assert first == second == cache / "toy-1-abc"
    assert log.read_text().count("\n") == 1
    assert (first / "model.onnx").stat().st_size == 1000


def test_failed_build_leaves_nothing(cache: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError, match="crash in the middle"):
        built_dir("toy", "toy-1-abc", broken)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def _build_in_process(args: tuple[str, str]) -> str:
    xdg, log = args
    os.environ["XDG_CACHE_HOME"] = xdg
    return str(built_dir("toy", "toy-1-abc", _counting_build(Path(log), delay=0.5)))


def test_concurrent_processes_build_once(cache: Path, tmp_path: Path) -> None:
    log = tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        folders = pool.map(_build_in_process, [(str(tmp_path), str(log))] * 3)
    assert len(set(folders)) == 1
    assert log.read_text().count("\n") == 1  # the others waited on the lock and found it built


def test_cache_key_tracks_version_and_libraries() -> None:
    a = cache_key("m", "1", ("numpy",))
    assert a.startswith("m-1-")
    assert cache_key("m", "2", ("numpy",)) != a
    assert cache_key("m", "1", ("numpy", "onnx")) != a
    assert cache_key("m", "1", ("numpy",)) == a


def test_unknown_model_lists_the_names() -> None:
    assert zoo.names() == ["minilm", "mobilenet_v2", "smollm2", "digits_cnn"]
    with pytest.raises(KeyError, match="unknown zoo model 'resnet'; available: minilm, mobilenet_v2"):
        zoo.get("resnet")


def test_ort_runner_maps_names(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    run = zoo.ort_runner(path, threads=1)
    out = run({"x": np.array([[-1.0, 2.0]], dtype=np.float32)})
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], [[0.0, 2.0]])
