"""A per-layer table whose worst layer lies far below the model output says that a tensor's figure is its own
error, not what it costs the output; where they are close it says nothing."""

from __future__ import annotations

import dataclasses

from qcompiler.report import OutputMetrics, format_report

from .sample import make_report

NOTE = "a layer's figure is its tensor's own error"


def test_far_below_the_output_is_explained_in_terminal_and_html() -> None:
    report = make_report()  # worst layer 9.23 dB, output 27.4 dB
    assert report.layer_gap() == (9.23, 27.4)
    text = format_report(report, color=False, width=120)
    assert f"{NOTE} (worst 9.2 dB, output 27.4 dB)" in text and "--exclude" in text
    assert "the worst, 9.2 dB, lies far below the model output's 27.4 dB" in report.html()


def test_close_or_unmeasured_outputs_say_nothing() -> None:
    base = make_report()
    for outputs in ([OutputMetrics("y", 19.0)],                         # within 10 dB of the worst layer
                    [OutputMetrics("y", None), OutputMetrics("z", float("inf"))]):  # nothing finite to compare
        report = dataclasses.replace(base, outputs=outputs)
        assert report.layer_gap() is None
        assert NOTE not in format_report(report, color=False, width=120)
        assert "lies far below the model output" not in report.html()
    # The gap is measured against the worst output, not the best.
    report = dataclasses.replace(base, outputs=[OutputMetrics("y", 40.0), OutputMetrics("z", 18.0)])
    assert report.layer_gap() is None
