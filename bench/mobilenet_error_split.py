"""Where MobileNetV2's static INT8 error comes from: weights against activations, and one activation at a time.

Compiles MobileNetV2 for `cpu-int8` (with and without the `gptq` pass) and runs, in ONNX Runtime, variants of the
compiled QDQ model:
  full             the artifact as compiled;
  weights only     every activation Q/DQ pair replaced by a Clip to its range (activations clamped as quantized,
                   not rounded; weights int8 as compiled);
  activations only the weights int16 per channel instead of int8 (as good as float for this purpose);
and, on the full artifact, every activation Q/DQ pair replaced alone (the gain in logit SQNR each would bring if
that one activation were not rounded). Figures: logit SQNR against FP32 and top-1 agreement on the 256 evaluation
crops; the per-activation scan uses 64 calibration crops (not the evaluation set).

    .venv/bin/python bench/mobilenet_error_split.py      # ~4 minutes on 2 cores
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
from qcompiler.recipe import PassSpec, TensorSpec
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


def _compile(zm: zoo.ZooModel, path: Path, *, gptq: bool, weights: str = "int8") -> onnx.ModelProto:
    rec = get_target("cpu-int8").default_recipe
    passes = list(rec.passes)
    if gptq:
        passes.insert([p.name for p in passes].index("calibrate") + 1, PassSpec("gptq"))
    q = dataclasses.replace(rec.quantize, weights=TensorSpec(weights, "symmetric", "per_channel", observer="minmax"))
    rec = dataclasses.replace(rec, passes=tuple(passes), quantize=q)
    src = onnx.load(str(zm.onnx_path))
    if weights == "int16":  # int16 QuantizeLinear/DequantizeLinear need opset 21
        src = onnx.version_converter.convert_version(src, 21)
    qcompiler.compile(src, target="cpu-int8", calib=zm.calibration_data(128), recipe=rec, output=path,
                      options=CompileOptions(report=False, progress=False))
    return onnx.load(str(path))


def main() -> int:
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
        full = {}
        for gptq in (False, True):
            name = "gptq" if gptq else "nearest"
            m = _compile(zm, Path(tmp) / f"{name}.onnx", gptq=gptq)
            full[name] = m
            line(f"full, weights rounded {name}", m)
            line(f"weights only, rounded {name}", _bypass(m, {n.input[0] for n in _activation_qs(m)}))
        line("activations only (int16 weights)", _compile(zm, Path(tmp) / "a.onnx", gptq=False, weights="int16"))
        m = full["nearest"]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
