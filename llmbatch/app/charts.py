"""The HTML report's charts, as plotly.js figures (``{"data": [...], "layout": {...}}``)
made from the aggregates of one pass: over time, latency, cost and tokens, re-asks, and
the Batch API batches. plotly.js draws them in the page (the ``report`` extra ships it);
they are written here as plain JSON-ready dicts rather than through
``plotly.graph_objects``, whose validators cost a third more memory than the whole text
report of a million lines and a second to import, for figures this simple.

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

__all__ = ["FULL_TIMELINE", "Figure", "figures", "label"]

Figure = dict[str, Any]

# A file's minutes (or seconds) are drawn with the idle ones as zeros (a stall shows as
# a dip), up to this many from its first to its last; beyond, only the busy ones.
FULL_TIMELINE = 20_000
_LABEL = 60  # characters of a label shown
_VEIL = "rgba(255,255,255,0.8)"  # behind a label drawn over the data
_GRID = "#e5ecf6"
_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
_BASE: dict[str, Any] = {
    "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#2a3f5f"},
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "colorway": list(_COLOURS),
    "hoverlabel": {"align": "left"},
}


def label(text: str, *, tail: bool = False) -> str:
    """A text from the outputs, safe and short enough for a chart's label: its start,
    or with `tail` its end (a file's path ends with its name)."""
    if len(text) > _LABEL:
        text = "…" + text[1 - _LABEL :] if tail else text[: _LABEL - 1] + "…"
    return html.escape(text)


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _axis(**extra: Any) -> dict[str, Any]:
    return {"gridcolor": _GRID, "zerolinecolor": _GRID, "automargin": True, **extra}


def _layout(height: int, **extra: Any) -> dict[str, Any]:
    return {**_BASE, "height": height, "margin": {"t": 40, "b": 40, "l": 60, "r": 20}, **extra}


def _grid(
    rows: int, cols: int, titles: tuple[str, ...], *, vspace: float, hspace: float = 0.1
) -> dict[str, Any]:
    """The axes of a rows x cols grid of plots (the first row on top), and their titles:
    plot k (1-based, row by row) draws on axes xk/yk (x/y for the first)."""
    layout: dict[str, Any] = {"annotations": []}
    h = (1 - vspace * (rows - 1)) / rows
    w = (1 - hspace * (cols - 1)) / cols
    for r in range(rows):
        for c in range(cols):
            k = r * cols + c + 1
            top, left = 1 - r * (h + vspace), c * (w + hspace)
            suffix = "" if k == 1 else str(k)
            layout[f"xaxis{suffix}"] = _axis(domain=[left, left + w], anchor=f"y{suffix}")
            layout[f"yaxis{suffix}"] = _axis(domain=[top - h, top], anchor=f"x{suffix}")
            layout["annotations"].append(
                {
                    "text": titles[k - 1],
                    "x": left + w / 2,
                    "y": top,
                    "xref": "paper",
                    "yref": "paper",
                    "xanchor": "center",
                    "yanchor": "bottom",
                    "showarrow": False,
                    "font": {"size": 14},
                }
            )
    return layout


def _on(k: int) -> dict[str, str]:
    suffix = "" if k == 1 else str(k)
    return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}


def figures(report: Report, agg: Aggregates) -> dict[str, Figure]:
    """The charts by section name (a section without data has none)."""
    made: dict[str, Figure | None] = {
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


def _timeline(agg: Aggregates) -> Figure | None:
    if not any(agg.minutes):
        return None
    per, ms, steps = _resolution(agg)
    titles = (f"items finished per {per}", f"tokens per {per}", f"retries per {per}")
    layout = _layout(620, hovermode="x unified", **_grid(3, 1, titles, vspace=0.08))
    for k, suffix in ((1, ""), (2, "2"), (3, "3")):
        layout[f"xaxis{suffix}"].update(type="date", showticklabels=k == 3)
        if k > 1:
            layout[f"xaxis{suffix}"]["matches"] = "x"  # one time axis: zooming one zooms all
    data = []
    zero = [0, 0, 0]
    for index, counts in enumerate(steps):
        keys = _steps(counts)
        if not keys:
            continue
        x = [_iso(m * ms) for m in keys]
        name = label(agg.files[index], tail=True)
        colour = _COLOURS[index % len(_COLOURS)]
        mode = "lines" if len(keys) > 30 else "lines+markers"  # a point or two must show
        for row in range(3):
            data.append(
                {
                    "type": "scatter",
                    "mode": mode,
                    "x": x,
                    "y": [counts.get(m, zero)[row] for m in keys],
                    "name": name,
                    "legendgroup": name,
                    "showlegend": row == 0,
                    "line": {"width": 1.5, "color": colour},
                    **_on(row + 1),
                }
            )
    return {"data": data, "layout": layout}


def _latency(report: Report, agg: Aggregates) -> Figure | None:
    if not agg.latency:
        return None
    centres = [
        math.sqrt(LATENCY_EDGES[max(i - 1, 0)] * LATENCY_EDGES[min(i, len(LATENCY_EDGES) - 1)])
        for i in range(len(LATENCY_EDGES) + 1)
    ]
    used = [i for i in range(len(centres)) if any(bins[i] for bins in agg.latency.values())]
    lo, hi = max(used[0] - 1, 0), min(used[-1] + 2, len(centres))  # down to zero at both ends
    data = []
    for model, bins in sorted(agg.latency.items(), key=lambda kv: -sum(kv[1])):
        p50, p95, p99 = (agg.latency_percentile(model, p) for p in (50, 95, 99))
        name = f"{label(model)} (p50 ≤{p50:,.0f}, p95 ≤{p95:,.0f}, p99 ≤{p99:,.0f} ms)"
        # Steps, not bars: plotly sizes bars on a log axis by their linear distance.
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": centres[lo:hi],
                "y": bins[lo:hi],
                "name": name,
                "line": {"shape": "hvh", "width": 1.5},
                "fill": "tozeroy",
            }
        )
    shapes, notes = [], []
    for i, (p, value) in enumerate(zip((50, 95, 99), report.percentiles(50, 95, 99), strict=True)):
        if value is None:
            continue
        # On a log axis a shape takes the value, an annotation its logarithm.
        shapes.append(
            {
                "type": "line",
                "x0": value,
                "x1": value,
                "y0": 0,
                "y1": 1,
                "xref": "x",
                "yref": "paper",
                "line": {"dash": "dash", "width": 1.5, "color": "#444"},
            }
        )
        notes.append(
            {
                "x": math.log10(max(value, 0.001)),
                "y": 1 - 0.08 * i,
                "yref": "paper",
                "xanchor": "left",
                "text": f"p{p} {value:,.0f} ms",
                "showarrow": False,
                "bgcolor": _VEIL,
            }
        )
    layout = _layout(
        420,
        xaxis=_axis(type="log", title={"text": "latency (ms)"}),
        yaxis=_axis(title={"text": "items"}),
        legend={"orientation": "h", "y": -0.25},
        shapes=shapes,
        annotations=notes,
    )
    return {"data": data, "layout": layout}


