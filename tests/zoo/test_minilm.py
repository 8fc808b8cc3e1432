"""minilm: sentence embeddings exported with BERT names, retrieval over pydoc topics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from qcompiler import zoo
from qcompiler.frontends.torch_export import LAYOUT_KEY
from qcompiler.zoo import minilm
from qcompiler.zoo._base import read_meta

REL = 1e-4  # export contract: max |ort - torch| <= REL * max |torch|; embeddings have max |.| <= 1


@pytest.fixture(scope="module")
def model() -> zoo.ZooModel:
    return zoo.get("minilm")


@pytest.fixture(scope="module")
def data(model: zoo.ZooModel) -> dict[str, np.ndarray]:
    with np.load(model.onnx_path.parent / "data.npz") as z:
        return {k: z[k] for k in z.files}


def test_first_sentence_rule() -> None:
    assert minilm.first_sentence('The "x" stmt\n****\n\nIt does x.  Then\ny.') == ('The "x" stmt **** It does x.',
                                                                                  "Then y.")
    assert minilm.first_sentence("New in version 3.5. Rest") == ("New in version 3.5.", "Rest")
    assert minilm.first_sentence("no end") == ("no end", "")


def test_names_and_inputs(model: zoo.ZooModel) -> None:
    proto = onnx.load(model.onnx_path)
    inits = {t.name: t for t in proto.graph.initializer}
    q = inits["encoder.layer.3.attention.self.query.weight"]
    assert list(q.dims) == [384, 384] and any(p.key == LAYOUT_KEY for p in q.metadata_props)
    assert "embeddings.word_embeddings.weight" in inits
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in proto.graph.output] == ["embedding"]


def test_ort_matches_torch(model: zoo.ZooModel) -> None:
    net = model.torch_module()
    run = zoo.ort_runner(model.onnx_path)
    for feed in model.calibration_data(5, batch_size=3):  # padded batches of 3, then 2
        with torch.no_grad():
            ref = net(*(torch.from_numpy(feed[k]) for k in minilm.INPUTS)).numpy()
        got = run(feed)["embedding"]
        assert np.abs(got - ref).max() <= REL * np.abs(ref).max()


def test_retrieval(model: zoo.ZooModel, data: dict[str, np.ndarray]) -> None:
    run = zoo.ort_runner(model.onnx_path)
    result = model.evaluate(run)
    torch_metrics = read_meta(model.onnx_path.parent)["torch_metrics"]
    # Each embedding coordinate is within REL of torch's, so every cosine moves by at most
    # 2 * sqrt(384) * REL; a query's top-1 can flip only if its own-vs-best-other gap is below twice that.
    q, d = data["fp32_q"], data["fp32_d"]
    sim = q @ d.T
    own = np.diag(sim).copy()
    np.fill_diagonal(sim, -np.inf)
    gap = np.abs(own - sim.max(axis=1))
    flips = int((gap <= 4 * np.sqrt(384) * REL).sum())
    assert abs(result["top1"] - torch_metrics["top1"]) <= flips / len(q)
    assert 0.70 <= result["top1"] <= 0.80
    # cos(a, b) >= 1 - |a - b|^2 / 2 for unit vectors, and |a - b|^2 <= 384 * REL^2
    assert result["cosine_fp32"] >= 1 - 384 * REL**2 / 2
    assert model.reference_metrics["top1"] == pytest.approx(torch_metrics["top1"], abs=1e-4)
    small = model.evaluate(run, limit=10)
    assert 0.0 <= small["top1"] <= 1.0 and small["mrr"] >= small["top1"]
    # Query by query: the ranks behind top-1 and MRR, in topic order; a query's top-1 outcome is the one the
    # build's FP32 embeddings give, except where its gap allows a flip.
    by_query, ranks = minilm.evaluate_by_query(model, run)
    assert by_query == result
    assert ranks.shape == (len(q),) and ranks.min() >= 1
    assert np.mean(ranks == 1) == result["top1"] and np.mean(1.0 / ranks) == pytest.approx(result["mrr"])
    fp32_top1 = own >= sim.max(axis=1)  # rank 1: no other document strictly higher
    assert int(np.sum((ranks == 1) != fp32_top1)) <= flips


def test_calibration_sentences_are_not_queries(model: zoo.ZooModel, data: dict[str, np.ndarray]) -> None:
    queries = {s.tobytes() for s in np.split(data["q_ids"], np.cumsum(data["q_len"])[:-1])}
    feeds = model.calibration_data(64, batch_size=16)
    assert len(feeds) == 4
    for feed in feeds:
        assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
        for ids, mask in zip(feed["input_ids"], feed["attention_mask"]):
            assert ids[mask == 1].tobytes() not in queries
    assert model.calibration_data(64, batch_size=16)[3]["input_ids"].tobytes() == feeds[3]["input_ids"].tobytes()
