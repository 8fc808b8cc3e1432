"""The report's data model and its JSON form: exact round trip, strict JSON, atomic writes, clear errors."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from qcompiler.errors import ConfigError
from qcompiler.report import (
    SCHEMA_VERSION,
    LatencyEntry,
    LayerEntry,
    ModelInfo,
    OutputMetrics,
    Report,
    SizeInfo,
    TargetInfo,
    report_paths,
)

from .sample import N_LAYERS, NASTY, make_report


def _reject_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON token {name}")


def test_round_trip_is_exact(tmp_path):
    report = make_report()
    report.layers.append(LayerEntry("/exact", "Identity", {}, math.inf, "quantized", "bit-exact"))
    path = report.to_json(tmp_path / "m.report.json")
    back = Report.from_json(path)
    assert back == report
    assert len(back.layers) == N_LAYERS + 1 and back.layers[-1].sqnr_db == math.inf
    assert back.layers[42].node == NASTY
    assert back.accuracy["top1"] == (0.73, 0.72) and back.accuracy["cosine@sst2"] == (0.9991, None)
    # writing what was read gives the same bytes: nothing is lost or reformatted on the way
    again = back.to_json(tmp_path / "again.json")
    assert again.read_bytes() == path.read_bytes()


def test_json_is_strict_and_tagged(tmp_path):
    report = make_report()
    report.outputs.append(OutputMetrics("broken", math.nan, math.nan, math.inf, -math.inf))
    text = report.to_json(tmp_path / "r.json").read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=_reject_constant)  # no NaN / Infinity tokens
    assert data["format"] == "qcompiler-report" and data["schema_version"] == SCHEMA_VERSION
    assert data["outputs"][-1] == {
        "name": "broken",
        "sqnr_db": "nan",
        "cosine": "nan",
        "max_abs": "inf",
        "mean_abs": "-inf",
    }
    back = Report.from_json(tmp_path / "r.json").outputs[-1]
    assert (
        math.isnan(back.sqnr_db) and math.isnan(back.cosine) and back.max_abs == math.inf and back.mean_abs == -math.inf
    )


def test_free_form_data_is_normalized_to_what_json_gives_back(tmp_path):
    report = Report(
        model=ModelInfo("m"),
        target=TargetInfo("cpu-int8"),
        recipe={"quantize": {"op_types": ("MatMul", "Conv")}, "alpha": np.float32(0.5), "n": np.int64(3)},
        machine={"threads": np.int32(4), "vnni": np.bool_(True)},
        outputs=[OutputMetrics("y", np.float32(31.25), np.float64(0.999))],
        accuracy={"top1": [0.5, 0.25]},
    )
    assert report.recipe == {"quantize": {"op_types": ["MatMul", "Conv"]}, "alpha": 0.5, "n": 3}
    assert type(report.machine["vnni"]) is bool and report.accuracy == {"top1": (0.5, 0.25)}
    back = Report.from_json(report.to_json(tmp_path / "r.json"))
    assert back == report
    assert back.outputs[0].sqnr_db == 31.25  # exactly representable in float32, so no rounding on the way


def test_unstorable_value_is_named():
    with pytest.raises(TypeError, match=r"recipe\['hook'\]"):
        Report(model=ModelInfo("m"), target=TargetInfo("t"), recipe={"hook": object()})
    with pytest.raises(ValueError, match="before, after"):
        Report(model=ModelInfo("m"), target=TargetInfo("t"), accuracy={"top1": (0.7,)})


def test_layer_status_is_checked():
    with pytest.raises(ValueError, match="'/a'.*'half'"):
        LayerEntry("/a", "Conv", status="half")  # type: ignore[arg-type]


def test_ratios():
    assert SizeInfo(1000, 250).ratio == 0.25
    assert SizeInfo(None, 250).ratio is None and SizeInfo(1000, None).ratio is None and SizeInfo(0, 5).ratio is None
    assert LatencyEntry(1, 4, 10, "ort", 8.0, 2.0).ratio == 0.25
    assert LatencyEntry(1, 4, 10, "ort", 8.0, None).ratio is None


def test_worst_layers_nan_first_none_left_out_ties_in_graph_order():
    layers = [
        LayerEntry("a", "Conv", sqnr_db=30.0),
        LayerEntry("b", "Conv", sqnr_db=None),
        LayerEntry("c", "Conv", sqnr_db=12.0),
        LayerEntry("d", "Conv", sqnr_db=math.nan),
        LayerEntry("e", "Conv", sqnr_db=12.0),
        LayerEntry("f", "Conv", sqnr_db=-4.0),
    ]
    report = Report(model=ModelInfo("m"), target=TargetInfo("t"), layers=layers)
    assert [x.node for x in report.worst_layers(10)] == ["d", "f", "c", "e", "a"]
    assert [x.node for x in report.worst_layers(2)] == ["d", "f"]
    assert report.worst_layers(0) == []


def test_write_names_both_files_beside_the_artifact(tmp_path):
    json_path, html_path = make_report().write(tmp_path / "minilm")
    assert (json_path, html_path) == report_paths(tmp_path / "minilm")
    assert json_path.name == "minilm.report.json" and html_path.name == "minilm.report.html"
    assert json_path.is_file() and html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm.report.html", "minilm.report.json"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.report.json"
    path.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        make_report().to_json(path)
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.report.json"]


def _edited(tmp_path, edit) -> str:
    data = make_report().to_dict()
    edit(data)
    path = tmp_path / "edited.report.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), rf"schema version {SCHEMA_VERSION + 1}, newer"),
        (lambda d: d.update(schema_version="1"), "bad schema_version '1'"),
        (lambda d: d.pop("format"), "is not a qcompiler report"),
        (
            lambda d: d["layers"][3].update(sqnr_db="loud"),
            r"layers\[3\]\.sqnr_db: expected a number or null, got \"loud\"",
        ),
        (lambda d: d["layers"][0].update(status="half"), r"layers\[0\]\.status: expected \"quantized\" or \"float\""),
        (
            lambda d: d["size"].update(gigabytes=1),
            r"unknown key 'size\.gigabytes' \(valid keys in size: before_bytes, after_bytes\)",
        ),
        (lambda d: d.pop("model"), "missing key 'model'"),
        (lambda d: d["accuracy"].update(top1=[0.7]), r"accuracy\['top1'\]: expected a list of 2"),
        (lambda d: d["model"]["inputs"][0].update(shape=["batch", 1.5]), r"model\.inputs\[0\]\.shape"),
    ],
)
def test_bad_report_names_the_file_and_the_key(tmp_path, edit, message):
    path = _edited(tmp_path, edit)
    with pytest.raises(ConfigError, match=message) as info:
        Report.from_json(path)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"is not a qcompiler report: not valid JSON \(.* line 1, column 2\)"),
        ("[1, 2]", "is not a qcompiler report"),
        ('{"format": "onnx"}', "is not a qcompiler report"),
        ("", "not valid JSON"),
    ],
)
def test_non_report_file_is_a_config_error_naming_it(tmp_path, text, message):
    path = tmp_path / "weird.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        Report.from_json(path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.report\.json: no such file"):
        Report.from_json(tmp_path / "nothere.report.json")
    binary = tmp_path / "model.onnx"
    binary.write_bytes(b"\x08\x07\x12\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"model\.onnx: cannot read it"):
        Report.from_json(binary)
