"""Storage formats: what a quantized element can hold, and the container it lives in before packing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The 16 NF4 levels of QLoRA (Dettmers et al. 2023, arXiv:2305.14314, appendix E), exactly as the float32
# table in bitsandbytes csrc/kernels.cu (`nf4_dequantization_lut`). Quantiles of N(0, 1) normalised to
# [-1, 1], with an exact zero; 7 negative and 8 positive levels.
NF4_CODEBOOK: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

INT = "int"
FLOAT = "float"
CODEBOOK = "codebook"


@dataclass(frozen=True)
class Format:
    """One storage format.

    ``kind`` is "int" (a uniform integer grid qmin..qmax), "float" (a minifloat given by exponent and
    mantissa bits) or "codebook" (a fixed table of levels, element = index into ``levels``).
    ``storage_dtype`` is the numpy dtype of the *unpacked* container: int4 lives in int8, fp8 as uint8 bit
    patterns, nf4 as uint8 indices. ``onnx_type`` is the TensorProto element type, None where ONNX has none.
    """

    name: str
    kind: str
    bits: int
    signed: bool
    storage_dtype: str
    onnx_type: int | None
    qmin: int | None = None
    qmax: int | None = None
    exponent_bits: int | None = None
    mantissa_bits: int | None = None
    exponent_bias: int | None = None
    max_value: float | None = None
    has_inf: bool = False
    levels: tuple[float, ...] | None = None

    @property
    def is_integer(self) -> bool:
        return self.kind == INT

    @property
    def is_float(self) -> bool:
        return self.kind == FLOAT

    @property
    def is_codebook(self) -> bool:
        return self.kind == CODEBOOK

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.storage_dtype)

    def __str__(self) -> str:
        return self.name


def _int(name: str, bits: int, signed: bool, storage: str, onnx_type: int | None) -> Format:
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return Format(name, INT, bits, signed, storage, onnx_type, qmin=qmin, qmax=qmax)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _int("int8", 8, True, "int8", 3),
        _int("uint8", 8, False, "uint8", 2),
        _int("int16", 16, True, "int16", 5),
        _int("uint16", 16, False, "uint16", 4),
        _int("int4", 4, True, "int8", 22),
        _int("uint4", 4, False, "uint8", 21),
        # OCP FP8: e4m3fn has no inf, NaN = S.1111.111, max 448; e5m2 is IEEE-like, max 57344.
        Format("fp8_e4m3fn", FLOAT, 8, True, "uint8", 17, exponent_bits=4, mantissa_bits=3,
               exponent_bias=7, max_value=448.0, has_inf=False),
        Format("fp8_e5m2", FLOAT, 8, True, "uint8", 19, exponent_bits=5, mantissa_bits=2,
               exponent_bias=15, max_value=57344.0, has_inf=True),
        Format("nf4", CODEBOOK, 4, True, "uint8", None, max_value=1.0, levels=NF4_CODEBOOK),
        # Ternary (BitNet b1.58 style) is a 3-level integer grid; it needs 2 bits of storage.
        Format("ternary", INT, 2, True, "int8", None, qmin=-1, qmax=1),
    )
}


def get_format(name: str | Format) -> Format:
    """The format called ``name`` (a Format passes through); a ValueError lists the valid names."""
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        valid = ", ".join(FORMATS)
        raise ValueError(f"unknown quantization format {name!r}; valid formats: {valid}") from None
