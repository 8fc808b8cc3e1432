"""Errors a user can cause. Each names the thing at fault; the CLI turns any of them into exit code 2."""

from __future__ import annotations


class QCompilerError(Exception):
    """Base of every error caused by user input (a model, data, a recipe, a flag)."""


class ModelLoadError(QCompilerError):
    """A model file cannot be read: not ONNX, truncated, missing or unsafe external data."""


class ExportError(QCompilerError):
    """A torch.nn.Module could not be exported to ONNX."""


class GraphError(QCompilerError):
    """The graph is malformed: a cycle, a use without a producer, types that disagree with an op."""


class UnsupportedOpError(QCompilerError):
    """An op (domain, type, opset) that the compiler or a backend cannot handle."""


class ConfigError(QCompilerError):
    """A bad recipe, target or option: names the bad key and lists the valid ones."""


class CalibrationError(QCompilerError):
    """Calibration data that does not fit the model (names, shapes, dtypes) or holds NaN/Inf."""


class QuantizationError(QCompilerError):
    """A tensor that cannot be quantized as asked (NaN/Inf weights, illegal scheme for a format)."""
