"""The ONNX Runtime CPU targets: `cpu-int8` (static) and `cpu-int8-dynamic`.

`kernels` lists the op types whose QDQ form ORT 1.32's CPU provider turns into an integer kernel (or runs on
the integer tensor directly), as measured in FUSION.md; `assign_quant_types` quantizes no other op type for
these targets, because a Q/DQ pair ORT does not fuse makes the op slower than float.
"""

from __future__ import annotations

from qcompiler.recipe import CalibrationSection, PassSpec, QuantizeSection, Recipe, TensorSpec
from qcompiler.targets import Target, register_target

BACKEND = "onnxruntime"

_DROP = "Q/DQ dropped by ORT: runs on the 8-bit tensor with the input's scale"

# Op type -> how ORT runs it quantized (FUSION.md has the measurements behind each line).
STATIC_KERNELS: dict[str, str] = {
    "Conv": "QLinearConv (int8 weights per tensor or per output channel, int32 bias); "
            "com.microsoft.QLinearConv in NHWC at optimization level all",
    "MatMul": "QLinearMatMul (weights per tensor or per output column); MatMulIntegerToFloat when the output "
              "is not quantized; also two quantized activations (attention scores)",
    "Gemm": "com.microsoft.QGemm (int8 weights per tensor or per output channel, int32 bias; float output "
            "when the output is not quantized)",
    "Add": "com.microsoft.QLinearAdd",
    "Mul": "com.microsoft.QLinearMul",
    "Concat": "com.microsoft.QLinearConcat",
    "GlobalAveragePool": "com.microsoft.QLinearGlobalAveragePool",
    "AveragePool": "com.microsoft.QLinearAveragePool",
    "Sigmoid": "com.microsoft.QLinearSigmoid",
    "LeakyRelu": "com.microsoft.QLinearLeakyRelu",
    "Softmax": "com.microsoft.QLinearSoftmax",
    "Where": "com.microsoft.QLinearWhere",
    "MaxPool": _DROP,
    "Reshape": _DROP,
    "Transpose": _DROP,
    "Flatten": _DROP,
    "Squeeze": _DROP,
    "Unsqueeze": _DROP,
    "Slice": _DROP,
    "Gather": _DROP + "; from a constant table: the table stored int8, DequantizeLinear on the rows read",
    "Split": _DROP,
    "Expand": _DROP,
    "Tile": _DROP,
    "Resize": _DROP,
    "DepthToSpace": _DROP,
    "Relu": "removed: the producer's output quantization clamps at 0 (zero point = qmin)",
    "Clip": "removed when the output quantization clamps to the same range; otherwise it stays a float op "
            "between DQ and Q (and ORT fuses a Conv+Clip with no Q between them into a float FusedConv)",
}

DYNAMIC_KERNELS: dict[str, str] = {
    "MatMul": "com.microsoft.DynamicQuantizeMatMul: activations quantized to uint8 per tensor at run time, "
              "int8 weights per output column",
    "Gemm": "com.microsoft.DynamicQuantizeMatMul with its bias input (weights laid out [K, N])",
    "Gather": "embedding tables stored int8 (a scale per column); Gather on the int8 table, DequantizeLinear on "
              "the rows read",
}

_NOT_FUSED = ("ConvTranspose, Sub, Div, Tanh, HardSigmoid, HardSwish, Pad, GlobalMaxPool, SpaceToDepth, "
              "ReduceMean, LayerNormalization and InstanceNormalization have no QDQ fusion in ORT 1.32's CPU "
              "provider: they stay float")

