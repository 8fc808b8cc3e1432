"""Elementwise math, comparisons, logic, bitwise ops, MatMul/Gemm/Einsum and Clip.

Integer semantics follow ONNX, not torch: Div truncates toward zero, Mod picks the sign by `fmod`, integer
results keep the input dtype (torch would promote). torch has almost no CPU kernels for uint16/uint32/
uint64, so those are computed in a wider signed type (or, for uint64, in int64 bit patterns where two's
complement gives the same bits) and cast back; casts wrap modulo 2**bits, which is what ONNX's C kernels do.
"""

from __future__ import annotations

import torch

from ..registry import OpContext, register

_EW = {"elementwise"}
_WIDE = {torch.uint16: torch.int32, torch.uint32: torch.int64}  # exact widening to a signed type
_SAME_SIZE_SIGNED = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
_U64_SIGN = -(2**63)


def _wrapsafe(fn, *xs: torch.Tensor) -> torch.Tensor:
    """Apply an op whose result bits do not depend on signedness (add, sub, mul, shifts left, bit ops) to
    unsigned types torch cannot compute in, through a signed stand-in, and cast the result back."""
    dt = xs[0].dtype
    if dt in _WIDE:
        return fn(*(x.to(torch.int64) for x in xs)).to(dt)
    if dt == torch.uint64:
        return fn(*(x.view(torch.int64) for x in xs)).view(torch.uint64)
    return fn(*xs)


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """A signed tensor with the same order as `x` (for comparisons, min/max of unsigned types)."""
    if x.dtype in _WIDE:
        return x.to(torch.int64)
    if x.dtype == torch.uint64:
        # Flipping the top bit maps unsigned order onto signed order.
        return x.view(torch.int64) ^ _U64_SIGN
    return x


