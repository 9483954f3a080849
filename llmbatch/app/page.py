"""`llmbatch report --html`: one HTML page that opens from disk with no network, for a
browser a user already has: plotly.js inlined (from the plotly package, the ``report``
extra), every style inline, and a Content-Security-Policy that lets nothing load from
anywhere and runs only the page's own two scripts (a nonce: a ``<script>`` in an
answer would not run even were it not escaped, and it is). Every text that came from
the outputs is escaped; the charts' data travels as a JSON data block with ``<``
escaped, read by the page's script.
"""

from __future__ import annotations

import html
import importlib.util
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llmbatch.app.aggregate import Aggregates, Failure
from llmbatch.app.format import usd
from llmbatch.app.report import Report, answers_needed, finished_span, when

__all__ = ["INSTALL", "SECTIONS", "plotly_js", "write_page"]

INSTALL = "pip install 'llmbatch[report]'"

# The page's sections, in order: (id, heading). A section without data says so.
SECTIONS = (
    ("summary", "Summary"),
    ("timeline", "Over time"),
    ("latency", "Latency"),
    ("cost", "Cost and tokens"),
    ("reasks", "Re-asks"),
    ("failures", "Failures"),
    ("batches", "Batch API batches"),
)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;text-align:left;vertical-align:top;
border-bottom:1px solid #eee}th{font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.chart{width:100%;min-height:200px}.note{color:#666}
code.answer{white-space:pre-wrap;word-break:break-all;background:#f6f6f6;display:block;padding:2px 4px;
max-height:6em;overflow:auto}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{_e(k)} {_n(v)}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _summary(report: Report, agg: Aggregates) -> str:
    d = report.as_dict()
    invalid = {
        {"answer": "invalid answer", "refused": "refused", "truncated": "truncated"}[k]: v
        for k, v in agg.invalid.items()
    }
    started = when(report.first_t) + " UTC" if report.first_t is not None else "unknown"
    ended = when(report.last_t) + " UTC" if report.last_t is not None else "unknown"
    untimed = (
        f' <span class="note">({_n(report.untimed)} lines without a finish time, written by an older '
        "llmbatch: their timeline is unknown)</span>"
        if report.untimed
        else ""
    )
    unpriced = (
        f' <span class="note">(and {_n(sum(report.unpriced.values()))} lines unpriced: '
        f"{_e(', '.join(report.unpriced))}; give --price-in/--price-out)</span>"
        if report.unpriced
        else ""
    )
    pairs = [
        ("files", "<br>".join(_e(f) for f in report.files)),
        ("items", f'<span data-count="ids">{_n(report.ids)}</span> ids in '
                  f'<span data-count="lines">{_n(report.lines)}</span> lines'
                  + (f", {_n(report.repeated)} lines repeat an id" if report.repeated else "")
                  + (f", {_n(report.other)} not llmbatch's" if report.other else "")),
        ("valid", f'<span data-count="valid">{_n(d["valid"])}</span>'),
        ("invalid", f'<span data-count="invalid">{_n(d["invalid"])}</span> ({_counted(invalid)})'),
        ("failed", f'<span data-count="failed">{_n(d["failed"])}</span> ({_counted(dict(report.failed))})'),
        ("refused / truncated", f"{_n(d['refused'])} / {_n(d['truncated'])} (any state)"),
        ("answered", _counted(dict(report.via))),
        ("cost", f'<span data-count="cost">{_e(usd(report.cost_usd))}</span>{unpriced}'),
        ("tokens", f"prompt {_n(report.prompt_tokens)} (cached {_n(report.cached_tokens)}), "
                   f"completion {_n(report.completion_tokens)} (reasoning {_n(report.reasoning_tokens)})"),
        ("models", _counted(dict(report.models))),
        ("endpoints", _counted(dict(agg.endpoints))),
        ("started", _e(started)),
        ("ended", _e(ended) + untimed),
    ]  # fmt: skip
    p50, p95, p99 = report.percentiles(50, 95, 99)
    if p50 is not None:
        pairs.append(("latency", f"p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms"))
    return f"<table>{_rows(pairs)}</table>"


