"""qcompiler.frontends.torch_export on small modules: numerics, dynamic batch, names, failures, files.

Numeric bound: ONNX Runtime and torch compute the same float32 ops in a different order; for these
few-layer modules the difference is a few float32 ulps of the largest intermediate, far inside the
1e-4 * max|ref| that every export in this project must meet.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from qcompiler.errors import ExportError
from qcompiler.frontends.torch_export import LAYOUT_KEY, export_module

REL = 1e-4  # max |ort - torch| / max |torch|


def run_ort(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class TinyLM(torch.nn.Module):
    """Embedding, a Linear on [batch, seq, d] (exported as MatMul with a transposed weight), tied head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(40, 16)
        self.block = torch.nn.ModuleDict({"proj": torch.nn.Linear(16, 16), "norm": torch.nn.LayerNorm(16)})
        self.up = torch.nn.Linear(16, 24)
        self.down = torch.nn.Linear(24, 16, bias=False)
        self.lm_head = torch.nn.Linear(16, 40, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as in most LMs

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = self.block["norm"](h + self.block["proj"](h))
        h = h + self.down(torch.relu(self.up(h)))
        return self.lm_head(h)


def trained_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm non-trivial statistics, so folding it (or not) changes the weights."""
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return trained_bn(SmallCNN())


@pytest.mark.parametrize("keep_batchnorm", [False, True])
def test_cnn_matches_torch_at_any_batch(cnn: torch.nn.Module, keep_batchnorm: bool) -> None:
    proto = export_module(cnn, (torch.randn(2, 3, 8, 8),), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}}, keep_batchnorm=keep_batchnorm)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert n_bn == (2 if keep_batchnorm else 0)
    for batch in (1, 3, 7):
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            ref = cnn(x).numpy()
        (got,) = run_ort(proto, {"input": x.numpy()})
        assert got.shape == (batch, 5)
        assert rel_err(got, ref) <= REL


def test_parameter_names_are_kept_on_initializers() -> None:
    torch.manual_seed(0)
    model = TinyLM().eval()
    proto = export_module(model, (torch.randint(0, 40, (2, 5)),), input_names=["ids"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "batch", 1: "seq"}})
    inits = {t.name: t for t in proto.graph.initializer}
    params = dict(model.named_parameters(remove_duplicate=False))
    # every parameter the graph uses is found under its own name (tied: embed first, head second)
    for name in ["embed.weight", "lm_head.weight", "block.proj.weight", "block.proj.bias", "up.weight",
                 "down.weight", "block.norm.weight"]:
        assert name in inits, f"{name} not among {sorted(inits)}"
        value = numpy_helper.to_array(inits[name])
        ref = params[name].detach().numpy()
        transposed = any(p.key == LAYOUT_KEY and p.value == "transposed" for p in inits[name].metadata_props)
        np.testing.assert_array_equal(value, ref.T if transposed else ref)
    # the Linear weights on 3-D inputs feed MatMul pre-transposed; the embedding is stored as is
    assert any(p.key == LAYOUT_KEY for p in inits["block.proj.weight"].metadata_props)
    assert not any(p.key == LAYOUT_KEY for p in inits["embed.weight"].metadata_props)
    # no weight-sized tensor is left with a generated name
    assert not [n for n, t in inits.items() if n.startswith("val_") and np.prod(t.dims) >= 16]
    x = torch.randint(0, 40, (3, 9))
    with torch.no_grad():
        ref = model(x).numpy()
    (got,) = run_ort(proto, {"ids": x.numpy()})
    assert rel_err(got, ref) <= REL


def test_keyword_inputs_and_names() -> None:
    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.lin(a) * b.sum(-1, keepdim=True)

    m = TwoInputs().eval()
    proto = export_module(m, {"a": torch.randn(2, 4), "b": torch.randn(2, 6)}, output_names=["y"],
                          dynamic_axes={"a": {0: "n"}, "b": {0: "n"}})
    assert [i.name for i in proto.graph.input] == ["a", "b"]
    a, b = torch.randn(5, 4), torch.randn(5, 6)
    (got,) = run_ort(proto, {"a": a.numpy(), "b": b.numpy()})
    with torch.no_grad():
        assert rel_err(got, m(a, b).numpy()) <= REL


class ItemControlFlow(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lin(x).sum().item() > 0:  # Python branch on a value: no graph can hold it
            return x * 2
        return x - 1


class NumpyRoundTrip(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x.tolist(), dtype=np.float32) * 2)


@pytest.mark.parametrize("module", [ItemControlFlow(), NumpyRoundTrip()], ids=lambda m: type(m).__name__)
def test_unexportable_module_raises_one_clear_error(module: torch.nn.Module) -> None:
    # The TorchScript exporter would "succeed" on both by baking this example's values into the graph;
    # the fallback must refuse that instead of returning a silently wrong model.
    with pytest.raises(ExportError) as info:
        export_module(module, (torch.randn(2, 4),))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"cannot export {type(module).__name__} to ONNX: ")
    assert "data-dependent" in msg


def test_torchscript_fallback_warns_and_works(monkeypatch: pytest.MonkeyPatch, cnn: torch.nn.Module) -> None:
    real_export = torch.onnx.export

    def dynamo_broken(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure\nsecond line")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    with pytest.warns(UserWarning, match="SmallCNN failed .*simulated dynamo failure.*TorchScript"):
        proto = export_module(cnn, (torch.randn(2, 3, 8, 8),), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}})
    assert {p.key: p.value for p in proto.metadata_props}["qcompiler.exporter"] == "torchscript"
    x = torch.randn(4, 3, 8, 8)
    (got,) = run_ort(proto, {"input": x.numpy()})
    with torch.no_grad():
        assert rel_err(got, cnn(x).numpy()) <= REL


@pytest.mark.parametrize("external", [False, True])
def test_written_file_loads_and_runs(tmp_path: Path, cnn: torch.nn.Module, external: bool) -> None:
    path = tmp_path / "sub" / "cnn.onnx"
    proto = export_module(cnn, (torch.randn(2, 3, 8, 8),), input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}}, path=path, external_data=external)
    assert sorted(p.name for p in path.parent.iterdir()) == (["cnn.onnx", "cnn.onnx.data"] if external
                                                             else ["cnn.onnx"])  # no temp folder left
    # the returned proto holds the weights itself, whatever the file layout
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    onnx.checker.check_model(str(path))
    x = torch.randn(3, 3, 8, 8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert rel_err(got, cnn(x).numpy()) <= REL


def test_export_is_quiet(capfd: pytest.CaptureFixture[str], cnn: torch.nn.Module) -> None:
    export_module(cnn, (torch.randn(2, 3, 8, 8),))  # the first export in a process may print more
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        export_module(cnn, (torch.randn(2, 3, 8, 8),), dynamic_axes={"x": {0: "batch"}})
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_bad_arguments_name_the_problem(cnn: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['images'\]; inputs are \['input'\]"):
        export_module(cnn, (torch.randn(2, 3, 8, 8),), input_names=["input"],
                      dynamic_axes={"images": {0: "batch"}})
    with pytest.raises(TypeError, match="tuple .* or a dict"):
        export_module(cnn, torch.randn(2, 3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export_module(lambda x: x, (torch.randn(2),))  # type: ignore[arg-type]
