"""The report as one self-contained HTML page: inline CSS, an inline SVG chart and a few lines of inline script
(to sort tables), nothing fetched from anywhere, so the file opens from disk, from an e-mail or offline.

Every string that came from the model, the recipe or the machine goes through `_e` (HTML escaping, quotes
included): node names may hold '<', '&' or quotes.
"""

from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING

from . import _fmt as fmt

if TYPE_CHECKING:
    from .model import LayerEntry, Report

RANDOM_BANNER = "calibrated on random data: for smoke tests only"

_CSS = """
:root { --bad: #c62828; --badbg: #fdecea; --amber: #e65100; --amberbg: #fff3e0; --muted: #6b6b6b;
        --line: #dedede; --bar: #3f6fb5; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1d1d1f;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 18px 28px 60px; }
h1 { font-size: 24px; margin: 6px 0 2px; word-break: break-all; }
h2 { font-size: 18px; margin: 30px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 14px 0 6px; }
.sub { color: var(--muted); margin: 2px 0; }
nav { margin: 10px 0 4px; font-size: 13px; }
nav a { margin-right: 14px; color: var(--bar); text-decoration: none; }
.banner { background: var(--bad); color: #fff; font-weight: 700; font-size: 19px; letter-spacing: .2px;
          padding: 12px 18px; border-radius: 6px; margin: 14px 0; }
.callout { border-left: 5px solid var(--amber); background: var(--amberbg); padding: 8px 14px; margin: 10px 0;
           border-radius: 0 4px 4px 0; }
.callout.bad { border-left-color: var(--bad); background: var(--badbg); }
.callout ul { margin: 4px 0; padding-left: 20px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .5px; }
.card .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .d { color: var(--muted); }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); margin: 4px 0 8px; }
th, td { border-bottom: 1px solid #ececec; padding: 4px 10px; text-align: left; vertical-align: baseline; }
th { background: #eef0f3; font-weight: 600; white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #e2e6ec; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
td.node { word-break: break-all; max-width: 420px; }
tr.warn td { background: var(--badbg); }
tr.warn td.sqnr { color: var(--bad); font-weight: 600; }
tr.float td { color: var(--muted); }
tr.unfused td { background: var(--amberbg); }
td.bad { color: var(--bad); font-weight: 600; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid var(--line); display: inline-block; max-width: 100%; }
.scroll table { border: 0; margin: 0; }
.scroll thead th { position: sticky; top: 0; z-index: 1; }
.chart { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: 4px; padding: 4px 0; }
.chart svg { display: block; }
.chart .bar { fill: var(--bar); }
.chart .bar.warn { fill: var(--bad); }
.chart .bar.inf { fill: #2e7d32; }
.chart .bar.na { fill: #b0b0b0; }
.chart .bar:hover { fill: #111; }
.chart .grid { stroke: #e6e6e6; stroke-width: 1; }
.chart .axis { stroke: #888; stroke-width: 1; }
.chart .ref { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 6 4; }
.chart text { font-size: 11px; fill: #555; }
.chart text.reflabel { fill: var(--bad); font-weight: 600; }
.chart rect.label { fill: #fff; fill-opacity: .9; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; vertical-align: -1px; }
pre { background: #fff; border: 1px solid var(--line); border-radius: 4px; padding: 10px 14px; overflow-x: auto;
      font-size: 12.5px; }
details summary { cursor: pointer; margin: 6px 0; }
.timebar { display: inline-block; height: 9px; background: var(--bar); border-radius: 2px; vertical-align: 0; }
.muted { color: var(--muted); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

# Click a header to sort by that column; numeric cells carry data-v, and cells with data-v="" (n/a) sort last.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], i = th.cellIndex;
    var asc = th.getAttribute("data-dir") !== "asc";
    th.setAttribute("data-dir", asc ? "asc" : "desc");
    function key(tr) {
      var c = tr.cells[i], v = c.getAttribute("data-v");
      if (v === null) return c.textContent.toLowerCase();
      return v === "" ? null : parseFloat(v);
    }
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      var r = typeof x === "number" ? (x < y ? -1 : x > y ? 1 : 0) : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _e(value: object) -> str:
    """Escape text for HTML content and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def _num_attr(x: float | None) -> str:
    """A sort key for data-v: '' for n/a; NaN sorts as the worst (lowest) value."""
    if x is None:
        return ""
    if math.isnan(x):
        return "-1e308"
    return "Infinity" if x == math.inf else ("-Infinity" if x == -math.inf else repr(float(x)))