STATIC_NOTES = (
    "activations uint8 (affine), weights int8 (symmetric): on x86 ORT's integer GEMMs are u8 x s8 "
    "(VNNI/AMX); s8 x s8 falls back to a generic kernel: on a 1024^3 MatMul, one thread, about 18 GOP/s "
    "against 900-1300 GOP/s for u8 x s8 and 90 GOP/s for float (FUSION.md; kernel_bench measures a machine)",
    "int8 activations in QDQ form are rewritten by ORT to uint8 (zero point + 128) only where the QuantizeLinear "
    "has a single DequantizeLinear reader; an int8 activation read by two ops (or also a graph output) "
    "leaves both readers in float",
    "per-channel weights fuse for Conv, MatMul (per-column scales) and Gemm alike: no speed cost",
    "before calibration, equalize_ranges scales the channels of each Relu/ReLU6 output read by convs toward the "
    "widest one's range (in full where depthwise convs read it, which per-channel weights make free; halfway, in "
    "log terms, where a dense conv's weight columns pay for it; MobileNetV2 logit SQNR +1.9 dB)",
    "activation scales: percentile observers, then tune_ranges fits them to the model's output on the calibration "
    "set (Adam on log-scales through the fake-quantized model; kept only if the output error drops); gptq rounds "
    "the weights against each layer's output error first",
    "on x86 without VNNI (AVX2 only) u8 x s8 products can saturate vpmaddubsw's 16-bit sums; 7-bit weights "
    "avoid it there",
    _NOT_FUSED,
)

DYNAMIC_NOTES = (
    "no calibration: each MatMul/Gemm input is quantized per tensor (uint8, affine) when it runs, so ranges "
    "follow the data; the rest of the model stays float (for transformers, where static ranges lose accuracy)",
    "with --calib, gptq rounds each weight against its layer's output error on the calibration data (GPTQ, "
    "Frantar et al. 2022) instead of to nearest: same kernels and size, lower error",
    "with --calib, llm_int8 takes the channels of an FFN input (an activation of a linear layer, e.g. GELU) whose "
    "calibration max exceeds 3x the median channel max out of the int8 MatMul, into a small float path through "
    "the up projection (no Q/DQ, no extra pass over the activation): MiniLM embedding SQNR 20.9 -> 26.3 dB for "
    "+1-2 % latency at batch 8",
    "weights int8 symmetric per output column, stored quantized (4x smaller than float); a MatMul's bias Add "
    "goes into DynamicQuantizeMatMul's bias input",
    "transformers: fuse_transformer writes erf-GELU as com.microsoft Gelu and the attention core (scaled QK^T, "
    "additive mask, Softmax, NaN guard, PV and the head reshapes) as com.microsoft MultiHeadAttention; "
    "keep_layer_norm writes the residual Add before each LayerNormalization as Sum, because ORT 1.32's CPU "
    "SkipLayerNormalization (which its optimizer would fuse Add + LayerNormalization into) is about 3x slower "
    "than Add + LayerNormalization; on MiniLM at batch 8 the three cut the int8 model's latency by about a "
    "quarter",
)


def static_recipe() -> Recipe:
    return Recipe(
        target="cpu-int8",
        quantize=QuantizeSection(
            op_types=tuple(STATIC_KERNELS),
            # Percentile ranges: min-max lets a few outliers stretch the step of every value (on MobileNetV2,
            # top-1 agreement with FP32 0.74 -> 0.86 with bias correction; bench/ptq_cpu.py). tune_ranges then
            # fits the activation scales and the weights' per-channel scales to the float model's output (it costs
            # compile time: ~2 minutes on MobileNetV2 on 2 cores). equalize_ranges and gptq come before it.
            # MobileNetV2 logit SQNR on the evaluation crops (AMD EPYC, 2 cores): 19.2 dB without tune_ranges,
            # 24.4 with activation scales only, 26.6 with the weight scales fitted too. bias_correction is not in the
            # recipe: after gptq and tune_ranges it costs 0.8 dB there (25.8; three variants, each 0.5-1.1 dB lower).
            activations=TensorSpec("uint8", "affine", "per_tensor", observer="percentile"),
            weights=TensorSpec("int8", "symmetric", "per_channel", observer="minmax"),
        ),
        calibration=CalibrationSection(samples=128, holdout=8, batch_size=1),
        passes=(
            PassSpec("canonicalize"),
            PassSpec("equalize_ranges"),
            PassSpec("assign_quant_types"),
            PassSpec("calibrate"),
            PassSpec("gptq"),
            PassSpec("tune_ranges"),
            PassSpec("lower_qdq"),
        ),
    )