_PARTS = (
    ("prompt, uncached", "#00cc96"),
    ("prompt, cached", "#b6e880"),
    ("completion", "#ef553b"),
    ("reasoning", "#ffa15a"),
)


def _split(t: Tally) -> tuple[int, int, int, int]:
    """A tally's tokens in the parts `_PARTS` names."""
    return t.prompt - t.cached, t.cached, t.completion - t.reasoning, t.reasoning


def _tally_bars(tallies: dict[str, Tally], col: int) -> list[dict[str, Any]]:
    names = sorted(tallies, key=lambda k: -(tallies[k].prompt + tallies[k].completion))
    x = [label(n) for n in names]
    bars = [
        {
            "type": "bar",
            "x": x,
            "y": [tallies[n].cost for n in names],
            "name": "cost (USD)",
            "showlegend": col == 1,
            "marker": {"color": "#636efa"},
            **_on(col),
        }
    ]
    split = {n: _split(tallies[n]) for n in names}
    for i, (name, colour) in enumerate(_PARTS):
        bars.append(
            {
                "type": "bar",
                "x": x,
                "y": [split[n][i] for n in names],
                "name": name,
                "showlegend": col == 1,
                "legendgroup": name,
                "marker": {"color": colour},
                **_on(col + 2),
            }
        )
    return bars


def _cost(agg: Aggregates) -> Figure | None:
    if not agg.by_mode:
        return None
    titles = ("cost by model", "cost by mode", "tokens by model", "tokens by mode")
    layout = _layout(560, barmode="stack", **_grid(2, 2, titles, vspace=0.16))
    return {"data": _tally_bars(agg.by_model, 1) + _tally_bars(agg.by_mode, 2), "layout": layout}


def _reasks(report: Report) -> Figure | None:
    if not report.answers:
        return None
    needed = sorted(report.answers)
    x = [f"{n} answer{'s' if n != 1 else ''}" for n in needed]
    valid = [report.answers_valid[n] for n in needed]
    rest = [report.answers[n] - v for n, v in zip(needed, valid, strict=True)]
    data = [
        {"type": "bar", "x": x, "y": valid, "name": "ended valid", "marker": {"color": "#00cc96"}},
        {"type": "bar", "x": x, "y": rest, "name": "ended invalid or failed", "marker": {"color": "#ef553b"}},
    ]
    layout = _layout(360, barmode="stack", xaxis=_axis(), yaxis=_axis(title={"text": "items"}))
    return {"data": data, "layout": layout}


def _batches(agg: Aggregates) -> Figure | None:
    timed = [b for b in agg.timeline if b.created is not None]
    if not timed:
        return None
    end = max((b.completed or b.created or 0.0) for b in timed)
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "y": [label(b.batch_id) for b in timed],
            "base": [_iso((b.created or end) * 1000) for b in timed],
            "x": [((b.completed or end) - (b.created or end)) * 1000 for b in timed],
            "text": [f"{b.items:,} items, {label(b.status or 'running')}" for b in timed],
            "marker": {"color": ["#636efa" if b.completed else "#ffa15a" for b in timed]},
            "hovertemplate": "%{y}: %{base} + %{x} ms<br>%{text}<extra></extra>",
        }
    ]
    layout = _layout(
        max(240, 40 + 28 * len(timed)), xaxis=_axis(type="date"), yaxis=_axis(autorange="reversed")
    )
    return {"data": data, "layout": layout}
