"""The four real models of the zoo: lossless ONNX round trip through the IR, and the executor matching
ONNX Runtime (max error <= 1e-4 relative to the output's magnitude, FP32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompiler
from qcompiler import zoo
from qcompiler.backends.onnxruntime.session import OrtRunner
from qcompiler.runtime import Executor

from .frontends.compare import assert_same_model

MODELS = [
    pytest.param("digits_cnn", id="digits_cnn"),
    pytest.param("mobilenet_v2", id="mobilenet_v2"),
    pytest.param("minilm", id="minilm"),
    pytest.param("smollm2", id="smollm2", marks=pytest.mark.slow),
]


def _feeds(zm: zoo.ZooModel) -> dict[str, np.ndarray]:
    return zm.calibration_data(2, batch_size=2)[0]


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_lossless(name: str, tmp_path: Path) -> None:
    zm = zoo.get(name)
    model = qcompiler.load(zm.onnx_path)
    out = tmp_path / "copy.onnx"
    qcompiler.save(model, out)
    src = onnx.load(zm.onnx_path, load_external_data=False)
    dst = onnx.load(out, load_external_data=False)
    # Same ops, attributes, names, metadata, opsets, value infos; initializers bit-exact.
    assert_same_model(src, dst, str(Path(zm.onnx_path).parent), str(tmp_path))
    feeds = _feeds(zm)
    a, b = OrtRunner(zm.onnx_path)(feeds), OrtRunner(out)(feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", MODELS)
def test_executor_matches_onnxruntime(name: str) -> None:
    zm = zoo.get(name)
    feeds = _feeds(zm)
    ref = OrtRunner(zm.onnx_path)(feeds)
    got = Executor(qcompiler.load(zm.onnx_path)).run(feeds)
    for k, r in ref.items():
        g = got[k]
        assert g.shape == r.shape and g.dtype == r.dtype
        rel = np.abs(g.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-12)
        print(f"{name}/{k}: max relative error {rel:.2e}")
        assert rel <= 1e-4
