"""The compile report: what was quantized how, and what it cost in accuracy, size and speed.

    report = Report(model=ModelInfo("resnet18", ...), target=TargetInfo("cpu-int8", "onnxruntime"), ...)
    report.write("out/resnet18")          # out/resnet18.report.json and out/resnet18.report.html
    print(Report.from_json("out/resnet18.report.json").summary_table(color=sys.stdout.isatty()))

The pipeline fills the figures; this package stores them (`model`), and renders them as a self-contained HTML
page (`htmlpage`) and a terminal table (`terminal`).
"""

from __future__ import annotations

from .htmlpage import RANDOM_BANNER, render_html
from .model import (
    REPORT_FORMAT,
    SCHEMA_VERSION,
    SQNR_WARN_DB,
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
    report_paths,
    utc_now,
    write_text_atomic,
)
from .terminal import format_report

__all__ = [
    "RANDOM_BANNER",
    "REPORT_FORMAT",
    "SCHEMA_VERSION",
    "SQNR_WARN_DB",
    "CalibrationInfo",
    "DecisionEntry",
    "KeptFloat",
    "LatencyEntry",
    "LayerEntry",
    "ModelInfo",
    "OutputMetrics",
    "PassTiming",
    "Report",
    "SizeInfo",
    "TargetInfo",
    "TensorInfo",
    "UnfusedPair",
    "format_report",
    "render_html",
    "report_paths",
    "utc_now",
    "write_text_atomic",
]
