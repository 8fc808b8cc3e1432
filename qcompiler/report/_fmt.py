"""Number formatting shared by the HTML page and the terminal table. Every formatter prints "n/a" for None."""

from __future__ import annotations

import math

NA = "n/a"


def _special(x: float) -> str | None:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return None


def _fixed(x: float | None, spec: str) -> str:
    """`x` in `spec` (a format spec), "n/a" for None, "nan"/"inf"/"-inf" for those."""
    if x is None:
        return NA
    return _special(x) or format(x, spec)


def db(x: float | None) -> str:
    """An SQNR in dB to 0.1 dB: '31.2'."""
    return _fixed(x, ".1f")


def db_unit(x: float | None) -> str:
    """'31.2 dB', or 'n/a' without a unit."""
    return NA if x is None else f"{db(x)} dB"


def cosine(x: float | None) -> str:
    """Six decimals: cosines of a good quantization all start with 0.99."""
    return _fixed(x, ".6f")


def num(x: float | None) -> str:
    """Four significant digits: '0.5213', '1.234e-05'."""
    return _fixed(x, ".4g")


def metric(x: float | None) -> str:
    """A task metric (accuracy, F1, perplexity) to four decimals."""
    return _fixed(x, ".4f")


def signed(x: float | None) -> str:
    return _fixed(x, "+.4f")


def nbytes(n: int | None) -> str:
    """Binary units: '44.6 MiB'; exact bytes below 1 KiB."""
    if n is None:
        return NA
    if abs(n) < 1024:
        return f"{n} B"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        x /= 1024
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.1f} {unit}"
    raise AssertionError("unreachable")


def ms(x: float | None) -> str:
    """Milliseconds with three or four significant digits, never in exponent form: '0.512 ms', '1234 ms'."""
    if x is None:
        return NA
    if s := _special(x):
        return f"{s} ms"
    if abs(x) >= 100:
        return f"{x:.0f} ms"
    if abs(x) >= 10:
        return f"{x:.1f} ms"
    if abs(x) >= 1:
        return f"{x:.2f} ms"
    return f"{x:.3f} ms"


def seconds(x: float | None) -> str:
    if x is None:
        return NA
    return _special(x) or (f"{x:.2f} s" if x >= 0.01 else f"{x * 1000:.1f} ms")


def ratio(r: float | None, smaller: str, larger: str) -> str:
    """after/before with its meaning: '0.25x, 4.0x smaller' / '1.30x, 1.3x slower' ('n/a' if unknown)."""
    if r is None or not math.isfinite(r):
        return NA
    if r <= 0:
        return f"{r:.2f}x"
    if r < 1:
        return f"{r:.2f}x, {1 / r:.1f}x {smaller}"
    if r > 1:
        return f"{r:.2f}x, {r:.1f}x {larger}"
    return "1.00x, unchanged"


def count(n: int | None) -> str:
    return NA if n is None else str(n)


def shape(dims: list[int | str | None] | None) -> str:
    """'[batch,3,224,224]'; '?' for an unknown dim, 'n/a' for an unknown shape."""
    if dims is None:
        return NA
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def below(x: float | None, threshold: float) -> bool:
    """Whether an SQNR is flagged: below the threshold, or NaN (the quantized model produced garbage)."""
    return x is not None and (math.isnan(x) or x < threshold)