def _from_ordered(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in _WIDE:
        return y.to(dtype)
    if dtype == torch.uint64:
        return (y ^ _U64_SIGN).view(torch.uint64)
    return y


def _numeric(x: torch.Tensor) -> torch.Tensor:
    """`x` in a dtype torch can do arithmetic in (uint16/32 widened; uint64 reinterpreted, valid below 2**63)."""
    if x.dtype in _WIDE:
        return x.to(torch.int64)
    if x.dtype == torch.uint64:
        return x.view(torch.int64)
    return x


def _back(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint64 and y.dtype == torch.int64:
        return y.view(torch.uint64)
    return y.to(dtype)


# --------------------------------------------------------------------------------------------- arithmetic


@register("Add", since=7, traits=_EW, quantizable_inputs=(0, 1))
def add(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _wrapsafe(torch.add, a, b)


@register("Sub", since=7, traits=_EW)
def sub(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _wrapsafe(torch.sub, a, b)


@register("Mul", since=7, traits=_EW, quantizable_inputs=(0, 1))
def mul(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _wrapsafe(torch.mul, a, b)


@register("Div", since=7, traits=_EW)
def div(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return a / b
    # ONNX integer division truncates toward zero (C semantics); torch's `//` floors.
    dt = a.dtype
    return _back(torch.div(_numeric(a), _numeric(b), rounding_mode="trunc"), dt)


def _int_pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer base and exponent: C's (T)pow(a, b). Negative exponents give 1/a^|b| truncated, so only
    a = 1 (-> 1) and a = -1 (-> +-1) survive; torch refuses negative integer exponents outright."""
    b = b.to(a.dtype)
    pos = torch.pow(a, b.clamp(min=0))
    neg_val = torch.where(a == 1, 1, torch.where(a == -1, 1 - 2 * (b.abs() % 2), 0)).to(a.dtype)
    return torch.where(b < 0, neg_val, pos)


@register("Pow", since=7, traits=_EW)
def pow_(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = a.dtype
    if dt.is_floating_point:
        # The output has the base's type; an integer or wider exponent is converted to it.
        return torch.pow(a, b.to(dt))
    if b.dtype.is_floating_point:
        # (T)pow((double)a, (double)b): the float result truncates toward zero.
        return _back(torch.pow(_numeric(a).double(), b.double()).trunc().to(torch.int64), dt)
    return _back(_int_pow(_numeric(a), _numeric(b)), dt)


@register("Mod", since=10, traits=_EW)
def mod(ctx: OpContext, a: torch.Tensor, b: torch.Tensor, fmod: int = 0) -> torch.Tensor:
    if fmod not in (0, 1):
        raise ctx.fail(f"fmod must be 0 or 1, got {fmod}")
    if a.dtype.is_floating_point and not fmod and ctx.opset < 28:
        raise ctx.fail("floating-point Mod needs fmod=1 before opset 28")
    dt = a.dtype
    fn = torch.fmod if fmod else torch.remainder  # remainder takes the divisor's sign, fmod the dividend's
    return _back(fn(_numeric(a), _numeric(b)), dt)


@register("Neg", since=6, traits=_EW)
def neg(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return torch.neg(x)


@register("Abs", since=6, traits=_EW)
def abs_(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    if x.dtype in _SAME_SIZE_SIGNED or x.dtype == torch.uint8:
        return x.clone()  # unsigned: identity
    return torch.abs(x)


@register("Sign", since=9, traits=_EW)
def sign(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    if x.dtype in _SAME_SIZE_SIGNED:
        return (x != 0).to(x.dtype)
    return torch.sign(x)


def _unary(op_type: str, fn, since: int) -> None:
    def impl(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    impl.__name__ = impl.__qualname__ = op_type.lower()
    impl.__doc__ = f"ONNX {op_type} (torch.{fn.__name__})."
    register(op_type, since=since, traits=_EW)(impl)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """IEEE sqrt, correctly rounded: torch's AVX-512 float32 kernel is not (1 ulp off on ~17 % of inputs on Zen 4);
    in float64 then rounded to float32 it is (53 >= 2 * 24 + 2 bits, so the double rounding is exact)."""
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.sqrt(x.double()).to(x.dtype)
    return torch.sqrt(x)


_sqrt.__name__ = "sqrt"

for _name, _fn, _since in [
    ("Sqrt", _sqrt, 6), ("Exp", torch.exp, 6), ("Log", torch.log, 6), ("Reciprocal", torch.reciprocal, 6),
    ("Floor", torch.floor, 6), ("Ceil", torch.ceil, 6), ("Round", torch.round, 11),  # round: half to even
    ("Sin", torch.sin, 7), ("Cos", torch.cos, 7), ("Tan", torch.tan, 7), ("Asin", torch.asin, 7),
    ("Acos", torch.acos, 7), ("Atan", torch.atan, 7), ("Sinh", torch.sinh, 9), ("Cosh", torch.cosh, 9),
    ("Tanh", torch.tanh, 6), ("Asinh", torch.asinh, 9), ("Acosh", torch.acosh, 9), ("Atanh", torch.atanh, 9),
    ("Erf", torch.erf, 9),
]:
    _unary(_name, _fn, _since)


@register("IsNaN", since=9, traits=_EW)
def isnan(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(x)


@register("IsInf", since=10, traits=_EW)
def isinf(ctx: OpContext, x: torch.Tensor, detect_negative: int = 1, detect_positive: int = 1) -> torch.Tensor:
    if detect_negative and detect_positive:
        return torch.isinf(x)
    if detect_negative:
        return torch.isneginf(x)
    if detect_positive:
        return torch.isposinf(x)
    return torch.zeros_like(x, dtype=torch.bool)


# --------------------------------------------------------------------------------------------- variadic


def _variadic(xs: tuple[torch.Tensor, ...], fn) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    # A single input still gets its own tensor (and the broadcast shape when there are several).
    return out.clone() if len(xs) == 1 else out


@register("Max", since=8, traits=_EW)
def max_(ctx: OpContext, *xs: torch.Tensor) -> torch.Tensor:
    # torch.maximum propagates NaN, as ORT's Max does (ONNX: "NaN in, NaN out").
    dt = xs[0].dtype
    return _from_ordered(_variadic(tuple(_ordered(x) for x in xs), torch.maximum), dt)


@register("Min", since=8, traits=_EW)
def min_(ctx: OpContext, *xs: torch.Tensor) -> torch.Tensor:
    dt = xs[0].dtype
    return _from_ordered(_variadic(tuple(_ordered(x) for x in xs), torch.minimum), dt)


@register("Sum", since=8, traits=_EW)
def sum_(ctx: OpContext, *xs: torch.Tensor) -> torch.Tensor:
    return _variadic(xs, lambda a, b: _wrapsafe(torch.add, a, b))


@register("Mean", since=8, traits=_EW)
def mean_(ctx: OpContext, *xs: torch.Tensor) -> torch.Tensor:
    return _variadic(xs, torch.add) / len(xs)


# --------------------------------------------------------------------------------------------- compare, logic


def _cmp(op_type: str, fn, since: int) -> None:
    def impl(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(_ordered(a), _ordered(b))

    impl.__name__ = impl.__qualname__ = op_type.lower()
    impl.__doc__ = f"ONNX {op_type}: elementwise comparison with broadcasting, bool out."
    register(op_type, since=since, traits=_EW)(impl)


for _name, _fn, _since in [
    ("Equal", torch.eq, 7), ("Less", torch.lt, 7), ("Greater", torch.gt, 7),
    ("LessOrEqual", torch.le, 12), ("GreaterOrEqual", torch.ge, 12),
    ("And", torch.logical_and, 7), ("Or", torch.logical_or, 7), ("Xor", torch.logical_xor, 7),
]:
    _cmp(_name, _fn, _since)


@register("Not", since=1, traits=_EW)
def not_(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return torch.logical_not(x)


def _bitwise(op_type: str, fn) -> None:
    def impl(ctx: OpContext, *xs: torch.Tensor) -> torch.Tensor:
        dt = xs[0].dtype
        if dt in _SAME_SIZE_SIGNED:  # bit ops only see bit patterns: reinterpret as the signed type
            return fn(*(x.view(_SAME_SIZE_SIGNED[dt]) for x in xs)).view(dt)
        return fn(*xs)

    impl.__name__ = impl.__qualname__ = op_type.lower()
    impl.__doc__ = f"ONNX {op_type} on integer bit patterns."
    register(op_type, since=18, traits=_EW)(impl)


for _name, _fn in [("BitwiseAnd", torch.bitwise_and), ("BitwiseOr", torch.bitwise_or),
                   ("BitwiseXor", torch.bitwise_xor), ("BitwiseNot", torch.bitwise_not)]:
    _bitwise(_name, _fn)


_BITS = {torch.uint8: 8, torch.int8: 8, torch.uint16: 16, torch.int16: 16, torch.uint32: 32, torch.int32: 32,
         torch.uint64: 64, torch.int64: 64}


@register("BitShift", since=11, traits=_EW)
def bitshift(ctx: OpContext, x: torch.Tensor, y: torch.Tensor, direction: str = "") -> torch.Tensor:
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.fail(f"direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    dt = x.dtype
    bits = _BITS[dt]
    signed = dt.is_signed
    # Shifts of >= bits (or negative) are out of range: ONNX (opset 28) defines them as the sign fill alone.
    # A uint64 shift amount >= 2**63 reads negative in int64: out of range either way.
    sx, sy = _numeric(x), _numeric(y).to(torch.int64)
    out_of_range = (sy < 0) | (sy >= bits)
    s = sy.clamp(0, bits - 1).to(sx.dtype)
    if direction == "LEFT":
        r = torch.bitwise_left_shift(sx, s)
        r = torch.where(out_of_range, torch.zeros_like(r), r)
    elif signed:
        r = torch.bitwise_right_shift(sx, torch.where(out_of_range, torch.full_like(s, bits - 1), s))
    elif dt == torch.uint64:
        # Logical shift in int64: shift once and clear the sign bit, then shift the rest arithmetically.
        once = torch.bitwise_right_shift(sx, 1) & (2**63 - 1)
        r = torch.where(s == 0, sx, torch.bitwise_right_shift(once, (s - 1).clamp(min=0)))
        r = torch.where(out_of_range, torch.zeros_like(r), r)
    else:
        r = torch.bitwise_right_shift(sx, s)  # widened values are non-negative: arithmetic == logical
        r = torch.where(out_of_range, torch.zeros_like(r), r)
    return _back(r, dt)


# --------------------------------------------------------------------------------------------- linear algebra


@register("MatMul", since=9, quantizable_inputs=(0, 1))
def matmul(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = a.dtype
    if dt in _WIDE or dt == torch.uint64:
        return _back(torch.matmul(_numeric(a), _numeric(b)), dt)
    return torch.matmul(a, b)


@register("Gemm", since=7, quantizable_inputs=(0, 1))
def gemm(
    ctx: OpContext,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,  # noqa: N803 (ONNX attribute names)
    transB: int = 0,  # noqa: N803
) -> torch.Tensor:
    if a.dim() != 2 or b.dim() != 2:
        raise ctx.fail(f"A and B must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    dt = a.dtype
    a, b = _numeric(a), _numeric(b)
    if transA:
        a = a.t()
    if transB:
        b = b.t()
    y = a @ b
    if alpha != 1.0:
        y = y * alpha if dt.is_floating_point else (y * alpha).to(y.dtype)
    if c is not None and beta != 0.0:
        c = _numeric(c)
        y = y + (c if beta == 1.0 else (c * beta).to(y.dtype))
    return _back(y, dt)


def _einsum_explicit(equation: str) -> str:
    """ONNX's implicit output (labels seen once, in ASCII order, after the ellipsis) made explicit;
    torch orders implicit outputs differently for mixed-case labels."""
    eq = equation.replace(" ", "")
    if "->" in eq:
        return eq
    terms = eq.split(",")
    counts: dict[str, int] = {}
    for t in terms:
        for ch in t.replace("...", ""):
            counts[ch] = counts.get(ch, 0) + 1
    out = "".join(sorted(ch for ch, n in counts.items() if n == 1))
    return eq + "->" + ("..." if "..." in eq else "") + out


@register("Einsum", since=12)
def einsum(ctx: OpContext, *xs: torch.Tensor, equation: str = "") -> torch.Tensor:
    if not equation:
        raise ctx.fail("attribute 'equation' is required")
    eq = _einsum_explicit(equation)
    dt = xs[0].dtype
    return _back(torch.einsum(eq, *(_numeric(x) for x in xs)), dt)


@register("Clip", since=6, until=11, traits=_EW)
def clip_6(ctx: OpContext, x: torch.Tensor, min: float = -3.4028234663852886e38,  # noqa: A002
           max: float = 3.4028234663852886e38) -> torch.Tensor:  # noqa: A002
    return torch.clamp(x, min, max)


@register("Clip", since=11, traits=_EW)
def clip(ctx: OpContext, x: torch.Tensor, lo: torch.Tensor | None = None,
         hi: torch.Tensor | None = None) -> torch.Tensor:
    dt = x.dtype
    if lo is None and hi is None:
        return x.clone()
    sx = _ordered(x)
    # Clip applies max(x, lo) then min(., hi): with lo > hi every element becomes hi, as in torch.clamp.
    return _from_ordered(
        torch.clamp(sx, None if lo is None else _ordered(lo), None if hi is None else _ordered(hi)), dt
    )


# Det is registered in ops/tensor.py (same torch.linalg.det kernel); registering it twice would fail.