def _td_num(text: str, key: float | None, cls: str = "num") -> str:
    return f'<td class="{cls}" data-v="{_num_attr(key)}">{_e(text)}</td>'


def _table(headers: list[tuple[str, str]], rows: list[str], *, sortable: bool = False, scroll: bool = False) -> str:
    """headers: (text, css class); rows: ready '<tr>...</tr>' strings."""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f'<th class="{c}">{_e(t)}</th>' if c else f"<th>{_e(t)}</th>" for t, c in headers)
    table = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


# -- sections ---------------------------------------------------------------------------------------------


def _header(r: Report) -> str:
    m, t = r.model, r.target
    target = _e(t.name) + (f" ({_e(t.backend)})" if t.backend else "")
    machine = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in r.machine.items()) or fmt.NA
    lines = [
        f"<h1>{_e(m.name)}</h1>",
        f'<p class="sub">quantized for <b>{target}</b> · {_e(r.created)} · qcompiler {_e(r.qcompiler_version)}</p>',
        f'<p class="sub">source: <span class="mono">{_e(m.source or fmt.NA)}</span>'
        + (f' · artifact: <span class="mono">{_e(r.artifact)}</span>' if r.artifact else "")
        + "</p>",
        f'<p class="sub">machine: {machine}</p>',
    ]
    return "<header>" + "".join(lines) + "</header>"


def _nav() -> str:
    links = [
        ("summary", "Summary"),
        ("chart", "Per-layer SQNR"),
        ("layers", "Layers"),
        ("kept-float", "Kept float"),
        ("unfused", "Unfused Q/DQ"),
        ("calibration", "Calibration & model"),
        ("passes", "Passes"),
        ("recipe", "Recipe"),
    ]
    return "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in links) + "</nav>"


def _alerts(r: Report, warn_db: float) -> str:
    out = []
    if r.calibration is not None and r.calibration.is_random:
        out.append(
            f'<div class="banner">&#9888; {_e(RANDOM_BANNER)}: the accuracy figures below say nothing about '
            "real inputs</div>"
        )
    if r.unfused:
        out.append(
            f'<div class="callout bad"><b>{len(r.unfused)} Q/DQ pair{"s" if len(r.unfused) != 1 else ""} '
            "not fused</b> by ONNX Runtime: each runs as separate quantize/dequantize ops around a float kernel, "
            'slower than the float model. See <a href="#unfused">Unfused Q/DQ</a>.</div>'
        )
    bad_out = [o for o in r.outputs if fmt.below(o.sqnr_db, warn_db)]
    if bad_out:
        names = ", ".join(f'<span class="mono">{_e(o.name)}</span> ({_e(fmt.db_unit(o.sqnr_db))})' for o in bad_out)
        out.append(f'<div class="callout bad">Output SQNR below {warn_db:g} dB: {names}</div>')
    if r.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in r.warnings)
        out.append(f'<div class="callout"><b>Warnings ({len(r.warnings)})</b><ul>{items}</ul></div>')
    return "".join(out)


def _card(key: str, value: str, detail: str = "") -> str:
    d = f'<div class="d">{detail}</div>' if detail else ""
    return f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div>{d}</div>'


