"""`equalize_ranges`: give every channel of a Relu/ReLU6 output the whole per-tensor range before it is quantized,
by scaling channels between two convolutions (cross-layer equalization: Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction"; Meller et al. 2019), in full where it costs the weights nothing.

A per-tensor uint8 activation has one step for all its channels, set by the channel that reaches furthest. In
MobileNetV2 the median channel of an expansion conv's ReLU6 output reaches only 10-40 % of the tensor's maximum,
so it is quantized with 3-4 fewer effective bits than the widest one. For

    y = act(conv_p(x)),   z = conv_q(y),   act = Relu or Clip(0, cap)

multiplying output channel c of conv_p (its weights and bias) by s_c > 0 and dividing the weights that read
channel c in conv_q by s_c computes the same z, because act commutes with a positive scale (for Clip(0, cap):
up to the cap, see below). With s_c = M / m_c (m_c: channel c's maximum of y over the calibration data, M the
largest of them) every channel of y then reaches M.

Where it is free. With weights quantized per output channel, scaling a whole output channel of conv_p changes
nothing for its quantization (the channel's scale absorbs s_c), and neither does dividing a depthwise conv_q's
channel c (it is again one output channel); the pass requires per-channel weights in the recipe. A dense conv_q
reads channel c through a column of its weight rows, whose per-row scale does not absorb 1/s_c: there the scale
trades weight precision for activation precision, so it is softened to s_c ** dense_alpha (0.5 by default: half
the range ratio, in log terms, goes to each side, as in DFQ's balance). On MobileNetV2 (the 17 depthwise->project
pairs, with `gptq` and `tune_ranges` after it) dense_alpha 0 / 0.25 / 0.5 / 0.75 / 1 gave logit SQNR 24.2 / 24.0 /
24.5 / 24.6 / 24.3 dB (+-0.2 dB run to run); without `gptq` to repair the columns, 0.5 lost 0.5 dB.

The cap. Clip(0, cap) is not scale-equivariant: after scaling, channel c is clipped at cap / s_c in the original
units instead of at cap. So s_c is also held to cap / (headroom * m_c): the moved cap stays at least `headroom`
(default 2) times above the channel's calibration maximum, and the float model changes only for inputs that drive
a channel that far beyond anything the calibration data did (then it is clipped there). Where the widest channel
reaches the cap itself, the others are raised to cap / headroom instead of to M. Relu has no cap: exact.
s_c is capped at `max_scale`, and a channel that never turns positive on the calibration data keeps s_c = 1.

On MobileNetV2 (the stem and 16 expansion convs -> depthwise in full, the 17 depthwise -> projection convs at
dense_alpha), in the full cpu-int8 recipe: logit SQNR 22.6 -> 24.5 dB on the held-out crops. Runs after
`canonicalize` (BatchNorm folded, so conv_p has the bias that scales) and before `calibrate`. The scaled values are
recorded in `ctx.artifacts["rescaled"]` (the graph value is the float value divided by the stored array), so the
report's per-layer comparison with the float model undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.ir import Model, Node, Value
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from ._rewrite import constant, graph_input_ids, is_standard, native_float_array, set_constant, subject


@dataclass(frozen=True)
class EqualizeRangesOptions:
    """`max_scale`: the largest s_c (a channel whose maximum is 1/1000 of the widest one is scaled by at most this).
    `headroom`: for Clip(0, cap), how far above a channel's calibration maximum its moved cap must stay (>= 1).
    `dense_alpha`: where a dense conv reads the activation, s_c is raised to this power (0: such sites are kept;
    1: the full scale, all paid by the weight columns). `enabled`: off keeps the pass in a recipe without
    effect."""

    enabled: bool = True
    max_scale: float = 32.0
    headroom: float = 2.0
    dense_alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.max_scale >= 1.0:
            raise ValueError(f"max_scale must be >= 1, got {self.max_scale}")
        if not self.headroom >= 1.0:
            raise ValueError(f"headroom must be >= 1, got {self.headroom}")
        if not 0.0 <= self.dense_alpha <= 1.0:
            raise ValueError(f"dense_alpha must lie in [0, 1], got {self.dense_alpha}")


@dataclass
class _Site:
    """conv_p -> act -> depthwise readers: the values scaled (conv_p's output and act's) and who reads them."""

    producer: Node
    act: Node
    cap: float | None  # Clip's upper bound; None for Relu
    readers: list[Node]
    channels: int
    dense: bool = False  # some reader is a dense conv (group 1): scales are softened by dense_alpha


@register_pass
class EqualizeRanges(Pass):
    """Per-channel scales between a conv and the convs reading its Relu/ReLU6 (see the module doc)."""

    name = "equalize_ranges"
    Options = EqualizeRangesOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: EqualizeRangesOptions = self.options()
        if self.skipped(ctx, enabled=opts.enabled, needs_data=True):
            return PassResult(model, False)
        recipe = ctx.options.get("recipe")
        weights = recipe.quantize.weights if recipe is not None else None
        if weights is not None and weights.granularity != "per_channel":
            ctx.decide(self.name, "model", "skipped", f"weights are quantized {weights.granularity}: scaling a "
                       "channel is free only with per-channel weights")
            return PassResult(model, False)
        sites = _plan(model, ctx, self.name, opts.dense_alpha > 0.0)
        if not sites:
            return PassResult(model, False)
        maxima = _channel_maxima(model, [s.act.outputs[0] for s in sites], ctx)
        changed = False
        for site in sites:
            y = site.act.outputs[0]
            m = maxima.get(id(y))
            if m is None:
                ctx.decide(self.name, subject(site.producer), "kept", "the calibration runs never computed it")
                continue
            s = _scales(m, opts.max_scale, None if site.cap is None else site.cap / opts.headroom)
            if site.dense:
                s = np.power(s, opts.dense_alpha).astype(np.float32)
            if np.all(s == 1.0):
                ctx.decide(self.name, subject(site.producer), "kept", "its channels already share one range")
                continue
            _apply(model, site, s)
            # Along axis 1 of conv_p's output, whose rank is its weight's (known even where the shape is not).
            rank = len(site.producer.inputs[1].const.shape)  # type: ignore[union-attr]
            inverse = (1.0 / s).reshape((-1,) + (1,) * (rank - 2))
            rescaled = ctx.artifacts.setdefault("rescaled", {})
            for v in (site.producer.outputs[0], y):
                rescaled[v.name] = inverse
            changed = True
            ctx.decide(self.name, subject(site.producer), "equalized", _describe(site, m, s))
        return PassResult(model, changed)


def _plan(model: Model, ctx: PassContext, pass_name: str, dense_ok: bool) -> list[_Site]:
    graph = model.graph
    inputs = graph_input_ids(graph)
    sites = []
    for p in graph.nodes:
        if not is_standard(p, "Conv") or not p.outputs:
            continue
        z = p.outputs[0]
        if z.is_graph_output() or len(z.uses) != 1:
            continue
        act, slot = z.uses[0]
        if slot != 0:  # z is a bound of the Clip, not its data
            continue
        cap = _activation_cap(act, inputs)
        if cap is False:
            continue
        assert act is not None
        y = act.outputs[0]
        why = _site_check(p, y, inputs, dense_ok)
        if isinstance(why, str):
            ctx.decide(pass_name, subject(p), "kept", why)
            continue
        readers = [n for n, _ in y.uses]
        dense = any(int(n.attr("group", 1)) == 1 for n in readers)
        sites.append(_Site(p, act, cap if isinstance(cap, float) else None, readers, why, dense))
    return sites


def _activation_cap(act: Node, inputs: set[int]) -> float | None | bool:
    """None for a Relu, the cap for Clip(0, cap) with constant bounds, False for anything else."""
    if is_standard(act, "Relu"):
        return None
    if not is_standard(act, "Clip") or len(act.inputs) < 3:
        return False
    lo, hi = (constant(v, inputs) for v in act.inputs[1:3])
    if lo is None or hi is None or lo.numpy().size != 1 or hi.numpy().size != 1:
        return False
    lo_v, hi_v = float(lo.numpy().reshape(())), float(hi.numpy().reshape(()))
    return hi_v if lo_v == 0.0 and hi_v > 0.0 else False


def _site_check(p: Node, y: Value, inputs: set[int], dense_ok: bool = False) -> int | str:
    """conv_p's channel count when the site can be equalized (every reader of y a depthwise conv, or with
    `dense_ok` a dense one), else why not."""
    w = constant(p.inputs[1] if len(p.inputs) > 1 else None, inputs)
    if w is None or native_float_array(w) is None or len(w.shape) < 3:
        return "its weight is not a constant float tensor"
    b = p.inputs[2] if len(p.inputs) > 2 else None
    if b is not None and constant(b, inputs) is None:
        return "its bias is not a constant"
    c = int(w.shape[0])
    if y.is_graph_output() or not y.uses:
        return "its activation is a graph output"
    for n, i in y.uses:
        if i == 0 and (_is_depthwise(n, c, inputs) or (dense_ok and _is_dense(n, c, inputs))):
            continue
        if i == 0 and _is_dense(n, c, inputs):
            return (f"{n.label()} reads its activation and is a dense convolution: its weight columns would pay for "
                    "the scales (dense_alpha = 0)")
        return f"{n.label()} reads its activation and cannot divide the scales back (not a convolution reading it)"
    return c


def _is_depthwise(n: Node, channels: int, inputs: set[int]) -> bool:
    """A Conv with one input channel per group over `channels` groups and a constant float weight."""
    if not is_standard(n, "Conv") or int(n.attr("group", 1)) != channels:
        return False
    w = constant(n.inputs[1] if len(n.inputs) > 1 else None, inputs)
    return w is not None and native_float_array(w) is not None and len(w.shape) >= 3 and int(w.shape[1]) == 1 \
        and int(w.shape[0]) % channels == 0


def _is_dense(n: Node, channels: int, inputs: set[int]) -> bool:
    """A Conv with one group reading `channels` input channels through a constant float weight."""
    if not is_standard(n, "Conv") or int(n.attr("group", 1)) != 1:
        return False
    w = constant(n.inputs[1] if len(n.inputs) > 1 else None, inputs)
    return w is not None and native_float_array(w) is not None and len(w.shape) >= 3 and int(w.shape[1]) == channels


def _channel_maxima(model: Model, values: list[Value], ctx: PassContext) -> dict[int, np.ndarray]:
    """id(value) -> max over the calibration data of each channel (axis 1), one streaming executor pass."""
    from qcompiler.runtime import Executor

    maxima: dict[int, Any] = {}

    def hook(value: Value, t: Any) -> None:
        import torch

        dims = [d for d in range(t.dim()) if d != 1]
        m = t.detach().double().amax(dim=dims)
        old = maxima.get(id(value))
        maxima[id(value)] = m if old is None else torch.maximum(old, m)

    ctx.observe(Executor(model), values, hook, desc="equalize_ranges: channel ranges")
    return {k: v.numpy() for k, v in maxima.items()}


def _scales(m: np.ndarray, max_scale: float, reach: float | None) -> np.ndarray:
    """s_c = T / m_c in [1, max_scale] (float32), T = the widest channel's maximum M, or `reach` if lower; 1 for
    channels that never turned positive."""
    top = float(m.max()) if reach is None else min(float(m.max()), reach)
    if not top > 0.0:
        return np.ones(m.shape, np.float32)
    with np.errstate(divide="ignore"):
        s = np.where(m > 0.0, top / m, 1.0)
    return np.clip(s, 1.0, max_scale).astype(np.float32)


def _apply(model: Model, site: _Site, s: np.ndarray) -> None:
    graph = model.graph
    p = site.producer
    w = p.inputs[1]
    assert w is not None and w.const is not None
    wp = w.const.numpy()
    set_constant(graph, p, 1, (wp * s.reshape((-1,) + (1,) * (wp.ndim - 1))).astype(wp.dtype), w, "_eq")
    b = p.inputs[2] if len(p.inputs) > 2 else None
    if b is not None and b.const is not None:
        bp = b.const.numpy()
        set_constant(graph, p, 2, (bp * s).astype(bp.dtype), b, "_eq")
    for q in site.readers:
        wq_v = q.inputs[1]
        assert wq_v is not None and wq_v.const is not None
        wq = wq_v.const.numpy()
        if int(q.attr("group", 1)) == 1:  # dense: input channel c is weight column c
            div = s.reshape((1, -1) + (1,) * (wq.ndim - 2))
        else:  # depthwise: output k reads channel k // multiplier
            div = np.repeat(s, wq.shape[0] // site.channels).reshape((-1,) + (1,) * (wq.ndim - 1))
        set_constant(graph, q, 1, (wq / div).astype(wq.dtype), wq_v, "_eq")


def _describe(site: _Site, m: np.ndarray, s: np.ndarray) -> str:
    top = float(m.max())
    before = np.median(m / top) if top > 0 else 0.0
    after = np.median(m * s / top) if top > 0 else 0.0
    readers = ", ".join(n.label() for n in site.readers)
    text = (f"{site.channels} channels of %{site.act.outputs[0].name} scaled by {float(s.min()):.3g}-"
            f"{float(s.max()):.3g} (the median channel reached {before:.0%} of the widest, now {after:.0%}); "
            f"{readers} divided back")
    if site.cap is not None:
        moved = (s > 1.0) & (m > 0)
        if moved.any():
            bound = float(np.min(site.cap / (s[moved] * m[moved])))
            text += (f"; Clip(0, {site.cap:g}) now bounds each scaled channel at >= {bound:.3g}x its calibration "
                     "maximum")
    return text
