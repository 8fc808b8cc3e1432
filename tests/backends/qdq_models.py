"""Small QDQ models built by hand, in the form `lower_qdq` writes: one Q->DQ pair after each quantized
activation (shared by its readers), int8 weight initializers read through DequantizeLinear (per tensor or
per channel), int32 biases with scale = input scale x weight scale read through DequantizeLinear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QTYPE = {"uint8": (np.uint8, 0, 255), "int8": (np.int8, -128, 127)}


class QDQBuilder:
    """Builds a graph op by op. Activation scales are fixed per builder (the fusion rules do not look at
    values); `act` is the activation storage type ("uint8" asymmetric or "int8" symmetric)."""

    def __init__(self, act: str = "uint8", *, act_scale: float = 0.05, seed: int = 0) -> None:
        self.act = act
        self.act_scale = act_scale
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def output(self, x: str, shape: list[int] | None = None) -> None:
        self.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, shape))

    def node(self, op: str, inputs: list[str], *, domain: str = "", n_out: int = 1, **attrs: Any) -> str:
        name = self._name(op)
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0]

    def act_zp(self) -> int:
        return 128 if self.act == "uint8" else 0

    def qdq(self, x: str, *, zp: int | None = None, scale: float | None = None) -> str:
        """Q then DQ of an activation (what lower_qdq puts after each quantized value)."""
        dt = QTYPE[self.act][0]
        s = self.const(self._name("s"), np.array(scale or self.act_scale, np.float32))
        z = self.const(self._name("zp"), np.array(self.act_zp() if zp is None else zp, dt))
        q = self.node("QuantizeLinear", [x, s, z])
        return self.node("DequantizeLinear", [q, s, z])

    def weight(self, w: np.ndarray, *, axis: int | None = None) -> tuple[str, np.ndarray]:
        """Symmetric int8 weight (per tensor, or per channel along `axis`) read through DQ; returns the DQ
        output and the scale(s)."""
        w = np.asarray(w, np.float32)
        if axis is None:
            scale = np.array(np.abs(w).max() / 127, np.float32)
            qw = np.round(w / scale)
        else:
            red = tuple(i for i in range(w.ndim) if i != axis)
            scale = (np.abs(w).max(axis=red) / 127).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            qw = np.round(w / scale.reshape(shape))
        wq = self.const(self._name("w_q"), np.clip(qw, -127, 127).astype(np.int8))
        s = self.const(self._name("w_s"), scale)
        z = self.const(self._name("w_zp"), np.zeros(scale.shape, np.int8))
        attrs = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [wq, s, z], **attrs), scale

    def bias(self, b: np.ndarray, w_scale: np.ndarray) -> str:
        """int32 bias with scale = activation scale x weight scale, read through DQ."""
        scale = (self.act_scale * np.asarray(w_scale, np.float32)).astype(np.float32)
        bq = self.const(self._name("b_q"), np.round(np.asarray(b, np.float32) / scale).astype(np.int32))
        s = self.const(self._name("b_s"), scale)
        attrs = {"axis": 0} if scale.ndim else {}
        return self.node("DequantizeLinear", [bq, s], **attrs)

    def model(self, opset: int = 21) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "qdq", self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 10
        return m

    def save(self, path: str | Path, opset: int = 21) -> Path:
        path = Path(path)
        onnx.save(self.model(opset), str(path))
        return path


def _linear(b: QDQBuilder, op: str, per_channel: bool, rng: np.random.Generator, *, out_q: bool = True,
            out_scale: float = 0.5) -> None:
    if op == "Conv":
        x = b.qdq(b.input("x", [1, 8, 10, 10]))
        w, s = b.weight(rng.normal(size=(16, 8, 3, 3)), axis=0 if per_channel else None)
        y = b.node("Conv", [x, w, b.bias(rng.normal(size=16), s)], pads=[1, 1, 1, 1])
    elif op == "MatMul":
        x = b.qdq(b.input("x", [2, 12, 64]))
        w, s = b.weight(rng.normal(size=(64, 48)), axis=1 if per_channel else None)
        y = b.node("MatMul", [x, w])
    elif op == "Gemm":
        x = b.qdq(b.input("x", [4, 64]))
        w, s = b.weight(rng.normal(size=(48, 64)), axis=0 if per_channel else None)
        y = b.node("Gemm", [x, w, b.bias(rng.normal(size=48), s)], transB=1)
    elif op == "ConvTranspose":
        x = b.qdq(b.input("x", [1, 8, 6, 6]))
        w, s = b.weight(rng.normal(size=(8, 16, 2, 2)), axis=1 if per_channel else None)
        y = b.node("ConvTranspose", [x, w], strides=[2, 2])
    else:
        raise KeyError(op)
    b.output(b.qdq(y, scale=out_scale) if out_q else y)


_I64 = np.int64
# Single-input ops: extra constant inputs and attributes.
_UNARY: dict[str, tuple[list[int], list[np.ndarray], dict[str, Any]]] = {
    "GlobalAveragePool": ([1, 16, 8, 8], [], {}),
    "AveragePool": ([1, 16, 8, 8], [], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "MaxPool": ([1, 16, 8, 8], [], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "Sigmoid": ([1, 16, 8, 8], [], {}),
    "LeakyRelu": ([1, 16, 8, 8], [], {"alpha": 0.1}),
    "Softmax": ([2, 16, 32], [], {"axis": -1}),
    "Reshape": ([1, 16, 8, 8], [np.array([1, 16, 64], _I64)], {}),
    "Transpose": ([1, 16, 8, 8], [], {"perm": [0, 2, 3, 1]}),
    "Flatten": ([1, 16, 4, 4], [], {}),
    "Squeeze": ([1, 16, 8, 1], [np.array([3], _I64)], {}),
    "Unsqueeze": ([16, 8], [np.array([0], _I64)], {}),
    "Slice": ([1, 16, 8, 8], [np.array([0], _I64), np.array([8], _I64), np.array([1], _I64)], {}),
    "Gather": ([16, 8], [np.array([1, 3], _I64)], {}),
    "Expand": ([1, 16, 1, 1], [np.array([1, 16, 4, 4], _I64)], {}),
    "Tile": ([1, 16, 2, 2], [np.array([1, 1, 2, 2], _I64)], {}),
    "DepthToSpace": ([1, 16, 4, 4], [], {"blocksize": 2}),
    "Tanh": ([1, 16, 8, 8], [], {}),
    "HardSigmoid": ([1, 16, 8, 8], [], {}),
    "HardSwish": ([1, 16, 8, 8], [], {}),
    "Pad": ([1, 16, 8, 8], [np.array([0, 0, 1, 1, 0, 0, 1, 1], _I64)], {}),
    "GlobalMaxPool": ([1, 16, 8, 8], [], {}),
    "SpaceToDepth": ([1, 4, 4, 4], [], {"blocksize": 2}),
    "ReduceMean": ([1, 16, 8, 8], [np.array([2, 3], _I64)], {}),
    "InstanceNormalization": ([1, 16, 8, 8], [np.ones(16, np.float32), np.zeros(16, np.float32)], {}),
    "LayerNormalization": ([2, 16, 64], [np.ones(64, np.float32)], {"axis": -1}),
}
_BINARY = ("Add", "Mul", "Sub", "Div", "Concat", "Where")
LINEAR_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def pattern(op: str, act: str = "uint8", *, per_channel: bool = False, seed: int = 0) -> QDQBuilder:
    """The QDQ group `lower_qdq` writes for one quantized `op`: quantized inputs, the op, a quantized output."""
    rng = np.random.default_rng(seed)
    b = QDQBuilder(act, seed=seed)
    qmin = QTYPE[act][1]
    if op in LINEAR_OPS:
        _linear(b, op, per_channel, rng)
    elif op in ("Relu", "Clip"):
        # A quantized Conv whose output goes through Relu/Clip to a quantized value that clamps the same way
        # (zero point at qmin; for Clip [0, 6] the 8-bit range spans exactly [0, 6]).
        x = b.qdq(b.input("x", [1, 8, 10, 10]))
        w, s = b.weight(rng.normal(size=(16, 8, 3, 3)))
        y = b.node("Conv", [x, w, b.bias(rng.normal(size=16), s)])
        scale = 6 / 255 if op == "Clip" else 0.05
        y = b.qdq(y, zp=qmin, scale=scale)
        extra = [b.const("lo", np.array(0, np.float32)), b.const("hi", np.array(6, np.float32))] if op == "Clip" else []
        b.output(b.qdq(b.node(op, [y, *extra]), zp=qmin, scale=scale))
    elif op == "Split":
        x = b.qdq(b.input("x", [1, 16, 8, 8]))
        y = b.node("Split", [x, b.const("split", np.array([8, 8], _I64))], n_out=2, axis=1)
        b.output(b.qdq(y))
        b.output(b.qdq(y[: -len("_out")] + "_out1"))
    elif op == "Resize":
        x = b.qdq(b.input("x", [1, 16, 8, 8]))
        b.output(b.qdq(b.node("Resize", [x, "", b.const("scales", np.array([1, 1, 2, 2], np.float32))],
                              mode="nearest")))
    elif op in _BINARY:
        shape = [1, 16, 8, 8]
        x, y = b.qdq(b.input("x", shape)), b.qdq(b.input("y", shape))
        if op == "Concat":
            out = b.node("Concat", [x, y], axis=1)
        elif op == "Where":
            out = b.node("Where", [b.const("cond", rng.random(shape) > 0.5), x, y])
        else:
            out = b.node(op, [x, y])
        b.output(b.qdq(out))
    elif op in _UNARY:
        shape, extra, attrs = _UNARY[op]
        x = b.qdq(b.input("x", shape))
        names = [b.const(f"c{i}", c) for i, c in enumerate(extra)]
        scale = 1 / 256 if op == "Softmax" else None
        b.output(b.qdq(b.node(op, [x, *names], **attrs), scale=scale, zp=qmin if op == "Softmax" else None))
    else:
        raise KeyError(f"no QDQ pattern for {op}")
    return b