def _failures(name: str, what: str, failures: list[tuple[str, Failure]], forgotten: int) -> str:
    if not failures:
        return f'<p class="note">No {_e(what)}.</p>'
    rows = []
    for key, failure in failures:
        examples = "".join(
            f"<div>id <code>{_e(x.custom_id)}</code>"
            + (f", input line {x.line}" if x.line is not None else "")
            + f'<code class="answer">{_e(x.answer)}</code></div>'
            for x in failure.examples
        )
        rows.append(f'<tr><td class="n">{_n(failure.count)}</td><td>{_e(key)}</td><td>{examples}</td></tr>')
    note = f'<p class="note">{_n(forgotten)} lines with rarer {_e(what)} not listed.</p>' if forgotten else ""
    return (
        f'<h3>{_e(what.capitalize())}</h3><table data-table="{name}"><tr><th>count</th><th>{_e(what[:-1])}'
        f"</th><th>examples (answers cut at 300 characters)</th></tr>{''.join(rows)}</table>{note}"
    )


def _batches(agg: Aggregates, charted: bool) -> str:
    if not agg.batch_lines and not agg.timeline:
        return '<p class="note">No line was answered through the Batch API.</p>'
    timed = {b.batch_id for b in agg.timeline}
    untimed = [b for b in agg.batch_lines if b not in timed]
    parts = [] if charted else ['<p class="note">No batch record beside the outputs: batch ids only.</p>']
    if agg.unreadable:
        parts.append(f'<p class="note">Not readable as a batch record: {_e(", ".join(agg.unreadable))}.</p>')
    if untimed:
        items = "".join(f"<li><code>{_e(b)}</code>: {_n(agg.batch_lines[b])} lines</li>" for b in untimed)
        parts.append(f"<p>Batches with no times in a batch record:</p><ul>{items}</ul>")
    return "".join(parts)


def _section(sid: str, heading: str, body: str) -> str:
    return f'<section id="{sid}" data-section="{sid}"><h2>{_e(heading)}</h2>{body}</section>'


def _chart(name: str) -> str:
    return f'<div class="chart" id="chart-{name}" data-chart="{name}"></div>'


def plotly_js() -> Path | None:
    """plotly.js as the plotly package ships it, None without the package (the report
    extra). Found, not imported: the page needs the file, not the Python side."""
    spec = importlib.util.find_spec("plotly")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


def write_page(out: BinaryIO, report: Report, agg: Aggregates, charts: dict[str, Any], script: Path) -> None:
    """The whole page, to `out`: `charts` are plotly.js figures by section
    (llmbatch.app.charts), `script` plotly.js itself (copied in, never held whole)."""
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
    )
    empty = {
        "timeline": "No line carries its finish time (an older llmbatch wrote them): timeline unknown.",
        "latency": "No line carries a latency.",
        "cost": "No line carries usage.",
        "reasks": "No line carries its answer count.",
    }
    bodies: dict[str, str] = {"summary": _summary(report, agg)}
    for name, note in empty.items():
        bodies[name] = _chart(name) if name in charts else f'<p class="note">{_e(note)}</p>'
    if "timeline" in charts and report.untimed:
        untimed = f"{_n(report.untimed)} lines without a finish time (an older llmbatch's) are not drawn."
        bodies["timeline"] += f'<p class="note">{untimed}</p>'
    if "reasks" in charts:
        bodies["reasks"] += f'<p class="note">{_e(answers_needed(report))}</p>'
    bodies["failures"] = _failures(
        "reasons", "validation messages", agg.reasons.top(), agg.reasons.forgotten
    ) + _failures("codes", "error codes", agg.codes.top(), agg.codes.forgotten)
    charted = "batches" in charts
    bodies["batches"] = (_chart("batches") if charted else "") + _batches(agg, charted)
    data = orjson.dumps(charts)
    data = data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
    sections = "".join(_section(sid, heading, bodies[sid]) for sid, heading in SECTIONS)
    run = (
        "const figures=JSON.parse(document.getElementById('figures').textContent);"
        "for(const [name,fig] of Object.entries(figures)){"
        "Plotly.newPlot('chart-'+name,fig.data,fig.layout,{displaylogo:false,responsive:true});}"
    )
    out.write(
        (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>llmbatch report: {_e(finished_span(report))}</title><style>{_STYLE}</style></head><body>"
            f'<h1>llmbatch report</h1>{sections}<script type="application/json" id="figures">'
        ).encode()
    )
    out.write(data)
    out.write(f'</script><script nonce="{nonce}">'.encode())
    with script.open("rb") as js:
        shutil.copyfileobj(js, out)
    out.write(f'</script><script nonce="{nonce}">{run}</script></body></html>\n'.encode())
