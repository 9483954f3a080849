"""Figures split apart, for the panel and the summary: the cost by model (``--escalate``,
each at its price) and by way (``--deadline``: the batches' answers at the batch price,
the live ones at the list price, against all-live and all-batch), what the prompt cache
saved, and the deadline in words."""

from __future__ import annotations

import time

from llmbatch.app.format import duration
from llmbatch.core.stats import Stats
from llmbatch.cost.prices import Price, cost

__all__ = ["by_model_usd", "deadline_text", "model_usd", "saved_usd", "ways_usd"]


def model_usd(price: Price | None, model: str, row: list[int]) -> float | None:
    """What one model's answers cost (a row of `Stats.by_model`)."""
    return cost(price.for_model(model) if price is not None else None, row[2], row[3], row[4])


def ways_usd(stats: Stats, price: Price) -> tuple[float | None, float | None, float | None]:
    """--deadline: what the run cost (the batches' answers at the batch price, the live
    ones at the list price), and what the same answers would have cost all live and all
    through batches."""
    live_price = price.live
    totals = [0, 0, 0]
    spent: float | None = 0.0
    for way, row in list(stats.by_way.items()):
        part = cost(live_price if way == "live" else price, row[2], row[3], row[4])
        spent = None if spent is None or part is None else spent + part
        for i in range(3):
            totals[i] += row[i + 2]
    return spent, cost(live_price, *totals), cost(price, *totals)


def by_model_usd(stats: Stats, price: Price) -> float | None:
    """--escalate: each model's answers at that model's price."""
    total = 0.0
    for model, row in list(stats.by_model.items()):
        spent = model_usd(price, model, row)
        if spent is None:
            return None
        total += spent
    return total


def saved_usd(stats: Stats, price: Price | None) -> float | None:
    """What the prompt cache saved: the cached prompt tokens at the cached price rather
    than the input price (each model's, with --escalate), less what its writes cost above
    the input price (Anthropic's); None when nothing was cached or the price has no
    cached rate."""
    if price is None or not stats.cached_tokens:
        return None
    rows = list(stats.by_model.items()) if stats.by_model else [(None, [0, 0, 0, 0, stats.cached_tokens])]
    saved = 0.0
    for model, row in rows:
        known = price.for_model(model) if model is not None else price
        if known is None or known.cached_input is None:
            continue
        saved += row[4] * (known.input - known.cached_input) / 1_000_000
    if stats.cache_write_tokens and price.cache_write is not None:
        # Anthropic bills writes above the input price: that premium is part of the deal.
        saved -= stats.cache_write_tokens * (price.cache_write - price.input) / 1_000_000
    return saved or None


def deadline_text(stats: Stats) -> str:
    """--deadline in words: when, what rate it assumes, whether and when it went live."""
    d = stats.deadline
    assert d is not None
    text = f"by {d['at']}"
    if d["rate_per_s"] is not None:
        text += f", live at ~{d['rate_per_s']:,.1f} items/s ({d['assumed']})"
    if d["went_live_s"] is not None:
        text += f"; went live at {_seconds(d['went_live_s'])} with {d['left_then']:,} left"
    elif stats.finished is not None:
        text += "; the batches finished in time"
    if stats.finished is not None:
        early = d["at_unix"] - time.time()
        text += f"; done {_seconds(early)} before it" if early >= 0 else f"; MISSED by {_seconds(-early)}"
    return text


def _seconds(x: float) -> str:
    return f"{x:.1f}s" if x < 60 else duration(x)
