"""`QuantType`: how a value is (or will be) quantized. Quantization is a type, not a pattern.

The type names the storage format, the scheme and the granularity, and points at the *values* holding
scale and zero point (initializers, or nothing yet while an observer collects a range). Passes decide
types; `lower_qdq` materializes them; backends lower the typed values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .graph import Value

SCHEMES = ("symmetric", "affine")


@dataclass(frozen=True, eq=False)
class QuantType:
    """format: a name from `qcompiler.numerics` (int8, uint8, int4, fp8_e4m3fn, nf4, ...);
    scheme: 'symmetric' | 'affine'; granularity: a `qcompiler.numerics` granularity
    (PerTensor, PerChannel(axis), PerGroup(axis, size), PerBlock(shape));
    scale / zero_point: the values holding them, None before calibration;
    observer: how the range is found (minmax, percentile, entropy, mse, ...), for values not yet calibrated;
    dynamic: the range is computed at run time from the value itself (dynamic quantization)."""

    format: str
    scheme: str
    granularity: Any
    scale: Value | None = None
    zero_point: Value | None = None
    observer: str | None = None
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {self.scheme!r}; valid: {', '.join(SCHEMES)}")

    @property
    def is_calibrated(self) -> bool:
        return self.dynamic or self.scale is not None

    def scale_array(self) -> np.ndarray:
        """The scale's values (float32); the QuantType must be calibrated with a constant scale."""
        if self.scale is None or self.scale.const is None:
            raise ValueError(f"quant type {self} has no constant scale (not calibrated)")
        return self.scale.const.numpy().astype(np.float32)

    def zero_point_array(self) -> np.ndarray | None:
        """The zero point's values in its storage dtype, or None when there is none (fp8, nf4)."""
        return None if self.zero_point is None or self.zero_point.const is None else self.zero_point.const.numpy()

    def with_params(self, scale: Value, zero_point: Value | None) -> QuantType:
        return replace(self, scale=scale, zero_point=zero_point)

    def __str__(self) -> str:
        parts = [self.format, "sym" if self.scheme == "symmetric" else "affine", granularity_str(self.granularity)]
        if self.dynamic:
            parts.append("dynamic")
        if self.observer:
            parts.append(f"observer={self.observer}")
        if self.scale is not None:
            parts.append(f"scale=%{self.scale.name}")
        if self.zero_point is not None:
            parts.append(f"zp=%{self.zero_point.name}")
        return " ".join(parts)


def granularity_str(g: Any) -> str:
    """per_tensor | per_channel(axis) | per_group(axis,size) | per_block(r,c) — the text form's spelling."""
    kind = type(g).__name__
    if kind == "PerTensor":
        return "per_tensor"
    if kind == "PerChannel":
        return f"per_channel({g.axis})"
    if kind == "PerGroup":
        return f"per_group({g.axis},{g.size})"
    if kind == "PerBlock":
        return "per_block(" + ",".join(str(d) for d in g.shape) + ")"
    raise TypeError(f"not a granularity: {g!r}")


def parse_granularity(text: str) -> Any:
    """Inverse of `granularity_str`."""
    from ..numerics.granularity import PerBlock, PerChannel, PerGroup, PerTensor

    text = text.strip()
    if text == "per_tensor":
        return PerTensor()
    name, _, rest = text.partition("(")
    args = [int(a) for a in rest.rstrip(")").split(",") if a.strip()]
    if name == "per_channel" and len(args) == 1:
        return PerChannel(args[0])
    if name == "per_group" and len(args) == 2:
        return PerGroup(args[0], args[1])
    if name == "per_block" and args:
        return PerBlock(tuple(args))
    raise ValueError(f"bad granularity {text!r}; expected per_tensor, per_channel(A), per_group(A,S), per_block(...)")
