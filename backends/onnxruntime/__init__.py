"""The ONNX Runtime backend: standard QDQ models that ORT fuses into integer kernels on CPU.

`session` is the one module that talks to ORT's session API; `fusion` checks what ORT fused; `latency`
measures; `targets` registers `cpu-int8` and `cpu-int8-dynamic` (imported here, so importing the backend
registers them). Without onnxruntime installed the import fails and the registry offers no ORT targets.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("onnxruntime") is None:  # checked without importing it: `qcompiler targets` stays fast
    raise ImportError("onnxruntime is not installed: the ONNX Runtime targets are unavailable")

from . import targets  # noqa: E402,F401  (registers the targets)
