"""Calibration data: every source type, windows (samples=N, split), batching, and every bad input named."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qcompiler.calibration import CalibrationSet, InputSpec, input_specs_from, load_calibration
from qcompiler.errors import CalibrationError, ConfigError
from qcompiler.ir import DType, TensorType, parse_graph

SPECS = {"pixels": (np.float32, ("batch", 3, 4)), "ids": (np.int64, ("batch", "seq"))}


def _data(n: int = 10, seq: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"pixels": rng.normal(size=(n, 3, 4)).astype(np.float32),
            "ids": np.arange(n * seq, dtype=np.int64).reshape(n, seq)}


def _rows(cset) -> list[int]:
    return [int(f["ids"][0, 0]) // 5 for f in cset]  # sample index, from the ids written by _data


# ------------------------------------------------------------------------------------------------ specs
def test_input_specs_from_graph_values_and_dicts() -> None:
    g = parse_graph("graph g (%x: f32[batch,3], %ids: i64[batch,seq], %m: bf16[2]) -> (%y) {\n  %y = Relu(%x)\n}")
    specs = input_specs_from(g)
    assert list(specs) == ["x", "ids", "m"]
    assert specs["x"] == InputSpec("x", np.dtype(np.float32), ("batch", 3))
    assert specs["ids"].dtype == np.int64 and specs["m"].dtype.name == "bfloat16"
    assert input_specs_from(list(g.inputs[:1])) == {"x": specs["x"]}
    d = input_specs_from({"a": (DType.FLOAT16, (None, 2)), "b": TensorType(DType.INT32, (1,)), "c": ("f4", None)})
    assert d["a"] == InputSpec("a", np.dtype(np.float16), (None, 2))
    assert d["b"].dtype == np.int32 and d["c"].shape is None
    g2 = parse_graph("graph g (%s: str[2]) -> (%s) {\n}")
    with pytest.raises(CalibrationError, match=r"input 's' has element type STRING"):
        input_specs_from(g2)


# ------------------------------------------------------------------------------------------------ .npz
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streams_samples_with_casts(tmp_path: Path, compressed: bool, monkeypatch) -> None:
    d = _data()
    path = tmp_path / "calib.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, pixels=d["pixels"].astype(np.float64), ids=d["ids"].astype(np.int32))
    cset = load_calibration(path, SPECS)
    assert len(cset) == 10 and not cset.is_random
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("an .npz member was loaded whole"))
    feeds = list(cset)
    assert len(feeds) == 10
    for i, f in enumerate(feeds):
        assert f["pixels"].shape == (1, 3, 4) and f["pixels"].dtype == np.float32  # float64 -> float32
        assert f["ids"].shape == (1, 5) and f["ids"].dtype == np.int64  # int32 -> int64
        np.testing.assert_array_equal(f["pixels"][0], d["pixels"][i])
        np.testing.assert_array_equal(f["ids"][0], d["ids"][i])
    assert _rows(load_calibration(str(path), SPECS, samples=3)) == [0, 1, 2]
    assert _rows(cset.take(4).split(1)[0]) == [1, 2, 3]


def test_npz_fortran_order_and_stacked_feeds(tmp_path: Path) -> None:
    d = _data(4)
    path = tmp_path / "f.npz"
    # pixels stacked as whole feeds (rank + 1), ids in Fortran order (loaded whole, then cut)
    np.savez(path, pixels=d["pixels"][:, None], ids=np.asfortranarray(d["ids"]))
    feeds = list(load_calibration(path, SPECS))
    assert [f["pixels"].shape for f in feeds] == [(1, 3, 4)] * 4
    np.testing.assert_array_equal(np.concatenate([f["ids"] for f in feeds]), d["ids"])


def test_static_batch_takes_rows_in_blocks(tmp_path: Path) -> None:
    specs = {"x": (np.float32, (2, 3))}
    np.savez(tmp_path / "ok.npz", x=np.arange(18, dtype=np.float32).reshape(6, 3))
    feeds = list(load_calibration(tmp_path / "ok.npz", specs))
    assert [f["x"].shape for f in feeds] == [(2, 3)] * 3 and feeds[1]["x"][0, 0] == 6
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"bad.npz'.*input 'x' has 5 rows along axis 0, not a multiple of the "
                                               r"model's static batch size 2"):
        load_calibration(tmp_path / "bad.npz", specs)
    with pytest.raises(CalibrationError, match=r"input 'x' has a static first dimension 2.*use batch_size=1"):
        next(load_calibration(tmp_path / "ok.npz", specs).batches(2))


# ------------------------------------------------------------------------------------------------ folder
def test_folder_reads_files_in_sorted_order(tmp_path: Path) -> None:
    d = _data(6)
    np.savez(tmp_path / "b_0002.npz", pixels=d["pixels"][3:], ids=d["ids"][3:])  # 3 samples
    np.savez(tmp_path / "a_0001.npz", pixels=d["pixels"][1:3], ids=d["ids"][1:3])  # 2 samples
    np.savez(tmp_path / "a_0000.npz", pixels=d["pixels"][0], ids=d["ids"][0])  # one sample without batch axis
    (tmp_path / "README.txt").write_text("ignored")
    cset = load_calibration(tmp_path, SPECS)
    assert len(cset) == 6 and _rows(cset) == [0, 1, 2, 3, 4, 5]
    calib, held = cset.split(2)
    assert _rows(held) == [0, 1] and _rows(calib) == [2, 3, 4, 5]
    assert _rows(load_calibration(tmp_path, SPECS, samples=4).split(3)[0]) == [3]


def test_folder_of_npy_for_single_input_model(tmp_path: Path) -> None:
    specs = {"x": (np.float32, ("n", 2))}
    np.save(tmp_path / "0.npy", np.ones((2, 2), np.float32))
    np.save(tmp_path / "1.npy", np.full((1, 2), 3.0, np.float32))
    feeds = list(load_calibration(tmp_path, specs))
    assert [float(f["x"][0, 0]) for f in feeds] == [1.0, 1.0, 3.0]
    with pytest.raises(CalibrationError, match=r"0.npy': a .npy file holds one array, but the model has 2 inputs"):
        load_calibration(tmp_path, SPECS)


def test_empty_sources_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"calibration folder '.*' holds no .npz or .npy files"):
        load_calibration(tmp_path, SPECS)
    np.savez(tmp_path / "e.npz", pixels=np.zeros((0, 3, 4), np.float32), ids=np.zeros((0, 5), np.int64))
    with pytest.raises(CalibrationError, match=r"calibration data file '.*e.npz' holds no samples"):
        load_calibration(tmp_path / "e.npz", SPECS)
    with pytest.raises(CalibrationError, match=r"calibration data the given iterable holds no samples"):
        list(load_calibration(iter([]), SPECS))
    with pytest.raises(CalibrationError, match=r"calibration data '.*missing.npz' not found"):
        load_calibration(tmp_path / "missing.npz", SPECS)
    with pytest.raises(CalibrationError, match=r"'imagenet' is neither an existing .npz/.npy file or folder"):
        load_calibration("imagenet", SPECS)


# ------------------------------------------------------------------------------------------------ module:function
@pytest.fixture
def calib_module(tmp_path: Path, monkeypatch):
    (tmp_path / "my_calib_data.py").write_text(textwrap.dedent("""
        import numpy as np
        CALLS = []
        def feeds():
            CALLS.append(1)
            for k in range(3):  # batches of 2 samples each
                yield {"pixels": np.full((2, 3, 4), k, np.float32), "ids": np.full((2, 5), 10 * k + 1)}
        def broken():
            raise RuntimeError("dataset offline")
        def number():
            return 42
        def tuples():
            return [(1, 2)]
        NOT_A_FUNCTION = 3
    """))
    monkeypatch.chdir(tmp_path)  # a module beside the data, as a CLI user has it
    yield "my_calib_data"
    sys.modules.pop("my_calib_data", None)


def test_module_function_source(calib_module: str) -> None:
    cset = load_calibration(f"{calib_module}:feeds", SPECS)
    assert cset.length is None
    with pytest.raises(TypeError, match="unknown until it is read"):
        len(cset)
    feeds = list(cset)
    assert len(feeds) == 6 and all(f["pixels"].shape == (1, 3, 4) for f in feeds)
    assert [int(f["ids"][0, 0]) for f in feeds] == [1, 1, 11, 11, 21, 21]
    calib, held = load_calibration(f"{calib_module}:feeds", SPECS, samples=5).split(2)
    assert [int(f["ids"][0, 0]) for f in held] == [1, 1]
    assert [int(f["ids"][0, 0]) for f in calib] == [11, 11, 21]
    assert sys.modules[calib_module].CALLS.__len__() >= 3  # called again for every pass


def test_module_function_errors(calib_module: str) -> None:
    with pytest.raises(CalibrationError, match=r"'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"):
        load_calibration("no_such_module_xyz:f", SPECS)
    with pytest.raises(CalibrationError, match=rf"module '{calib_module}' has no function 'nope'"):
        load_calibration(f"{calib_module}:nope", SPECS)
    with pytest.raises(CalibrationError, match=r"'NOT_A_FUNCTION' is a int, not a function"):
        load_calibration(f"{calib_module}:NOT_A_FUNCTION", SPECS)
    with pytest.raises(CalibrationError, match=r"calling broken\(\) raised RuntimeError: dataset offline"):
        list(load_calibration(f"{calib_module}:broken", SPECS))
    with pytest.raises(CalibrationError, match=r"returned a int, not an iterable of feed dicts"):
        list(load_calibration(f"{calib_module}:number", SPECS))
    with pytest.raises(CalibrationError, match=r"item 0 of 'my_calib_data:tuples' is a tuple, not a feed dict"):
        list(load_calibration(f"{calib_module}:tuples", SPECS))


# ------------------------------------------------------------------------------------------------ random, iterables
def test_random_source() -> None:
    cset = load_calibration("random", SPECS, dims={"seq": 7})
    assert cset.is_random and len(cset) == 8 and cset.summary()["is_random"] is True
    feeds = list(cset)
    assert feeds[0]["pixels"].shape == (1, 3, 4) and feeds[0]["ids"].shape == (1, 7)
    assert feeds[0]["ids"].dtype == np.int64 and set(np.unique(np.concatenate([f["ids"] for f in feeds]))) <= {0, 1}
    again = list(load_calibration("random", SPECS, dims={"seq": 7}))
    np.testing.assert_array_equal(feeds[5]["pixels"], again[5]["pixels"])  # seeded
    other = list(load_calibration("random", SPECS, seed=1, samples=3))
    assert len(other) == 3 and not np.array_equal(other[0]["pixels"], feeds[0]["pixels"])
    assert list(load_calibration("random", SPECS))[0]["ids"].shape == (1, 8)  # default for symbolic dims
    _, held = cset.split(2)
    np.testing.assert_array_equal(next(iter(held))["pixels"], feeds[0]["pixels"])


def test_python_iterables() -> None:
    d = _data(4)
    feeds = [{"pixels": d["pixels"][:3], "ids": d["ids"][:3]}, {"pixels": d["pixels"][3], "ids": d["ids"][3]}]
    cset = load_calibration(feeds, SPECS)
    assert len(cset) == 4 and _rows(cset) == [0, 1, 2, 3] and _rows(cset) == [0, 1, 2, 3]
    one = load_calibration({"pixels": d["pixels"][:2], "ids": d["ids"][:2]}, SPECS)
    assert len(one) == 2
    gen = load_calibration((f for f in feeds), SPECS)
    assert _rows(gen) == [0, 1, 2, 3]
    with pytest.raises(CalibrationError, match=r"the given iterable is a one-shot iterator and was already read"):
        list(gen)
    with pytest.raises(CalibrationError, match=r"one-shot iterator; it cannot be split"):
        load_calibration((f for f in feeds), SPECS).split(1)
    torch = pytest.importorskip("torch")
    tfeeds = [{"pixels": torch.from_numpy(d["pixels"]), "ids": torch.from_numpy(d["ids"])}]
    assert _rows(load_calibration(tfeeds, SPECS)) == [0, 1, 2, 3]


def test_split_and_samples_bounds() -> None:
    cset = load_calibration("random", SPECS, samples=5)
    calib, held = cset.split(0)
    assert len(calib) == 5 and len(held) == 0 and list(held) == []
    calib, held = cset.split(4)
    assert (len(calib), len(held)) == (1, 4)
    with pytest.raises(CalibrationError, match=r"has 5 sample\(s\); holding back 5 leaves none to calibrate on"):
        cset.split(5)
    with pytest.raises(ConfigError, match=r"holdout must be an integer >= 0, got -1"):
        cset.split(-1)
    with pytest.raises(ConfigError, match=r"samples must be a positive integer, got 0"):
        load_calibration("random", SPECS, samples=0)
    assert len(load_calibration([{"pixels": np.zeros((3, 3, 4), np.float32), "ids": np.zeros((3, 5), np.int64)}],
                                SPECS, samples=10)) == 3  # samples caps, it does not pad


def test_batches() -> None:
    d = _data(5)
    cset = load_calibration([d], SPECS)
    batches = list(cset.batches(2))
    assert [b["pixels"].shape for b in batches] == [(2, 3, 4), (2, 3, 4), (1, 3, 4)]
    np.testing.assert_array_equal(np.concatenate([b["ids"] for b in batches]), d["ids"])
    ragged = [{"pixels": d["pixels"][:1], "ids": d["ids"][:1]},
              {"pixels": d["pixels"][1:2], "ids": d["ids"][1:2, :3]}]
    assert len(list(load_calibration(ragged, SPECS).batches(1))) == 2
    with pytest.raises(CalibrationError, match=r"input 'ids' has samples of different shapes \[\(3,\), \(5,\)\]"):
        list(load_calibration(ragged, SPECS).batches(2))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        next(cset.batches(0))
    scalar = load_calibration([{"t": np.array([1.0, 2.0], np.float32)}], {"t": (np.float32, ())})
    assert [f["t"].shape for f in scalar] == [(), ()]
    with pytest.raises(CalibrationError, match=r"input 't' is a scalar"):
        next(scalar.batches(2))


# ------------------------------------------------------------------------------------------------ validation
def _save(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_bad_files_name_input_and_file(tmp_path: Path) -> None:
    d = _data(3)
    with pytest.raises(CalibrationError, match=r"calibration file '.*bad.npz': no data for model input 'ids' "
                                               r"\(data has: pixels; model inputs: pixels, ids\)"):
        load_calibration(_save(tmp_path, pixels=d["pixels"]), SPECS)
    with pytest.raises(CalibrationError, match=r"bad.npz': 'mask' is not a model input \(model inputs: pixels, ids\)"):
        load_calibration(_save(tmp_path, mask=d["ids"], **d), SPECS)
    with pytest.raises(CalibrationError, match=r"bad.npz': input 'ids' expects integers \(int64, e.g. token ids\), "
                                               r"the data holds float32"):
        load_calibration(_save(tmp_path, pixels=d["pixels"], ids=d["ids"].astype(np.float32)), SPECS)
    with pytest.raises(CalibrationError, match=r"input 'pixels' expects float32, the data holds uint8; integer/bool "
                                               r"data is not converted"):
        load_calibration(_save(tmp_path, pixels=d["pixels"].astype(np.uint8), ids=d["ids"]), SPECS)
    with pytest.raises(CalibrationError, match=r"bad.npz': input 'pixels' expects rank 3 \[batch,3,4\]; got an array "
                                               r"of shape \(3, 12\)"):
        load_calibration(_save(tmp_path, pixels=d["pixels"].reshape(3, 12), ids=d["ids"]), SPECS)
    with pytest.raises(CalibrationError, match=r"bad.npz': input 'pixels' has size 5 on axis 2, the model needs 4"):
        load_calibration(_save(tmp_path, pixels=np.zeros((3, 3, 5), np.float32), ids=d["ids"]), SPECS)
    with pytest.raises(CalibrationError, match=r"bad.npz': inputs hold different numbers of samples: 'pixels' 3, "
                                               r"'ids' 2"):
        load_calibration(_save(tmp_path, pixels=d["pixels"], ids=d["ids"][:2]), SPECS)
    specs = {"a": (np.int64, ("batch", "seq")), "b": (np.int64, ("batch", "seq"))}
    with pytest.raises(CalibrationError, match=r"dimension 'seq' is 5 in input 'a' but 4 in input 'b'"):
        load_calibration(_save(tmp_path, a=np.zeros((2, 5), np.int64), b=np.zeros((2, 4), np.int64)), specs)
    (tmp_path / "obj.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match=r"obj.npz': cannot be read"):
        load_calibration(tmp_path / "obj.npz", SPECS)


def test_nan_inf_and_range_errors_name_sample(tmp_path: Path) -> None:
    d = _data(4)
    pixels = d["pixels"].copy()
    pixels[2, 0, 1] = np.nan
    cset = load_calibration(_save(tmp_path, pixels=pixels, ids=d["ids"]), SPECS)
    with pytest.raises(CalibrationError, match=r"bad.npz', sample 2: input 'pixels' holds 1 NaN and 0 Inf value"):
        list(cset)
    big = d["pixels"].astype(np.float64)
    big[1, 0, 0] = 1e300
    with pytest.raises(CalibrationError, match=r"sample 1: input 'pixels' holds 0 NaN and 1 Inf value\(s\) after "
                                               r"casting float64 to float32"):
        list(load_calibration(_save(tmp_path, pixels=big, ids=d["ids"]), SPECS))
    specs32 = {"pixels": SPECS["pixels"], "ids": (np.int32, ("batch", "seq"))}
    ids = d["ids"].copy()
    ids[3, 0] = 2**40
    with pytest.raises(CalibrationError, match=r"sample 3: input 'ids' \(int32\) gets values in \[\d+, 1099511627776\]"):
        list(load_calibration(_save(tmp_path, pixels=d["pixels"], ids=ids), specs32))
    assert len(list(load_calibration(_save(tmp_path, **d), specs32))) == 4  # int64 -> int32 when in range
    feeds = [{"pixels": np.full((1, 3, 4), np.inf, np.float32), "ids": d["ids"][:1]}]
    with pytest.raises(CalibrationError, match=r"feed 0 of the given iterable: input 'pixels' holds 0 NaN and 12 Inf"):
        list(load_calibration(feeds, SPECS))


def test_repr_and_summary() -> None:
    cset = load_calibration("random", SPECS, samples=2)
    assert repr(cset) == "CalibrationSet(random data (seed 0), 2 samples)"
    assert cset.summary() == {"source": "random data (seed 0)", "samples": 2, "is_random": True,
                              "inputs": {"pixels": "pixels: float32[batch,3,4]", "ids": "ids: int64[batch,seq]"}}
    assert isinstance(cset, CalibrationSet)
