"""Calibration streams: peak memory with 10x the samples stays within 10% (observers keep constant state,
the .npz is read one sample at a time, the executor frees what it no longer needs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from .memory import HWM

SHAPE = (3, 256, 256)  # 786 KB a sample: holding 400 of them would add 300 MB


def _model(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["y"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "m", [x], [y], inits),
                                opset_imports=[helper.make_opsetid("", 17)]), path)


def _calib(path: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.standard_normal((n, *SHAPE)).astype(np.float32))


def _peak_rss_mb(model: Path, calib: Path, n: int) -> float:
    script = HWM + f"""
import json
import qcompiler
from qcompiler.compiler import CompileOptions
from qcompiler.recipe import Recipe
rec = qcompiler.targets.get_target("cpu-int8").default_recipe
rec = rec.replace(quantize=rec.quantize.__class__(**{{**rec.quantize.__dict__, "activations": rec.quantize.activations.__class__(
    "uint8", "affine", "per_tensor", "entropy")}}))
qcompiler.compile({str(model)!r}, target="cpu-int8", calib={str(calib)!r}, recipe=rec, calib_samples={n},
                  options=CompileOptions(report=False, progress=False))
print(json.dumps({{"peak": _hwm()}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak"]


@pytest.mark.slow
def test_peak_memory_is_constant_in_the_number_of_samples(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    _model(model)
    small, large = tmp_path / "small.npz", tmp_path / "large.npz"
    _calib(small, 40)
    _calib(large, 400)
    peak_small = _peak_rss_mb(model, small, 40)
    peak_large = _peak_rss_mb(model, large, 400)
    print(f"\npeak RSS: 40 samples {peak_small:.0f} MB, 400 samples {peak_large:.0f} MB")
    assert peak_large <= 1.10 * peak_small
