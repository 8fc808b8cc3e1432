"""qcompiler: a quantization compiler for neural networks.

    model = qcompiler.load("model.onnx")             # or load(torch_module, example_inputs=...)
    outputs = qcompiler.run(model, {"input": x})     # the torch executor of the IR
    qcompiler.save(model, "copy.onnx")
    art = qcompiler.compile("model.onnx", target="cpu-int8", calib="calib.npz", output="model.int8.onnx")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import QCompilerError
from .ir import Graph, Model

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Graph", "Model", "QCompilerError", "compile", "load", "run", "save"]
__version__ = "0.1.0"


def load(
    model: str | os.PathLike[str] | Any,
    *,
    example_inputs: Any = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    infer_shapes: bool = True,
) -> Model:
    """An ONNX file, an `onnx.ModelProto` or a `torch.nn.Module` (with `example_inputs`) as an IR Model."""
    from .frontends import onnx_io

    if isinstance(model, str | os.PathLike):
        return onnx_io.load_onnx(model, infer_shapes=infer_shapes)
    if type(model).__name__ == "ModelProto":
        return onnx_io.model_from_proto(model, infer_shapes=infer_shapes)
    if _is_torch_module(model):
        from .frontends import torch_export

        if example_inputs is None:
            raise TypeError("loading a torch.nn.Module needs example_inputs=(tensor, ...)")
        proto = torch_export.export_module(
            model, example_inputs, dynamic_axes=dynamic_axes, input_names=input_names, output_names=output_names
        )
        return onnx_io.model_from_proto(proto, infer_shapes=infer_shapes)
    raise TypeError(f"cannot load a {type(model).__name__}: expected a path, an onnx.ModelProto or a torch.nn.Module")


def save(model: Model, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
    """Write the model as ONNX, atomically; external data when it is over 2 GB (or asked for)."""
    from .frontends import onnx_io

    return onnx_io.save_onnx(model, path, external_data=external_data)


def run(model: Model | Graph, feeds: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
    """Execute the model with torch kernels; returns the graph outputs by name."""
    from .runtime import run as _run

    return _run(model, feeds, **kwargs)


def compile(model: Any, *, target: str, **kwargs: Any) -> Any:  # noqa: A001 - the product's verb
    """Quantize `model` for `target`; see `qcompiler.compiler.compile`. Returns an `Artifact`."""
    from .compiler import compile as _compile

    return _compile(model, target=target, **kwargs)


def _is_torch_module(obj: object) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)
