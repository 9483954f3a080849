"""The end of a run: the summary on stderr (a table on a terminal, `key: value` lines
elsewhere) and as JSON for scripts."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmbatch.app.display import retries_text, spent_usd, total_text
from llmbatch.app.format import duration, usd
from llmbatch.app.split import deadline_text, model_usd, saved_usd, ways_usd
from llmbatch.core.stats import Stats
from llmbatch.cost.prices import Price

__all__ = ["render_summary", "summary_dict"]


def _summary_rows(stats: Stats, price: Price | None) -> list[tuple[str, str]]:
    spent = spent_usd(stats, price)
    rows = [
        ("items total", "unknown" if stats.total is None else total_text(stats, long=True)),
        (
            "written",
            f"{stats.done:,} (valid {stats.valid:,} / invalid {stats.invalid:,} / failed {stats.failed:,})",
        ),
        ("rejected", f"{stats.rejected:,}"),
        ("skipped (already done)", f"{stats.skipped:,}"),
        ("cached (no request)", f"{stats.cached:,}"),
        ("attempts", f"{stats.requests:,} (answers {stats.answers:,})"),
        ("re-asks", f"{stats.reasks:,}"),
        ("retries", retries_text(stats)),
        ("429s", f"{stats.http_429:,}"),
        ("prompt tokens", _tokens(stats.prompt_tokens, stats.cached_tokens, "cached")),
        ("completion tokens", _tokens(stats.completion_tokens, stats.reasoning_tokens, "reasoning")),
        ("cost", usd(spent) if spent is not None else f"unknown (no price for {stats.model or 'model'})"),
        ("price", _price(price)),
        ("elapsed", f"{stats.elapsed:.1f}s" if stats.elapsed < 60 else duration(stats.elapsed)),
        ("requests/min", f"{stats.rpm:,.0f}"),
        ("tokens/min", f"{stats.tpm:,.0f}"),
    ]
    if stats.capacity_429:  # flex's "resource unavailable": retried, the pace kept
        fallbacks = f", {stats.fallbacks:,} items sent on the default tier" if stats.fallbacks else ""
        rows.insert(
            rows.index(("429s", f"{stats.http_429:,}")) + 1,
            ("capacity 429s", f"{stats.capacity_429:,}{fallbacks}"),
        )
    if stats.redone:
        rows.insert(4, ("redone", _by_reason(stats.redone)))
    kept = {k: v for k, v in stats.kept.items() if v}
    if kept:
        rows.insert(4, ("kept (not redone)", _by_reason(kept)))
    if stats.blank:
        rows.insert(3, ("blank lines", f"{stats.blank:,}"))
    if stats.not_valid:
        more = stats.invalid + stats.failed - len(stats.not_valid)
        named = ", ".join(stats.not_valid) + (f" and {more:,} more" if more > 0 else "")
        rows.insert(2, ("not valid", named))
    if stats.refused or stats.truncated:
        rows.insert(2, ("refused / truncated", f"{stats.refused:,} / {stats.truncated:,}"))
    saved = saved_usd(stats, price)
    if saved is not None:
        at = [key for key, _ in rows].index("cost") + 1
        share = stats.cached_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0
        rows.insert(at, ("prompt cache", f"saved {usd(saved)} ({share:.1%} of prompt tokens cached)"))
    if stats.deadline is not None:
        at = [key for key, _ in rows].index("cost")
        rows[at:at] = [("deadline", deadline_text(stats)), ("by way", _by_way(stats, price))]
    if stats.by_model:  # --escalate
        at = rows.index(("re-asks", f"{stats.reasks:,}")) + 1
        rows[at:at] = [("escalated", f"{stats.escalated:,}"), ("by model", _by_model(stats, price))]
    if stats.stopped:
        rows.append(("stopped", stats.stop_reason or "yes"))
    return rows


def _by_way(stats: Stats, price: Price | None) -> str:
    """--deadline: the items each way went, and the cost against all-live and all-batch."""
    ways = stats.by_way
    counts = ", ".join(f"{way} {ways[way][0]:,} items" for way in ("batch", "live") if way in ways) or "none"
    if price is None or price.live is None:
        return counts
    spent, live, batch = ways_usd(stats, price)
    return f"{counts}; cost {usd(spent)} (all live {usd(live)}, all batch {usd(batch)})"


def _by_model(stats: Stats, price: Price | None) -> str:
    """Per model: the items it answered, its answers and what they cost."""
    parts = []
    for model, row in stats.by_model.items():
        spent = model_usd(price, model, row)
        costs = usd(spent) if spent is not None else "cost unknown"
        parts.append(f"{model} {row[0]:,} items ({row[1]:,} answers, {costs})")
    return "; ".join(parts)


def _tokens(n: int, part: int, what: str) -> str:
    return f"{n:,} ({part:,} {what})" if part else f"{n:,}"


def _price(price: Price | None) -> str:
    if price is None:
        return "unknown: give --price-in/--price-out, or [prices.MODEL] in the config file"
    text = f"${price.input:g} in / ${price.output:g} out per million tokens"
    if price.cached_input is not None:
        text += f" (${price.cached_input:g} cached in)"
    return text + (f", from {price.source}" if price.source else "")


def _by_reason(counts: dict[str, int]) -> str:
    detail = ", ".join(f"{why} {n:,}" for why, n in sorted(counts.items()))
    return f"{sum(counts.values()):,} ({detail})"


def render_summary(stats: Stats, price: Price | None, *, console: Console, rich_table: bool) -> None:
    """Print the end-of-run summary: a table on a terminal, `key: value` lines otherwise."""
    rows = _summary_rows(stats, price)
    if not rich_table:
        for key, value in rows:
            console.out(f"{key}: {value}", highlight=False)
        return
    table = Table(title="llmbatch summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value, style="red" if key == "stopped" else ""))
    console.print(table)


def summary_dict(stats: Stats, price: Price | None) -> dict[str, Any]:
    """`stats.as_dict()` plus `cost_usd` (None when unknown) and the price used."""
    summary = stats.as_dict()
    summary["cost_usd"] = spent_usd(stats, price)
    summary["cache_saved_usd"] = saved_usd(stats, price)
    if stats.deadline is not None:
        spent, live, batch = ways_usd(stats, price) if price is not None and price.live else (None,) * 3
        summary["deadline"] = dict(stats.deadline)
        summary["ways"] = {
            way: {"items": row[0], "answers": row[1], "prompt_tokens": row[2], "completion_tokens": row[3]}
            for way, row in stats.by_way.items()
        }
        summary["cost_all_live_usd"], summary["cost_all_batch_usd"] = live, batch
        summary["deadline"]["cost_usd"] = spent
    if stats.by_model:
        summary["models"] = {
            model: {
                "items": row[0],
                "answers": row[1],
                "prompt_tokens": row[2],
                "completion_tokens": row[3],
                "cached_tokens": row[4],
                "cost_usd": model_usd(price, model, row),
            }
            for model, row in stats.by_model.items()
        }
    summary["price"] = None
    if price is not None:
        summary["price"] = {
            "input_per_mtok": price.input,
            "output_per_mtok": price.output,
            "cached_input_per_mtok": price.cached_input,
            "source": price.source,
        }
    return summary
