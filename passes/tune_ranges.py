"""`tune_ranges`: fit the activation scales to the model's output, not to each tensor alone (learned step size,
Esser et al., 2020, "Learned Step Size Quantization", used after training as in PTQ reconstruction methods).

An observer picks each activation's range from that tensor's own values; the best range for the *network* trades
each tensor's rounding noise against its clipping by how much each one reaches the output. With the calibrated
model simulated (activations fake-quantized with a straight-through estimator, weights dequantized), this pass
treats the log of every per-tensor activation scale as a parameter and minimizes, with Adam over the calibration
set, the squared error of the model outputs against the float model's (normalized by their energy). Zero points
stay as calibrated (the range scales about them). The new scales replace the calibrated ones only when they
lower the loss over the whole calibration set. Runs after `calibrate` (and `gptq`, `bias_correction`), before
`lower_qdq`.

With `weight_scales`, the per-channel (or per-tensor) scales of the integer weights are fitted too, their integers
kept as they are (as `gptq` chose them): each output channel's gain then absorbs the systematic part of its
weights' rounding and of the activation error upstream. The integers are kept because a calibration set of a
hundred samples is no basis for choosing millions of them; a gain per channel is. The float model the fit aims at
has the float weights, also where `gptq` has put the constants on the grid (it keeps them in `Value.meta`).
MobileNetV2 logit SQNR on its evaluation crops: 19.2 dB before this pass; 23.7 fitting activation scales to the
model with gptq's weights, 24.4 to the float model, 26.6 with the weight scales fitted too (`weight_lr` 0.001:
25.3; 10 epochs instead of 6: 26.3).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qcompiler.errors import CalibrationError
from qcompiler.ir import Model, Tensor, Value
from qcompiler.numerics import PerChannel, PerTensor, get_format
from qcompiler.pipeline import Pass, PassContext, PassResult, register_pass

from .bias_correction import _act_params, _weight_dq, simulated_activations
from .gptq import FLOAT_CONST


@dataclass(frozen=True)
class TuneRangesOptions:
    epochs: int = 6
    lr: float = 0.03  # Adam step on log(scale): about 3 % of the scale per step at most (MobileNetV2: 0.01 -> 0.03
    # gives logit SQNR 22.8 -> 24.2 dB in the same 6 epochs; 0.05: 23.6 dB)
    batch_size: int = 8  # samples per optimizer step
    micro_batch: int = 1  # samples per forward/backward (gradients add up over a step): memory, not results
    samples: int = 128  # calibration samples held in memory and fitted on (the first ones read)
    progress: bool = True
    weight_scales: bool = True  # fit the integer weights' scales as well, their integers fixed
    weight_lr: float = 0.0003  # Adam step on log(weight scale)
    reference_cache_mb: float = 256.0  # float model outputs kept across epochs (the rest are recomputed)


@register_pass
class TuneRanges(Pass):
    name = "tune_ranges"
    requires = ("calibrated",)
    Options = TuneRangesOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from tqdm import tqdm

        from qcompiler.runtime import Executor
        from qcompiler.runtime.fake_quant import broadcast_along, fake_quantize

        opts: TuneRangesOptions = self.options()
        data = ctx.calibration
        if data is None:
            ctx.decide(self.name, "model", "skipped", "no calibration data")
            return PassResult(model, False)
        graph = model.graph
        acts = [v for v in simulated_activations(model) if isinstance(v.quant.granularity, PerTensor)]  # type: ignore[union-attr]
        if not acts:
            return PassResult(model, False)
        # One parameter per scale initializer: values sharing a quantization (Reshape, MaxPool) share it.
        scales: dict[int, Value] = {}
        for v in acts:
            scales[id(v.quant.scale)] = v.quant.scale  # type: ignore[union-attr]
        log_s = {k: torch.tensor(np.log(float(s.const.numpy().reshape(()))), dtype=torch.float32,  # type: ignore[union-attr]
                                 requires_grad=True) for k, s in scales.items()}
        fixed = {id(v): _act_params(v.quant) for v in acts}  # type: ignore[arg-type]
        # A Relu/Clip output whose range lies inside the clip range is folded into quantization by lower_qdq:
        # its range must stay inside, or the Clip would have to run in float between a DQ and a Q.
        cap: dict[int, float] = {}
        for v in acts:
            c = _scale_cap(v)
            key = id(v.quant.scale)  # type: ignore[union-attr]
            cap[key] = min(cap.get(key, np.inf), c)

        def fq(value: Value, t: torch.Tensor) -> torch.Tensor:
            _, z, lo, hi, _ = fixed[id(value)]
            return fake_quantize(t, torch.exp(log_s[id(value.quant.scale)]), z, lo, hi)  # type: ignore[union-attr]

        weights = [v for v in graph.values() if v.const is not None and v.quant is not None
                   and v.quant.scale is not None and get_format(v.quant.format).is_integer]
        w_dq = {id(v): torch.from_numpy(np.asarray(_weight_dq(v.quant, v.const.numpy().astype(np.float32)),  # type: ignore[arg-type, union-attr]
                                                   dtype=np.float32))
                for v in weights}

        # One log-gain per weight scale entry (per output channel, or one per tensor), the integers fixed; with
        # the axis it lies along (None per tensor).
        owners = Counter(id(v.quant.scale) for v in weights)  # type: ignore[union-attr]
        gains = {id(v): (torch.zeros(v.quant.scale.const.shape, requires_grad=True),  # type: ignore[union-attr]
                         getattr(v.quant.granularity, "axis", None))  # type: ignore[union-attr]
                 for v in weights if opts.weight_scales and _has_gain(v) and owners[id(v.quant.scale)] == 1}  # type: ignore[union-attr]

        def weight_dq(value: Value, t: torch.Tensor | None = None) -> torch.Tensor:
            w = w_dq[id(value)]
            if id(value) not in gains:
                return w
            g, axis = gains[id(value)]
            return w * torch.exp(broadcast_along(g, w, axis))

        # The float reference runs beside the simulated model, batch by batch: only its outputs are held across
        # batches (at most `reference_cache_mb`), so memory is bounded however many samples are read.
        reference, executor = Executor(model), Executor(model)
        # The reference is the float model: weights that gptq moved onto the grid read as they were before.
        originals = {id(v): torch.from_numpy(v.meta[FLOAT_CONST].numpy().astype(np.float32))
                     for v in graph.values() if FLOAT_CONST in v.meta}
        if originals:
            reference.add_hook([v for v in graph.values() if id(v) in originals], lambda v, t: originals[id(v)])
        batch = _usable_batch_size(data, opts.batch_size, opts.samples)
        handles = [executor.add_hook(acts, fq), executor.add_hook(weights, weight_dq)]

        # The float model's outputs for a batch are the same every epoch: they are kept, keyed by the batch's
        # contents (a calibration source may yield other samples on another pass), up to `reference_cache_mb`.
        # MobileNetV2 (120 samples, 6 epochs): the pass takes 66 s instead of 82 s, its result bit for bit the same.
        cache: dict[bytes, dict[str, torch.Tensor]] = {}
        cache_room = int(opts.reference_cache_mb * 2**20)

        def reference_outputs(feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
            nonlocal cache_room
            key = _fingerprint(feeds)
            if key in cache:
                return cache[key]
            with torch.no_grad():
                out = {k: r for k, r in reference.run_torch(feeds).items() if r.dtype.is_floating_point}
            size = sum(r.numel() * r.element_size() for r in out.values())
            if size <= cache_room:
                cache[key] = out
                cache_room -= size
            return out

        def loss_of(feeds: dict[str, Any], backward: bool) -> float:
            """The batch's loss: sum over float outputs of mean((out - ref)^2) / mean(ref^2). With `backward`,
            its gradient is added to the scales' .grad, computed `micro_batch` samples at a time (the terms are
            sums over samples, so the slices' gradients add up to the batch's)."""
            targets = reference_outputs(feeds)
            # Slices along axis 0 only when the feeds were stacked there (batch > 1) and every output has it too.
            rows = _rows(feeds)
            split = batch > 1 and rows > 0 and all(r.dim() and r.shape[0] == rows for r in targets.values())
            step = opts.micro_batch if split else max(rows, 1)
            total = 0.0
            for start in range(0, max(rows, 1), step):
                part_feeds = _slice(feeds, start, step) if step < rows else feeds
                with torch.set_grad_enabled(backward):
                    outs = executor.run_torch(part_feeds)
                    part = torch.zeros(())
                    for k, ref in targets.items():
                        r = ref[start:start + step] if step < rows else ref
                        part = part + torch.sum((outs[k] - r) ** 2) / ref.numel() / torch.mean(ref**2).clamp_min(1e-12)
                if backward:
                    part.backward()
                total += float(part.detach())
            return total

        def full_loss() -> float:
            losses = [loss_of(f, backward=False) for f in _first_samples(data, batch, opts.samples)]
            return float(np.mean(losses)) if losses else 0.0

        try:
            start = {k: p.detach().clone() for k, p in log_s.items()}
            before = full_loss()
            optim = torch.optim.Adam([{"params": list(log_s.values()), "lr": opts.lr},
                                      {"params": [g for g, _ in gains.values()], "lr": opts.weight_lr}])
            bar = tqdm(desc="tune_ranges", unit="batch", leave=False, disable=not (opts.progress and ctx.progress))
            for _ in range(opts.epochs):
                for feeds in _first_samples(data, batch, opts.samples):
                    optim.zero_grad()
                    loss = loss_of(feeds, backward=True)
                    optim.step()
                    with torch.no_grad():
                        for k, c in cap.items():
                            if np.isfinite(c):
                                log_s[k].clamp_(max=float(np.log(c) + np.log1p(-1e-6)))  # float32 slack
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3g}")
            bar.close()
            after = full_loss()
        finally:
            for h in handles:
                h.remove()
        if not after < before:
            ctx.decide(self.name, "model", "kept", f"output error {after:.4g} not below the calibrated {before:.4g}")
            return PassResult(model, False)
        for k, s in scales.items():
            new = np.asarray(np.exp(float(log_s[k].detach())), dtype=np.float32)
            ratio = float(new) / float(np.exp(float(start[k])))
            s.const = Tensor(new.reshape(s.const.shape))  # type: ignore[union-attr]
            ctx.decide(self.name, f"%{s.name}", "tuned", f"scale x{ratio:.3f}")
        # The weights as simulated, scale and values times the gain: the integers stay the same (and the float
        # weights stay known, as gptq keeps them).
        for v in weights:
            if id(v) in gains:
                sc = v.quant.scale  # type: ignore[union-attr]
                sc.const = Tensor((sc.const.numpy() * np.exp(gains[id(v)][0].detach().numpy())).astype(np.float32))  # type: ignore[union-attr]
                v.meta.setdefault(FLOAT_CONST, v.const)
                v.const = Tensor(weight_dq(v).detach().numpy())
        if gains:
            g = np.concatenate([np.abs(t.detach().numpy()).ravel() for t, _ in gains.values()])
            ctx.decide(self.name, "weights", "tuned", f"{len(gains)} weight tensors' scales, integers kept: "
                                                      f"|log gain| mean {g.mean():.2g}, max {g.max():.2g}")
        ctx.decide(self.name, "model", "tuned", f"normalized output error {before:.4g} -> {after:.4g} "
                                                f"({10 * np.log10(before / after):+.1f} dB) on the calibration set")
        return PassResult(model, True)


def _has_gain(w: Value) -> bool:
    """Whether `w`'s scale can take a fitted gain: a constant, per tensor or per channel (not groups, blocks)."""
    q = w.quant
    return q is not None and q.scale is not None and q.scale.const is not None and w.const is not None \
        and isinstance(q.granularity, PerTensor | PerChannel)


