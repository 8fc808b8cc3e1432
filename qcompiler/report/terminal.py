"""The report as a compact plain-text table for a terminal (`qcompiler report NAME.report.json`).

ASCII only, every line at most `width` characters (long node names lose their middle, which keeps the
distinguishing tail), ANSI colors only when asked (the CLI passes `stream.isatty()`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _fmt as fmt
from .htmlpage import RANDOM_BANNER

if TYPE_CHECKING:
    from .model import Report

LABEL = 13  # width of the label column
_ANSI = {"bold": "1", "red": "31", "yellow": "33", "dim": "2"}


def _fit(text: str, width: int) -> str:
    """Cut `text` to `width` characters, ending in '...' when cut."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _mid(text: str, width: int) -> str:
    """Cut the middle out of `text` to fit `width`: '/model/layers.1...attn/q_proj/MatMul'."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 3) // 3
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]


class _Lines:
    """Collects (text, style) lines; fits each to the width before coloring so codes never count."""

    def __init__(self, width: int, color: bool) -> None:
        self.width, self.color = width, color
        self.items: list[tuple[str, str]] = []

    def add(self, text: str = "", style: str = "") -> None:
        self.items.append((text, style))

    def row(self, label: str, values: list[str] | list[tuple[str, str]]) -> None:
        """A labelled row; several values go on continuation lines under the first."""
        for i, v in enumerate(values or [fmt.NA]):
            text, style = v if isinstance(v, tuple) else (v, "")
            self.add(f"{label if i == 0 else '':<{LABEL}}{text}", style)

    def render(self) -> str:
        out = []
        for text, style in self.items:
            text = _fit(text, self.width)
            if self.color and style:
                codes = ";".join(_ANSI[s] for s in style.split())
                text = f"\x1b[{codes}m{text}\x1b[0m"
            out.append(text)
        return "\n".join(out) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_report(
    report: Report,
    *,
    width: int = 100,
    color: bool = False,
    worst: int = 10,
    reasons: int = 3,
    sqnr_warn_db: float = 20.0,
) -> str:
    """The summary: model, target, size, latency, outputs, accuracy; then the `worst` layers by SQNR (lowest
    first), then kept-float and unfused Q/DQ counts with their first `reasons` reasons, then warnings."""
    r = report
    width = max(width, 60)
    out = _Lines(width, color)
    target = r.target.name + (f" ({r.target.backend})" if r.target.backend else "")
    out.add(f"qcompiler report: {r.model.name} -> {target}", "bold")
    out.add(f"created {r.created}, qcompiler {r.qcompiler_version}", "dim")
    if r.calibration is not None and r.calibration.is_random:
        out.add(f"!! {RANDOM_BANNER}", "bold red")
    out.add("-" * width)

    m = r.model
    out.row(
        "model",
        [
            f"{m.source or m.name}: {_plural(len(m.inputs), 'input')}, "
            f"{_plural(len(m.outputs), 'output')}, {_plural(m.node_count, 'node')}"
        ],
    )
    out.row("target", [target])
    out.row(
        "size",
        [
            f"{fmt.nbytes(r.size.before_bytes)} -> {fmt.nbytes(r.size.after_bytes)}  "
            f"({fmt.ratio(r.size.ratio, 'smaller', 'larger')})"
        ],
    )
    out.row(
        "latency",
        [
            f"batch {fmt.count(x.batch_size)}, {fmt.count(x.threads)} threads: {fmt.ms(x.before_ms)} -> "
            f"{fmt.ms(x.after_ms)}  ({fmt.ratio(x.ratio, 'faster', 'slower')}); "
            f"{x.engine or fmt.NA}, {fmt.count(x.runs)} runs"
            for x in r.latency
        ],
    )
    out.row(
        "outputs",
        [
            (
                f"{o.name}: SQNR {fmt.db_unit(o.sqnr_db)}, cosine {fmt.cosine(o.cosine)}, "
                f"max|diff| {fmt.num(o.max_abs)}, mean|diff| {fmt.num(o.mean_abs)}",
                "red" if fmt.below(o.sqnr_db, sqnr_warn_db) else "",
            )
            for o in r.outputs
        ],
    )
    out.row(
        "accuracy",
        [
            f"{name}: {fmt.metric(b)} -> {fmt.metric(a)}  ({fmt.signed(None if a is None or b is None else a - b)})"
            for name, (b, a) in r.accuracy.items()
        ],
    )
    q = r.quantized_layers
    low = sum(fmt.below(layer.sqnr_db, sqnr_warn_db) for layer in q)
    out.row(
        "layers",
        [
            (
                f"{len(q)} quantized, {len(r.layers) - len(q)} float; {low} below {sqnr_warn_db:g} dB SQNR",
                "red" if low else "",
            )
        ],
    )
    c = r.calibration
    if c is None:
        out.row("calibration", ["none (weight-only or dynamic quantization)"])
    else:
        out.row(
            "calibration",
            [
                (
                    f"{'RANDOM: ' if c.is_random else ''}{c.source or fmt.NA}, {fmt.count(c.samples)} samples "
                    f"(+{fmt.count(c.held_back)} held back), observers {', '.join(c.observers) or fmt.NA}",
                    "red" if c.is_random else "",
                )
            ],
        )

    ranked = r.worst_layers(worst)
    out.add()
    measured = sum(layer.sqnr_db is not None for layer in r.layers)
    out.add(f"worst {len(ranked)} layers by SQNR (of {measured} measured; '!' = below {sqnr_warn_db:g} dB)", "bold")
    if ranked:
        opw = min(max(len(x.op_type) for x in ranked), 16)
        head = f"  {'rank':>4}  {'SQNR dB':>8}    {'op':<{opw}}  node"
        out.add(head)
        node_w = width - len(head) + len("node")
        for i, layer in enumerate(ranked, 1):
            bad = fmt.below(layer.sqnr_db, sqnr_warn_db)
            out.add(
                f"  {i:>4}  {fmt.db(layer.sqnr_db):>8} {'!' if bad else ' '}  {_fit(layer.op_type, opw):<{opw}}  "
                f"{_mid(layer.node, node_w)}",
                "red" if bad else "",
            )
    else:
        out.add(f"  {fmt.NA}: no per-layer SQNR recorded")
    gap = r.layer_gap()
    if gap:
        out.add()
        out.add(f"  a layer's figure is its tensor's own error (worst {gap[0]:.1f} dB, output {gap[1]:.1f} dB):", "dim")
        out.add("  to see what one costs the output, compile with --exclude for it and compare", "dim")

    def listing(title: str, items: list[tuple[str, str]], style: str) -> None:
        out.add()
        out.add(title, f"bold {style}".strip() if items else "bold")
        for subject, reason in items[:reasons]:
            name_w = max(min(len(subject), width // 2), 8)
            out.add(f"  {_mid(subject, name_w)}: {reason or fmt.NA}")
        if len(items) > reasons:
            out.add(f"  ... and {len(items) - reasons} more (see the HTML report)")

    listing(
        f"kept float: {len(r.kept_float)}",
        [(f"{k.node} ({k.op_type})", k.reason) for k in r.kept_float],
        "",
    )
    listing(
        f"unfused Q/DQ pairs: {len(r.unfused)}" + (" (slower than float)" if r.unfused else ""),
        [(u.subject, u.reason) for u in r.unfused],
        "yellow",
    )
    if r.warnings:
        out.add()
        out.add(f"warnings: {len(r.warnings)}", "bold yellow")
        for w in r.warnings:
            out.add(f"  - {w}")
    return out.render()