def _summary(r: Report, warn_db: float) -> str:
    cards = [
        _card(
            "size",
            f"{_e(fmt.nbytes(r.size.before_bytes))} &rarr; {_e(fmt.nbytes(r.size.after_bytes))}",
            _e(fmt.ratio(r.size.ratio, "smaller", "larger")),
        )
    ]
    if r.latency:
        first = r.latency[0]
        cards.append(
            _card(
                f"latency, batch {fmt.count(first.batch_size)}, {fmt.count(first.threads)} threads",
                f"{_e(fmt.ms(first.before_ms))} &rarr; {_e(fmt.ms(first.after_ms))}",
                _e(fmt.ratio(first.ratio, "faster", "slower")),
            )
        )
    else:
        cards.append(_card("latency", fmt.NA, "not measured"))
    for o in r.outputs[:2]:
        cls = ' class="bad"' if fmt.below(o.sqnr_db, warn_db) else ""
        cards.append(
            _card(
                f"output {o.name} SQNR",
                f"<span{cls}>{_e(fmt.db_unit(o.sqnr_db))}</span>",
                f"cosine {_e(fmt.cosine(o.cosine))} · max |diff| {_e(fmt.num(o.max_abs))}",
            )
        )
    q = r.quantized_layers
    low = sum(fmt.below(layer.sqnr_db, warn_db) for layer in q)
    cards.append(
        _card(
            "layers",
            f"{len(q)} quantized · {len(r.layers) - len(q)} float",
            f"{low} below {warn_db:g} dB · {len(r.kept_float)} kept float · {len(r.unfused)} unfused Q/DQ",
        )
    )
    out = [f'<h2 id="summary">Summary</h2><div class="cards">{"".join(cards)}</div>']

    out.append("<h3>Latency</h3>")
    if r.latency:
        rows = [
            "<tr>"
            + _td_num(fmt.count(x.batch_size), x.batch_size)
            + _td_num(fmt.count(x.threads), x.threads)
            + _td_num(fmt.count(x.runs), x.runs)
            + f"<td>{_e(x.engine or fmt.NA)}</td>"
            + _td_num(fmt.ms(x.before_ms), x.before_ms)
            + _td_num(fmt.ms(x.after_ms), x.after_ms)
            + _td_num(fmt.ratio(x.ratio, "faster", "slower"), x.ratio)
            + "</tr>"
            for x in r.latency
        ]
        heads = [
            ("batch", "num"),
            ("threads", "num"),
            ("runs", "num"),
            ("engine", ""),
            ("float", "num"),
            ("quantized", "num"),
            ("after / before", "num"),
        ]
        out.append(_table(heads, rows))
    else:
        out.append(f'<p class="muted">{fmt.NA}: latency was not measured.</p>')

    out.append("<h3>Outputs (quantized vs float, held-back samples)</h3>")
    if r.outputs:
        rows = []
        for o in r.outputs:
            cls = ' class="warn"' if fmt.below(o.sqnr_db, warn_db) else ""
            rows.append(
                f'<tr{cls}><td class="mono">{_e(o.name)}</td>'
                + _td_num(fmt.db(o.sqnr_db), o.sqnr_db, "num sqnr")
                + _td_num(fmt.cosine(o.cosine), o.cosine)
                + _td_num(fmt.num(o.max_abs), o.max_abs)
                + _td_num(fmt.num(o.mean_abs), o.mean_abs)
                + "</tr>"
            )
        heads = [("output", ""), ("SQNR dB", "num"), ("cosine", "num"), ("max |diff|", "num"), ("mean |diff|", "num")]
        out.append(_table(heads, rows))
    else:
        out.append(f'<p class="muted">{fmt.NA}: outputs were not compared.</p>')

    if r.accuracy:
        out.append("<h3>Accuracy</h3>")
        rows = []
        for name, (before, after) in r.accuracy.items():
            delta = None if before is None or after is None else after - before
            rows.append(
                f"<tr><td>{_e(name)}</td>"
                + _td_num(fmt.metric(before), before)
                + _td_num(fmt.metric(after), after)
                + _td_num(fmt.signed(delta), delta)
                + "</tr>"
            )
        out.append(_table([("metric", ""), ("float", "num"), ("quantized", "num"), ("change", "num")], rows))
    return "".join(out)


