"""`smooth_quant`: move activation outliers into the weights before per-tensor activation quantization
(Xiao et al., 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models").

For X·W with a per-input-channel scale s > 0, X·W = (X·diag(1/s))·(diag(s)·W). A channel j of X whose values
reach far beyond the others (a LayerNorm output with max 28 against rms 0.66) sets the step of a per-tensor
quantization of X for every channel; dividing it by s_j and multiplying row j of W by s_j moves part of that
range into W, which is quantized per output column and absorbs it better. With
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
(max|X_j| over the calibration data, max|W_j| over row j of every weight that reads X; alpha = 0.5 balances
the two), both X/s and s·W have max_j = max|X_j|^alpha · max|W_j|^alpha along channel j.

What the pass does, for each activation X read (as input A) by one or more MatMul/Gemm with a constant 2-D
weight that the recipe quantizes:
1. measures max|X_j| per channel (last axis) with executor hooks over `ctx.calibration` (a running max:
   memory is one vector per activation however much data there is; `alpha_grid` keeps a little more);
2. picks one s shared by every such MatMul (max|W_j| over all their weights) and multiplies their weight
   rows by s (a weight also read elsewhere is copied first);
3. divides X by s exactly where it is made, when its producer can absorb 1/s (option `fold_into`, by default
   LayerNormalization and Mul):
   LayerNormalization over the last axis (gamma and beta divided); a Mul by a constant per-channel vector (the
   last op of an RMSNorm as Llama models export it, weight * x * rsqrt(mean(x^2)): the vector divided);
   MatMul/Gemm with a constant weight, or its
   constant-bias Add (output columns and bias divided); com.microsoft MultiHeadAttention (its output
   channels are convex combinations of V's channels, so V's producer divides instead). Otherwise, with
   `insert_mul`, a Mul by 1/s placed before the MatMuls (one more elementwise pass over X at run time);
4. gives every other reader of X (the residual Add/Sum of a post-LN transformer) the original values back
   through one Mul by s.
An activation that cannot be smoothed this way (a graph output, read inside a subgraph, a producer that
cannot absorb 1/s) is kept, with the reason. Without calibration data the pass changes nothing and says so.
What it did goes to `ctx.artifacts["smooth_quant"]` (per activation: alpha, max|X| before and after, the
range of s, how it was divided) and `ctx.artifacts["rescaled"]` (value name -> s: the graph now computes
that value divided by s along its last axis, so a comparison with the float model must multiply it back).

Exactness. With `power_of_two` (the default) every s_j is rounded to a power of two: then every rescaling above
is exact in binary floating point (absent overflow and underflow), each product x_j·w_jk is the same number
before and after, and the float model computes bit-identical outputs. Without it, the model differs by
float32 rounding (one rounding per rescaled constant, one per inserted Mul).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.ir import DType, Graph, Model, Node, Tensor, TensorType, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import constant, constant_vector, graph_input_ids, is_standard, set_constant, subject
from .assign import quantized_linear

MS_DOMAIN = "com.microsoft"
FOLD_TARGETS = ("LayerNormalization", "Mul", "MatMul", "Gemm", "MultiHeadAttention")


@dataclass(frozen=True)
class SmoothQuantOptions:
    """`alpha`: migration strength in [0, 1] (0: nothing moves to the weights; 1: all of X's range does).
    `fold_into`: the producers that may absorb the division by s, among FOLD_TARGETS (see the module doc); by
    default LayerNormalization and Mul (a norm's per-channel weight): on MiniLM smoothing the attention outputs
    too (through V) did not lower the error measurably, and a MatMul that absorbs 1/s computes a rescaled output,
    which the report's per-layer comparison with the float model must undo (`ctx.artifacts["rescaled"]`).
    `insert_mul`: for other producers (GELU, a graph input), divide with an inserted Mul instead of keeping X as
    it is.
    `power_of_two`: round s to powers of two, so the float model stays bit-identical. `alpha_grid`: when
    given, each activation takes the alpha from this list, or no smoothing at all, whose `_predicted_error`
    is least (computed from the statistics of the first `search_batches` calibration runs); `alpha` is then
    unused. `enabled`: off keeps the pass in a recipe without effect."""

    enabled: bool = True
    alpha: float = 0.5
    alpha_grid: tuple[float, ...] = ()
    fold_into: tuple[str, ...] = ("LayerNormalization", "Mul")
    insert_mul: bool = False
    power_of_two: bool = True
    search_batches: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha_grid", tuple(float(a) for a in self.alpha_grid))
        for a in (self.alpha, *self.alpha_grid):
            if not 0.0 <= float(a) <= 1.0:
                raise ValueError(f"alpha must lie in [0, 1], got {a}")
        if self.search_batches < 1:
            raise ValueError(f"search_batches must be >= 1, got {self.search_batches}")
        if isinstance(self.fold_into, str):
            raise ValueError(f"fold_into must be a list of op types, got the string {self.fold_into!r}")
        object.__setattr__(self, "fold_into", tuple(self.fold_into))  # a TOML list arrives as a list
        bad = [f for f in self.fold_into if f not in FOLD_TARGETS]
        if bad:
            raise ValueError(f"fold_into: unknown producer {bad[0]!r}; valid: {', '.join(FOLD_TARGETS)}")


# -- the plan for one activation --------------------------------------------------------------------------


@dataclass
class _Fold:
    """Where 1/s goes for one value Y (the activation itself, or V behind an attention node)."""

    how: str  # "LayerNormalization", "ChannelMul", "MatMul", "Gemm", "MultiHeadAttention" or "Mul" (inserted)
    node: Node | None  # the node whose constants change (None for an inserted Mul)
    bias: Node | None = None  # a constant-bias Add after a MatMul/Gemm
    via: Node | None = None  # the attention node that passes V's scaling through


@dataclass
class _Site:
    """One activation to smooth: its MatMul readers, its other readers, and how to divide it."""

    x: Value
    readers: list[Node]
    others: list[tuple[Node, int]]
    fold: _Fold
    channels: int


@register_pass
class SmoothQuant(Pass):
    """Per-channel scales that move activation outliers into MatMul weights (see the module doc)."""

    name = "smooth_quant"
    Options = SmoothQuantOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: SmoothQuantOptions = self.options()
        if self.skipped(ctx, enabled=opts.enabled, needs_data=True):
            return PassResult(model, False)
        graph = model.graph
        sites = self._plan(model, ctx, opts)
        if not sites:
            return PassResult(model, False)
        stats = channel_stats(model, [s.x for s in sites], ctx, opts.search_batches if opts.alpha_grid else 0)
        changed = False
        for site in sites:
            st = stats.get(id(site.x))
            if st is None:
                ctx.decide(self.name, f"%{site.x.name}", "kept", "the calibration runs never computed it")
                continue
            a = st.amax.numpy()
            s, alpha, why = _choose(site, st, opts)
            if s is None:
                ctx.decide(self.name, f"%{site.x.name}", "kept", why)
                continue
            for name in _apply(graph, site, s):
                ctx.artifacts.setdefault("rescaled", {})[name] = s
            changed = True
            ctx.artifacts.setdefault("smooth_quant", {})[site.x.name] = {
                "alpha": alpha, "max_before": float(np.max(a)), "max_after": float(np.max(a / s)),
                "s_min": float(s.min()), "s_max": float(s.max()), "how": site.fold.how,
                "readers": [n.name for n in site.readers], "restored": len(site.others)}
            ctx.decide(self.name, f"%{site.x.name}", "smoothed", _describe(site, a, s, alpha, why))
        return PassResult(model, changed)

    # -- which activations, and how ------------------------------------------------------------------------
    def _plan(self, model: Model, ctx: PassContext, opts: SmoothQuantOptions) -> list[_Site]:
        graph = model.graph
        eligible = quantized_linear(model, ctx)
        inputs = graph_input_ids(graph)
        by_x: dict[int, tuple[Value, list[Node]]] = {}
        for n in graph.nodes:
            if id(n) in eligible and _reader_ok(n, inputs) is None:
                x = n.inputs[0]
                assert x is not None
                by_x.setdefault(id(x), (x, []))[1].append(n)
        sites = []
        for x, readers in by_x.values():
            why = _site_check(x, readers)
            if isinstance(why, str):
                ctx.decide(self.name, f"%{x.name}", "kept", why)
                continue
            channels = why
            fold = _fold_plan(x, opts, inputs)
            if isinstance(fold, str):
                ctx.decide(self.name, f"%{x.name}", "kept", fold)
                continue
            reader_ids = {id(n) for n in readers}
            others = [(n, i) for n, i in x.uses if id(n) not in reader_ids or i != 0]
            if fold.how == "Mul":
                others = []  # X itself keeps its values: only the MatMuls read the divided copy
            sites.append(_Site(x, readers, others, fold, channels))
        return sites


# -- checks ------------------------------------------------------------------------------------------------


def _reader_ok(n: Node, inputs: set[int]) -> str | None:
    """None when `n` reads an activation X at input 0 and a constant 2-D float32 weight with X's channels on
    its rows; else why not (the node is then simply not a reader to rescale)."""
    if len(n.inputs) < 2 or n.inputs[0] is None:
        return "no activation input"
    w = constant(n.inputs[1], inputs)
    if w is None or w.dtype is not DType.FLOAT or len(w.shape) != 2:
        return "weight is not a constant 2-D float32 tensor"
    if n.inputs[0].const is not None:
        return "input A is a constant"
    if n.op_type == "Gemm" and n.attr("transA", 0):
        return "Gemm with transA: channels are not on A's last axis"
    return None


def _k_axis(n: Node) -> int:
    """The axis of a reader's weight that runs along X's channels (K)."""
    return 1 if n.op_type == "Gemm" and n.attr("transB", 0) else 0


def _site_check(x: Value, readers: list[Node]) -> int | str:
    """The channel count of X, or why X cannot be smoothed."""
    if not isinstance(x.type, TensorType) or x.type.dtype is not DType.FLOAT:
        return f"%{x.name} is not float32"
    if x.is_graph_output():
        return f"%{x.name} is a graph output: its values must stay as they are"
    ks = {n.inputs[1].const.shape[_k_axis(n)] for n in readers}  # type: ignore[union-attr]
    if len(ks) != 1:
        return f"its readers' weights disagree on the channel count ({sorted(ks)})"
    k = ks.pop()
    last = x.type.shape[-1] if x.type.shape else None
    if isinstance(last, int) and last != k:
        return f"%{x.name} has {last} channels on its last axis, the weights {k} rows"
    g = x.owning_graph()
    inner = [n for n, _ in x.uses if n.graph is not g]
    if inner:
        return f"%{x.name} is read inside a subgraph ({inner[0].label()}): no Mul can restore it there"
    return k


def _fold_plan(x: Value, opts: SmoothQuantOptions, inputs: set[int]) -> _Fold | str:
    """How X gets divided by s, or why it cannot be."""
    why = _producer_fold(x, opts, inputs)
    if isinstance(why, _Fold):
        return why
    if opts.insert_mul:
        return _Fold("Mul", None)
    return f"{why}; insert_mul is off, so X is kept"


def _producer_fold(y: Value, opts: SmoothQuantOptions, inputs: set[int], depth: int = 0) -> _Fold | str:
    """Whether y's producer can output y/s by changing constants only."""
    p = y.producer
    if p is None:
        return f"%{y.name} is a graph input (no producer to fold 1/s into)"
    c = _channels_of(y)
    if is_standard(p, "LayerNormalization") and y.index == 0:
        if "LayerNormalization" not in opts.fold_into:
            return f"{subject(p)}: LayerNormalization is not in fold_into"
        return _ln_fold(p, c, inputs)
    if is_standard(p, "Mul") and len(p.inputs) == 2:
        if "Mul" not in opts.fold_into:
            return f"{subject(p)}: Mul is not in fold_into"
        if _channel_vector_input(p, c, inputs) is None:
            return f"{subject(p)} does not multiply %{y.name} by a constant vector along its channels"
        return _Fold("ChannelMul", p)
    if is_standard(p, "MatMul", "Gemm") and y.index == 0:
        if p.op_type not in opts.fold_into:
            return f"{subject(p)}: {p.op_type} is not in fold_into"
        return _linear_fold(p, None, c, inputs)
    if is_standard(p, "Add") and len(p.inputs) == 2:
        return _bias_fold(p, c, opts, inputs)
    if p.domain == MS_DOMAIN and p.op_type == "MultiHeadAttention" and y.index == 0 and depth == 0:
        if "MultiHeadAttention" not in opts.fold_into:
            return f"{subject(p)}: MultiHeadAttention is not in fold_into"
        return _attention_fold(p, c, opts, inputs)
    return f"producer {subject(p)} is not linear in %{y.name} per channel"


def _channels_of(v: Value) -> int | None:
    if isinstance(v.type, TensorType) and v.type.shape and isinstance(v.type.shape[-1], int):
        return v.type.shape[-1]
    return None


def _channel_vector_input(mul: Node, c: int | None, inputs: set[int]) -> int | None:
    """The index of a Mul's constant per-channel vector input (c entries, more than one), its other input not
    constant; else None."""
    for i in (0, 1):
        v, other = mul.inputs[i], mul.inputs[1 - i]
        if (constant_vector(v, inputs, c) and v.const.shape[0] > 1  # type: ignore[union-attr]
                and other is not None and constant(other, inputs) is None):
            return i
    return None


def _ln_fold(ln: Node, c: int | None, inputs: set[int]) -> _Fold | str:
    rank = ln.inputs[0].type.rank if ln.inputs[0] is not None and isinstance(ln.inputs[0].type, TensorType) else None
    axis = int(ln.attr("axis", -1))
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return f"{subject(ln)} normalizes from axis {axis}, not over the last axis only (gamma is not per channel)"
    gamma = ln.inputs[1] if len(ln.inputs) > 1 else None
    beta = ln.inputs[2] if len(ln.inputs) > 2 else None
    if not constant_vector(gamma, inputs, c):
        return f"{subject(ln)}: scale is not a constant float32 vector along the channels"
    if beta is not None and not constant_vector(beta, inputs, c):
        return f"{subject(ln)}: bias is not a constant float32 vector along the channels"
    return _Fold("LayerNormalization", ln)


def _linear_fold(p: Node, add: Node | None, c: int | None, inputs: set[int]) -> _Fold | str:
    """p = MatMul/Gemm(a, W[, C]) with constant W: its output columns can be divided."""
    w = constant(p.inputs[1] if len(p.inputs) > 1 else None, inputs)
    if w is None or w.dtype is not DType.FLOAT or len(w.shape) != 2:
        return f"{subject(p)}: weight is not a constant 2-D float32 tensor"
    n_axis = 0 if p.op_type == "Gemm" and p.attr("transB", 0) else 1
    if c is not None and w.shape[n_axis] != c:
        return f"{subject(p)}: weight has {w.shape[n_axis]} output columns, not {c}"
    gemm_c = p.inputs[2] if p.op_type == "Gemm" and len(p.inputs) > 2 else None
    if gemm_c is not None and not constant_vector(gemm_c, inputs, c):
        return f"{subject(p)}: Gemm bias C is not a constant vector along the output columns"
    return _Fold(p.op_type, p, bias=add)


def _bias_fold(add: Node, c: int | None, opts: SmoothQuantOptions, inputs: set[int]) -> _Fold | str:
    """y = Add(h, b): b a constant vector, h a MatMul/Gemm output read by this Add only."""
    for h, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if h is None or not constant_vector(b, inputs, c) or h.producer is None:
            continue
        p = h.producer
        if not is_standard(p, "MatMul", "Gemm"):
            continue
        if p.op_type not in opts.fold_into:
            return f"{subject(p)}: {p.op_type} is not in fold_into"
        if h.is_graph_output() or len(h.uses) != 1:
            return f"{subject(p)}: its output %{h.name} is also read elsewhere (would see the divided values)"
        return _linear_fold(p, add, c, inputs)
    return f"producer {subject(add)} does not add a constant vector to a MatMul/Gemm output"


def _attention_fold(mha: Node, c: int | None, opts: SmoothQuantOptions, inputs: set[int]) -> _Fold | str:
    """MultiHeadAttention(q, k, v) with separate 3-D q/k/v, no packed bias and no past state: output channel
    j is a convex combination of v's channel j, so dividing v by s divides the output by s."""
    ins = list(mha.inputs) + [None] * 8
    v = ins[2]
    if v is None or ins[1] is None:
        return f"{subject(mha)}: packed q/k/v (no separate value input)"
    if ins[3] is not None:
        return f"{subject(mha)}: has a packed q/k/v bias input"
    if ins[6] is not None or ins[7] is not None:
        return f"{subject(mha)}: reads past key/value state"
    if any(o.uses or o.is_graph_output() for o in mha.outputs[1:]):
        return f"{subject(mha)}: its present key/value outputs are read"
    if not (isinstance(v.type, TensorType) and v.type.rank == 3) or _channels_of(v) not in (None, c):
        return f"{subject(mha)}: value %{v.name} is not [batch, seq, {c}]"
    if v.is_graph_output() or len(v.uses) != 1:
        return f"{subject(mha)}: value %{v.name} is also read elsewhere"
    inner = _producer_fold(v, opts, inputs, depth=1)
    if isinstance(inner, str):
        return f"{subject(mha)}: value %{v.name} cannot be divided ({inner})"
    inner.via = mha
    return inner


# -- statistics ----------------------------------------------------------------------------------------------


class _Stats:
    """What the calibration runs tell about one activation X, channel by channel (last axis): max|X_j|, the
    sum of X_j^2 and the row count (running), and the channel max/min of the first `keep` runs (each run is
    quantized with its own range at run time). Memory: (3 + 2 keep) vectors of X's channel count."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.amax: Any = None
        self.sumsq: Any = None
        self.rows = 0
        self.batches: list[tuple[Any, Any, int]] = []  # (channel max, channel min, rows) per run

    def update(self, t: Any) -> None:
        import torch

        x = t.detach().reshape(-1, t.shape[-1])
        hi, lo = x.amax(dim=0).double(), x.amin(dim=0).double()
        a = torch.maximum(hi.abs(), lo.abs())
        sq = x.double().square().sum(dim=0)
        self.amax = a if self.amax is None else torch.maximum(self.amax, a)
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.rows += x.shape[0]
        if len(self.batches) < self.keep:
            self.batches.append((hi, lo, x.shape[0]))


def channel_stats(model: Model, values: list[Value], ctx: PassContext, keep: int = 0, *,
                  desc: str = "smooth_quant: activation ranges") -> dict[int, _Stats]:
    """id(value) -> its `_Stats` (per channel of the last axis) over the calibration data: one streaming pass
    of the executor; values the runs never computed are left out."""

    from qcompiler.runtime import Executor

    stats = {id(v): _Stats(keep) for v in values}

    def hook(value: Value, t: Any) -> None:
        stats[id(value)].update(t)

    ctx.observe(Executor(model), values, hook, desc=desc)
    return {k: v for k, v in stats.items() if v.amax is not None}


def _row_maxima(readers: list[Node], k: int) -> np.ndarray:
    """max |W_jk| over the rows j (X's channels) of every reader's weight."""
    out = np.zeros(k, np.float64)
    for n in readers:
        out = np.maximum(out, np.abs(_weight_kn(n)).max(axis=1))
    return out


def _weight_kn(n: Node) -> np.ndarray:
    """A reader's weight as [K, N] (float64): rows along X's channels."""
    w = n.inputs[1].const.numpy().astype(np.float64)  # type: ignore[union-attr]
    return w if _k_axis(n) == 0 else w.T


def _scales(a: np.ndarray, w: np.ndarray, alpha: float, power_of_two: bool) -> np.ndarray:
    """s_j = a_j^alpha / w_j^(1 - alpha) as float32; 1 where a channel or its weight row is all zero (nothing
    to balance), or where s would not be a normal float32 number."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = np.power(a, alpha) / np.power(w, 1.0 - alpha)
    ok = (a > 0) & (w > 0) & np.isfinite(s) & (s > 0)
    s = np.where(ok, s, 1.0)
    if power_of_two:
        s = np.exp2(np.round(np.log2(s)))
    s = np.where((s >= 2.0**-60) & (s <= 2.0**60), s, 1.0)  # far from float32's limits: 1/s and W*s stay normal
    return s.astype(np.float32)


def _predicted_error(st: _Stats, weights: list[np.ndarray], s: np.ndarray) -> float:
    """The mean squared output error that quantizing X/s (uint8, per tensor, each run's own [min, max] with 0
    in it) and s·W (int8 symmetric per output column) adds to the readers' outputs, relative to their output
    energy, summed over the readers: rounding errors are modelled as independent and uniform over a step
    (variance step^2 / 12), so for a reader W [K, N]
        E|dY|^2 = sum_runs rows_b (step_b^2 / 12) |s W|_F^2  +  sum_jk (sum_rows X_j^2 / s_j^2) step_k^2 / 12,
    with step_b = range_b(X / s) / 255 and step_k = max_j |s_j W_jk| / 127.5, against the energy
    sum_jk (sum_rows X_j^2) W_jk^2 (channels taken as uncorrelated). On MiniLM's 36 MatMuls it predicted the
    simulated error of every alpha to within a few percent."""
    s = s.astype(np.float64)
    sq = st.sumsq.numpy()
    kept_rows = sum(r for _, _, r in st.batches)
    act = 0.0
    for hi, lo, r in st.batches:
        rng = max(float((hi.numpy() / s).max()), 0.0) - min(float((lo.numpy() / s).min()), 0.0)
        act += r * (rng / 255.0) ** 2 / 12.0
    act *= st.rows / max(kept_rows, 1)  # the runs kept stand for all of them
    total = 0.0
    for w in weights:
        ws = w * s[:, None]
        step_w = np.abs(ws).max(axis=0) / 127.5
        err = act * float(np.square(ws).sum()) + float((sq / s**2).sum() * np.square(step_w).sum()) / 12.0
        energy = float(sq @ np.square(w).sum(axis=1))
        total += err / max(energy, 1e-300)
    return total


def _choose(site: _Site, st: _Stats, opts: SmoothQuantOptions) -> tuple[np.ndarray | None, float | None, str]:
    """(s, alpha, how it was chosen), or (None, None, why X is left as it is)."""
    a = st.amax.numpy()
    rows = _row_maxima(site.readers, site.channels)
    if not opts.alpha_grid:
        s = _scales(a, rows, opts.alpha, opts.power_of_two)
        if np.all(s == 1.0):
            return None, None, "every scale is 1: nothing to move"
        return s, opts.alpha, ""
    weights = [_weight_kn(n) for n in site.readers]
    base = _predicted_error(st, weights, np.ones_like(a, dtype=np.float32))
    best: tuple[float, float | None, np.ndarray | None] = (base, None, None)
    for alpha in opts.alpha_grid:
        s = _scales(a, rows, alpha, opts.power_of_two)
        e = _predicted_error(st, weights, s)
        if e < best[0]:
            best = (e, alpha, s)
    if best[2] is None:
        return None, None, f"no alpha in {list(opts.alpha_grid)} lowers the predicted error ({base:.3g})"
    return best[2], best[1], f"predicted relative error {base:.3g} -> {best[0]:.3g}"


# -- rewriting -----------------------------------------------------------------------------------------------


def _apply(graph: Graph, site: _Site, s: np.ndarray) -> list[str]:
    """Rescale the readers' weights, divide X (in its producer or with a Mul), restore X for the other readers.
    Returns the names of the values that now hold (original / s): X, and what its producer chain computes."""
    x = site.x
    inputs = graph_input_ids(graph)
    for n in site.readers:  # rows times s
        w = n.inputs[1]
        arr = w.const.numpy().astype(np.float32)  # type: ignore[union-attr]
        scaled = arr * (s[:, None] if _k_axis(n) == 0 else s[None, :])
        set_constant(graph, n, 1, scaled, w, "_smoothed")
    fold = site.fold
    if fold.how == "Mul":
        inv = graph.make_initializer(f"{x.name}_smooth_inv_scale", Tensor(np.float32(1.0) / s))
        out = _insert_mul(graph, x, inv, f"{x.name}_smoothed")
        for n in site.readers:
            n.set_input(0, out)
        return []
    node = fold.node
    assert node is not None
    rescaled = [v.name for v in (node.outputs[0], fold.bias.outputs[0] if fold.bias else None, x) if v is not None]
    if fold.how == "ChannelMul":
        i = _channel_vector_input(node, None, inputs)
        assert i is not None
        v = node.inputs[i]
        set_constant(graph, node, i, constant(v, inputs).numpy() / s, v, "_smoothed")  # type: ignore[union-attr]
    elif fold.how == "LayerNormalization":
        for i in (1, 2):
            v = node.inputs[i] if len(node.inputs) > i else None
            if v is not None:
                set_constant(graph, node, i, constant(v, inputs).numpy() / s, v, "_smoothed")  # type: ignore[union-attr]
    else:
        _divide_columns(graph, node, fold.bias, s, inputs)
    if site.others:  # the original values for every other reader: one Mul by s
        sv = graph.make_initializer(f"{x.name}_smooth_scale", Tensor(s))
        restored = _insert_mul(graph, x, sv, f"{x.name}_unsmoothed")
        for n, i in site.others:
            n.set_input(i, restored)
    return list(dict.fromkeys(rescaled))


def _divide_columns(graph: Graph, p: Node, add: Node | None, s: np.ndarray, inputs: set[int]) -> None:
    w = p.inputs[1]
    arr = w.const.numpy().astype(np.float32)  # type: ignore[union-attr]
    by_row = p.op_type == "Gemm" and bool(p.attr("transB", 0))
    set_constant(graph, p, 1, arr / (s[:, None] if by_row else s[None, :]), w, "_smoothed")
    biases: list[tuple[Node, int]] = []
    if p.op_type == "Gemm" and len(p.inputs) > 2 and p.inputs[2] is not None:
        biases.append((p, 2))
    if add is not None:
        biases.append((add, 0 if constant_vector(add.inputs[0], inputs, None) else 1))
    for n, i in biases:
        b = n.inputs[i]
        set_constant(graph, n, i, constant(b, inputs).numpy() / s, b, "_smoothed")  # type: ignore[union-attr]


def _insert_mul(graph: Graph, x: Value, scale: Value, name: str) -> Value:
    """A Mul(x, scale) placed right after x's producer (first, for a graph input); returns its output."""
    out = Value(graph.fresh_name(name), x.type)
    node = Node("Mul", [x, scale], [out], name=graph.fresh_name(f"{name}_Mul"))
    if x.producer is not None:
        graph.insert_after(x.producer, node)
    else:
        graph.insert_before(graph.nodes[0], node)
    return out


def _describe(site: _Site, a: np.ndarray, s: np.ndarray, alpha: float | None, chosen: str) -> str:
    f = site.fold
    if f.how == "Mul":
        where = "divided by an inserted Mul"
    elif f.via is not None:
        where = f"divided through {subject(f.via)} in its value's producer {subject(f.node)}"  # type: ignore[arg-type]
    else:
        where = f"divided in its producer {subject(f.node)}"  # type: ignore[arg-type]
    restored = f"; {len(site.others)} other reader(s) get it back through a Mul by s" if site.others else ""
    how = f"alpha {alpha:g}" + (f" ({chosen})" if chosen else "")
    return (f"{how}: max|X| {float(a.max()):.3g} -> {float((a / s).max()):.3g} (s in [{float(s.min()):.3g}, "
            f"{float(s.max()):.3g}]), {where}; rows of {len(site.readers)} weight(s) times s{restored}")


__all__ = ["FOLD_TARGETS", "SmoothQuant", "SmoothQuantOptions"]
