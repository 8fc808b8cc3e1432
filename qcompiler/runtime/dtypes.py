"""IR element types <-> torch dtypes, and numpy <-> torch conversion at the executor's boundary.

Inside the executor every tensor is a torch tensor of the element type where torch has one (bfloat16,
float8 e4m3fn/e5m2 included). Types torch lacks are held as the IR holds them (`DType.storage`): int4/uint4
(and int2/uint2) unpacked one value per int8/uint8 element, float4 e2m1 as uint8 bit patterns.

At the numpy boundary (`Executor.run`, `qcompiler.run`) arrays use the IR's storage convention, which is
also what ONNX Runtime's Python API does where it can return the type at all: float8 e4m3fn comes back as
uint8 bit patterns (as from ORT), and likewise float8 e5m2 and the fnuz variants (uint8 bits), bfloat16
(uint16 bits), int4 (int8, one value per element) and uint4 (uint8) — ORT cannot return those four.
Feeds of those types may be given in the storage dtype or as ml_dtypes arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ir import DType

_TORCH: dict[DType, torch.dtype] = {
    DType.FLOAT: torch.float32,
    DType.UINT8: torch.uint8,
    DType.INT8: torch.int8,
    DType.UINT16: torch.uint16,
    DType.INT16: torch.int16,
    DType.INT32: torch.int32,
    DType.INT64: torch.int64,
    DType.BOOL: torch.bool,
    DType.FLOAT16: torch.float16,
    DType.DOUBLE: torch.float64,
    DType.UINT32: torch.uint32,
    DType.UINT64: torch.uint64,
    DType.COMPLEX64: torch.complex64,
    DType.COMPLEX128: torch.complex128,
    DType.BFLOAT16: torch.bfloat16,
    DType.FLOAT8E4M3FN: torch.float8_e4m3fn,
    DType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    DType.FLOAT8E5M2: torch.float8_e5m2,
    DType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    DType.UINT4: torch.uint8,
    DType.INT4: torch.int8,
    DType.FLOAT4E2M1: torch.uint8,
    DType.FLOAT8E8M0: torch.float8_e8m0fnu,
    DType.UINT2: torch.uint8,
    DType.INT2: torch.int8,
}
# torch dtype -> the IR type it naturally stands for (int8 means int8, not int4).
_FROM_TORCH: dict[torch.dtype, DType] = {}
for _d, _t in _TORCH.items():
    _FROM_TORCH.setdefault(_t, _d)
# Torch dtypes whose numpy form is a bit pattern in an unsigned integer of the same width.
_BITS_VIEW = {
    torch.bfloat16: torch.uint16,
    torch.float8_e4m3fn: torch.uint8,
    torch.float8_e5m2: torch.uint8,
    torch.float8_e4m3fnuz: torch.uint8,
    torch.float8_e5m2fnuz: torch.uint8,
    torch.float8_e8m0fnu: torch.uint8,
}
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype that holds IR element type `dtype` (int4 -> int8, float4 -> uint8 bits)."""
    try:
        return _TORCH[dtype]
    except KeyError:
        raise TypeError(f"element type {dtype.name} has no torch representation") from None


