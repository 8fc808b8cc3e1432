"""Measurements a compile reports: per-layer SQNR (the executor, float vs quantized graph, held-back samples),
model output error, size and latency (the backend's runtime), gathered into a `qcompiler.report.Report`.

All comparisons run the float and the quantized model side by side on the same inputs; latency runs are
interleaved so a shared machine's drift hits both alike.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .ir import Model, TensorType


class ErrorAccumulator:
    """Running signal and error power of one tensor compared over many samples (SQNR, cosine, max/mean abs)."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.dot = 0.0
        self.q_energy = 0.0
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.count = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r = np.asarray(ref, dtype=np.float64).ravel()
        g = np.asarray(got, dtype=np.float64).ravel()
        if r.shape != g.shape or r.size == 0:
            return
        d = r - g
        self.signal += float(r @ r)
        self.noise += float(d @ d)
        self.dot += float(r @ g)
        self.q_energy += float(g @ g)
        self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.abs_sum += float(np.abs(d).sum())
        self.count += r.size

    @property
    def sqnr_db(self) -> float | None:
        if self.count == 0:
            return None
        if self.noise == 0.0:
            return float("inf")
        if self.signal == 0.0:
            return float("-inf")
        return 10.0 * float(np.log10(self.signal / self.noise))

    @property
    def cosine(self) -> float | None:
        if self.count == 0 or self.signal == 0.0 or self.q_energy == 0.0:
            return None
        return self.dot / float(np.sqrt(self.signal * self.q_energy))

    @property
    def mean_abs(self) -> float | None:
        return self.abs_sum / self.count if self.count else None


def layer_sqnr(
    float_model: Model,
    quant_model: Model,
    value_names: Iterable[str],
    samples: Iterable[dict[str, np.ndarray]],
    quantized_name: dict[str, str] | None = None,
    rescaled: dict[str, np.ndarray] | None = None,
) -> dict[str, ErrorAccumulator]:
    """SQNR of the named float values against their counterparts in the quantized graph (`quantized_name`
    maps a float value to the quantized graph's value holding it, e.g. its dequantized copy), both graphs
    run by the executor on `samples`. `rescaled` (a pass's `ctx.artifacts["rescaled"]`): values the passes
    left divided by an array (broadcast against the value), multiplied back before the comparison."""
    from .runtime import Executor

    qname = quantized_name or {}
    factor = rescaled or {}
    fe, qe = Executor(float_model), Executor(quant_model)
    f_vals = {v.name for v in float_model.graph.values()}
    q_vals = {v.name for v in quant_model.graph.values()}
    pairs = {n: qname.get(n, n) for n in dict.fromkeys(value_names)}
    pairs = {f: q for f, q in pairs.items() if f in f_vals and q in q_vals}
    back = {q: f for f, q in pairs.items()}
    acc = {n: ErrorAccumulator() for n in pairs}
    captured: dict[str, np.ndarray] = {}

    def grab(value: Any, tensor: Any) -> None:
        captured[value.name] = tensor.detach().cpu().numpy().copy()

    def compare(value: Any, tensor: Any) -> None:
        f = back[value.name]
        if f in captured:
            got = tensor.detach().cpu().numpy()
            acc[f].add(captured[f], got * factor[f] if f in factor else got)

    hf = fe.add_hook(list(pairs), grab)
    hq = qe.add_hook(list(back), compare)
    try:
        for feeds in samples:
            captured.clear()
            fe.run(feeds)
            qe.run(feeds)
    finally:
        hf.remove()
        hq.remove()
    return acc


def output_errors(
    float_run: Any, quant_run: Any, samples: Iterable[dict[str, np.ndarray]]
) -> dict[str, ErrorAccumulator]:
    acc: dict[str, ErrorAccumulator] = {}
    for feeds in samples:
        a, b = float_run(feeds), quant_run(feeds)
        for k, v in a.items():
            if k in b and np.issubdtype(np.asarray(v).dtype, np.floating):
                acc.setdefault(k, ErrorAccumulator()).add(v, b[k])
    return acc


