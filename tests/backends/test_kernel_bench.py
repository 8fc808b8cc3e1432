"""The GEMM throughput models compute what they claim (the timing itself is not asserted)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from qcompiler.backends.onnxruntime.kernel_bench import CASES, GemmCase, gemm_model, gemm_throughput, random_operand
from qcompiler.backends.onnxruntime.session import make_session


def test_matmul_integer_models_are_exact_for_both_type_pairs():
    rng = np.random.default_rng(0)
    for c in CASES:
        if c.op != "MatMulInteger":
            continue
        a, b = random_operand(c.a_type, (8, 16), rng), random_operand(c.b_type, (16, 4), rng)
        y = make_session(gemm_model(c, b, 8).SerializeToString(), threads=1).run(None, {"a": a})[0]
        a_zp = 128 if c.a_type == TensorProto.UINT8 else 0
        np.testing.assert_array_equal(y, (a.astype(np.int64) - a_zp) @ b.astype(np.int64))


def test_throughput_reports_every_case():
    out = gemm_throughput(32, runs=2, cases=(GemmCase("QLinearMatMul", TensorProto.UINT8, TensorProto.INT8),
                                             GemmCase("MatMul", TensorProto.FLOAT, TensorProto.FLOAT)))
    assert [t.case.op for t in out] == ["QLinearMatMul", "MatMul"]
    for t in out:
        assert t.p10_ms <= t.median_ms and t.gops_p10 >= t.gops_median > 0
