"""ONNX in and out: lossless round trips (every element type, subgraphs, functions, metadata, external data)
and one clear error for each kind of bad file."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.errors import GraphError, ModelLoadError, UnsupportedOpError
from qcompiler.ir import DType, TensorType

from .compare import assert_same_model

RNG = np.random.default_rng(0)


def _all_dtype_initializers() -> list[onnx.TensorProto]:
    """One initializer per element type, some as raw_data, some in the typed fields."""
    f32 = RNG.standard_normal((3, 5)).astype(np.float32)
    f32[0, 0], f32[0, 1] = np.nan, -np.inf
    ts = [
        numpy_helper.from_array(f32, "f32_raw"),
        helper.make_tensor("f32_typed", TensorProto.FLOAT, [4], [1.5, -0.0, 3e-39, 7.0]),  # float_data, subnormal
        numpy_helper.from_array(RNG.standard_normal(6).astype(np.float16), "f16"),
        numpy_helper.from_array(RNG.standard_normal(4), "f64"),
        numpy_helper.from_array(RNG.integers(-128, 127, 7).astype(np.int8), "i8"),
        numpy_helper.from_array(RNG.integers(0, 255, 7).astype(np.uint8), "u8"),
        numpy_helper.from_array(RNG.integers(-30000, 30000, 3).astype(np.int16), "i16"),
        numpy_helper.from_array(RNG.integers(0, 60000, 3).astype(np.uint16), "u16"),
        numpy_helper.from_array(RNG.integers(-(2**31), 2**31 - 1, 3).astype(np.int32), "i32"),
        numpy_helper.from_array(RNG.integers(0, 2**32 - 1, 3).astype(np.uint32), "u32"),
        numpy_helper.from_array(np.array([-(2**62), 5, 2**62], np.int64), "i64"),
        numpy_helper.from_array(np.array([2**63 + 5, 1], np.uint64), "u64"),
        numpy_helper.from_array(np.array([True, False, True]), "bool"),
        numpy_helper.from_array(np.array([1 + 2j, -3.5j], np.complex64), "c64"),
        numpy_helper.from_array(np.array([b"hello", "wörld".encode()], dtype=object), "str"),
        helper.make_tensor("i4", TensorProto.INT4, [5], [-8, -1, 0, 3, 7]),
        helper.make_tensor("u4", TensorProto.UINT4, [3], [0, 9, 15]),
        helper.make_tensor("bf16_typed", TensorProto.BFLOAT16, [3], [1.0, -2.5, 1e30]),
        numpy_helper.from_array(np.array([1.0, -0.25, 448.0], ml_dtypes.bfloat16), "bf16_raw"),
        numpy_helper.from_array(np.array([1.0, -0.25, 448.0], ml_dtypes.float8_e4m3fn), "e4m3fn"),
        numpy_helper.from_array(np.array([1.0, -0.25, 57344.0], ml_dtypes.float8_e5m2), "e5m2"),
        numpy_helper.from_array(np.array([1.0, -0.25], ml_dtypes.float8_e4m3fnuz), "e4m3fnuz"),
        numpy_helper.from_array(np.array([1.0, -0.25], ml_dtypes.float8_e5m2fnuz), "e5m2fnuz"),
        helper.make_tensor("fp8_typed", TensorProto.FLOAT8E4M3FN, [2], [0.5, -3.0]),
        numpy_helper.from_array(np.zeros((0, 3), np.float32), "empty"),
    ]
    ts[0].doc_string = "a tensor doc"
    return ts


def _rich_model() -> onnx.ModelProto:
    """Everything a round trip must keep: dtypes, subgraphs, a local function, metadata, docs, value_info."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])
    cnt = helper.make_tensor_value_info("count", TensorProto.INT64, [])
    x.doc_string = "the input"
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["t_out"], name="then_relu")], "then_body", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e_out"])], "else_body", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    loop_body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.INT64, []),
        ],
    )
    fn = helper.make_function(
        "custom.local", "ScaledTanh", ["v"], ["o"],
        [
            helper.make_node("Constant", [], ["a"], value_float=1.0),
            helper.make_node("Tanh", ["v"], ["t"]),
            helper.make_node("Mul", ["t", "a"], ["o"]),
        ],
        [helper.make_opsetid("", 21)], attributes=["alpha"],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h0"], name="fc", doc_string="the matmul"),
        helper.make_node("Add", ["h0", "b"], ["h"], name="bias"),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["branch"], then_branch=then_g, else_branch=else_g, name="if"),
        helper.make_node("ScaledTanh", ["branch"], ["y"], domain="custom.local", name="call"),
        helper.make_node("Loop", ["trip", "", "start"], ["count"], body=loop_body, name="loop"),
        helper.make_node(
            "Cast", ["i8"], ["unused_cast"], to=TensorProto.FLOAT, name="attrs",
        ),
    ]
    nodes[-1].metadata_props.add(key="origin", value="test")
    inits = _all_dtype_initializers() + [
        numpy_helper.from_array(RNG.standard_normal((5, 5)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.standard_normal(5).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(4, np.int64), "trip"),
        numpy_helper.from_array(np.array(0, np.int64), "start"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
    ]
    g = helper.make_graph(nodes, "rich", [x], [y, cnt], inits, doc_string="graph doc")
    g.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 5]))
    g.metadata_props.add(key="g", value="1")
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("custom.local", 1)], functions=[fn],
        producer_name="hand", producer_version="1.0", doc_string="model doc",
    )
    m.ir_version = 10
    m.model_version = 7
    m.metadata_props.add(key="author", value="tests")
    return m


