"""A small baseline JPEG decoder (numpy only) for scikit-learn's two sample images.

``sklearn.datasets.load_sample_images`` needs Pillow, which is not a dependency of this project;
the images themselves ship inside scikit-learn as baseline JPEGs (SOF0, 8-bit, Huffman). This
decoder covers exactly that profile: baseline sequential DCT, any chroma sampling factors (upsampled
by repetition), restart markers, JFIF YCbCr -> RGB. Progressive and arithmetic-coded files are
refused with a clear error. It is slow (pure Python Huffman decoding, ~2 s per image) and only used
once, when the zoo builds its cached image data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["decode_jpeg", "read_jpeg"]

# Position in the 8x8 block (row-major) of the k-th coefficient in zigzag order.
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
])


def _idct_matrix() -> np.ndarray:
    """C with C[u, x] = c(u)/2 cos((2x+1) u pi / 16): the block is C^T F C (ITU T.81 A.3.3)."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    c = np.where(u == 0, 1 / np.sqrt(2), 1.0)
    return c / 2 * np.cos((2 * x + 1) * u * np.pi / 16)


def read_jpeg(path: str | Path) -> np.ndarray:
    """Decode the JPEG file at ``path`` to an ``[H, W, 3]`` uint8 RGB array."""
    p = Path(path)
    try:
        return decode_jpeg(p.read_bytes())
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode baseline JPEG bytes to an ``[H, W, 3]`` uint8 RGB array (``[H, W, 1]`` for grayscale)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file (no SOI marker)")
    qt: dict[int, np.ndarray] = {}
    huff: dict[tuple[int, int], list[tuple[int, int]]] = {}
    restart_interval = 0
    frame: tuple[int, int, list[tuple[int, int, int, int]]] | None = None
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        marker = data[pos + 1]
        pos += 2
        if marker == 0xFF:  # fill byte
            pos -= 1
            continue
        if marker == 0xD9:  # EOI
            break
        length = int.from_bytes(data[pos:pos + 2], "big")
        seg = data[pos + 2:pos + length]
        pos += length
        if marker in (0xC0, 0xC1):
            if seg[0] != 8:
                raise ValueError(f"{seg[0]}-bit samples are not supported")
            height, width = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big")
            comps = [(seg[6 + 3 * i], seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15, seg[8 + 3 * i])
                     for i in range(seg[5])]
            frame = (height, width, comps)
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise ValueError(f"SOF{marker - 0xC0} (progressive/lossless/arithmetic) JPEG is not supported")
        elif marker == 0xC4:
            i = 0
            while i < len(seg):
                tc, th = seg[i] >> 4, seg[i] & 15
                counts = seg[i + 1:i + 17]
                n = sum(counts)
                huff[(tc, th)] = _huffman_lookup(counts, seg[i + 17:i + 17 + n])
                i += 17 + n
        elif marker == 0xDB:
            i = 0
            while i < len(seg):
                pq, tq = seg[i] >> 4, seg[i] & 15
                size = 128 if pq else 64
                raw = np.frombuffer(seg[i + 1:i + 1 + size], dtype=">u2" if pq else np.uint8)
                table = np.zeros(64)
                table[_ZIGZAG] = raw
                qt[tq] = table.reshape(8, 8)
                i += 1 + size
        elif marker == 0xDD:
            restart_interval = int.from_bytes(seg[:2], "big")
        elif marker == 0xDA:
            if frame is None:
                raise ValueError("scan before frame header")
            scan = [(seg[1 + 2 * i], seg[2 + 2 * i] >> 4, seg[2 + 2 * i] & 15) for i in range(seg[0])]
            end = pos
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
            return _decode_frame(frame, scan, data[pos:end], qt, huff, restart_interval)
    raise ValueError("no image data (SOS) found")


