"""PyTorch in: `qcompiler.load(module, example_inputs=..., dynamic_axes=...)` keeps parameter names and runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompiler
from qcompiler.errors import ExportError


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(x))


def test_load_module_keeps_parameter_names_and_matches_torch() -> None:
    torch.manual_seed(0)
    m = Block().eval()
    x = torch.randn(3, 16)
    model = qcompiler.load(m, example_inputs=(x,), input_names=["x"], output_names=["y"],
                           dynamic_axes={"x": {0: "batch"}})
    names = set(model.graph.initializers)
    assert {"encoder.0.bias", "encoder.2.bias", "norm.weight", "norm.bias"} <= names
    assert any(n.startswith("encoder.0.weight") for n in names)
    assert model.graph.inputs[0].type.shape[0] == "batch"
    x5 = torch.randn(5, 16)
    got = qcompiler.run(model, {"x": x5.numpy()})["y"]
    ref = m(x5).detach().numpy()
    # Same float32 ops in another order: a few ulps of the LayerNorm's output scale.
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_module_that_does_not_export_names_it() -> None:
    class Bad(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum().item() > 0 else x  # data-dependent Python control flow

    with pytest.raises(ExportError, match="Bad"):
        qcompiler.load(Bad(), example_inputs=(torch.randn(2, 2),))