def test_rich_model_round_trips_losslessly(tmp_path: Path) -> None:
    src = _rich_model()
    onnx.checker.check_model(src)
    p_in, p_out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(src, p_in)
    model = qcompiler.load(p_in)
    qcompiler.save(model, p_out)
    out = onnx.load(p_out)
    assert_same_model(src, out)
    # Again from what we wrote: a fixed point.
    qcompiler.save(qcompiler.load(p_out), tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == p_out.read_bytes()
    # ONNX Runtime computes the same thing from both files.
    feeds = {"x": RNG.standard_normal((2, 5)).astype(np.float32)}
    a = ort.InferenceSession(str(p_in)).run(None, feeds)
    b = ort.InferenceSession(str(p_out)).run(None, feeds)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_ir_sees_types_names_and_storage(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    onnx.save(_rich_model(), p)
    m = qcompiler.load(p)
    g = m.graph
    assert m.opset("") == 21 and m.producer_name == "hand" and m.metadata_props == {"author": "tests"}
    assert g.inputs[0].type == TensorType(DType.FLOAT, ("batch", 5))
    i4 = g.initializers["i4"].const
    assert i4.dtype is DType.INT4 and i4.numpy().tolist() == [-8, -1, 0, 3, 7] and i4.nbytes == 3
    assert g.initializers["e4m3fn"].const.numpy().tolist() == [0x38, 0xA8, 0x7E]  # bit patterns
    # Shape inference filled types it could (not saved: only declared value_info is).
    s = g.find_value("s")
    assert s is not None and s.type == TensorType(DType.FLOAT, ()) and not s.emit_value_info
    assert g.find_value("h").emit_value_info
    assert ("custom.local", "ScaledTanh", "") in m.functions


def test_external_data_is_lazy_and_bit_exact(tmp_path: Path) -> None:
    src = _rich_model()
    big = RNG.standard_normal((256, 300)).astype(np.float32)
    src.graph.initializer.append(numpy_helper.from_array(big, "big"))
    onnx.save(src, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    m = qcompiler.load(tmp_path / "ext.onnx")
    t = m.graph.initializers["big"].const
    assert t.external is not None and not t.is_loaded
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    qcompiler.save(m, out_dir / "copy.onnx")  # external in -> external out by default
    assert (out_dir / "copy.onnx.data").exists()
    assert not t.is_loaded  # streamed file to file, never mapped
    copy = onnx.load(out_dir / "copy.onnx", load_external_data=False)
    assert_same_model(onnx.load(tmp_path / "ext.onnx", load_external_data=False), copy, str(tmp_path), str(out_dir))
    back = qcompiler.load(out_dir / "copy.onnx")
    np.testing.assert_array_equal(back.graph.initializers["big"].const.numpy(), big)


def test_save_is_atomic_and_checks_folder(tmp_path: Path) -> None:
    m = qcompiler.load(_save(tmp_path, _rich_model()))
    with pytest.raises(ModelLoadError, match="output folder .*missing.* does not exist"):
        qcompiler.save(m, tmp_path / "missing" / "x.onnx")
    # A failure while writing leaves nothing behind.
    m.graph.nodes[0].set_input(0, m.graph.nodes[1].outputs[0])  # now a use before definition
    with pytest.raises(GraphError, match="used before it is defined"):
        qcompiler.save(m, tmp_path / "broken.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def _save(tmp_path: Path, m: onnx.ModelProto, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


# ------------------------------------------------------------------------------------------- bad input
def test_not_onnx_and_truncated(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match=r"junk.onnx: not an ONNX model or truncated"):
        qcompiler.load(junk)
    good = _save(tmp_path, _rich_model(), "good.onnx").read_bytes()
    for cut in (len(good) // 2, len(good) - 3, 40):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(good[:cut])
        with pytest.raises((ModelLoadError, GraphError), match=f"cut{cut}.onnx"):
            qcompiler.load(bad)
    with pytest.raises(ModelLoadError, match="nope.onnx: no such file"):
        qcompiler.load(tmp_path / "nope.onnx")


def _external_model(tmp_path: Path, location: str) -> Path:
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [t])
    return _save(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_missing_external_data(tmp_path: Path) -> None:
    p = _external_model(tmp_path, "weights.bin")
    with pytest.raises(ModelLoadError, match=r"tensor 'w': external data file .*weights.bin does not exist"):
        qcompiler.load(p)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)  # too short for 64 bytes
    with pytest.raises(ModelLoadError, match=r"tensor 'w': external data file .*weights.bin is too short"):
        qcompiler.load(p)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_model_folder_is_refused(tmp_path: Path, location: str) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    p = _external_model(model_dir, location)
    with pytest.raises(ModelLoadError, match="points outside the model's folder .* path traversal"):
        qcompiler.load(p)


def test_unknown_domain(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Frob", ["x"], ["y"], domain="acme.ops", name="frob1")], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.ops", 1)])
    with pytest.raises(UnsupportedOpError, match=r"node frob1 \(acme.ops::Frob\) is in unknown op domain 'acme.ops'"):
        qcompiler.load(_save(tmp_path, m))
    m.opset_import.pop()
    with pytest.raises(GraphError, match=r"frob1 \(acme.ops::Frob\) uses op domain 'acme.ops', which the model does not import"):
        qcompiler.load(_save(tmp_path, m, "m2.onnx"))


def test_cyclic_graph(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
    ]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GraphError, match=r"cyc.onnx.*cycle through (first|second)"):
        qcompiler.load(_save(tmp_path, m, "cyc.onnx"))


def test_undefined_input(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GraphError, match=r"node adder \(Add\) reads 'ghost', which no node, input or initializer defines"):
        qcompiler.load(_save(tmp_path, m))


def test_ill_typed_graph(tmp_path: Path) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [2])
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="mixed")], "g", [a, b],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GraphError, match=r"mixed \(Add\): input 1 %b has type i64 but input 0 %a has f32; both are T"):
        qcompiler.load(_save(tmp_path, m, "typed.onnx"))
    g2 = helper.make_graph([helper.make_node("Relu", ["b"], ["y"], name="r")], "g", [b],
                           [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    m2 = helper.make_model(g2, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(GraphError, match=r"r \(Relu\): input 0 %b has type i64, which T does not allow"):
        qcompiler.load(_save(tmp_path, m2, "relu.onnx"))