def _huffman_lookup(counts: bytes, symbols: bytes) -> list[tuple[int, int]]:
    """A 16-bit peek table: entry v -> (code length, symbol) for every v starting with that code."""
    table: list[tuple[int, int]] = [(0, 0)] * 65536
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            lo = code << (16 - length)
            table[lo:lo + (1 << (16 - length))] = [(length, symbols[k])] * (1 << (16 - length))
            code += 1
            k += 1
        code <<= 1
    return table


def _decode_frame(frame: tuple[int, int, list[tuple[int, int, int, int]]], scan: list[tuple[int, int, int]],
                  entropy: bytes, qt: dict[int, np.ndarray], huff: dict[tuple[int, int], list[tuple[int, int]]],
                  restart_interval: int) -> np.ndarray:
    height, width, comps = frame
    if len(scan) != len(comps):
        raise ValueError("multi-scan (non-interleaved) baseline JPEG is not supported")
    hmax = max(c[1] for c in comps)
    vmax = max(c[2] for c in comps)
    mcux = -(-width // (8 * hmax))
    mcuy = -(-height // (8 * vmax))
    table_of = {cid: (td, ta) for cid, td, ta in scan}
    blocks = [np.zeros((mcuy * v, mcux * h, 64), dtype=np.int32) for _, h, v, _ in comps]

    # Restart markers split the entropy-coded data into independently decodable segments.
    segments, start, i = [], 0, 0
    while i < len(entropy) - 1:
        if entropy[i] == 0xFF and 0xD0 <= entropy[i + 1] <= 0xD7:
            segments.append(entropy[start:i])
            start = i + 2
            i += 2
        else:
            i += 1
    segments.append(entropy[start:])
    per_segment = restart_interval or mcux * mcuy

    mcu = 0
    for seg in segments:
        seg = seg.replace(b"\xff\x00", b"\xff")  # byte stuffing
        bits = bin(int.from_bytes(seg, "big") | (1 << (8 * len(seg))))[3:] + "1" * 32
        p = 0
        pred = [0] * len(comps)
        for _ in range(min(per_segment, mcux * mcuy - mcu)):
            my, mx = divmod(mcu, mcux)
            for ci, (cid, h, v, _) in enumerate(comps):
                dc = huff[(0, table_of[cid][0])]
                ac = huff[(1, table_of[cid][1])]
                for by in range(v):
                    for bx in range(h):
                        coef = [0] * 64
                        length, s = dc[int(bits[p:p + 16], 2)]
                        if length == 0:
                            raise ValueError("corrupt Huffman data")
                        p += length
                        if s:
                            val = int(bits[p:p + s], 2)
                            p += s
                            pred[ci] += val if val >> (s - 1) else val - (1 << s) + 1
                        coef[0] = pred[ci]
                        k = 1
                        while k < 64:
                            length, rs = ac[int(bits[p:p + 16], 2)]
                            if length == 0:
                                raise ValueError("corrupt Huffman data")
                            p += length
                            r, s = rs >> 4, rs & 15
                            if s == 0:
                                if r != 15:
                                    break  # end of block
                                k += 16
                                continue
                            k += r
                            val = int(bits[p:p + s], 2)
                            p += s
                            coef[k] = val if val >> (s - 1) else val - (1 << s) + 1
                            k += 1
                        blocks[ci][my * v + by, mx * h + bx] = coef
            mcu += 1

    c = _idct_matrix()
    planes = []
    for (_, h, v, tq), b in zip(comps, blocks):
        f = np.zeros(b.shape[:2] + (64,))
        f[..., _ZIGZAG] = b
        f = f.reshape(b.shape[:2] + (8, 8)) * qt[tq]
        pix = np.einsum("ux,...uv,vy->...xy", c, f, c) + 128.0
        plane = pix.transpose(0, 2, 1, 3).reshape(b.shape[0] * 8, b.shape[1] * 8)
        plane = np.repeat(np.repeat(plane, vmax // v, axis=0), hmax // h, axis=1)
        planes.append(plane[:height, :width])
    if len(planes) == 1:
        return np.clip(np.round(planes[0]), 0, 255).astype(np.uint8)[..., None]
    y, cb, cr = planes[0], planes[1] - 128.0, planes[2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
