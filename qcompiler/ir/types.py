"""Value types of the IR: element types (ONNX's numbering), shapes with symbolic dims, and container types.

Numpy only. Element types that numpy cannot hold natively (bfloat16, float8, int4, ...) are stored in a
*storage* numpy dtype of the same width (bit patterns; 4-bit values unpacked one per byte); `DType.storage`
says which, so an initializer survives a load/save bit-exactly without ml_dtypes in the core.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

Dim = int | str | None  # a size, a symbol ("batch"), or unknown


class DType(enum.IntEnum):
    """Tensor element types, numbered as ONNX's TensorProto.DataType."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short(self) -> str:
        """The name used in the IR's text form (f32, i64, f8e4m3fn, ...)."""
        return _SHORT[self]

    @property
    def storage(self) -> np.dtype:
        """The numpy dtype an array of this type is held in (bit patterns for exotic floats)."""
        return np.dtype(_STORAGE[self])

    @property
    def bitwidth(self) -> int:
        """Bits of one element as ONNX stores it (4 for int4; 0 for strings)."""
        return _BITS[self]

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTS

    @property
    def is_signed(self) -> bool:
        return self in _SIGNED

    @property
    def is_native(self) -> bool:
        """True when the storage dtype holds the values themselves, not bit patterns or unpacked nibbles."""
        return self not in _NON_NATIVE

    @classmethod
    def from_short(cls, text: str) -> DType:
        try:
            return _FROM_SHORT[text]
        except KeyError:
            raise ValueError(f"unknown element type {text!r}; valid: {', '.join(sorted(_FROM_SHORT))}") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        """The element type of a numpy array (native dtypes only)."""
        dt = np.dtype(dtype)
        try:
            return _FROM_NUMPY[dt]
        except KeyError:
            raise ValueError(f"numpy dtype {dt} has no IR element type") from None


_SHORT = {
    DType.UNDEFINED: "undef", DType.FLOAT: "f32", DType.UINT8: "u8", DType.INT8: "i8", DType.UINT16: "u16",
    DType.INT16: "i16", DType.INT32: "i32", DType.INT64: "i64", DType.STRING: "str", DType.BOOL: "bool",
    DType.FLOAT16: "f16", DType.DOUBLE: "f64", DType.UINT32: "u32", DType.UINT64: "u64",
    DType.COMPLEX64: "c64", DType.COMPLEX128: "c128", DType.BFLOAT16: "bf16",
    DType.FLOAT8E4M3FN: "f8e4m3fn", DType.FLOAT8E4M3FNUZ: "f8e4m3fnuz", DType.FLOAT8E5M2: "f8e5m2",
    DType.FLOAT8E5M2FNUZ: "f8e5m2fnuz", DType.UINT4: "u4", DType.INT4: "i4", DType.FLOAT4E2M1: "f4e2m1",
    DType.FLOAT8E8M0: "f8e8m0", DType.UINT2: "u2", DType.INT2: "i2",
}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}
_STORAGE = {
    DType.UNDEFINED: np.uint8, DType.FLOAT: np.float32, DType.UINT8: np.uint8, DType.INT8: np.int8,
    DType.UINT16: np.uint16, DType.INT16: np.int16, DType.INT32: np.int32, DType.INT64: np.int64,
    DType.STRING: object, DType.BOOL: np.bool_, DType.FLOAT16: np.float16, DType.DOUBLE: np.float64,
    DType.UINT32: np.uint32, DType.UINT64: np.uint64, DType.COMPLEX64: np.complex64,
    DType.COMPLEX128: np.complex128, DType.BFLOAT16: np.uint16, DType.FLOAT8E4M3FN: np.uint8,
    DType.FLOAT8E4M3FNUZ: np.uint8, DType.FLOAT8E5M2: np.uint8, DType.FLOAT8E5M2FNUZ: np.uint8,
    DType.UINT4: np.uint8, DType.INT4: np.int8, DType.FLOAT4E2M1: np.uint8, DType.FLOAT8E8M0: np.uint8,
    DType.UINT2: np.uint8, DType.INT2: np.int8,
}
_BITS = {
    DType.UNDEFINED: 0, DType.STRING: 0, DType.BOOL: 8, DType.UINT4: 4, DType.INT4: 4, DType.FLOAT4E2M1: 4,
    DType.UINT2: 2, DType.INT2: 2,
}
for _d in DType:
    _BITS.setdefault(_d, np.dtype(_STORAGE[_d]).itemsize * 8)
_FLOATS = {
    DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16, DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ,
    DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1, DType.FLOAT8E8M0,
}
_INTS = {
    DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.INT32, DType.INT64, DType.UINT32, DType.UINT64,
    DType.UINT4, DType.INT4, DType.UINT2, DType.INT2,
}
_SIGNED = {DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.INT4, DType.INT2} | _FLOATS
_NON_NATIVE = {
    DType.BFLOAT16, DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
    DType.UINT4, DType.INT4, DType.FLOAT4E2M1, DType.FLOAT8E8M0, DType.UINT2, DType.INT2, DType.UNDEFINED,
}
_FROM_NUMPY = {np.dtype(_STORAGE[d]): d for d in DType if d not in _NON_NATIVE and d is not DType.STRING}


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape. `shape is None` means the rank is unknown."""

    dtype: DType
    shape: tuple[Dim, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[*]"
        return f"{self.dtype.short}[{','.join(_dim_str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SequenceType:
    elem: ValueType | None

    def __str__(self) -> str:
        return f"seq<{_type_str(self.elem)}>"


@dataclass(frozen=True)
class OptionalType:
    elem: ValueType | None

    def __str__(self) -> str:
        return f"opt<{_type_str(self.elem)}>"


@dataclass(frozen=True)
class MapType:
    key: DType
    value: ValueType | None

    def __str__(self) -> str:
        return f"map<{self.key.short},{_type_str(self.value)}>"


@dataclass(frozen=True)
class SparseTensorType:
    dtype: DType
    shape: tuple[Dim, ...] | None = None

    def __str__(self) -> str:
        return "sparse<" + str(TensorType(self.dtype, self.shape)) + ">"


ValueType = TensorType | SequenceType | OptionalType | MapType | SparseTensorType


def _type_str(t: ValueType | None) -> str:
    return "?" if t is None else str(t)


def _dim_str(d: Dim) -> str:
    if d is None:
        return "?"
    if isinstance(d, int):
        return str(d)
    # Symbols that are not plain identifiers are quoted so the text form parses back.
    return d if d.isidentifier() else '"' + d.replace("\\", "\\\\").replace('"', '\\"') + '"'
