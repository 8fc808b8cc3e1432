"""The command line: inspect and targets, and one clear line + exit code 2 for each kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from qcompiler.cli import main

from .frontends.test_onnx_io import _external_model, _rich_model


def _write(tmp_path: Path, m: onnx.ModelProto, name: str = "m.onnx") -> str:
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return str(p)


def test_inspect_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _rich_model())
    assert main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "x: f32[batch,5]" in text and "custom.local::ScaledTanh" in text
    assert "no integer kernel for ReduceSum" in text
    assert main(["inspect", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops"]["MatMul"] == 1 and info["nodes"] == 12
    assert info["opsets"] == {"ai.onnx": 21, "custom.local": 1}
    assert info["parameters"]["i4"] == {"tensors": 1, "elements": 5, "bytes": 3}
    assert {"node": "fc", "op": "MatMul"} in info["quantizable"]
    reasons = {x["node"]: x["reason"] for x in info["not_quantizable"]}
    assert reasons["call"] == "op domain 'custom.local' has no quantized form here"


def _bad_models(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment)."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    good = _rich_model().SerializeToString()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good[: len(good) // 3])
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    missing = _external_model(ext_dir, "weights.bin")
    trav_dir = tmp_path / "trav"
    trav_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    trav = _external_model(trav_dir, "../secret.bin")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    dom = helper.make_model(
        helper.make_graph([helper.make_node("Frob", ["x"], ["y"], domain="acme", name="f")], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)],
    )
    cyc = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                           helper.make_node("Relu", ["a"], ["b"], name="n2")], "g", [x],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [2])
    typed = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "i"], ["y"], name="mix")], "g", [x, i], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return {
        "not onnx": (str(junk), "junk.onnx: not an ONNX model or truncated"),
        "truncated": (str(trunc), "trunc.onnx"),
        "missing external": (str(missing), "weights.bin does not exist"),
        "path traversal": (str(trav), "points outside the model's folder"),
        "unknown domain": (_write(tmp_path, dom, "dom.onnx"), "unknown op domain 'acme'"),
        "cycle": (_write(tmp_path, cyc, "cyc.onnx"), "cycle through"),
        "ill typed": (_write(tmp_path, typed, "typed.onnx"), "mix (Add): input 1 %i has type i64"),
        "no file": (str(tmp_path / "absent.onnx"), "absent.onnx: no such file"),
    }


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, (path, fragment) in _bad_models(tmp_path).items():
        assert main(["inspect", path]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("qcompiler: error: ") and fragment in err, (name, err)
        assert err.count("\n") == 1, (name, err)  # one line, no traceback


def test_console_script_and_help(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "qcompiler"
    res = subprocess.run([str(exe), "inspect", str(tmp_path / "nope.onnx")], capture_output=True, text=True)
    assert res.returncode == 2 and "no such file" in res.stderr and res.stdout == ""
    for args in (["--help"], ["inspect", "--help"], ["targets", "--help"]):
        res = subprocess.run([str(exe), *args], capture_output=True, text=True)
        assert res.returncode == 0 and "usage: qcompiler" in res.stdout
    res = subprocess.run([str(exe), "targets", "--json"], capture_output=True, text=True)
    assert res.returncode == 0 and isinstance(json.loads(res.stdout), list)
