"""Integer GEMM throughput of this machine's ONNX Runtime: u8 x s8 against s8 x s8 (and float).

Why the cpu-int8 target quantizes activations to uint8: on x86, ORT's integer GEMMs (MLAS) are built for
u8 x s8 (VNNI / AMX); other type pairs take slower paths. `python -m qcompiler.backends.onnxruntime.kernel_bench`
prints the figures for an N x N x N MatMul; FUSION.md records them for the development machine.

The models are explicit MatMulInteger / QLinearMatMul nodes, not QDQ: ORT rewrites int8 QDQ activations to
uint8 before fusing, so a QDQ model cannot show the s8 x s8 kernel.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .latency import measure_latency
from .session import make_session

_NP = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8, TensorProto.FLOAT: np.float32}
_NAME = {TensorProto.UINT8: "u8", TensorProto.INT8: "s8", TensorProto.FLOAT: "f32"}


@dataclass(frozen=True)
class GemmCase:
    op: str  # MatMulInteger | QLinearMatMul | MatMul
    a_type: int  # TensorProto element type of the activation
    b_type: int  # ... of the constant weight

    @property
    def label(self) -> str:
        return f"{self.op} {_NAME[self.a_type]}x{_NAME[self.b_type]}"


CASES = (
    GemmCase("MatMulInteger", TensorProto.UINT8, TensorProto.INT8),
    GemmCase("MatMulInteger", TensorProto.INT8, TensorProto.INT8),
    GemmCase("QLinearMatMul", TensorProto.UINT8, TensorProto.INT8),
    GemmCase("QLinearMatMul", TensorProto.INT8, TensorProto.INT8),
    GemmCase("MatMul", TensorProto.FLOAT, TensorProto.FLOAT),
)


def random_operand(dtype: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == TensorProto.FLOAT:
        return rng.normal(size=shape).astype(np.float32)
    info = np.iinfo(_NP[dtype])
    return rng.integers(info.min, info.max + 1, size=shape).astype(_NP[dtype])


def gemm_model(case: GemmCase, b: np.ndarray, m: int) -> onnx.ModelProto:
    """y = a @ B with B a constant [K, N]; a is [m, K] of case.a_type. Zero points are 0 (s8) or 128 (u8),
    QLinearMatMul's output scale is wide enough that nothing saturates at these sizes' typical values."""
    k, n = b.shape
    inits = [numpy_helper.from_array(b, "B")]
    if case.op == "MatMul":
        node = helper.make_node("MatMul", ["a", "B"], ["y"])
        y_type = TensorProto.FLOAT
    else:
        def zp(name: str, dtype: int) -> str:
            inits.append(numpy_helper.from_array(np.array(128 if dtype == TensorProto.UINT8 else 0, _NP[dtype]), name))
            return name

        if case.op == "MatMulInteger":
            node = helper.make_node("MatMulInteger", ["a", "B", zp("a_zp", case.a_type), zp("b_zp", case.b_type)],
                                    ["y"])
            y_type = TensorProto.INT32
        else:
            for name, v in (("a_s", 0.02), ("b_s", 0.02), ("y_s", 0.02 * 0.02 * 128 * np.sqrt(k))):
                inits.append(numpy_helper.from_array(np.array(v, np.float32), name))
            node = helper.make_node("QLinearMatMul", ["a", "a_s", zp("a_zp", case.a_type), "B", "b_s",
                                                      zp("b_zp", case.b_type), "y_s", zp("y_zp", case.a_type)], ["y"])
            y_type = case.a_type
    g = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", case.a_type, [m, k])],
                          [helper.make_tensor_value_info("y", y_type, [m, n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@dataclass(frozen=True)
class Throughput:
    case: GemmCase
    median_ms: float
    p10_ms: float
    gops_median: float  # 2*M*N*K / median time, in 1e9 integer (or float) operations per second
    gops_p10: float  # the same at the 10th-percentile time


def gemm_throughput(n: int = 1024, *, threads: int = 1, runs: int = 15, cases: tuple[GemmCase, ...] = CASES,
                    budget_s: float | None = 60.0, seed: int = 0) -> list[Throughput]:
    """Time each case on an n x n x n product, interleaved. The 10th percentile is the least disturbed by other
    processes on a shared machine; the median is what a run typically gets."""
    rng = np.random.default_rng(seed)
    runners, feeds = {}, {}
    for c in cases:
        b = random_operand(c.b_type, (n, n), rng)
        sess = make_session(gemm_model(c, b, n).SerializeToString(), threads=threads, spinning=False)
        runners[c.label] = lambda f, s=sess: s.run(None, f)
        feeds[c.label] = {"a": random_operand(c.a_type, (n, n), rng)}
    stats = measure_latency(runners, feeds_by_runner=feeds, runs=runs, warmup=2, budget_s=budget_s)
    ops = 2.0 * n**3
    out = []
    for c in cases:
        s = stats[c.label]
        out.append(Throughput(c, s.median_ms, s.p10_ms, ops / s.median_ms / 1e6, ops / s.p10_ms / 1e6))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1024, help="matrix size (n x n x n)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    for t in gemm_throughput(args.n, threads=args.threads, runs=args.runs):
        print(f"{t.case.label:22s} median {t.median_ms:8.2f} ms {t.gops_median:8.1f} GOP/s   "
              f"p10 {t.p10_ms:8.2f} ms {t.gops_p10:8.1f} GOP/s")


if __name__ == "__main__":
    main()