def _scale_cap(v: Value) -> float:
    """The largest scale that keeps `v`'s quantized range inside the bounds of the Relu/Clip producing it, when
    lower_qdq will fold that Relu/Clip into the quantization (`activation_fold`); inf for other values."""
    from .lower_qdq import _representable, activation_bounds, activation_fold

    p, q = v.producer, v.quant
    if p is None or q is None or activation_fold(p) != "":
        return np.inf
    a, b = activation_bounds(p)
    assert a is not None  # activation_fold said the bounds are constants
    lo, hi = _representable(q)
    s = float(np.max(q.scale_array()))
    caps = [s * b / hi] if np.isfinite(b) and hi > 0 else []
    if np.isfinite(a) and lo < 0 and a < 0:
        caps.append(s * a / lo)
    return min(caps, default=np.inf)


def _fingerprint(feeds: dict[str, Any]) -> bytes:
    """A digest of a feed dict's names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(feeds):
        a = np.ascontiguousarray(feeds[k].detach().cpu().numpy() if isinstance(feeds[k], torch.Tensor) else feeds[k])
        h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.digest()


def _rows(feeds: dict[str, Any]) -> int:
    """The batch size of a feed dict (axis 0 of its first input; 0 for a scalar)."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 0


def _slice(feeds: dict[str, Any], start: int, size: int) -> dict[str, Any]:
    return {k: v[start:start + size] for k, v in feeds.items()}


def _usable_batch_size(data: Any, batch_size: int, samples: int) -> int:
    """`batch_size` if the first `samples` calibration samples stack into such batches, else 1 (a static batch
    axis, or samples of unequal shapes such as unpadded token sequences). Reads them once, holds nothing."""
    if batch_size == 1 or not hasattr(data, "batches"):
        return 1
    try:
        for _ in itertools.islice(data.batches(batch_size), -(-samples // batch_size)):
            pass
    except (CalibrationError, ValueError, RuntimeError):
        return 1
    return batch_size


def _first_samples(data: Any, batch_size: int, samples: int) -> Iterator[dict[str, Any]]:
    """The first `samples` calibration samples in batches of `batch_size`, read afresh on every call (of a
    plain iterable of feed dicts: its first `samples` feeds)."""
    if hasattr(data, "batches"):
        yield from itertools.islice(data.batches(batch_size), -(-samples // batch_size))
    else:
        yield from itertools.islice(data, samples)


__all__ = ["TuneRanges", "TuneRangesOptions"]
