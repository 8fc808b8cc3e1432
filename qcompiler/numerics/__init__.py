"""Pure array math of quantization (numpy only): formats, scale and zero point, granularity,
quantize / dequantize / fake-quant, fp8 encoding and sub-byte packing."""

from qcompiler.numerics.codebook import codebook_decode, codebook_encode
from qcompiler.numerics.formats import FORMATS, NF4_CODEBOOK, Format, get_format
from qcompiler.numerics.fp8 import fp8_decode, fp8_encode, fp8_round
from qcompiler.numerics.granularity import (
    PER_TENSOR,
    Granularity,
    PerBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    expand_param,
    param_shape,
    reduce_absmax,
    reduce_min_max,
    tile_shape,
)
from qcompiler.numerics.packing import (
    MatMulNBitsWeights,
    pack_bits,
    pack_int4,
    pack_matmul_nbits,
    unpack_bits,
    unpack_int4,
    unpack_matmul_nbits,
)
from qcompiler.numerics.quantize import QuantizedTensor, dequantize, fake_quantize, quantize, quantize_tensor
from qcompiler.numerics.scale import MIN_SCALE, ZERO_RANGE_SCALE, compute_scale_zero_point
from qcompiler.numerics.scheme import AFFINE, SYMMETRIC, SYMMETRIC_NARROW, Scheme, check_scheme, quant_range

__all__ = [
    "AFFINE",
    "FORMATS",
    "MIN_SCALE",
    "NF4_CODEBOOK",
    "PER_TENSOR",
    "SYMMETRIC",
    "SYMMETRIC_NARROW",
    "ZERO_RANGE_SCALE",
    "Format",
    "Granularity",
    "MatMulNBitsWeights",
    "PerBlock",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QuantizedTensor",
    "Scheme",
    "check_scheme",
    "codebook_decode",
    "codebook_encode",
    "compute_scale_zero_point",
    "dequantize",
    "expand_param",
    "fake_quantize",
    "fp8_decode",
    "fp8_encode",
    "fp8_round",
    "get_format",
    "pack_bits",
    "pack_int4",
    "pack_matmul_nbits",
    "param_shape",
    "quant_range",
    "quantize",
    "quantize_tensor",
    "reduce_absmax",
    "reduce_min_max",
    "tile_shape",
    "unpack_bits",
    "unpack_int4",
    "unpack_matmul_nbits",
]
