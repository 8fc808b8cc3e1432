"""Constant tensors (initializers and tensor attributes), in memory or lazily read from external data.

A `Tensor` holds its values in the element type's storage dtype (see `DType.storage`). External data is
mapped, not read, until someone asks for the values, so a model over 2 GB loads and saves in bounded memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .types import DType


@dataclass(frozen=True)
class ExternalRef:
    """Where a tensor's raw bytes live on disk (ONNX external data: location, offset, length)."""

    path: str  # absolute path of the data file
    offset: int = 0
    length: int | None = None


class Tensor:
    """An immutable constant: element type, static shape, values (in memory or external)."""

    __slots__ = ("dtype", "shape", "_array", "external", "doc_string", "metadata_props")

    def __init__(
        self,
        array: np.ndarray | None = None,
        dtype: DType | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        external: ExternalRef | None = None,
        doc_string: str = "",
    ) -> None:
        if array is None and external is None:
            raise ValueError("a Tensor needs an array or an external reference")
        if array is not None:
            array = np.asarray(array)
            if dtype is None:
                dtype = DType.STRING if array.dtype == object else DType.from_numpy(array.dtype)
            if array.dtype != dtype.storage:
                array = array.astype(dtype.storage)
            shape = tuple(int(d) for d in array.shape)
            array.setflags(write=False)
        if dtype is None or shape is None:
            raise ValueError("an external Tensor needs its dtype and shape")
        self.dtype: DType = dtype
        self.shape: tuple[int, ...] = tuple(shape)
        self._array = array
        self.external = external
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes as ONNX stores the values (4-bit types packed two per byte)."""
        if self.dtype is DType.STRING:
            return sum(len(s) for s in self.numpy().ravel())
        return (self.size * self.dtype.bitwidth + 7) // 8

    @property
    def is_loaded(self) -> bool:
        return self._array is not None

    def numpy(self) -> np.ndarray:
        """The values as a read-only array in the storage dtype (memory-mapped for external data)."""
        if self._array is None:
            self._array = _read_external(self.external, self.dtype, self.shape)
        return self._array

    def raw_bytes(self) -> bytes | memoryview:
        """The values as ONNX raw_data bytes (little-endian; 4-bit and 2-bit values packed)."""
        if self.external is not None and self._array is None:
            return memoryview(_map_external(self.external, self.nbytes))
        return pack_storage(self.numpy(), self.dtype)

    def __repr__(self) -> str:
        where = "external" if self.external is not None else "inline"
        return f"Tensor({self.dtype.short}{list(self.shape)}, {where})"


def pack_storage(array: np.ndarray, dtype: DType) -> bytes:
    """Storage-dtype array -> ONNX raw bytes (little-endian; sub-byte types packed, low bits first)."""
    if dtype.bitwidth in (2, 4):
        per_byte = 8 // dtype.bitwidth
        mask = (1 << dtype.bitwidth) - 1
        flat = array.astype(np.uint8).ravel() & mask
        pad = (-flat.size) % per_byte
        flat = np.concatenate([flat, np.zeros(pad, np.uint8)]).reshape(-1, per_byte)
        out = np.zeros(flat.shape[0], np.uint8)
        for i in range(per_byte):
            out |= (flat[:, i] << (i * dtype.bitwidth)).astype(np.uint8)
        return out.tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def unpack_storage(raw: bytes | memoryview | np.ndarray, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """ONNX raw bytes -> storage-dtype array of `shape` (sign-extends signed sub-byte types)."""
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.view(np.uint8).ravel()
    if dtype.bitwidth in (2, 4):
        bits = dtype.bitwidth
        per_byte = 8 // bits
        mask = (1 << bits) - 1
        parts = [(buf >> (i * bits)) & mask for i in range(per_byte)]
        vals = np.stack(parts, axis=1).ravel()[:n]
        if dtype.is_signed and dtype.is_integer:
            vals = vals.astype(np.int8)
            vals = np.where(vals >= (1 << (bits - 1)), vals - (1 << bits), vals).astype(np.int8)
        return vals.astype(dtype.storage).reshape(shape)
    arr = buf[: n * dtype.storage.itemsize].view(dtype.storage.newbyteorder("<"))
    return arr.astype(dtype.storage, copy=False).reshape(shape)


def _map_external(ref: ExternalRef, nbytes: int) -> np.ndarray:
    length = ref.length if ref.length is not None else nbytes
    if length < nbytes:
        raise ValueError(f"external data {ref.path} holds {length} bytes at offset {ref.offset}, need {nbytes}")
    size = os.path.getsize(ref.path)
    if ref.offset + nbytes > size:
        raise ValueError(
            f"external data file {ref.path} is truncated: needs {ref.offset + nbytes} bytes, has {size}"
        )
    if nbytes == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(ref.path, dtype=np.uint8, mode="r", offset=ref.offset, shape=(nbytes,))


def _read_external(ref: ExternalRef | None, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    assert ref is not None
    nbytes = (int(np.prod(shape, dtype=np.int64)) * dtype.bitwidth + 7) // 8
    raw = _map_external(ref, nbytes)
    arr = unpack_storage(raw, dtype, shape)
    if isinstance(arr, np.ndarray) and arr.flags.writeable:
        arr.setflags(write=False)
    return arr
