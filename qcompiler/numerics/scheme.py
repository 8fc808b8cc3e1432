"""Quantization scheme: symmetric or affine, optionally narrow range, and the integer range it implies."""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.numerics.formats import Format, get_format

_MODES = ("symmetric", "affine")


@dataclass(frozen=True)
class Scheme:
    """``mode`` is "symmetric" (zero maps to the format's middle code) or "affine" (a zero point shifts the
    grid to cover [min, max]). ``narrow_range`` drops the most negative code of a signed integer format
    (int8 -> [-127, 127]) so that the grid is symmetric around zero."""

    mode: str = "symmetric"
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"unknown quantization scheme {self.mode!r}; valid schemes: {', '.join(_MODES)}")

    @property
    def symmetric(self) -> bool:
        return self.mode == "symmetric"

    def __str__(self) -> str:
        return ("sym" if self.symmetric else "affine") + ("_narrow" if self.narrow_range else "")


SYMMETRIC = Scheme("symmetric")
AFFINE = Scheme("affine")
SYMMETRIC_NARROW = Scheme("symmetric", narrow_range=True)


def check_scheme(fmt: Format | str, scheme: Scheme) -> Format:
    """Raise a ValueError if ``scheme`` cannot be used with ``fmt``; return the resolved format."""
    fmt = get_format(fmt)
    if not fmt.is_integer and not scheme.symmetric:
        raise ValueError(f"format {fmt.name} supports only the symmetric scheme (it has no zero point)")
    if scheme.narrow_range and not (fmt.is_integer and fmt.signed and fmt.qmin != -fmt.qmax):
        raise ValueError(f"narrow_range applies to signed integer formats with an extra negative code; "
                         f"not to {fmt.name}")
    return fmt


def quant_range(fmt: Format | str, scheme: Scheme = SYMMETRIC) -> tuple[int, int]:
    """The integer range (qmin, qmax) an integer format uses under ``scheme``."""
    fmt = check_scheme(fmt, scheme)
    if not fmt.is_integer:
        raise ValueError(f"format {fmt.name} is not an integer format; it has no (qmin, qmax)")
    assert fmt.qmin is not None and fmt.qmax is not None
    return (-fmt.qmax if scheme.narrow_range else fmt.qmin), fmt.qmax