def _nice_step(span: float, lines: int = 8) -> float:
    """A 1-2-5 grid step that puts at most `lines` grid lines over `span`."""
    raw = span / lines
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def sqnr_chart(layers: list[LayerEntry], warn_db: float) -> str:
    """An inline SVG bar chart: one bar per quantized layer, in graph order, height = SQNR in dB, a dashed
    reference line at `warn_db`, bars below it in the warning color, a hover title with node and value.
    Bars are 3-48 px apart so that ~1200 px hold the chart up to 400 layers; beyond that the chart scrolls."""
    q = [layer for layer in layers if layer.status == "quantized"]
    if not q:
        return '<p class="muted">No quantized layers.</p>'
    n = len(q)
    slot = max(3, min(48, 1200 // n))
    bar_w = max(2, round(slot * 0.72))
    left, right, top, bottom, plot_h = 52, 16, 14, 30, 260
    finite = [x.sqnr_db for x in q if x.sqnr_db is not None and math.isfinite(x.sqnr_db)]
    hi = max([warn_db + 10.0, *finite])
    lo = min([0.0, *finite])
    step = _nice_step(hi - lo)
    ymax, ymin = math.ceil(hi / step) * step, math.floor(lo / step) * step
    width, height = left + n * slot + right, top + plot_h + bottom

    def y(v: float) -> float:
        return top + (ymax - v) / (ymax - ymin) * plot_h

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="SQNR in dB of {n} quantized layers in graph order">'
    ]
    k = 0
    while ymin + k * step <= ymax + 1e-9:
        v = ymin + k * step
        yy = y(v)
        parts.append(f'<line class="grid" x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
        k += 1
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.0f})">SQNR dB</text>'
    )
    # x ticks: every `every` layers (1-2-5 steps), at least ~60 px apart so the numbers do not collide
    every = int(_nice_step(60 / slot, 1))
    y0 = y(0.0)
    for i, layer in enumerate(q):
        x0 = left + i * slot + (slot - bar_w) / 2
        v = layer.sqnr_db
        if v is None:
            cls, y_top, h = "bar na", y0 - 3, 3.0
        elif math.isnan(v):
            cls, y_top, h = "bar warn", y(ymax), y(ymin) - y(ymax)
        elif math.isinf(v):
            y_end = y(ymax) if v > 0 else y(ymin)
            cls, y_top, h = "bar inf" if v > 0 else "bar warn", min(y0, y_end), abs(y0 - y_end)
        else:
            cls = "bar warn" if v < warn_db else "bar"
            y_top, h = min(y0, y(v)), max(abs(y0 - y(v)), 0.5)
        title = f"#{i + 1} {layer.node} ({layer.op_type}): {fmt.db_unit(v)}"
        parts.append(
            f'<rect class="{cls}" x="{x0:.1f}" y="{y_top:.2f}" width="{bar_w}" height="{h:.2f}">'
            f"<title>{_e(title)}</title></rect>"
        )
        if (i + 1) % every == 0 or i == 0:
            parts.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 16}" '
                f'text-anchor="middle">{i + 1}</text>'
            )
    parts.append(f'<line class="axis" x1="{left}" y1="{y0:.1f}" x2="{width - right}" y2="{y0:.1f}"/>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    yr = y(warn_db)
    parts.append(f'<line class="ref" x1="{left}" y1="{yr:.1f}" x2="{width - right}" y2="{yr:.1f}"/>')
    parts.append(f'<rect class="label" x="{left + 3}" y="{yr - 17:.1f}" width="46" height="14"/>')
    parts.append(f'<text class="reflabel" x="{left + 6}" y="{yr - 6:.1f}">{warn_db:g} dB</text>')
    parts.append("</svg>")
    low = sum(fmt.below(layer.sqnr_db, warn_db) for layer in q)
    legend = (
        f'<p class="legend muted">{n} quantized layers in graph order (x: layer number); hover a bar for its node.'
        f'<span style="background:var(--bar)"></span>SQNR &ge; {warn_db:g} dB'
        f'<span style="background:var(--bad)"></span>below {warn_db:g} dB or nan ({low})'
        '<span style="background:#2e7d32"></span>inf (exact)'
        f'<span style="background:#b0b0b0"></span>{fmt.NA}</p>'
    )
    return f'<div class="chart">{"".join(parts)}</div>{legend}'


def _layers(r: Report, warn_db: float) -> str:
    gap = r.layer_gap()
    note = (f'<p class="muted">Each layer\'s figure compares its output tensor with the float model\'s: the worst, '
            f'{gap[0]:.1f} dB, lies far below the model output\'s {gap[1]:.1f} dB, as when ranges fitted to the '
            f'output clip channels that later layers barely read. What a layer costs the output: compile with '
            f'<code>--exclude</code> for it and compare the output SQNR.</p>') if gap else ""
    out = [f'<h2 id="chart">Per-layer SQNR</h2>{note}{sqnr_chart(r.layers, warn_db)}', '<h2 id="layers">Layers</h2>']
    if not r.layers:
        return "".join(out) + f'<p class="muted">{fmt.NA}: no layers recorded.</p>'
    rows = []
    for i, layer in enumerate(r.layers):
        if layer.status == "float":
            cls = ' class="float"'
        elif fmt.below(layer.sqnr_db, warn_db):
            cls = ' class="warn"'
        else:
            cls = ""
        quant = "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in layer.quant.items()) or "&mdash;"
        rows.append(
            f"<tr{cls}>"
            + _td_num(str(i + 1), i + 1)
            + f'<td class="mono node">{_e(layer.node)}</td><td>{_e(layer.op_type)}</td><td>{_e(layer.status)}</td>'
            + f'<td class="mono">{quant}</td>'
            + _td_num(fmt.db(layer.sqnr_db), layer.sqnr_db, "num sqnr")
            + f"<td>{_e(layer.reason)}</td></tr>"
        )
    heads = [
        ("#", "num"),
        ("node", ""),
        ("op", ""),
        ("status", ""),
        ("quantization", ""),
        ("SQNR dB", "num"),
        ("reason", ""),
    ]
    out.append(
        f'<p class="muted">{len(r.layers)} nodes in graph order; click a column header to sort. Rows in red: '
        f"SQNR below {warn_db:g} dB.</p>"
    )
    out.append(_table(heads, rows, sortable=True, scroll=True))
    return "".join(out)


def _kept_float(r: Report) -> str:
    out = [f'<h2 id="kept-float">Kept float ({len(r.kept_float)})</h2>']
    if not r.kept_float:
        return out[0] + '<p class="muted">Nothing was kept in float.</p>'
    rows = [
        f'<tr><td class="mono node">{_e(k.node)}</td><td>{_e(k.op_type)}</td><td>{_e(k.reason)}</td></tr>'
        for k in r.kept_float
    ]
    out.append(_table([("node", ""), ("op", ""), ("reason", "")], rows, sortable=True, scroll=len(rows) > 30))
    return "".join(out)


def _unfused(r: Report) -> str:
    out = [f'<h2 id="unfused">Unfused Q/DQ pairs ({len(r.unfused)})</h2>']
    if not r.unfused:
        return out[0] + '<p class="muted">ONNX Runtime fused every Q/DQ pair into an integer kernel.</p>'
    out.append(
        "<p>ONNX Runtime left these quantize/dequantize pairs as separate ops instead of fusing them into an "
        "integer kernel: each one costs time and gains nothing, so these parts run <b>slower than float</b>. "
        "Keeping them float in the recipe is usually faster.</p>"
    )
    rows = [
        f'<tr class="unfused"><td class="mono node">{_e(u.subject)}</td><td>{_e(u.reason)}</td></tr>' for u in r.unfused
    ]
    out.append(_table([("node or value", ""), ("reason", "")], rows, scroll=len(rows) > 30))
    return "".join(out)


def _calibration_and_model(r: Report) -> str:
    out = ['<h2 id="calibration">Calibration &amp; model</h2>']
    c = r.calibration
    if c is None:
        out.append(f'<p class="muted">{fmt.NA}: no calibration (weight-only or dynamic quantization).</p>')
    else:
        random = '<td class="bad">yes: random data, smoke tests only</td>' if c.is_random else "<td>no</td>"
        rows = [
            f"<tr><th>source</th><td>{_e(c.source or fmt.NA)}</td></tr>",
            f"<tr><th>random data</th>{random}</tr>",
            f"<tr><th>samples used</th><td>{_e(fmt.count(c.samples))}</td></tr>",
            f"<tr><th>held back (for error figures)</th><td>{_e(fmt.count(c.held_back))}</td></tr>",
            f"<tr><th>observers</th><td>{_e(', '.join(c.observers) or fmt.NA)}</td></tr>",
        ]
        out.append(f"<table><tbody>{''.join(rows)}</tbody></table>")

    m = r.model
    io_rows = [
        f'<tr><td>{kind}</td><td class="mono">{_e(t.name)}</td><td class="mono">{_e(fmt.shape(t.shape))}</td>'
        f"<td>{_e(t.dtype or fmt.NA)}</td></tr>"
        for kind, ts in (("input", m.inputs), ("output", m.outputs))
        for t in ts
    ]
    out.append("<h3>Inputs and outputs</h3>")
    out.append(
        _table([("", ""), ("name", ""), ("shape", ""), ("type", "")], io_rows)
        if io_rows
        else f'<p class="muted">{fmt.NA}</p>'
    )
    out.append(f"<h3>Op counts ({m.node_count} nodes)</h3>")
    ops = sorted(m.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out.append(
        _table(
            [("op", ""), ("nodes", "num")],
            [f"<tr><td>{_e(k)}</td>{_td_num(str(v), v)}</tr>" for k, v in ops],
            sortable=True,
        )
        if ops
        else f'<p class="muted">{fmt.NA}</p>'
    )
    return "".join(out)


def _passes(r: Report) -> str:
    out = ['<h2 id="passes">Passes</h2>']
    if r.passes:
        known = [p.seconds for p in r.passes if p.seconds is not None and math.isfinite(p.seconds)]
        longest = max(known, default=0.0) or 1.0
        rows = []
        for p in r.passes:
            w = 0 if p.seconds is None or not math.isfinite(p.seconds) else max(1, round(160 * p.seconds / longest))
            rows.append(
                f'<tr><td class="mono">{_e(p.name)}</td>{_td_num(fmt.seconds(p.seconds), p.seconds)}'
                f'<td><span class="timebar" style="width:{w}px"></span></td></tr>'
            )
        rows.append(f'<tr><th>total</th><td class="num"><b>{_e(fmt.seconds(sum(known)))}</b></td><td></td></tr>')
        out.append(_table([("pass", ""), ("time", "num"), ("", "")], rows))
    else:
        out.append(f'<p class="muted">{fmt.NA}: no pass timings recorded.</p>')
    if r.decisions:
        rows = [
            f'<tr><td class="mono">{_e(d.pass_name)}</td><td class="mono node">{_e(d.subject)}</td>'
            f"<td>{_e(d.action)}</td><td>{_e(d.reason)}</td></tr>"
            for d in r.decisions
        ]
        out.append(f"<details><summary>Decisions ({len(r.decisions)})</summary>")
        out.append(
            _table([("pass", ""), ("subject", ""), ("action", ""), ("reason", "")], rows, sortable=True, scroll=True)
        )
        out.append("</details>")
    return "".join(out)


def _recipe(r: Report) -> str:
    text = json.dumps(r.recipe, indent=2, ensure_ascii=False) if r.recipe else fmt.NA
    return f'<h2 id="recipe">Recipe</h2><pre>{_e(text)}</pre>'


def render_html(report: Report, *, sqnr_warn_db: float = 20.0) -> str:
    """The whole page as a string."""
    title = f"qcompiler report: {report.model.name} for {report.target.name}"
    body = "".join(
        [
            _header(report),
            _nav(),
            _alerts(report, sqnr_warn_db),
            _summary(report, sqnr_warn_db),
            _layers(report, sqnr_warn_db),
            _kept_float(report),
            _unfused(report),
            _calibration_and_model(report),
            _passes(report),
            _recipe(report),
            f"<footer>qcompiler {_e(report.qcompiler_version)} · report schema {report.schema_version} · "
            "ratios are quantized / float</footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
