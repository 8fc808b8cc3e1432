"""The terminal table: figures with n/a for missing ones, worst layers lowest first, widths kept, color only on ask."""

from __future__ import annotations

import re

import pytest

from qcompiler.report import RANDOM_BANNER, LayerEntry, ModelInfo, Report, TargetInfo, format_report

from .sample import make_report

_ROW = re.compile(r"^\s+(\d+)\s+(\S+) ([! ])\s+(\S+)\s+(.+)$")


def _worst_rows(text: str) -> list[tuple[int, str, bool, str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("worst ")) + 2  # the title, then the header
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        m = _ROW.match(line)
        assert m, line
        rows.append((int(m.group(1)), m.group(2), m.group(3) == "!", m.group(5)))
    return rows


def test_worst_layers_lowest_first():
    report = make_report()
    text = report.summary_table(worst=10)
    measured = [x for x in report.layers if x.sqnr_db is not None]
    expected = sorted(measured, key=lambda x: x.sqnr_db)[:10]  # no NaN in the sample: a plain sort is the truth
    rows = _worst_rows(text)
    assert [r[0] for r in rows] == list(range(1, 11))
    assert [r[3] for r in rows] == [x.node for x in expected]
    assert [r[1] for r in rows] == [f"{x.sqnr_db:.1f}" for x in expected]
    assert [r[2] for r in rows] == [x.sqnr_db < 20 for x in expected] == [True] * 3 + [False] * 7
    assert "worst 10 layers by SQNR (of 534 measured" in text


def test_summary_figures_and_n_a():
    text = make_report().summary_table()
    assert f"!! {RANDOM_BANNER}" in text
    assert "size         86.7 MiB -> 21.9 MiB  (0.25x, 3.9x smaller)" in text
    assert "batch 1, 2 threads: 12.3 ms -> 6.02 ms  (0.49x, 2.0x faster); onnxruntime 1.32, 50 runs" in text
    assert "batch 8, 2 threads: 88.9 ms -> n/a  (n/a)" in text
    assert "last_hidden_state: SQNR 27.4 dB, cosine 0.998731, max|diff| 0.8125, mean|diff| 0.0412" in text
    assert "pooler_output: SQNR n/a, cosine n/a, max|diff| n/a, mean|diff| n/a" in text
    assert "top1: 0.7300 -> 0.7200  (-0.0100)" in text and "cosine@sst2: 0.9991 -> n/a  (n/a)" in text
    assert "540 quantized, 60 float; 3 below 20 dB SQNR" in text


def test_kept_float_and_unfused_counts_with_first_reasons():
    text = make_report().summary_table()
    assert "kept float: 60\n  /blk.0/Softmax_9 (Softmax): no int8 kernel on cpu-int8\n" in text
    assert "  ... and 57 more (see the HTML report)" in text
    assert "unfused Q/DQ pairs: 2 (slower than float)" in text
    assert "/blk.0/attn/MatMul_3: activation and weight both int8: no s8s8 MatMulInteger fusion" in text
    assert "warnings: 2\n  - calibration used 56 samples" in text


def test_color_only_when_asked():
    report = make_report()
    plain = report.summary_table(color=False)
    assert "\x1b" not in plain
    colored = report.summary_table(color=True)
    assert f"\x1b[1;31m!! {RANDOM_BANNER}\x1b[0m" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == plain  # color adds codes, never changes the text


@pytest.mark.parametrize("width", [60, 80, 100, 140])
def test_lines_fit_the_width_and_long_names_keep_their_tail(width):
    report = make_report()
    long_name = "/model/encoder/" + "very_long_block_name/" * 10 + "attention/q_proj/MatMul_worst"
    report.layers.append(LayerEntry(long_name, "MatMul", sqnr_db=1.5))
    report.warnings.append("w" * 300)
    text = report.summary_table(width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    first = _worst_rows(text)[0]
    assert first[1] == "1.5" and first[3].endswith("MatMul_worst") and "..." in first[3]
    assert first[3].startswith("/model/")


def test_empty_report():
    text = format_report(Report(model=ModelInfo("m"), target=TargetInfo("cpu-int8")))
    for label in ("size ", "latency ", "outputs ", "accuracy "):
        line = next(line for line in text.splitlines() if line.startswith(label))
        assert line.split(None, 1)[1].startswith("n/a"), line
    assert "n/a: no per-layer SQNR recorded" in text
    assert "calibration  none (weight-only or dynamic quantization)" in text
