"""digits_cnn: trained here, exported with its BatchNorms, scored on the held-out split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from qcompiler import zoo
from qcompiler.zoo._base import read_meta

REL = 1e-4  # export contract: max |ort - torch| <= REL * max |torch|


@pytest.fixture(scope="module")
def model() -> zoo.ZooModel:
    return zoo.get("digits_cnn")


@pytest.fixture(scope="module")
def data(model: zoo.ZooModel) -> dict[str, np.ndarray]:
    with np.load(model.onnx_path.parent / "data.npz") as z:
        return {k: z[k] for k in z.files}


def test_graph_keeps_batchnorm_for_the_quantizer(model: zoo.ZooModel) -> None:
    proto = onnx.load(model.onnx_path)
    onnx.checker.check_model(proto)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Conv"] == 3 and ops["BatchNormalization"] == 3 and ops["Gemm"] == 1
    assert model.inputs == (zoo.InputSpec("input", ("batch", 1, 8, 8), "float32"),)
    names = {t.name for t in proto.graph.initializer}
    assert {"features.0.weight", "features.1.running_var", "classifier.weight"} <= names


def test_ort_matches_torch(model: zoo.ZooModel, data: dict[str, np.ndarray]) -> None:
    net = model.torch_module()
    run = zoo.ort_runner(model.onnx_path)
    for x in (data["x_test"][:1], data["x_test"]):
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = run({"input": x})["logits"]
        assert np.abs(got - ref).max() <= REL * np.abs(ref).max()


def test_accuracy(model: zoo.ZooModel, data: dict[str, np.ndarray]) -> None:
    run = zoo.ort_runner(model.onnx_path)
    acc = model.evaluate(run)["accuracy"]
    assert acc >= 0.97
    # ORT and torch agree on every test image whose torch top-1/top-2 gap exceeds twice the export
    # error bound, so the accuracies can differ only by the images below that gap.
    with torch.no_grad():
        ref = model.torch_module()(torch.from_numpy(data["x_test"])).numpy()
    top2 = np.sort(ref, axis=1)[:, -2:]
    close = int((top2[:, 1] - top2[:, 0] <= 2 * REL * np.abs(ref).max()).sum())
    torch_acc = read_meta(model.onnx_path.parent)["torch_test_accuracy"]
    assert abs(acc - torch_acc) <= close / len(ref)
    # limit: the first K test images only
    k = 50
    logits = run({"input": data["x_test"][:k]})["logits"]
    assert model.evaluate(run, limit=k)["accuracy"] == (logits.argmax(1) == data["y_test"][:k]).mean()


def test_calibration_is_deterministic_training_data(model: zoo.ZooModel, data: dict[str, np.ndarray]) -> None:
    feeds = model.calibration_data(10, batch_size=4)
    assert [f["input"].shape for f in feeds] == [(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]
    again = np.concatenate([f["input"] for f in model.calibration_data(12)])
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in feeds]), again[:10])
    train = {x.tobytes() for x in data["x_train"]}
    assert all(x.tobytes() in train for x in again)
    with pytest.raises(ValueError, match="digits_cnn: calibration_data has 1437 samples, asked for 5000"):
        model.calibration_data(5000)
