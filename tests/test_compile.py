"""`qcompiler compile` / `qcompiler.compile()` end to end on a small CNN: artifact, recipe and report written
beside each other, ORT fuses everything, and every bad input gets one clear error, exit 2, no output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qcompiler
from qcompiler.cli import main
from qcompiler.errors import CalibrationError, ConfigError, QuantizationError
from qcompiler.report import Report

from .passes.test_quantize_passes import cnn

RNG = np.random.default_rng(1)


def _model(tmp_path: Path, proto: onnx.ModelProto | None = None, name: str = "cnn.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes((proto or cnn()).SerializeToString())
    return p


def _calib(tmp_path: Path, n: int = 24, shape: tuple[int, ...] = (3, 12, 12), name: str = "calib.npz",
           key: str = "x") -> Path:
    p = tmp_path / name
    np.savez(p, **{key: RNG.standard_normal((n, *shape)).astype(np.float32)})
    return p


def test_cli_compile_writes_artifact_recipe_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = _model(tmp_path), _calib(tmp_path)
    out = tmp_path / "out" / "cnn.int8.onnx"
    out.parent.mkdir()
    assert main(["compile", str(model), "--target", "cpu-int8", "--calib", str(calib), "-o", str(out),
                 "--quiet", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "cpu-int8" in printed and "wrote:" in printed
    names = sorted(os.listdir(out.parent))
    assert names == ["cnn.int8.onnx", "cnn.int8.recipe.toml", "cnn.int8.report.html", "cnn.int8.report.json"]
    rep = Report.from_json(out.parent / "cnn.int8.report.json")
    assert rep.target.name == "cpu-int8" and not rep.calibration.is_random
    assert rep.calibration.held_back == 6 and rep.calibration.samples == 18 and rep.unfused == []  # 24 // 4 held back
    # Per-layer SQNR is measured for every quantized compute layer; 8-bit on this net stays above 25 dB.
    measured = {lay.node: lay.sqnr_db for lay in rep.layers}
    assert set(measured) >= {"conv1", "conv2", "add", "fc"}
    assert min(measured.values()) > 25
    assert rep.outputs[0].cosine > 0.999
    assert rep.size.before_bytes == os.path.getsize(_model(tmp_path, name="again_src.onnx"))
    assert rep.latency and rep.latency[0].before_ms > 0 and rep.latency[0].threads == 1
    # The recipe written beside the artifact compiles the same model again.
    again = tmp_path / "again.onnx"
    assert main(["compile", str(model), "--target", "cpu-int8", "--calib", str(calib), "-o", str(again),
                 "--recipe", str(out.parent / "cnn.int8.recipe.toml"), "--quiet", "--no-report"]) == 0
    a = onnx.load(out)
    b = onnx.load(again)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    capsys.readouterr()
    assert main(["report", str(out.parent / "cnn.int8.report.json")]) == 0
    assert "worst" in capsys.readouterr().out


def test_api_artifact_runs_and_matches_float(tmp_path: Path) -> None:
    model = _model(tmp_path)
    feeds = [{"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    art = qcompiler.compile(str(model), target="cpu-int8", calib=feeds,
                            options=qcompiler.compiler.CompileOptions(measure_latency=False, progress=False))
    assert art.path is None and art.report is not None
    path = art.save(tmp_path / "art.onnx")
    x = {"x": RNG.standard_normal((2, 3, 12, 12)).astype(np.float32)}
    got = art.run(x)["y"]
    ref = qcompiler.run(qcompiler.load(model), x)["y"]
    assert got.shape == (2, 10)
    assert 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum()) > 25
    assert path.exists() and (tmp_path / "art.report.json").exists()


def test_dry_run_prints_plan_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    before = sorted(os.listdir(tmp_path))
    assert main(["compile", str(model), "--target", "cpu-int8", "--dry-run", "--exclude", "conv2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and "conv2 (Conv): excluded by pattern 'conv2'" in out
    assert "conv1 (Conv)  [linear]" in out
    assert sorted(os.listdir(tmp_path)) == before


def test_random_calibration_is_flagged(tmp_path: Path) -> None:
    out = tmp_path / "r.onnx"
    assert main(["compile", str(_model(tmp_path)), "--target", "cpu-int8", "--calib", "random", "-o", str(out),
                 "--quiet", "--no-latency"]) == 0
    rep = json.loads((tmp_path / "r.report.json").read_text())
    assert rep["calibration"]["is_random"] is True
    assert "calibrated on random data" in (tmp_path / "r.report.html").read_text()


def test_weights_shrink_four_times(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])
    w = numpy_helper.from_array(RNG.standard_normal((512, 512)).astype(np.float32), "w")
    proto = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    art = qcompiler.compile(proto, target="cpu-int8-dynamic",
                            options=qcompiler.compiler.CompileOptions(measure_latency=False, progress=False))
    size = art.report.size
    # int8 weights: 1 byte instead of 4, plus 512 scales and zero points.
    assert size.after_bytes <= size.before_bytes / 4 + 512 * 5 + 1024


def test_dynamic_target_needs_no_calibration(tmp_path: Path) -> None:
    art = qcompiler.compile(str(_model(tmp_path)), target="cpu-int8-dynamic",
                            options=qcompiler.compiler.CompileOptions(measure_latency=False, progress=False))
    ops = {n.op_type for n in art.model.graph.nodes}
    assert "DynamicQuantizeMatMul" in ops  # the classifier's Gemm; convolutions stay float
    assert any("random inputs" in w for w in art.report.warnings)


# ------------------------------------------------------------------------------------------------ bad input
def _expect_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir(exist_ok=True)
    before = sorted(os.listdir(out_dir))
    assert main(["compile", *args, "-o", str(out_dir / "m.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qcompiler: error: ") and fragment in err, err
    assert err.count("\n") == 1
    assert sorted(os.listdir(out_dir)) == before  # nothing written, no temp left behind


def test_bad_target_and_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = str(_model(tmp_path))
    _expect_error(tmp_path, capsys, [m, "--target", "tpu-int3"],
                  "unknown target 'tpu-int3'; valid targets: cpu-int8, cpu-int8-dynamic")
    bad = tmp_path / "bad.toml"
    bad.write_text('[quantize]\nop_typez = ["Conv"]\n')
    _expect_error(tmp_path, capsys, [m, "--target", "cpu-int8", "--recipe", str(bad), "--calib", "random"],
                  "[quantize]: unknown key 'op_typez'; valid keys: activations, dynamic, exclude_nodes")
    bad.write_text('[quantize.weights]\nformat = "int9"\n')
    _expect_error(tmp_path, capsys, [m, "--target", "cpu-int8", "--recipe", str(bad), "--calib", "random"],
                  "unknown format 'int9'; valid formats:")


def test_missing_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(_model(tmp_path)), "--target", "cpu-int8", "--calib", "random",
                 "-o", str(tmp_path / "nope" / "m.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and "does not exist" in err
    assert not (tmp_path / "nope").exists()


def test_static_target_without_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(tmp_path, capsys, [str(_model(tmp_path)), "--target", "cpu-int8"],
                  "target cpu-int8 quantizes activations statically and needs calibration data: pass --calib")


def test_calibration_data_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = str(_model(tmp_path))
    wrong_shape = _calib(tmp_path, shape=(4, 12, 12), name="shape.npz")
    _expect_error(tmp_path, capsys, [m, "--target", "cpu-int8", "--calib", str(wrong_shape)], "'x'")
    wrong_name = _calib(tmp_path, name="name.npz", key="image")
    _expect_error(tmp_path, capsys, [m, "--target", "cpu-int8", "--calib", str(wrong_name)], "'x'")
    nan = tmp_path / "nan.npz"
    data = RNG.standard_normal((4, 3, 12, 12)).astype(np.float32)
    data[2, 0, 0, 0] = np.nan
    np.savez(nan, x=data)
    _expect_error(tmp_path, capsys, [m, "--target", "cpu-int8", "--calib", str(nan)], "NaN")


def test_nan_weights_are_named(tmp_path: Path) -> None:
    proto = cnn()
    w = numpy_helper.to_array(proto.graph.initializer[2]).copy()
    w[0, 0, 0, 0] = np.inf
    proto.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, "w2"))
    with pytest.raises(QuantizationError, match="w2"):
        qcompiler.compile(str(_model(tmp_path, proto)), target="cpu-int8", calib="random",
                          options=qcompiler.compiler.CompileOptions(report=False, progress=False))


def test_all_zero_weight_gets_a_usable_scale(tmp_path: Path) -> None:
    proto = cnn()
    proto.graph.initializer[4].CopyFrom(numpy_helper.from_array(np.zeros((10, 8), np.float32), "wf"))
    art = qcompiler.compile(str(_model(tmp_path, proto)), target="cpu-int8", calib="random",
                            options=qcompiler.compiler.CompileOptions(report=False, progress=False))
    scale = art.model.graph.initializers["wf_scale"].const.numpy()
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)
    x = {"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)}
    y = qcompiler.run(art.model, x)["y"]
    assert np.all(np.isfinite(y))


def test_errors_are_config_errors_in_python() -> None:
    with pytest.raises(ConfigError, match="valid targets"):
        qcompiler.compile("whatever.onnx", target="nope")
    with pytest.raises(CalibrationError):
        qcompiler.compile(cnn(), target="cpu-int8")
