"""The HTML report's charts, made by plotly (the ``report`` extra) from the aggregates
of one pass: over time, latency, cost and tokens, re-asks, and the Batch API batches.

Every text a chart shows that came from the outputs (models, file names, batch ids) is
escaped first: plotly reads a few HTML tags in its labels, and a label is not a place
for a model name to add a link.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

from llmbatch.app.aggregate import LATENCY_EDGES, SECONDS, Aggregates, Tally
from llmbatch.app.report import Report

__all__ = ["FULL_TIMELINE", "figures", "label"]

# A file's minutes (or seconds) are drawn with the idle ones as zeros (a stall shows as
# a dip), up to this many from its first to its last; beyond, only the busy ones.
FULL_TIMELINE = 20_000
_LABEL = 60  # characters of a label shown
_TEMPLATE = "plotly_white"
_VEIL = "rgba(255,255,255,0.8)"  # behind a label drawn over bars


def label(text: str) -> str:
    """A text from the outputs, safe and short enough for a chart's label."""
    return html.escape(text if len(text) <= _LABEL else text[: _LABEL - 1] + "…")


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def figures(report: Report, agg: Aggregates) -> dict[str, Any]:
    """The charts by section name (a section without data has none)."""
    import plotly.graph_objects as go

    made: dict[str, go.Figure | None] = {
        "timeline": _timeline(agg),
        "latency": _latency(report, agg),
        "cost": _cost(agg),
        "reasks": _reasks(report),
        "batches": _batches(agg),
    }
    return {name: fig for name, fig in made.items() if fig is not None}


def _steps(counts: dict[int, list[int]]) -> list[int]:
    if not counts:
        return []
    first, last = min(counts), max(counts)
    if last - first > FULL_TIMELINE:
        return sorted(counts)
    return list(range(first, last + 1))


def _resolution(agg: Aggregates) -> tuple[str, int, list[dict[int, list[int]]]]:
    """By the second when every file's lines span a few minutes (and all of them
    do together), else by the minute."""
    seconds = agg.seconds
    if all(s is not None for s in seconds):
        known = [t for s in seconds if s for t in (min(s), max(s))]
        if known and max(known) - min(known) <= SECONDS:
            return "second", 1000, [s or {} for s in seconds]
    return "minute", 60000, agg.minutes


def _timeline(agg: Aggregates) -> Any:
    from plotly.subplots import make_subplots

    if not any(agg.minutes):
        return None
    per, ms, steps = _resolution(agg)
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(f"items finished per {per}", f"tokens per {per}", f"retries per {per}"),
    )
    for index, minutes in enumerate(steps):
        keys = _steps(minutes)
        if not keys:
            continue
        x = [_iso(m * ms) for m in keys]
        zero = [0, 0, 0]
        name = label(agg.files[index])
        for row in range(3):
            y = [minutes.get(m, zero)[row] for m in keys]
            trace: dict[str, Any] = {"x": x, "y": y, "name": name, "legendgroup": name}
            trace["showlegend"] = row == 0
            mode = "lines" if len(keys) > 30 else "lines+markers"  # a point or two must show
            fig.add_scatter(**trace, mode=mode, line={"width": 1.5}, row=row + 1, col=1)
    fig.update_layout(template=_TEMPLATE, height=620, margin={"t": 40, "b": 40}, hovermode="x unified")
    fig.update_xaxes(type="date")
    return fig


def _latency(report: Report, agg: Aggregates) -> Any:
    import plotly.graph_objects as go

    if not agg.latency:
        return None
    fig = go.Figure()
    centres = [
        math.sqrt(LATENCY_EDGES[max(i - 1, 0)] * LATENCY_EDGES[min(i, len(LATENCY_EDGES) - 1)])
        for i in range(len(LATENCY_EDGES) + 1)
    ]
    used = [i for i in range(len(centres)) if any(bins[i] for bins in agg.latency.values())]
    lo, hi = max(used[0] - 1, 0), min(used[-1] + 2, len(centres))  # down to zero at both ends
    for model, bins in sorted(agg.latency.items(), key=lambda kv: -sum(kv[1])):
        p50, p95, p99 = (agg.latency_percentile(model, p) for p in (50, 95, 99))
        name = f"{label(model)} (p50 ≤{p50:,.0f}, p95 ≤{p95:,.0f}, p99 ≤{p99:,.0f} ms)"
        # Steps, not bars: plotly sizes bars on a log axis by their linear distance.
        fig.add_scatter(x=centres[lo:hi], y=bins[lo:hi], name=name, mode="lines", line={"shape": "hvh"},
                        fill="tozeroy")  # fmt: skip
    for i, (p, value) in enumerate(zip((50, 95, 99), report.percentiles(50, 95, 99), strict=True)):
        if value is None:
            continue
        # A shape on a log axis takes the value, an annotation its logarithm.
        fig.add_shape(type="line", x0=value, x1=value, y0=0, y1=1, yref="paper",
                      line={"dash": "dash", "width": 1.5, "color": "#444"})  # fmt: skip
        fig.add_annotation(x=math.log10(max(value, 0.001)), y=1 - 0.08 * i, yref="paper", xanchor="left",
                           text=f"p{p} {value:,.0f} ms", showarrow=False, bgcolor=_VEIL)  # fmt: skip
    fig.update_layout(
        template=_TEMPLATE,
        height=420,
        xaxis={"type": "log", "title": "latency (ms)"},
        yaxis={"title": "items"},
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 40},
    )
    return fig


