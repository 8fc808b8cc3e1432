"""Format registry, scheme rules and the NF4 code book."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from onnx import TensorProto

from qcompiler.numerics import (
    AFFINE,
    FORMATS,
    NF4_CODEBOOK,
    SYMMETRIC,
    SYMMETRIC_NARROW,
    Scheme,
    check_scheme,
    get_format,
    quant_range,
)


def test_registry_names_and_lookup() -> None:
    assert set(FORMATS) == {"int8", "uint8", "int16", "uint16", "int4", "uint4", "fp8_e4m3fn", "fp8_e5m2",
                            "nf4", "ternary"}
    for name, fmt in FORMATS.items():
        assert get_format(name) is fmt
        assert get_format(fmt) is fmt
        assert str(fmt) == name


def test_unknown_format_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown quantization format 'int3'") as err:
        get_format("int3")
    for name in FORMATS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "onnx_type"),
    [("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8), ("int16", TensorProto.INT16),
     ("uint16", TensorProto.UINT16), ("int4", TensorProto.INT4), ("uint4", TensorProto.UINT4),
     ("fp8_e4m3fn", TensorProto.FLOAT8E4M3FN), ("fp8_e5m2", TensorProto.FLOAT8E5M2),
     ("nf4", None), ("ternary", None)],
)
def test_onnx_element_types(name: str, onnx_type: int | None) -> None:
    assert get_format(name).onnx_type == onnx_type


@pytest.mark.parametrize(
    ("name", "qmin", "qmax", "dtype"),
    [("int8", -128, 127, np.int8), ("uint8", 0, 255, np.uint8), ("int16", -32768, 32767, np.int16),
     ("uint16", 0, 65535, np.uint16), ("int4", -8, 7, np.int8), ("uint4", 0, 15, np.uint8),
     ("ternary", -1, 1, np.int8)],
)
def test_integer_ranges_and_containers(name: str, qmin: int, qmax: int, dtype: type) -> None:
    fmt = get_format(name)
    assert (fmt.qmin, fmt.qmax) == (qmin, qmax)
    assert fmt.numpy_dtype == np.dtype(dtype)
    assert fmt.is_integer and not fmt.is_float and not fmt.is_codebook
    assert quant_range(fmt, SYMMETRIC) == (qmin, qmax)


def test_fp8_parameters_match_their_definition() -> None:
    e4, e5 = get_format("fp8_e4m3fn"), get_format("fp8_e5m2")
    # Largest finite value from the bit fields: e4m3fn loses only mantissa 111 at the top exponent (NaN);
    # e5m2 loses the whole top exponent (inf/NaN).
    assert e4.max_value == (1 + 6 / 8) * 2.0 ** (15 - e4.exponent_bias) == 448.0
    assert e5.max_value == (1 + 3 / 4) * 2.0 ** (30 - e5.exponent_bias) == 57344.0
    assert not e4.has_inf and e5.has_inf


def test_narrow_range() -> None:
    assert quant_range("int8", SYMMETRIC_NARROW) == (-127, 127)
    assert quant_range("int4", SYMMETRIC_NARROW) == (-7, 7)
    assert quant_range("int16", Scheme("affine", narrow_range=True)) == (-32767, 32767)
    for name in ("uint8", "ternary", "fp8_e4m3fn", "nf4"):
        with pytest.raises(ValueError, match="narrow_range"):
            check_scheme(name, SYMMETRIC_NARROW)


def test_scheme_validation() -> None:
    with pytest.raises(ValueError, match="valid schemes: symmetric, affine"):
        Scheme("asymmetric")
    for name in ("fp8_e4m3fn", "fp8_e5m2", "nf4"):
        with pytest.raises(ValueError, match="only the symmetric scheme"):
            check_scheme(name, AFFINE)
    assert str(SYMMETRIC) == "sym" and str(AFFINE) == "affine" and str(SYMMETRIC_NARROW) == "sym_narrow"


def test_nf4_codebook_is_bitsandbytes_table() -> None:
    table = np.asarray(NF4_CODEBOOK, dtype=np.float32)
    assert table.shape == (16,)
    assert table[0] == -1.0 and table[7] == 0.0 and table[15] == 1.0
    assert (np.diff(table) > 0).all()
    # Every entry is a float32 (the table is a float32 LUT in bitsandbytes).
    assert [float(v) for v in table] == list(NF4_CODEBOOK)


def test_nf4_codebook_matches_qlora_construction() -> None:
    # QLoRA / bitsandbytes create_normal_map(offset=0.9677083): 8 positive quantiles at
    # linspace(offset, 0.5, 9)[:-1], 7 negative at linspace(offset, 0.5, 8)[:-1], a zero, normalised by the
    # max. Computed here exactly (float64); bitsandbytes did it in float32, so its table is off by at most:
    # linspace rounding <= 2**-25 (p in [0.5, 1)) times dppf/dp <= 1/pdf(ppf(0.968)) < 14, over max ~1.85
    # -> 2.2e-7, plus float32 rounding of the level and of the division (2 * 2**-25) -> 2.8e-7 in all.
    # (A table with a wrong digit, e.g. -0.3949739 seen in some ports, is off by 5.6e-5.)
    ppf = NormalDist().inv_cdf
    offset = 0.9677083
    pos = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    v = np.sort(np.asarray(pos + [0.0] + neg))
    v = v / v.max()
    assert np.abs(v - np.asarray(NF4_CODEBOOK)).max() <= 2.8e-7