def dynamic_recipe() -> Recipe:
    return Recipe(
        target="cpu-int8-dynamic",
        quantize=QuantizeSection(
            op_types=tuple(DYNAMIC_KERNELS),
            activations=None,
            weights=TensorSpec("int8", "symmetric", "per_channel", observer="minmax"),
            dynamic=True,
        ),
        # `calibrate` here only measures the weights' scales from their values: no data is read (the target is
        # not static), and lower_qdq needs those scales to store the weights quantized. fuse_transformer runs
        # before the quantizer sees the graph: the attention MatMuls (two activations) vanish into
        # MultiHeadAttention and only the weight MatMuls are left to quantize. Its SkipLayerNormalization rule
        # is off and keep_layer_norm keeps ORT from fusing one (see DYNAMIC_NOTES); biases stay with their
        # MatMuls (fold_bias off), so lower_qdq folds them into DynamicQuantizeMatMul: that measured a little
        # faster than BiasGelu. smooth_quant runs when calibration data is given (--calib; it is skipped, and
        # says so, without): on MiniLM it divides the LayerNorm outputs by per-channel scales folded into
        # gamma/beta (a Mul restores them for the residual) and cuts the int8 model's error energy (1 - cosine to
        # FP32) by about a quarter (output SQNR 18.3 -> 20.7 dB) for 1-2% more latency. gptq (also only with
        # --calib) picks each weight's rounding against its layer's output error on the calibration data: on
        # MiniLM retrieval top-1 0.731 -> 0.769 and MRR 0.833 -> 0.851 (FP32 0.756 / 0.844) at 32, 64 and 128
        # calibration samples alike, at no run-time cost (the weights are only rounded differently).
        # llm_int8 (also only with --calib) takes the FFN inputs' outlier channels (GELU outputs: one channel of
        # 1536 reaching 24.8 where the rest stay under 6.4) out of the int8 MatMuls into a small float path
        # through the up projection: on MiniLM (AMD EPYC) embedding SQNR 20.9 -> 26.3 dB, cosine to FP32 0.9959 ->
        # 0.9988, retrieval top-1 58 -> 59 of 78 (= FP32), batch-8 latency +1-2 %. Its threshold was picked among
        # 6, 4, 3 and 2.5 x the median channel max (26.0, 26.0, 26.3, 26.35 dB; 3 keeps the float path <= 16 channels).
        passes=(
            PassSpec("canonicalize"),
            PassSpec("fuse_transformer", {"skip_layer_norm": False, "fold_bias": False}),
            PassSpec("keep_layer_norm"),
            PassSpec("smooth_quant", {"alpha": 0.5}),
            PassSpec("llm_int8"),
            PassSpec("assign_quant_types"),
            PassSpec("calibrate"),
            PassSpec("gptq"),
            PassSpec("lower_qdq"),
        ),
    )


CPU_INT8 = register_target(Target(
    name="cpu-int8",
    backend=BACKEND,
    description="ONNX Runtime CPU, static int8 QDQ (uint8 activations, int8 per-channel weights)",
    static=True,
    default_recipe=static_recipe(),
    kernels=dict(STATIC_KERNELS),
    notes=STATIC_NOTES,
))

CPU_INT8_DYNAMIC = register_target(Target(
    name="cpu-int8-dynamic",
    backend=BACKEND,
    description="ONNX Runtime CPU, dynamic int8 MatMul/Gemm (activations quantized at run time)",
    static=False,
    default_recipe=dynamic_recipe(),
    kernels=dict(DYNAMIC_KERNELS),
    notes=DYNAMIC_NOTES,
))
