"""The ORT session wrapper: options as stated, errors that name the file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.backends.onnxruntime.session import OPTIMIZATION_LEVELS, OrtRunner, make_session
from qcompiler.errors import ConfigError, ModelLoadError


def _add_model(path=None) -> onnx.ModelProto:
    """y = x + c, z = x * 2: exact in float32 for the small integers the tests feed."""
    c = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "c")
    two = numpy_helper.from_array(np.array(2, np.float32), "two")
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Mul", ["x", "two"], ["z"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3])], [c, two],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        onnx.save(m, str(path))
    return m


@pytest.mark.parametrize("level", sorted(OPTIMIZATION_LEVELS))
def test_session_options_are_applied(level, tmp_path):
    s = make_session(_add_model().SerializeToString(), threads=2, optimization=level)
    o = s.get_session_options()
    assert o.intra_op_num_threads == 2 and o.inter_op_num_threads == 1
    assert o.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert o.graph_optimization_level == OPTIMIZATION_LEVELS[level]
    assert s.get_providers() == ["CPUExecutionProvider"]


def test_spinning_off_is_a_session_config_entry():
    s = make_session(_add_model().SerializeToString(), spinning=False)
    assert s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown ONNX Runtime optimization level 'fast'; valid: disable, basic"):
        make_session(b"", optimization="fast")
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        make_session(b"", threads=0)


def test_optimized_model_is_written_as_onnx(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "opt.onnx"
    _add_model(src)
    make_session(src, optimized_path=out)
    m = onnx.load(str(out))
    assert [i.name for i in m.graph.input] == ["x"]


def test_load_errors_name_the_file_on_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match=r"missing\.onnx: no such file"):
        make_session(tmp_path / "missing.onnx")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError) as e:
        make_session(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ONNX Runtime cannot load it: ") and "\n" not in msg
    assert "[ONNXRuntimeError]" not in msg
    with pytest.raises(ModelLoadError, match="<model bytes>"):
        make_session(b"\x08\x07garbage")


def test_runner_runs_and_names_outputs(tmp_path):
    p = tmp_path / "m.onnx"
    _add_model(p)
    r = OrtRunner(p, threads=1)
    assert r.input_names == ["x"] and r.output_names == ["y", "z"]
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    out = r({"x": x})
    np.testing.assert_array_equal(out["y"], x + np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(out["z"], 2 * x)


def test_runner_feed_errors(tmp_path):
    p = tmp_path / "m.onnx"
    _add_model(p)
    r = OrtRunner(p)
    with pytest.raises(ValueError, match=r"m\.onnx: missing input 'x'; the model's inputs are x"):
        r({})
    with pytest.raises(ValueError, match="unknown input 'q'"):
        r({"x": np.zeros((2, 3), np.float32), "q": np.zeros(1)})
    with pytest.raises(ValueError, match=r"m\.onnx: run failed: .*") as e:
        r({"x": np.zeros((2, 3), np.float64)})
    assert "\n" not in str(e.value)
    with pytest.raises(ModelLoadError, match="nothing.onnx"):
        OrtRunner(tmp_path / "nothing.onnx")
