"""mobilenet_v2: torchvision-named network, strict weights, ORT agreement on natural-image crops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from qcompiler import zoo
from qcompiler.zoo import mobilenet
from qcompiler.zoo._base import read_meta

REL = 1e-4  # export contract: max |ort - torch| <= REL * max |torch|
PALACE, MONASTERY = 698, 663  # ImageNet classes


@pytest.fixture(scope="module")
def model() -> zoo.ZooModel:
    return zoo.get("mobilenet_v2")


@pytest.fixture(scope="module")
def data(model: zoo.ZooModel) -> dict[str, np.ndarray]:
    with np.load(model.onnx_path.parent / "data.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def run(model: zoo.ZooModel) -> zoo.OrtRunner:
    return zoo.ort_runner(model.onnx_path)


def test_graph(model: zoo.ZooModel) -> None:
    proto = onnx.load(model.onnx_path)
    onnx.checker.check_model(proto)
    ops = Counter(n.op_type for n in proto.graph.node)
    # 52 convolutions (BatchNorm folded into them), 35 ReLU6 as Clip, 10 residual adds, one classifier
    assert (ops["Conv"], ops["Clip"], ops["Add"], ops["Gemm"], ops["BatchNormalization"]) == (52, 35, 10, 1, 0)
    assert "features.18.0.weight" in {t.name for t in proto.graph.initializer}


def test_ort_matches_torch_at_any_batch(model: zoo.ZooModel, data: dict[str, np.ndarray],
                                        run: zoo.OrtRunner) -> None:
    net = model.torch_module()  # strict state-dict load: names match torchvision's
    for crops in (data["eval_u8"][:1], data["eval_u8"][:6]):
        x = mobilenet.preprocess(crops)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = run({"input": x})["logits"]
        assert got.shape == (len(crops), 1000)
        assert np.abs(got - ref).max() <= REL * np.abs(ref).max()


def test_fp32_agrees_with_itself(model: zoo.ZooModel, data: dict[str, np.ndarray], run: zoo.OrtRunner) -> None:
    # Within the export bound no label can flip: every crop's top-1/top-2 gap exceeds 2 * REL * max|logit|.
    assert (data["margins"] > 2 * REL * data["max_abs_logit"]).all()
    assert model.evaluate(run) == {"agreement": 1.0, "top5": 1.0}
    assert model.evaluate(run, limit=10) == {"agreement": 1.0, "top5": 1.0}


def test_fp32_sees_a_palace(model: zoo.ZooModel, run: zoo.OrtRunner) -> None:
    top5 = read_meta(model.onnx_path.parent)["fp32_top5_whole_photos"]
    assert top5["china.jpg"][0] == PALACE and MONASTERY in top5["china.jpg"]
    china = mobilenet.center_crop(mobilenet.sample_images()["china.jpg"])
    logits = run({"input": mobilenet.preprocess(china[None])})["logits"]
    assert int(logits.argmax()) == PALACE


def test_calibration_crops_are_not_eval_crops(model: zoo.ZooModel, data: dict[str, np.ndarray]) -> None:
    feeds = model.calibration_data(20, batch_size=8)
    assert [f["input"].shape for f in feeds] == [(8, 3, 224, 224), (8, 3, 224, 224), (4, 3, 224, 224)]
    assert feeds[0]["input"].dtype == np.float32
    eval_crops = {c.tobytes() for c in data["eval_u8"]}
    assert not any(c.tobytes() in eval_crops for c in data["calib_u8"])