_PARTS = (
    ("prompt, uncached", "#00cc96"),
    ("prompt, cached", "#b6e880"),
    ("completion", "#ef553b"),
    ("reasoning", "#ffa15a"),
)


def _split(t: Tally) -> tuple[int, int, int, int]:
    """A tally's tokens in the parts `_PARTS` names."""
    return t.prompt - t.cached, t.cached, t.completion - t.reasoning, t.reasoning


def _tally_bars(fig: Any, tallies: dict[str, Tally], col: int) -> None:
    names = sorted(tallies, key=lambda k: -(tallies[k].prompt + tallies[k].completion))
    x = [label(n) for n in names]
    fig.add_bar(x=x, y=[tallies[n].cost for n in names], name="cost (USD)", row=1, col=col,
                showlegend=col == 1, marker={"color": "#636efa"})  # fmt: skip
    split = {n: _split(tallies[n]) for n in names}
    for i, (name, colour) in enumerate(_PARTS):
        fig.add_bar(x=x, y=[split[n][i] for n in names], name=name, row=2, col=col,
                    showlegend=col == 1, legendgroup=name, marker={"color": colour})  # fmt: skip


def _cost(agg: Aggregates) -> Any:
    from plotly.subplots import make_subplots

    if not agg.by_model:
        return None
    fig = make_subplots(
        rows=2,
        cols=2,
        vertical_spacing=0.14,
        subplot_titles=("cost by model", "cost by mode", "tokens by model", "tokens by mode"),
    )
    _tally_bars(fig, agg.by_model, 1)
    _tally_bars(fig, agg.by_mode, 2)
    fig.update_layout(template=_TEMPLATE, barmode="stack", height=560, margin={"t": 40})
    return fig


def _reasks(report: Report) -> Any:
    import plotly.graph_objects as go

    if not report.answers:
        return None
    needed = sorted(report.answers)
    x = [f"{n} answer{'s' if n != 1 else ''}" for n in needed]
    valid = [report.answers_valid[n] for n in needed]
    fig = go.Figure()
    fig.add_bar(x=x, y=valid, name="ended valid", marker={"color": "#00cc96"})
    fig.add_bar(
        x=x, y=[report.answers[n] - v for n, v in zip(needed, valid, strict=True)],
        name="ended invalid or failed", marker={"color": "#ef553b"},
    )  # fmt: skip
    fig.update_layout(template=_TEMPLATE, barmode="stack", height=360, yaxis={"title": "items"},
                      margin={"t": 30})  # fmt: skip
    return fig


def _batches(agg: Aggregates) -> Any:
    import plotly.graph_objects as go

    timed = [b for b in agg.timeline if b.created is not None]
    if not timed:
        return None
    now = max((b.completed or b.created or 0.0) for b in timed)
    fig = go.Figure()
    fig.add_bar(
        orientation="h",
        y=[label(b.batch_id) for b in timed],
        base=[_iso(b.created * 1000) for b in timed if b.created is not None],
        x=[((b.completed or now) - (b.created or now)) * 1000 for b in timed],
        text=[f"{b.items:,} items, {label(b.status or 'running')}" for b in timed],
        marker={"color": ["#636efa" if b.completed else "#ffa15a" for b in timed]},
        hovertemplate="%{y}: %{base} + %{x} ms<br>%{text}<extra></extra>",
    )
    fig.update_layout(template=_TEMPLATE, height=max(240, 40 + 28 * len(timed)), margin={"t": 30},
                      xaxis={"type": "date"}, yaxis={"autorange": "reversed"})  # fmt: skip
    return fig