def ir_dtype(dtype: torch.dtype) -> DType:
    """The IR element type a torch dtype stands for (int8 -> INT8; the IR type decides int4)."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise TypeError(f"torch dtype {dtype} has no IR element type") from None


def to_torch(array: Any, dtype: DType | None = None) -> torch.Tensor:
    """A numpy array (storage dtype, or ml_dtypes for the exotic floats) as a torch tensor of IR type
    `dtype` (inferred from the array when None). Shares memory with the array where it can: op functions
    never write to their inputs."""
    arr = np.asarray(array)
    if arr.dtype == object:
        raise TypeError("string tensors are not supported by the torch executor")
    ml = _ML_DTYPES.get(arr.dtype.name)  # an ml_dtypes array: go to the storage form first
    if ml is not None:
        dtype = dtype or ml
        arr = arr.astype(ml.storage) if ml.bitwidth in (2, 4) else arr.view(ml.storage)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    # torch warns about read-only arrays; the tensor is never written (see the op-function rules).
    t = torch.from_numpy(arr) if arr.flags.writeable else _from_readonly(arr)
    if dtype is not None:
        want = torch_dtype(dtype)
        if t.dtype != want:
            t = t.view(want) if dtype in _VIEWED and t.dtype.itemsize == want.itemsize else t.to(want)
    return t


_VIEWED = {
    DType.BFLOAT16,
    DType.FLOAT8E4M3FN,
    DType.FLOAT8E4M3FNUZ,
    DType.FLOAT8E5M2,
    DType.FLOAT8E5M2FNUZ,
    DType.FLOAT8E8M0,
}
_ML_DTYPES = {
    "bfloat16": DType.BFLOAT16,
    "float8_e4m3fn": DType.FLOAT8E4M3FN,
    "float8_e5m2": DType.FLOAT8E5M2,
    "float8_e4m3fnuz": DType.FLOAT8E4M3FNUZ,
    "float8_e5m2fnuz": DType.FLOAT8E5M2FNUZ,
    "int4": DType.INT4,
    "uint4": DType.UINT4,
    "float8_e8m0fnu": DType.FLOAT8E8M0,
    "float4_e2m1fn": DType.FLOAT4E2M1,
    "int2": DType.INT2,
    "uint2": DType.UINT2,
}


def _from_readonly(arr: np.ndarray) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def to_numpy(t: Any) -> Any:
    """A torch tensor as a numpy array in the IR storage convention (see the module doc); lists (sequences)
    and None (empty optionals) pass through element-wise."""
    if t is None:
        return None
    if isinstance(t, list | tuple):
        return [to_numpy(x) for x in t]
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    bits = _BITS_VIEW.get(t.dtype)
    if bits is not None:
        t = t.view(bits)
    return t.numpy()


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero (C's `round`), which ORT's casts to int4 use."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


# float8 thresholds (float32 magnitudes) where ONNX Runtime's non-saturating casts leave the format. They
# follow ORT's bit-level converter (onnxruntime/core/framework/float8.h), which differs from the ONNX
# reference in two ranges: e4m3fn maps [480, 496) to 448 (the truncated code hits the NaN pattern and is
# masked back) and e5m2 maps [61440, 65536) to NaN, not inf (the rounding carry lands on the NaN pattern).
# NaNs keep the sign of the input.
_E4M3_MAX, _E5M2_MAX = 448.0, 57344.0


def _signed_nan(x: torch.Tensor) -> torch.Tensor:
    return torch.copysign(torch.full_like(x, float("nan")), x)


def cast(x: torch.Tensor, to: DType, *, saturate: bool = True) -> torch.Tensor:
    """ONNX Cast as ONNX Runtime computes it: float -> int truncates; float -> int4/uint4 rounds half away
    from zero and keeps the low 4 bits; float -> float8 rounds to nearest even, saturating to the largest
    finite value (inf included) when `saturate`, else per ORT's converter (see above); bool is x != 0."""
    if to in (DType.INT4, DType.UINT4, DType.INT2, DType.UINT2):
        bits = to.bitwidth
        v = round_half_away(x.double()) if x.is_floating_point() else x
        v = v.to(torch.int64)
        if to.is_signed:
            half = 1 << (bits - 1)
            return (((v + half) & ((1 << bits) - 1)) - half).to(torch.int8)
        return (v & ((1 << bits) - 1)).to(torch.uint8)
    want = torch_dtype(to)
    if to in (DType.FLOAT4E2M1, DType.FLOAT8E8M0, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2FNUZ):
        raise TypeError(f"cast to {to.name} is not supported by the torch executor")
    if x.dtype in FLOAT8 and want is not torch.float32:
        x = x.to(torch.float32)  # torch converts float8 only through the wider floats
    if want is torch.float8_e4m3fn:
        xf = x.to(torch.float32)
        if not saturate:
            a = xf.abs()
            bad = (a > 464.0) & ~((a >= 480.0) & (a < 496.0))
            xf = torch.where(bad, _signed_nan(xf), xf)
        return xf.to(want)  # torch's own conversion saturates (inf included)
    if want is torch.float8_e5m2:
        xf = x.to(torch.float32)
        if saturate:
            xf = xf.clamp(-_E5M2_MAX, _E5M2_MAX)  # clamp keeps NaN
        else:
            a = xf.abs()
            xf = torch.where((a >= 61440.0) & (a < 65536.0), _signed_nan(xf), xf)
        return xf.to(want)
    return x.to(want)
