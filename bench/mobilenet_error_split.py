"""Where MobileNetV2's static INT8 error comes from, and how much error the agreement target leaves room for.

Compiles MobileNetV2 for `cpu-int8` (its default recipe) and runs, in ONNX Runtime, variants of the compiled QDQ
model:
  full             the artifact as compiled;
  weights only     every activation Q/DQ pair replaced by a Clip to its range (activations clamped as quantized,
                   not rounded; weights int8 as compiled);
  float <kind>     the activations of one kind (the input, ReLU6 conv outputs, linear conv outputs, residual Add
                   outputs) not rounded, the rest as compiled;
  activations only the weights int16 per channel instead of int8 (as good as float for this purpose);
and, on the full artifact, every activation Q/DQ pair replaced alone (the gain in logit SQNR each would bring if
that one activation were not rounded). Figures: logit SQNR against FP32 and top-1 agreement on the 256 evaluation
crops; the per-activation scan uses 64 calibration crops (not the evaluation set). Last, the agreement that the
FP32 logits plus independent Gaussian noise at a given SQNR score on the same crops (mean and spread over 200
draws): how much logit error the evaluation set tolerates.

    .venv/bin/python bench/mobilenet_error_split.py      # ~8 minutes on 2 cores
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnx import helper, numpy_helper

import qcompiler
import qcompiler.backends.onnxruntime.targets  # noqa: F401 - registers the targets
from qcompiler import zoo
from qcompiler.compiler import CompileOptions
from qcompiler.recipe import TensorSpec
from qcompiler.targets import get_target
from qcompiler.zoo import mobilenet as mb


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _logits(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    s = _session(model)
    return np.concatenate([s.run(None, {"input": x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.square(ref).sum() / np.square(out - ref).sum()))


def _activation_qs(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {i.name for i in m.graph.initializer}
    return [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def _bypass(m: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of `m` where the Q/DQ pairs quantizing the activations `names` become a Clip to the same range: the
    values are no longer rounded, but still clamped as quantization clamps them (lower_qdq folds Relu/Clip into
    the quantized range, so the clamp must stay)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    qs = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in names}
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in qs]:
        q = qs[dq.input[0]]
        scale, zp = float(inits[q.input[1]]), inits[q.input[2]]
        info = np.iinfo(zp.dtype)
        lo, hi = (info.min - float(zp)) * scale, (info.max - float(zp)) * scale
        bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{dq.output[0]}_{k}") for k, v in
                  (("lo", lo), ("hi", hi))]
        g.initializer.extend(bounds)
        clip = helper.make_node("Clip", [q.input[0], bounds[0].name, bounds[1].name], [dq.output[0]])
        g.node.insert(list(g.node).index(dq), clip)
        g.node.remove(dq)
    for q in qs.values():
        if not any(q.output[0] in n.input for n in g.node):
            g.node.remove(q)
    return out


def _compile(zm: zoo.ZooModel, path: Path, *, weights: str = "int8") -> onnx.ModelProto:
    rec = get_target("cpu-int8").default_recipe
    q = dataclasses.replace(rec.quantize, weights=TensorSpec(weights, "symmetric", "per_channel", observer="minmax"))
    rec = dataclasses.replace(rec, quantize=q)
    src = onnx.load(str(zm.onnx_path))
    if weights == "int16":  # int16 QuantizeLinear/DequantizeLinear need opset 21
        src = onnx.version_converter.convert_version(src, 21)
    qcompiler.compile(src, target="cpu-int8", calib=zm.calibration_data(128), recipe=rec, output=path,
                      options=CompileOptions(report=False, progress=False))
    return onnx.load(str(path))


def _kinds(m: onnx.ModelProto) -> dict[str, set[str]]:
    """The quantized activations by what makes them: graph input, conv with a folded ReLU6 (zero point 0), conv
    without one (the linear bottlenecks), residual Add, and the rest (pooling, classifier)."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    kinds: dict[str, set[str]] = {}
    for q in _activation_qs(m):
        p = producer.get(q.input[0])
        if p is None:
            kind = "input"
        elif p.op_type == "Conv":
            kind = "ReLU6 conv outputs" if int(inits[q.input[2]]) == 0 else "linear conv outputs"
        elif p.op_type == "Add":
            kind = "residual Add outputs"
        else:
            kind = "pooling and classifier"
        kinds.setdefault(kind, set()).add(q.input[0])
    return kinds


def _noise_floor(ref: np.ndarray, labels: np.ndarray, db: float, draws: int = 200) -> tuple[float, float]:
    """Agreement of ref + iid Gaussian noise at `db` logit SQNR: mean and standard deviation over draws."""
    rng = np.random.default_rng(0)
    sigma = np.sqrt(np.square(ref).mean() / 10 ** (db / 10))
    a = [(np.argmax(ref + rng.standard_normal(ref.shape) * sigma, axis=1) == labels).mean() for _ in range(draws)]
    return float(np.mean(a)), float(np.std(a))


def main() -> int:
    ort.set_default_logger_severity(3)  # the bypassed models leave unused scale initializers behind
    zm = zoo.get("mobilenet_v2")
    data = np.load(str(Path(zm.onnx_path).parent / "data.npz"))
    x_eval, labels = mb.preprocess(data["eval_u8"]), data["labels"]
    x_calib = mb.preprocess(data["calib_u8"][:64])
    ref_eval = _logits(str(zm.onnx_path), x_eval)
    ref_calib = _logits(str(zm.onnx_path), x_calib)

    def line(label: str, m: onnx.ModelProto) -> None:
        out = _logits(m, x_eval)
        print(f"| {label} | {_sqnr(ref_eval, out):.1f} | {(out.argmax(1) == labels).mean():.3f} |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        print("| variant | logit SQNR dB | agreement |\n| --- | --- | --- |")
        m = _compile(zm, Path(tmp) / "full.onnx")
        line("cpu-int8 as compiled", m)
        kinds = _kinds(m)
        line("weights only (no activation rounded)", _bypass(m, set().union(*kinds.values())))
        for kind, names in kinds.items():
            line(f"{kind} ({len(names)}) not rounded", _bypass(m, names))
        line("activations only (int16 weights)", _compile(zm, Path(tmp) / "a.onnx", weights="int16"))
        base = _sqnr(ref_calib, _logits(m, x_calib))
        gains = []
        for q in _activation_qs(m):
            gains.append((_sqnr(ref_calib, _logits(_bypass(m, {q.input[0]}), x_calib)) - base, q.input[0]))
        gains.sort(reverse=True)
        print(f"\n{len(gains)} quantized activations; full model logit SQNR {base:.1f} dB on 64 calibration crops;"
              " gain if one stayed float (top 5 and median):")
        for g, name in gains[:5]:
            print(f"  {g:+.2f} dB  %{name}")
        print(f"  median {np.median([g for g, _ in gains]):+.2f} dB")
    print("\n| FP32 logits + iid Gaussian noise at | agreement (mean +- sd over 200 draws) |\n| --- | --- |")
    for db in (20, 22, 24, 26, 28, 30):
        mean, sd = _noise_floor(ref_eval, labels, db)
        print(f"| {db} dB | {mean:.3f} +- {sd:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
