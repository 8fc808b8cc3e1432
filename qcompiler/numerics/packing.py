"""Sub-byte packing: ONNX INT4/UINT4 tensors and ONNX Runtime's MatMulNBits weight layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_PACKABLE_BITS = (1, 2, 4, 8)


def _check_bits(bits: int) -> int:
    if bits not in _PACKABLE_BITS:
        raise ValueError(f"cannot pack {bits}-bit values; supported widths: {_PACKABLE_BITS}")
    return bits


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers of ``bits`` bits, flattened in C order, low bits first: element i goes to bits
    [(i % k) * bits, (i % k + 1) * bits) of byte i // k, k = 8 // bits; the last byte is zero-padded.

    Signed dtypes must hold values in [-2**(bits-1), 2**(bits-1)) and are stored two's complement;
    unsigned ones in [0, 2**bits).
    """
    per_byte = 8 // _check_bits(bits)
    v = np.asarray(values).reshape(-1)
    if not np.issubdtype(v.dtype, np.integer):
        raise TypeError(f"pack_bits needs an integer array, got dtype {v.dtype}")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if np.issubdtype(v.dtype, np.signedinteger) \
        else (0, (1 << bits) - 1)
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values [{v.min()}, {v.max()}] do not fit {bits} bits ({v.dtype}: [{lo}, {hi}])")
    u = (v.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint8)
    u = np.concatenate([u, np.zeros(-len(u) % per_byte, dtype=np.uint8)]).reshape(-1, per_byte)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(u << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, count: int, signed: bool = False) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` values as int8 (``signed``, sign-extended) or uint8."""
    per_byte = 8 // _check_bits(bits)
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if count < 0 or count > p.size * per_byte:
        raise ValueError(f"{p.size} bytes hold at most {p.size * per_byte} {bits}-bit values, asked {count}")
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    u = ((p[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:count]
    if not signed:
        return u.astype(np.uint8)
    s = u.astype(np.int16)
    return np.where(s >= (1 << (bits - 1)), s - (1 << bits), s).astype(np.int8)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Bytes of an ONNX INT4 (int8 input) or UINT4 (uint8 input) tensor: two elements per byte, element
    i in the low nibble for even i and the high nibble for odd i, odd length padded (ONNX IR spec, 4-bit
    integer types; same as onnx.numpy_helper.from_array(...).raw_data)."""
    return pack_bits(q, 4)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...], signed: bool) -> np.ndarray:
    """An INT4/UINT4 tensor of ``shape`` from its packed bytes (int8 if ``signed`` else uint8)."""
    shape = tuple(shape)
    return unpack_bits(packed, 4, int(np.prod(shape, dtype=np.int64)), signed).reshape(shape)


# ---- ONNX Runtime com.microsoft.MatMulNBits ----------------------------------------------------------
# Layout from the op schema (onnxruntime docs/ContribOperators.md, "com.microsoft.MatMulNBits"; the same
# text is in the schema registered by onnxruntime 1.32, which the tests run):
#   B           uint8 (N, k_blocks, blob_size), k_blocks = ceil(K / block_size), blob_size =
#               block_size * bits / 8; codes packed low bits first along K within each block.
#   scales      (N, k_blocks), same type as A.
#   zero_points packed uint8 (N, ceil(k_blocks * bits / 8)), same bit packing as B (each row padded on its
#               own; ORT pads with the default), or absent: default zero point 2**(bits - 1).
#   dequantized_weight[n, k] = (code - zero_point) * scale, and Y = A @ dequantized_weight.T
# block_size is a power of 2 >= 16. The tests check this layout by running MatMulNBits in ONNX Runtime
# and against ORT's own packer (quantize_matmul_4bits).


@dataclass(frozen=True, eq=False)
class MatMulNBitsWeights:
    """Inputs B, scales, zero_points of one MatMulNBits node and its attributes N, K, bits, block_size."""

    b: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    n: int
    k: int
    bits: int
    block_size: int


def _check_block(block_size: int, bits: int) -> None:
    if bits not in (2, 4, 8):
        raise ValueError(f"MatMulNBits packing supports bits 2, 4, 8; got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"MatMulNBits block_size must be a power of 2 >= 16, got {block_size}")


def pack_matmul_nbits(
    q: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    block_size: int,
    bits: int = 4,
) -> MatMulNBitsWeights:
    """Pack a weight quantized per block along K into MatMulNBits inputs.

    ``q`` is the quantized *transpose* of MatMul's B: shape (N, K), quantized with
    ``PerGroup(axis=1, size=block_size)`` so ``scale`` (and ``zero_point``) are (N, ceil(K / block_size)).
    Unsigned codes in [0, 2**bits) take ``zero_point`` (None: the default 2**(bits-1)). Signed codes
    (int8 array, e.g. symmetric int4 with zero point 0) are shifted by 2**(bits-1) onto the unsigned
    codes with the default zero point, which dequantizes identically.
    """
    _check_block(block_size, bits)
    q = np.asarray(q)
    if q.ndim != 2 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"MatMulNBits weight codes must be a 2-D integer (N, K) array, "
                         f"got {q.dtype}{q.shape}")
    n, k = q.shape
    k_blocks = -(-k // block_size)
    scale = np.asarray(scale)
    if scale.shape != (n, k_blocks):
        raise ValueError(f"MatMulNBits scale has shape {scale.shape}, "
                         f"expected (N, k_blocks) = {(n, k_blocks)}")
    half = 1 << (bits - 1)
    if np.issubdtype(q.dtype, np.signedinteger):
        if zero_point is not None and np.any(np.asarray(zero_point) != 0):
            raise ValueError("signed MatMulNBits codes need a zero point of 0 (they become unsigned with "
                             f"the default zero point {half})")
        if q.size and (q.min() < -half or q.max() >= half):
            raise ValueError(f"codes [{q.min()}, {q.max()}] do not fit signed {bits} bits")
        q, zero_point = (q.astype(np.int16) + half).astype(np.uint8), None
    padded = np.zeros((n, k_blocks * block_size), dtype=q.dtype)
    padded[:, :k] = q  # padding codes are never read: A has only K columns
    b = pack_bits(padded, bits).reshape(n, k_blocks, block_size * bits // 8)
    zp_packed = None
    if zero_point is not None:
        zp = np.asarray(zero_point)
        if zp.shape != (n, k_blocks):
            raise ValueError(f"MatMulNBits zero point has shape {zp.shape}, expected {(n, k_blocks)}")
        if zp.size and (zp.min() < 0 or zp.max() >= 1 << bits):
            raise ValueError(f"MatMulNBits zero points [{zp.min()}, {zp.max()}] do not fit unsigned {bits} bits")
        # Each row is packed on its own; its spare slots get the default zero point, as ORT's own packer
        # (quantize_matmul_4bits) writes them, so the bytes match ORT's tools exactly.
        per_byte = 8 // bits
        rows = np.full((n, -(-k_blocks // per_byte) * per_byte), half, dtype=np.uint8)
        rows[:, :k_blocks] = zp
        zp_packed = pack_bits(rows, bits).reshape(n, -1)
    return MatMulNBitsWeights(b, scale, zp_packed, n, k, bits, block_size)


def unpack_matmul_nbits(w: MatMulNBitsWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 (N, K), scale (N, k_blocks), zero_point uint8 (N, k_blocks)) of MatMulNBits inputs;
    an absent zero point comes back as the default 2**(bits-1)."""
    _check_block(w.block_size, w.bits)
    k_blocks = -(-w.k // w.block_size)
    blob = w.block_size * w.bits // 8
    if w.b.shape != (w.n, k_blocks, blob):
        raise ValueError(f"MatMulNBits B has shape {w.b.shape}, expected {(w.n, k_blocks, blob)}")
    codes = unpack_bits(w.b, w.bits, w.n * k_blocks * w.block_size).reshape(w.n, -1)[:, : w.k]
    if w.zero_points is None:
        zp = np.full((w.n, k_blocks), 1 << (w.bits - 1), dtype=np.uint8)
    else:
        zps = np.asarray(w.zero_points, dtype=np.uint8)
        if zps.shape != (w.n, -(-k_blocks * w.bits // 8)):
            raise ValueError(f"MatMulNBits zero_points have shape {zps.shape}, "
                             f"expected {(w.n, -(-k_blocks * w.bits // 8))}")
        zp = unpack_bits(zps, w.bits, zps.size * (8 // w.bits)).reshape(w.n, -1)[:, :k_blocks]
    return codes, np.asarray(w.scales).reshape(w.n, k_blocks), zp
