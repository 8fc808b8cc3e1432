"""smollm2: causal LM logits without KV cache; perplexity on the first pydoc windows.

All slow: building exports a 135M-parameter model (~100 s once), and the torch reference needs the
GGUF weights dequantized (~15 s); one 512-token window takes ~3 s in ONNX Runtime on 2 cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qcompiler import zoo
from qcompiler.zoo import smollm2

pytestmark = pytest.mark.slow

REL = 1e-4  # export contract: max |ort - torch| <= REL * max |torch|
K = 4  # windows evaluated here (reference_metrics["perplexity@4"])


@pytest.fixture(scope="module")
def model() -> zoo.ZooModel:
    return zoo.get("smollm2")


@pytest.fixture(scope="module")
def run(model: zoo.ZooModel) -> zoo.OrtRunner:
    return zoo.ort_runner(model.onnx_path)


@pytest.fixture(scope="module")
def net(model: zoo.ZooModel) -> torch.nn.Module:
    return model.torch_module()


@pytest.fixture(scope="module")
def tokens(model: zoo.ZooModel) -> np.ndarray:
    return np.load(model.onnx_path.parent / "tokens.npy")


def test_inputs_outputs_and_names(model: zoo.ZooModel) -> None:
    import onnx

    proto = onnx.load(model.onnx_path, load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["input_ids"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 49152]
    names = {t.name for t in proto.graph.initializer}
    assert "model.layers.29.mlp.down_proj.weight" in names and "model.norm.weight" in names


def test_ort_logits_match_torch(run: zoo.OrtRunner, net: torch.nn.Module, tokens: np.ndarray) -> None:
    ids = np.stack([tokens[:96], tokens[512:608]])  # batch 2, a sequence length never exported
    with torch.no_grad():
        ref = net(torch.from_numpy(ids)).numpy()
    got = run({"input_ids": ids})["logits"]
    assert got.shape == ref.shape == (2, 96, 49152)
    assert np.abs(got - ref).max() <= REL * np.abs(ref).max()


def test_perplexity_first_windows(model: zoo.ZooModel, run: zoo.OrtRunner, net: torch.nn.Module,
                                  tokens: np.ndarray) -> None:
    result = model.evaluate(run, limit=K)
    assert result["windows"] == K and result["tokens"] == K * 511
    assert result["perplexity"] == pytest.approx(math.exp(result["nll"]))
    # Each token's NLL (logsumexp minus one logit) moves by at most 2 * max|logit error|, so
    # |ln ppl - ln ppl_ref| <= 2 * REL * max|logit|; logits of this model stay below 50 in magnitude
    # (checked on window 0 below), and the reference is rounded to 3 decimals.
    window = tokens[:512]
    with torch.no_grad():
        ref_logits = net(torch.from_numpy(window[None])).numpy()[0]
    scale = float(np.abs(ref_logits).max())
    assert scale < 50
    bound = 2 * REL * scale
    assert abs(math.log(result["perplexity"]) - math.log(model.reference_metrics["perplexity@4"])) <= (
        bound + 0.0005 / model.reference_metrics["perplexity@4"])
    # and the same bound between ORT and torch on one window
    ort_nll = model.evaluate(run, limit=1)["nll"]
    torch_nll = smollm2.window_nll(ref_logits, window) / 511
    assert abs(ort_nll - torch_nll) <= bound


def test_calibration_windows_come_from_the_end(model: zoo.ZooModel, tokens: np.ndarray) -> None:
    feeds = model.calibration_data(3, batch_size=2)
    assert [f["input_ids"].shape for f in feeds] == [(2, 512), (1, 512)]
    n = len(tokens) // 512
    np.testing.assert_array_equal(feeds[0]["input_ids"][0], tokens[(n - 1) * 512:n * 512])
    np.testing.assert_array_equal(feeds[1]["input_ids"][0], tokens[(n - 3) * 512:(n - 2) * 512])
    with pytest.raises(ValueError, match="smollm2: calibration_data has 20 windows"):
        model.calibration_data(21)