def batch_of(samples: list[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
    """`batch_size` samples (cycled) concatenated along axis 0."""
    picks = [samples[i % len(samples)] for i in range(batch_size)]
    return {k: np.concatenate([p[k] for p in picks], axis=0) for k in picks[0]}


def machine_info(threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads or os.cpu_count(),
            "python": platform.python_version()}


def build_report(
    *,
    source: str,
    float_path: Path,
    quant_path: Path,
    float_proto: Any,
    quant_model: Model,
    target: Any,
    recipe: Any,
    ctx: Any,
    calibration: Any,
    holdout: Any,
    calib_spec: Any,
    options: Any,
) -> Any:
    """Measure the quantized model against the float one and fill a Report."""
    import onnxruntime as ort

    from .backends.onnxruntime.latency import measure_latency, model_size
    from .backends.onnxruntime.session import OrtRunner
    from .frontends.onnx_io import model_from_proto
    from .report import (
        CalibrationInfo,
        DecisionEntry,
        KeptFloat,
        LatencyEntry,
        LayerEntry,
        ModelInfo,
        OutputMetrics,
        PassTiming,
        Report,
        SizeInfo,
        TargetInfo,
        TensorInfo,
        UnfusedPair,
    )

    float_model = model_from_proto(float_proto, check=False)
    warnings: list[str] = []
    # Samples the report measures on: held-back calibration samples, else random inputs (said so).
    samples = list(holdout) if holdout is not None else []
    if not samples:
        from .calibration import load_calibration

        samples = list(load_calibration("random", float_model.graph.inputs, samples=4))
        warnings.append("no held-back calibration samples: errors were measured on random inputs")
    # Per-layer SQNR with the executor.
    quantized_nodes = [d.subject for d in ctx.decisions if d.pass_name == "assign_quant_types"
                       and d.action == "quantized"]
    by_label = {n.label(): n for n in float_model.graph.nodes}
    # A layer whose activation (Relu/Clip) was folded into its output quantization is measured after the
    # activation: that is what its quantized output stands for.
    after_act = {x: y for y, x in ctx.artifacts.get("folded_into", {}).items()}
    # A layer whose output a pass completed later (llm_int8 adds its float path after the bias) is measured there.
    after_act.update(ctx.artifacts.get("measure_at", {}))
    unmeasured = ctx.artifacts.get("unmeasured", {})
    layer_nodes = [by_label[label] for label in quantized_nodes if label in by_label and by_label[label].outputs]
    ref_name = {id(n): after_act.get(n.outputs[0].name, n.outputs[0].name) for n in layer_nodes}
    acc = layer_sqnr(float_model, quant_model, ref_name.values(), samples, ctx.artifacts.get("dequantized"),
                     ctx.artifacts.get("rescaled"))
    lowered = ctx.artifacts.get("lowered", {})
    layers = []
    for n in layer_nodes:
        ends = [v for v in list(n.inputs) + list(n.outputs) if v is not None]
        quant = {v.name: lowered[v.name] for v in ends if v.name in lowered}
        a = acc.get(ref_name[id(n)])
        note = f"measured after {ref_name[id(n)]}" if ref_name[id(n)] != n.outputs[0].name else ""
        if a is None and n.outputs[0].name in unmeasured:
            note = unmeasured[n.outputs[0].name]
        layers.append(LayerEntry(n.name or n.outputs[0].name, n.op_type, quant, a.sqnr_db if a else None,
                                 "quantized", note))
    kept = [KeptFloat(d.subject, _op_of(d.subject), d.reason) for d in ctx.decisions
            if d.action == "kept float"]
    # Outputs with the backend runtime.
    threads = options.threads
    # The two sessions take turns on the same cores: idle workers must sleep, not spin into the other's run.
    f_run = OrtRunner(float_path, threads=threads, spinning=False)
    q_run = OrtRunner(quant_path, threads=threads, spinning=False)
    out_acc = output_errors(f_run, q_run, samples)
    outputs = [OutputMetrics(k, a.sqnr_db, a.cosine, a.max_abs, a.mean_abs) for k, a in out_acc.items()]
    warnings += accuracy_warnings(float_model.graph, outputs, target)
    # Fusion: which Q/DQ pairs ORT turned into integer kernels.
    unfused = []
    try:
        from .backends.onnxruntime.fusion import check_fusion

        fr = check_fusion(quant_path, threads=1)
        unfused = [UnfusedPair(u.node, u.reason) for u in fr.unfused]
        ctx.artifacts["integer_kernels"] = dict(fr.integer_kernels)
    except Exception as e:  # noqa: BLE001 - the report says it could not check, the compile still succeeds
        warnings.append(f"could not check ONNX Runtime's fusion: {e}")
    latency = []
    if options.measure_latency:
        for bs in options.latency_batch_sizes:
            feeds = batch_of(samples, bs)
            stats = measure_latency({"float": f_run, "quantized": q_run}, feeds, threads=threads)
            latency.append(LatencyEntry(batch_size=bs, threads=threads or os.cpu_count(),
                                        runs=stats["quantized"].runs, engine=f"onnxruntime {ort.__version__}",
                                        before_ms=stats["float"].median_ms, after_ms=stats["quantized"].median_ms))
    is_random = bool(getattr(calibration, "is_random", False))
    cal_info = None
    if calibration is not None:
        observers = sorted({v.split(" observer=")[-1].split()[0] for v in lowered.values() if "observer=" in v})
        cal_info = CalibrationInfo(
            source=str(calib_spec) if isinstance(calib_spec, str | os.PathLike) else type(calib_spec).__name__,
            samples=ctx.artifacts.get("calibration_batches"), held_back=len(samples) if holdout is not None else 0,
            is_random=is_random, observers=observers,
        )
    g = float_model.graph
    from collections import Counter

    model_info = ModelInfo(
        name=Path(source).stem if source else "model", source=source,
        inputs=[TensorInfo(v.name, _shape(v), _dt(v)) for v in g.inputs if v.const is None],
        outputs=[TensorInfo(v.name, _shape(v), _dt(v)) for v in g.outputs],
        op_counts=dict(Counter(n.op_type for n in g.nodes)),
    )
    return Report(
        model=model_info, target=TargetInfo(target.name, target.backend), recipe=recipe.to_dict(),
        machine=machine_info(threads), calibration=cal_info, layers=layers, outputs=outputs,
        size=SizeInfo(model_size(float_path), model_size(quant_path)), latency=latency, kept_float=kept,
        unfused=unfused, passes=[PassTiming(k, v) for k, v in ctx.timings.items()],
        decisions=[DecisionEntry(d.pass_name, d.subject, d.action, d.reason) for d in ctx.decisions],
        warnings=warnings,
    )


# Below these output SQNRs the report warns: the error energy is over 10 % (any model), or over 1 % where static
# activations meet attention (MiniLM's embedding on its held-back samples: 12.4 dB with cpu-int8, 26 dB with
# cpu-int8-dynamic).
LOW_SQNR_DB = 10.0
LOW_SQNR_STATIC_ATTENTION_DB = 20.0
ATTENTION_OPS = ("Softmax", "Attention", "MultiHeadAttention")


def accuracy_warnings(float_graph: Any, outputs: list[Any], target: Any) -> list[str]:
    """Warnings for outputs far from the float model's: with a static target on a model with attention, where
    activations quantized ahead of time lose the most, the dynamic target is named; otherwise the report's
    per-layer table and `--exclude` are."""
    measured = [o for o in outputs if o.sqnr_db is not None and np.isfinite(o.sqnr_db)]
    if not measured:
        return []
    worst = min(measured, key=lambda o: o.sqnr_db)
    attention = sum(n.op_type in ATTENTION_OPS for n in float_graph.nodes)
    if getattr(target, "static", False) and attention and worst.sqnr_db < LOW_SQNR_STATIC_ATTENTION_DB:
        from .targets import list_targets

        dynamic = [t for t in list_targets() if t.backend == target.backend and not t.static]
        hint = f"; try --target {dynamic[0].name}, which quantizes activations at run time" if dynamic else ""
        return [f"output {worst.name!r} has SQNR {worst.sqnr_db:.1f} dB against the float model: static int8 "
                f"activations lose accuracy on attention models (this one has {attention} attention/softmax "
                f"nodes){hint}"]
    if worst.sqnr_db < LOW_SQNR_DB:
        return [f"output {worst.name!r} has SQNR {worst.sqnr_db:.1f} dB against the float model: the per-layer "
                f"table shows where the error starts, and --exclude keeps those layers float"]
    return []


def _op_of(label: str) -> str:
    return label.rsplit("(", 1)[-1].rstrip(")") if "(" in label else ""


def _shape(v: Any) -> list[Any] | None:
    return list(v.type.shape) if isinstance(v.type, TensorType) and v.type.shape is not None else None


def _dt(v: Any) -> str:
    return v.type.dtype.short if isinstance(v.type, TensorType) else ""
