"""A hand-built report with realistic figures: 600 layers, a node name full of HTML metacharacters, missing
figures (None), random calibration, unfused pairs. Used by the report tests."""

from __future__ import annotations

import math

from qcompiler.report import (
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

NASTY = "/blk.7/attn/<Mul&\"x'>"  # a node name that breaks naive HTML
N_LAYERS = 600
SOFTMAX_EVERY = 10  # every 10th node is a Softmax kept in float


def sqnr_of(i: int) -> float | None:
    """Per-layer SQNR: 22-52 dB with a slow wave, some layers unmeasured, a few bad ones; distinct values."""
    if i % 97 == 5:
        return None
    if i in (123, 377, 451):
        return 8.0 + i / 100  # the three worst: 9.23, 11.77, 12.51
    return 37.0 + 15.0 * math.sin(i / 17.0) + i / 1000.0


def make_layers() -> list[LayerEntry]:
    layers = []
    for i in range(N_LAYERS):
        if i % SOFTMAX_EVERY == 9:
            layers.append(LayerEntry(f"/blk.{i // 20}/Softmax_{i}", "Softmax", {}, None, "float", "no int8 kernel"))
            continue
        name = NASTY if i == 42 else f"/blk.{i // 20}/MatMul_{i}"
        quant = {f"x{i}": "uint8 affine per_tensor", f"w{i}": "int8 sym per_channel(1)"}
        layers.append(LayerEntry(name, "MatMul", quant, sqnr_of(i), "quantized", "int8 MatMulInteger"))
    return layers


def make_report(*, is_random: bool = True) -> Report:
    return Report(
        model=ModelInfo(
            name="minilm-l6",
            source="/models/all-MiniLM-L6-v2/model.onnx",
            inputs=[
                TensorInfo("input_ids", ["batch", 128], "int64"),
                TensorInfo("attention_mask", ["batch", None], "int64"),
            ],
            outputs=[TensorInfo("last_hidden_state", ["batch", 128, 384], "float32")],
            op_counts={"MatMul": 540, "Softmax": 60, "Add": 97, "LayerNormalization": 13},
        ),
        target=TargetInfo("cpu-int8", "onnxruntime"),
        recipe={
            "target": "cpu-int8",
            "quantize": {
                "op_types": ["MatMul", "Gemm"],
                "exclude_nodes": ["/pooler/.*"],
                "weights": {"format": "int8"},
            },
            "calibration": {"samples": 64, "holdout": 8},
        },
        created="2025-03-01T12:00:00+00:00",
        machine={"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cores": 2, "threads": 2},
        artifact="out/minilm-l6.qdq.onnx",
        calibration=CalibrationInfo(
            "random normal inputs" if is_random else "glue/sst2 train[:64]", 56, 8, is_random, ["minmax", "percentile"]
        ),
        layers=make_layers(),
        outputs=[
            OutputMetrics("last_hidden_state", 27.4, 0.998731, 0.8125, 0.0412),
            OutputMetrics("pooler_output", None, None, None, None),
        ],
        size=SizeInfo(90_868_376, 23_011_234),
        latency=[
            LatencyEntry(1, 2, 50, "onnxruntime 1.32", 12.31, 6.02),
            LatencyEntry(8, 2, 20, "onnxruntime 1.32", 88.9, None),
        ],
        kept_float=[
            KeptFloat(f"/blk.{i // 20}/Softmax_{i}", "Softmax", "no int8 kernel on cpu-int8")
            for i in range(9, N_LAYERS, 10)
        ],
        unfused=[
            UnfusedPair("/blk.0/attn/MatMul_3", "activation and weight both int8: no s8s8 MatMulInteger fusion"),
            UnfusedPair(NASTY, "DequantizeLinear feeds a graph output"),
        ],
        accuracy={"cosine@sst2": (0.9991, None), "top1": (0.73, 0.72)},
        passes=[PassTiming("canonicalize", 0.031), PassTiming("calibrate", 4.52), PassTiming("lower_qdq", None)],
        decisions=[
            DecisionEntry("quantize_weights", NASTY, "quantized", "int8 per_channel(1)"),
            DecisionEntry("mixed_precision", "/blk.3/Softmax_69", "kept float", "no int8 kernel"),
        ],
        warnings=[
            "calibration used 56 samples; 128 or more is recommended",
            f"node {NASTY}: range is 0 (constant input)",
        ],
    )
