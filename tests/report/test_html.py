"""The HTML page: self-contained, escaped, one chart bar per quantized layer with heights proportional to SQNR."""

from __future__ import annotations

import html
import math
import re
from html.parser import HTMLParser

import pytest

from qcompiler.report import RANDOM_BANNER, LayerEntry, ModelInfo, Report, TargetInfo

from .sample import NASTY, make_report

_VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base", "embed", "param", "track"}
_SVG_SELF_CLOSING = {"line", "rect", "path", "circle"}
_RECT = re.compile(
    r'<rect class="(bar[^"]*)" x="([\d.]+)" y="([\d.]+)" width="(\d+)" height="([\d.]+)"><title>(.*?)</title></rect>'
)


@pytest.fixture(scope="module")
def page() -> str:
    return make_report().html()


class _TagChecker(HTMLParser):
    """Fails on a closing tag that does not match the open one, and remembers what is left open."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        assert tag in _SVG_SELF_CLOSING | _VOID, f"<{tag}/> is not a self-closing element"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def test_page_is_well_formed(page):
    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []


def test_page_is_self_contained(page):
    low = page.lower()
    for needle in ("http://", "https://", "src=", "<link", "@import", "url(", "xmlns"):
        assert needle not in low, needle
    assert "<style>" in page and "<svg " in page


def test_model_strings_are_escaped(page):
    escaped = html.escape(NASTY, quote=True)
    assert NASTY not in page and "<Mul" not in page
    # the node appears in the layer table, the chart title, the unfused table, a decision and a warning
    assert page.count(escaped) >= 5
    assert html.escape('"exclude_nodes"') in page  # the recipe's JSON, escaped inside <pre>


def test_chart_has_one_bar_per_quantized_layer_in_graph_order(page):
    report = make_report()
    quantized = report.quantized_layers
    svg = page[page.index("<svg ") : page.index("</svg>")]
    bars = _RECT.findall(svg)
    assert len(bars) == len(quantized) == 540
    titles = [html.unescape(b[5]) for b in bars]
    assert [t.split(" ")[1] for t in titles] == [x.node for x in quantized]
    xs = [float(b[1]) for b in bars]
    assert all(a < b for a, b in zip(xs, xs[1:]))
    width = int(re.search(r'<svg width="(\d+)"', svg).group(1))
    assert width >= 3 * len(quantized)  # at least 3 px a bar: 540 layers scroll rather than squeeze


def test_bar_heights_are_proportional_to_sqnr_and_low_ones_are_flagged(page):
    report = make_report()
    svg = page[page.index("<svg ") : page.index("</svg>")]
    bars = _RECT.findall(svg)
    measured = [(b, x.sqnr_db) for b, x in zip(bars, report.quantized_layers) if x.sqnr_db is not None]
    # every measured SQNR is positive here, so each bar rises from 0 and its height is k * SQNR for one scale k.
    # Heights are written to 0.01 px, so each is within 0.005 px of exact; k estimated from the tallest bar is
    # off by at most 0.005/h_max per dB, so |h - k*v| <= 0.005 + 0.005 * v / v_max <= 0.01 px.
    tallest = max(measured, key=lambda bv: bv[1])
    k = float(tallest[0][4]) / tallest[1]
    for bar, v in measured:
        assert abs(float(bar[4]) - k * v) <= 0.0101, (bar[5], v)
    flagged = [html.unescape(b[5]).split(" ")[1] for b in bars if "warn" in b[0].split()]
    assert flagged == ["/blk.6/MatMul_123", "/blk.18/MatMul_377", "/blk.22/MatMul_451"]  # the three below 20 dB
    unmeasured = [b for b in bars if "na" in b[0].split()]
    assert len(unmeasured) == sum(x.sqnr_db is None for x in report.quantized_layers) > 0
    assert all(b[5].endswith(": n/a") for b in unmeasured)
    # the reference line sits at 20 dB on the same scale: its y is the baseline's minus k * 20
    baseline = float(tallest[0][2]) + float(tallest[0][4])
    ref_y = float(re.search(r'<line class="ref" x1="\d+" y1="([\d.]+)"', svg).group(1))
    assert abs(ref_y - (baseline - k * 20.0)) <= 0.1  # y1 is written to 0.1 px


def test_random_calibration_banner():
    assert RANDOM_BANNER == "calibrated on random data: for smoke tests only"
    assert f'<div class="banner">&#9888; {RANDOM_BANNER}' in make_report(is_random=True).html()
    real = make_report(is_random=False).html()
    assert RANDOM_BANNER not in real and 'class="banner"' not in real


def test_missing_figures_read_n_a(page):
    # the pooler output has no figures: SQNR, cosine, max and mean diff all read n/a
    row = re.search(r'<tr><td class="mono">pooler_output</td>(.*?)</tr>', page).group(1)
    assert row.count(">n/a</td>") == 4
    # batch 8 has no quantized latency, hence no ratio either
    row = re.search(r'<tr><td class="num" data-v="8.0">8</td>(.*?)</tr>', page).group(1)
    assert row.count(">n/a</td>") == 2
    assert "no s8s8 MatMulInteger fusion" in page


def test_unfused_pairs_are_highlighted(page):
    assert page.count('<tr class="unfused">') == 2
    assert "2 Q/DQ pairs not fused" in page


def test_empty_report_renders():
    bare = Report(model=ModelInfo("m"), target=TargetInfo("cpu-int8"))
    page = bare.html()
    assert "No quantized layers." in page and "<svg" not in page
    assert "n/a: latency was not measured." in page and "n/a: outputs were not compared." in page
    checker = _TagChecker()
    checker.feed(page)
    assert checker.stack == []


def test_chart_handles_negative_infinite_and_nan_sqnr():
    values = [30.0, -12.0, math.inf, math.nan]
    layers = [LayerEntry(f"n{i}", "Conv", sqnr_db=v) for i, v in enumerate(values)]
    page = Report(model=ModelInfo("m"), target=TargetInfo("t"), layers=layers).html()
    bars = _RECT.findall(page)
    assert [b[0] for b in bars] == ["bar", "bar warn", "bar inf", "bar warn"]
    heights = [float(b[4]) for b in bars]
    # the axis spans [-12, max(30, 20 + 10)] = 42 dB, at most 8 grid lines: 10 dB steps, so -20..30 dB over
    # 260 px, 5.2 px per dB; heights are written to 0.01 px
    assert heights[0] == pytest.approx(30 * 5.2, abs=0.005)
    assert heights[1] == pytest.approx(12 * 5.2, abs=0.005)
    assert heights[2] == pytest.approx(30 * 5.2, abs=0.005)  # inf: up to the top of the axis
    assert heights[3] == pytest.approx(260, abs=0.005)  # nan: the whole height, flagged
    assert [html.unescape(b[5]).rsplit(": ", 1)[1] for b in bars] == ["30.0 dB", "-12.0 dB", "inf dB", "nan dB"]
