"""Calibration data: the samples that drive observers (and the report's per-layer error on held-back data).

`load_calibration(spec, input_specs)` accepts
- a path to an `.npz`: one array per model input, named after it, samples along the first axis;
- a folder of `.npz` / `.npy` files, read in sorted file-name order (zero-pad numbers: `0002` < `0010`);
  each `.npz` holds one or more samples by input name, each `.npy` one array of a single-input model;
  other files are ignored;
- `"module:function"`: an importable function (the current directory is searched too) returning an
  iterable of feed dicts (a single dict counts as one feed); it is called again for every pass;
- `"random"`: random data matching the input specs, for smoke tests (`is_random` is True so the report can
  say so): floats N(0, 1), integers and bools from {0, 1} (valid token ids, masks and type ids);
  symbolic dims take their size from `dims`, else 1 on axis 0 and 8 elsewhere; `samples` defaults to 8;
- from Python, an iterable of feed dicts (a list, or a one-shot iterator that can be read only once).

Samples. Every array, whatever its source, is cut into samples along axis 0 by one rule, for a model input
of rank r whose first dim is b (a static size, else 1):
  rank r      -> samples of b rows along axis 0 (a batch dim of 1 for dynamic-batch models);
  rank r + 1  -> each entry along axis 0 is one whole feed (a stack of feeds, e.g. (N, 1, 3, 224, 224));
  rank r - 1  -> one sample, the batch axis of 1 added (dynamic or size-1 batch only).
A rank-0 input takes a scalar (one sample) or a vector (one sample per element). An input of unknown rank
takes samples of one row along axis 0. `CalibrationSet` yields one feed dict per sample; `batches(B)`
concatenates B samples along axis 0 (the model must have a dynamic batch dim, and the B samples equal
shapes).

Streaming. An `.npz` member is read one sample at a time from its zip stream (compressed or not, no full
load; Fortran-ordered arrays are the exception and are loaded whole); `.npy` files are memory-mapped; a
folder is read one file at a time. File headers are read up front, so names, dtypes and shapes of file
data fail before any sample runs, and the length is known.

Validation (`CalibrationError`, naming the input and file or feed):
missing or extra inputs, ranks and static dims that disagree with the model, a symbolic dim with two sizes
in one sample, NaN/Inf in float data, an empty set, a `module:function` that cannot be imported or does not
return feed dicts. Dtypes: float data is cast to a float input's dtype (float64 -> float32 is accepted:
calibration does not need the extra precision; values that overflow become Inf and are reported); integer
and bool data is cast to an integer input's dtype when every value fits (int32 -> int64 token ids, int64 ->
int32 when in range); float data for an integer input and integer data for a float input are refused (ids
must stay integers; raw uint8 pixels usually mean a missing normalization), as is non-bool data for a bool
input.

`split(holdout)` holds back the *first* `holdout` samples (the report measures per-layer error on them) and
calibrates on the rest; taking the head works for streams of unknown length.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from .errors import CalibrationError, ConfigError
from .ir import DType, Graph, Model, TensorType, Value

Dim = int | str | None
Feed = dict[str, np.ndarray]
_Samples = Generator[tuple[str, dict[str, np.ndarray]], None, None]  # (where, raw sample)

DEFAULT_RANDOM_SAMPLES = 8
_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_ML_FLOATS = {
    DType.BFLOAT16: "bfloat16", DType.FLOAT8E4M3FN: "float8_e4m3fn", DType.FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    DType.FLOAT8E5M2: "float8_e5m2", DType.FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
}

__all__ = ["DEFAULT_RANDOM_SAMPLES", "CalibrationSet", "InputSpec", "input_specs_from", "load_calibration"]


# ------------------------------------------------------------------------------------------------ specs
@dataclass(frozen=True)
class InputSpec:
    """A model input as calibration data must match it: numpy dtype and shape (None: rank unknown; a dim
    is an int, a symbol such as "batch", or None for unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None

    @property
    def batch(self) -> int:
        """Rows of one sample along axis 0: the static first dim, else 1."""
        d0 = self.shape[0] if self.shape else None
        return d0 if isinstance(d0, int) and d0 > 0 else 1

    def shape_str(self) -> str:
        if self.shape is None:
            return "[*]"
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{self.shape_str()}"


def _numpy_dtype(dt: DType, name: str) -> np.dtype:
    if dt in _ML_FLOATS:
        import ml_dtypes  # a dependency; only these inputs need it

        return np.dtype(getattr(ml_dtypes, _ML_FLOATS[dt]))
    if dt in (DType.STRING, DType.UNDEFINED) or dt.storage.kind not in "biuf":
        raise CalibrationError(f"input {name!r} has element type {dt.name}; calibration data supports numeric "
                               f"and bool inputs only")
    return dt.storage


def _spec_from_value(v: Value) -> InputSpec:
    if not isinstance(v.type, TensorType):
        raise CalibrationError(f"input {v.name!r} has type {v.type}; calibration data supports tensor inputs only")
    return InputSpec(v.name, _numpy_dtype(v.type.dtype, v.name), v.type.shape)


def input_specs_from(inputs: Model | Graph | Sequence[Value] | Mapping[str, Any]) -> dict[str, InputSpec]:
    """Model inputs by name, from a Model/Graph (its inputs that are not initializers), a list of graph
    input Values, or a dict name -> InputSpec | TensorType | (dtype, shape) (dtype: numpy dtype-like or
    DType; shape: a tuple of ints / symbols / None, or None)."""
    if isinstance(inputs, Model):
        inputs = inputs.graph
    if isinstance(inputs, Graph):
        inputs = [v for v in inputs.inputs if not v.is_initializer]
    if isinstance(inputs, Mapping):
        out = {}
        for name, s in inputs.items():
            if isinstance(s, InputSpec):
                out[name] = s
            elif isinstance(s, TensorType):
                out[name] = InputSpec(name, _numpy_dtype(s.dtype, name), s.shape)
            elif isinstance(s, tuple) and len(s) == 2:
                dt, shape = s
                npdt = _numpy_dtype(dt, name) if isinstance(dt, DType) else np.dtype(dt)
                out[name] = InputSpec(name, npdt, None if shape is None else tuple(shape))
            else:
                raise TypeError(f"input spec for {name!r} must be an InputSpec, a TensorType or (dtype, shape); "
                                f"got {s!r}")
        return out
    return {v.name: _spec_from_value(v) for v in inputs if not v.is_initializer}


# ------------------------------------------------------------------------------------------------ checks
def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt.name in _ML_FLOATS.values()


def _layout(
    spec: InputSpec, shape: tuple[int, ...], where: str, unbatched: bool = True
) -> tuple[int, tuple[int, ...]]:
    """(number of samples, shape of one sample) of an array of `shape` for input `spec` (module doc rule);
    `unbatched=False` refuses rank r - 1 (a top-level .npz has samples on its first axis by definition)."""
    nd = len(shape)
    if spec.shape is None:
        return (1, ()) if nd == 0 else (shape[0], (1, *shape[1:]))
    r, b = len(spec.shape), spec.batch
    if r == 0:
        if nd <= 1:
            return (1, ()) if nd == 0 else (shape[0], ())
    elif nd == r:
        if shape[0] % b:
            raise CalibrationError(f"{where}: input {spec.name!r} has {shape[0]} rows along axis 0, not a multiple "
                                   f"of the model's static batch size {b} (input shape {spec.shape_str()})")
        return shape[0] // b, (b, *shape[1:])
    elif nd == r + 1:
        return shape[0], tuple(shape[1:])
    elif nd == r - 1 and b == 1 and unbatched:
        return 1, (1, *shape)
    raise CalibrationError(
        f"{where}: input {spec.name!r} expects rank {r} {spec.shape_str()}; got an array of shape {tuple(shape)} "
        f"(accepted: rank {r} with samples along axis 0, rank {r + 1} as a stack of feeds"
        + (f", or rank {r - 1} as one sample)" if r > 0 and b == 1 and unbatched else ")"))


def _check_shapes(
    specs: Mapping[str, InputSpec], shapes: Mapping[str, tuple[int, ...]], where: str,
    arrays: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Static dims must match; one symbol, one size within a sample. `arrays`: the shapes the samples were
    cut from, for the message."""
    sizes: dict[str, tuple[int, str]] = {}
    for name, shape in shapes.items():
        spec = specs[name]
        if spec.shape is None:
            continue
        src = f" cut from an array of shape {arrays[name]}" if arrays and arrays[name] != shape else ""
        if len(shape) != len(spec.shape):
            raise CalibrationError(f"{where}: input {name!r} expects rank {len(spec.shape)} {spec.shape_str()}, "
                                   f"got a sample of shape {shape}{src}")
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(want, int) and want != got:
                raise CalibrationError(f"{where}: input {name!r} has size {got} on axis {axis}, the model "
                                       f"needs {want} (input shape {spec.shape_str()}, sample shape {shape}{src})")
            if isinstance(want, str):
                seen = sizes.setdefault(want, (got, name))
                if seen[0] != got:
                    raise CalibrationError(f"{where}: dimension {want!r} is {seen[0]} in input {seen[1]!r} but "
                                           f"{got} in input {name!r}")


def _check_names(specs: Mapping[str, InputSpec], names: Iterable[str], where: str) -> None:
    names = list(names)
    missing = [n for n in specs if n not in names]
    extra = [n for n in names if n not in specs]
    if missing:
        raise CalibrationError(f"{where}: no data for model input {missing[0]!r} (data has: "
                               f"{', '.join(names) or 'nothing'}; model inputs: {', '.join(specs)})")
    if extra:
        raise CalibrationError(f"{where}: {extra[0]!r} is not a model input (model inputs: {', '.join(specs)})")


def _check_dtype(spec: InputSpec, dt: np.dtype, where: str) -> None:
    want = spec.dtype
    if dt == want:
        return
    if _is_float(want):
        if _is_float(dt):
            return
        raise CalibrationError(
            f"{where}: input {spec.name!r} expects {want}, the data holds {dt}; integer/bool data is not "
            f"converted to float implicitly (convert and normalize it in your data pipeline)")
    if want.kind in "iu":
        if dt.kind in "iub":
            return
        raise CalibrationError(f"{where}: input {spec.name!r} expects integers ({want}, e.g. token ids), the "
                               f"data holds {dt}; floats are not rounded to integers implicitly")
    raise CalibrationError(f"{where}: input {spec.name!r} expects {want}, the data holds {dt}")


def _convert(spec: InputSpec, arr: np.ndarray, where: str) -> np.ndarray:
    """Cast `arr` to the input's dtype (see the module doc) and check floats are finite."""
    want = spec.dtype
    _check_dtype(spec, arr.dtype, where)
    if arr.dtype != want and want.kind in "iu" and arr.size and arr.dtype.kind in "iu":
        info = np.iinfo(want)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise CalibrationError(f"{where}: input {spec.name!r} ({want}) gets values in [{lo}, {hi}] from "
                                   f"{arr.dtype} data, outside {want}'s range")
    with np.errstate(over="ignore"):  # an overflow becomes Inf, reported just below
        out = arr if arr.dtype == want else arr.astype(want)
    if _is_float(want) and out.size:
        check = out if out.dtype.kind == "f" else out.astype(np.float32)
        finite = np.isfinite(check)
        if not finite.all():
            n_nan = int(np.isnan(check).sum())
            n_inf = int(check.size - finite.sum()) - n_nan
            cast = ""
            if arr.dtype != want and np.isfinite(np.asarray(arr, dtype=np.float64)).all():
                cast = f" after casting {arr.dtype} to {want} (values beyond {want}'s range)"
            raise CalibrationError(f"{where}: input {spec.name!r} holds {n_nan} NaN and {n_inf} Inf value(s){cast}; "
                                   f"calibration data must be finite")
    return out


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch is never imported here
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        x = t.numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------ sources
class _Source:
    """Where raw samples come from. `samples(start)` yields (where, {name: array}) from sample `start` on."""

    description = ""
    is_random = False
    one_shot = False

    def length(self) -> int | None:
        return None

    def samples(self, start: int) -> _Samples:
        raise NotImplementedError


@dataclass
class _Member:
    """One array of a file: its header, and where its data starts (None: load it whole)."""

    key: str  # zip member name, or "" for a .npy file
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int | None


def _read_header(fp: Any, where: str) -> tuple[tuple[int, ...], np.dtype, bool, int | None]:
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        else:
            return (), np.dtype(np.uint8), True, None  # newer header: let np.load read it whole
    except ValueError as e:
        raise CalibrationError(f"{where}: not a readable numpy array ({e})") from None
    if dtype.hasobject:
        raise CalibrationError(f"{where}: holds Python objects (pickled); calibration data must be numeric arrays")
    return tuple(shape), dtype, fortran, fp.tell()


class _ArrayFile:
    """An .npz or .npy file: member headers read at construction, samples streamed on demand."""

    def __init__(self, path: Path, specs: Mapping[str, InputSpec], single: bool) -> None:
        self.path = path
        self.where = f"calibration file '{path}'"
        self.members: dict[str, _Member] = {}
        try:
            if path.suffix == ".npy":
                if len(specs) != 1:
                    raise CalibrationError(f"{self.where}: a .npy file holds one array, but the model has "
                                           f"{len(specs)} inputs ({', '.join(specs)}); use .npz files with one "
                                           f"array per input name")
                with open(path, "rb") as fp:
                    shape, dtype, fortran, offset = _read_header(fp, self.where)
                self.members[next(iter(specs))] = _Member("", shape, dtype, None if fortran else offset)
            else:
                with zipfile.ZipFile(path) as zf:
                    for key in zf.namelist():
                        name = key[:-4] if key.endswith(".npy") else key
                        with zf.open(key) as fp:
                            shape, dtype, fortran, offset = _read_header(fp, f"{self.where}, array {name!r}")
                        self.members[name] = _Member(key, shape, dtype, None if fortran else offset)
        except (OSError, zipfile.BadZipFile) as e:
            raise CalibrationError(f"{self.where}: cannot be read ({e})") from None
        if any(m.data_offset is None for m in self.members.values()):
            self._load_headers_whole()
        _check_names(specs, self.members, self.where)
        counts, shapes = {}, {}
        for name, m in self.members.items():
            _check_dtype(specs[name], m.dtype, self.where)
            counts[name], shapes[name] = _layout(specs[name], m.shape, self.where, unbatched=not single)
        _check_shapes(specs, shapes, self.where, {n: m.shape for n, m in self.members.items()})
        if len(set(counts.values())) > 1:
            raise CalibrationError(f"{self.where}: inputs hold different numbers of samples: "
                                   + ", ".join(f"{n!r} {c}" for n, c in counts.items()))
        self.count = next(iter(counts.values()), 0)
        self.sample_shapes = shapes

    def _load_headers_whole(self) -> None:
        """Fortran-ordered or new-format members: read their true shape and dtype with np.load."""
        for name, m in self.members.items():
            if m.data_offset is None:
                try:
                    arr = self._load_whole(name)
                except ValueError as e:  # e.g. pickled objects behind a new-format header
                    raise CalibrationError(f"{self.where}, array {name!r}: cannot be read ({e})") from None
                m.shape, m.dtype = arr.shape, arr.dtype

    def _load_whole(self, name: str) -> np.ndarray:
        if self.path.suffix == ".npy":
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        with np.load(self.path, allow_pickle=False) as data:
            return data[name]

    def samples(self, start: int) -> _Samples:
        if start >= self.count:
            return
        streams = {name: self._rows(name, m, start) for name, m in self.members.items()}
        try:
            for i in range(start, self.count):
                yield f"{self.where}, sample {i}", {name: next(rows) for name, rows in streams.items()}
        finally:
            for rows in streams.values():
                rows.close()

    def _rows(self, name: str, m: _Member, start: int) -> Generator[np.ndarray, None, None]:
        sample_shape = self.sample_shapes[name]
        items = math.prod(sample_shape)
        if m.data_offset is None or self.path.suffix == ".npy":
            arr = self._load_whole(name)  # .npy: memory-mapped; .npz: only Fortran-ordered members
            flat = arr.reshape(-1) if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(-1)
            for i in range(start, self.count):
                yield np.array(flat[i * items:(i + 1) * items]).reshape(sample_shape)
            return
        nbytes = items * m.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(m.key) as fp:
            fp.seek(m.data_offset + start * nbytes)  # forward seek decompresses and drops: no full load
            for _ in range(start, self.count):
                buf = bytearray(nbytes)
                got = fp.readinto(buf) if nbytes else 0
                if got != nbytes:
                    raise CalibrationError(f"{self.where}: array {name!r} is truncated")
                yield np.frombuffer(buf, dtype=m.dtype).reshape(sample_shape)


class _FileSource(_Source):
    def __init__(self, files: list[Path], specs: Mapping[str, InputSpec], description: str, single: bool) -> None:
        self.files = [_ArrayFile(f, specs, single) for f in files]
        self.description = description

    def length(self) -> int:
        return sum(f.count for f in self.files)

    def samples(self, start: int) -> _Samples:
        for f in self.files:
            if start >= f.count:
                start -= f.count  # skip the whole file unread
                continue
            yield from f.samples(start)
            start = 0


class _RandomSource(_Source):
    is_random = True

    def __init__(self, specs: Mapping[str, InputSpec], count: int, seed: int, dims: Mapping[str, int]) -> None:
        self.specs, self.count, self.seed = specs, count, seed
        self.description = f"random data (seed {seed})"
        self.shapes = {name: self._shape(s, dims) for name, s in specs.items()}

    @staticmethod
    def _shape(spec: InputSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
        if spec.shape is None:
            raise CalibrationError(f"random calibration data: input {spec.name!r} has unknown rank; give real data")
        out = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                out.append(d)
            elif isinstance(d, str) and d in dims:
                out.append(int(dims[d]))
            else:
                out.append(1 if axis == 0 else 8)
        return tuple(out)

    def length(self) -> int:
        return self.count

    def samples(self, start: int) -> _Samples:
        for i in range(start, self.count):
            rng = np.random.default_rng([self.seed, i])  # per-sample seeds: any window reproduces its samples
            feed = {}
            for name, spec in self.specs.items():
                shape = self.shapes[name]
                if _is_float(spec.dtype):
                    feed[name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
                elif spec.dtype.kind == "b":
                    feed[name] = rng.integers(0, 2, shape).astype(bool)
                else:
                    feed[name] = rng.integers(0, 2, shape).astype(spec.dtype)
            yield f"random data, sample {i}", feed


class _FeedSource(_Source):
    """Feed dicts from Python: a re-iterable collection, a one-shot iterator, or a factory called per pass."""

    def __init__(
        self, make: Callable[[], Any], specs: Mapping[str, InputSpec], description: str, item: str,
        one_shot: bool = False, counted: bool = False,
    ) -> None:
        self.make, self.specs, self.description, self.item = make, specs, description, item
        self.one_shot = one_shot
        self._used = False
        self._length: int | None = None
        if counted:  # an in-memory collection: check every feed now and know the length
            self._length = sum(self._layout(k, feed)[0] for k, feed in enumerate(self._feeds()))

    def length(self) -> int | None:
        return self._length

    def _feeds(self) -> Iterator[Any]:
        if self.one_shot:
            if self._used:
                raise CalibrationError(f"{self.description} is a one-shot iterator and was already read; pass a "
                                       f"list, or a function ('module:function') that can be called again")
            self._used = True
        data = self.make()
        if isinstance(data, Mapping):
            data = [data]
        try:
            it = iter(data)
        except TypeError:
            raise CalibrationError(f"{self.description} returned a {type(data).__name__}, not an iterable of "
                                   f"feed dicts (input name -> array)") from None
        yield from it

    def _layout(self, k: int, feed: Any) -> tuple[int, dict[str, tuple[int, ...]], dict[str, np.ndarray], str]:
        where = f"{self.item} {k} of {self.description}"
        if not isinstance(feed, Mapping):
            raise CalibrationError(f"{where} is a {type(feed).__name__}, not a feed dict (input name -> array)")
        _check_names(self.specs, feed, where)
        arrays = {name: _as_array(v) for name, v in feed.items()}
        counts, shapes = {}, {}
        for name, a in arrays.items():
            _check_dtype(self.specs[name], a.dtype, where)
            counts[name], shapes[name] = _layout(self.specs[name], a.shape, where)
        _check_shapes(self.specs, shapes, where, {n: a.shape for n, a in arrays.items()})
        if len(set(counts.values())) > 1:
            raise CalibrationError(f"{where}: inputs hold different numbers of samples: "
                                   + ", ".join(f"{n!r} {c}" for n, c in counts.items()))
        return next(iter(counts.values()), 0), shapes, arrays, where

    def samples(self, start: int) -> _Samples:
        for k, feed in enumerate(self._feeds()):
            count, shapes, arrays, where = self._layout(k, feed)
            if start >= count:
                start -= count
                continue
            rows = {n: np.ascontiguousarray(a).reshape(count, *shapes[n]) for n, a in arrays.items()}
            for i in range(start, count):
                yield (f"{where}, sample {i}" if count > 1 else where), {n: r[i, ...] for n, r in rows.items()}
            start = 0


# ------------------------------------------------------------------------------------------------ the set
class CalibrationSet:
    """An iterable of feed dicts, one sample each (see the module doc), over a window [start, stop) of its
    source's samples. Streams: at most one sample (or one batch) is in memory at a time."""

    def __init__(
        self, source: _Source, specs: Mapping[str, InputSpec], *, start: int = 0, stop: int | None = None,
        require_samples: bool = True,
    ) -> None:
        self._source = source
        self.input_specs = dict(specs)
        self.start, self.stop = start, stop
        self._require = require_samples

    @property
    def description(self) -> str:
        return self._source.description

    @property
    def is_random(self) -> bool:
        return self._source.is_random

    @property
    def length(self) -> int | None:
        """Number of samples, or None when the source cannot tell without reading it."""
        n = self._source.length()
        if n is None:
            return None
        if self.stop is not None:
            n = min(n, self.stop)
        return max(0, n - self.start)

    def __len__(self) -> int:
        n = self.length
        if n is None:
            raise TypeError(f"the length of {self.description} is unknown until it is read")
        return n

    def __iter__(self) -> Iterator[Feed]:
        n = 0
        raw = self._source.samples(self.start)
        limit = None if self.stop is None else self.stop - self.start
        try:
            for where, feed in itertools.islice(raw, limit):
                out = {name: _convert(self.input_specs[name], arr, where) for name, arr in feed.items()}
                _check_shapes(self.input_specs, {k: v.shape for k, v in out.items()}, where)
                n += 1
                yield out
        finally:
            raw.close()  # closes the file streams now, also when the reader stops early
        if n == 0 and self._require:
            skipped = f" after the {self.start} held-back sample(s)" if self.start else ""
            raise CalibrationError(f"calibration data {self.description} holds no samples{skipped}")

    def batches(self, batch_size: int) -> Iterator[Feed]:
        """Feed dicts of `batch_size` samples concatenated along axis 0 (the last one may be smaller)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size > 1:
            for spec in self.input_specs.values():
                if spec.shape is not None and (len(spec.shape) == 0 or isinstance(spec.shape[0], int)):
                    what = "is a scalar" if not spec.shape else f"has a static first dimension {spec.shape[0]}"
                    raise CalibrationError(f"input {spec.name!r} {what} (shape {spec.shape_str()}); batches of "
                                           f"{batch_size} samples cannot be fed: use batch_size=1")
        it = iter(self)
        while True:
            group = list(itertools.islice(it, batch_size))
            if not group:
                return
            if len(group) == 1:
                yield group[0]
                continue
            out = {}
            for name in group[0]:
                shapes = {g[name].shape[1:] for g in group}
                if len(shapes) > 1:
                    raise CalibrationError(f"{self.description}: input {name!r} has samples of different shapes "
                                           f"{sorted(shapes)} in one batch of {batch_size}; pad them to one shape "
                                           f"or use batch_size=1")
                out[name] = np.concatenate([g[name] for g in group], axis=0)
            yield out

    def take(self, n: int) -> CalibrationSet:
        """The first `n` samples."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"samples must be a positive integer, got {n!r}")
        stop = self.start + n if self.stop is None else min(self.stop, self.start + n)
        return CalibrationSet(self._source, self.input_specs, start=self.start, stop=stop,
                              require_samples=self._require)

    def split(self, holdout: int) -> tuple[CalibrationSet, CalibrationSet]:
        """(calibration part, held-back part): the first `holdout` samples are held back, the rest calibrate."""
        if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
            raise ConfigError(f"holdout must be an integer >= 0, got {holdout!r}")
        if self._source.one_shot and holdout:
            raise CalibrationError(f"{self.description} is a one-shot iterator; it cannot be split into two sets "
                                   f"(pass a list or a 'module:function')")
        n = self.length
        if holdout and n is not None and holdout >= n:
            raise CalibrationError(f"calibration data {self.description} has {n} sample(s); holding back {holdout} "
                                   f"leaves none to calibrate on")
        mid = self.start + holdout
        if self.stop is not None:
            mid = min(mid, self.stop)
        calib = CalibrationSet(self._source, self.input_specs, start=mid, stop=self.stop,
                               require_samples=self._require)
        held = CalibrationSet(self._source, self.input_specs, start=self.start, stop=mid, require_samples=False)
        return calib, held

    def summary(self) -> dict[str, Any]:
        """What the report records about the data."""
        return {"source": self.description, "samples": self.length, "is_random": self.is_random,
                "inputs": {n: str(s) for n, s in self.input_specs.items()}}

    def __repr__(self) -> str:
        n = self.length
        return f"CalibrationSet({self.description}, {'unknown number of' if n is None else n} samples)"


# ------------------------------------------------------------------------------------------------ loading
def _import_function(spec: str) -> Callable[[], Any]:
    module_name, func_name = spec.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # what `python -m` would do: a calib.py beside the user's data is importable as "calib"
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an import runs user code: any error is a bad calibration spec
        raise CalibrationError(f"calibration data {spec!r}: cannot import module {module_name!r} "
                               f"({type(e).__name__}: {e})") from e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn = getattr(module, func_name, None)
    if fn is None:
        raise CalibrationError(f"calibration data {spec!r}: module {module_name!r} has no function {func_name!r}")
    if not callable(fn):
        raise CalibrationError(f"calibration data {spec!r}: {func_name!r} is a {type(fn).__name__}, not a function")

    def call() -> Any:
        try:
            return fn()
        except Exception as e:
            raise CalibrationError(f"calibration data {spec!r}: calling {func_name}() raised "
                                   f"{type(e).__name__}: {e}") from e

    return call


def _folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".npz", ".npy")
                   and not p.name.startswith("."))
    if not files:
        raise CalibrationError(f"calibration folder '{path}' holds no .npz or .npy files")
    return files


def load_calibration(
    spec: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    input_specs: Model | Graph | Sequence[Value] | Mapping[str, Any],
    *,
    samples: int | None = None,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
) -> CalibrationSet:
    """The calibration samples `spec` names (see the module doc), checked against the model inputs.

    `samples`: use at most the first N (random data: exactly N, default 8). `seed`: random data only.
    `dims`: sizes of symbolic dims for random data (e.g. {"seq": 128})."""
    specs = input_specs_from(input_specs)
    if not specs:
        raise CalibrationError("the model has no inputs to feed; calibration data is not needed")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"samples must be a positive integer, got {samples!r}")
    source: _Source
    if isinstance(spec, str) and spec == "random":
        source = _RandomSource(specs, samples or DEFAULT_RANDOM_SAMPLES, seed, dims or {})
    elif isinstance(spec, str | os.PathLike):
        source = _path_or_module_source(spec, specs)
    elif isinstance(spec, Mapping):
        source = _FeedSource(lambda: [spec], specs, "the given feed dict", "feed", counted=True)
    elif isinstance(spec, Iterable):
        one_shot = iter(spec) is spec
        counted = isinstance(spec, list | tuple)
        source = _FeedSource(lambda: spec, specs, "the given iterable", "feed", one_shot=one_shot, counted=counted)
    else:
        raise CalibrationError(f"calibration data must be a path, 'module:function', 'random' or an iterable of "
                               f"feed dicts; got a {type(spec).__name__}")
    cset = CalibrationSet(source, specs)
    if samples is not None:
        cset = cset.take(samples)
    if cset.length == 0:
        raise CalibrationError(f"calibration data {source.description} holds no samples")
    return cset


def _path_or_module_source(spec: str | os.PathLike[str], specs: Mapping[str, InputSpec]) -> _Source:
    path = Path(spec)
    if path.is_dir():
        return _FileSource(_folder_files(path), specs, f"folder '{path}'", single=False)
    if path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise CalibrationError(f"calibration file '{path}' is not an .npz or .npy file")
        return _FileSource([path], specs, f"file '{path}'", single=True)
    text = os.fspath(spec)
    if isinstance(spec, str) and _MODULE_FUNCTION.match(text):
        return _FeedSource(_import_function(text), specs, f"'{text}'", "item")
    if path.suffix in (".npz", ".npy") or os.sep in text or (os.altsep and os.altsep in text):
        raise CalibrationError(f"calibration data '{text}' not found")
    raise CalibrationError(f"calibration data {text!r} is neither an existing .npz/.npy file or folder, a "
                           f"'module:function', nor 'random'")
