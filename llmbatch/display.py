"""Showing a run while it goes: a rich live panel on a terminal, one plain line every few
seconds elsewhere (cron, CI, pipes), nothing when quiet, and the final summary.

The display only reads `Stats`, from its own thread (rich's refresh thread or our ticker),
a few times a second. The engine never calls in, so showing costs the hot path nothing.
"""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType
from typing import Any, Literal, Self, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmbatch.prices import Price, cost
from llmbatch.stats import Stats

__all__ = [
    "DEFAULT_PROGRESS_EVERY",
    "Display",
    "Mode",
    "StatsView",
    "choose_mode",
    "progress_line",
    "render_summary",
    "summary_dict",
]

Mode = Literal["live", "plain", "quiet"]
DEFAULT_PROGRESS_EVERY = 10.0  # seconds between plain progress lines


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _usd(x: float | None) -> str:
    if x is None:
        return "unknown"
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def _total(stats: Stats, *, long: bool = False) -> str:
    if stats.total is None:
        return "?"
    if stats.total_exact:
        return f"{stats.total:,}"
    return f"~{stats.total:,} (estimated from file size)" if long else f"~{stats.total:,}"


def _percent(stats: Stats) -> str:
    if not stats.total:
        return ""
    return f"{min(stats.accounted / stats.total, 1.0):.1%}"


def _spent(stats: Stats, price: Price | None) -> float | None:
    return cost(price, stats.prompt_tokens, stats.completion_tokens)


def _projected(stats: Stats, price: Price | None) -> float | None:
    """This run's cost when it finishes: spent so far, plus the items still to do at the
    cost per written item so far. Skipped and rejected lines cost nothing."""
    spent = _spent(stats, price)
    if spent is None or stats.total is None or stats.done == 0:
        return None
    return spent + spent / stats.done * max(stats.total - stats.accounted, 0)


def _retries(stats: Stats) -> str:
    # dict() copies a Counter in one step under the GIL; iterating it directly from this
    # thread could fail if the engine adds a new cause meanwhile.
    causes = dict(stats.retries)
    if not causes:
        return "0"
    detail = ", ".join(f"{cause} {n:,}" for cause, n in sorted(causes.items()))
    return f"{sum(causes.values()):,} ({detail})"


def _rate(achieved: float, limit: float | None) -> str:
    return f"{_si(achieved)}/min" + (f" of {_si(limit)}" if limit else "")


def progress_line(stats: Stats, price: Price | None) -> str:
    """One plain progress line (no colour, no escape codes) for logs."""
    head = f"llmbatch: {stats.accounted:,}/{_total(stats)}"
    if stats.total:
        head += f" ({_percent(stats)})"
    counts = (
        f"valid {stats.valid:,} invalid {stats.invalid:,} failed {stats.failed:,} rejected {stats.rejected:,}"
    )
    if stats.skipped:
        counts += f" skipped {stats.skipped:,}"
    rates = f"{_si(stats.rpm)} req/min {_si(stats.tpm)} tok/min"
    if stats.retries or stats.http_429:
        rates += f" retries {sum(dict(stats.retries).values()):,} 429s {stats.http_429:,}"
    cost_part = _usd(_spent(stats, price))
    if cost_part == "unknown":
        cost_part = "cost unknown"
    return " | ".join(
        (
            f"{head} {counts}",
            rates,
            cost_part,
            f"eta {_duration(stats.eta())} elapsed {_duration(stats.elapsed)}",
        )
    )


class StatsView:
    """A rich renderable that reads `stats` each time it is drawn."""

    def __init__(self, stats: Stats, price: Price | None) -> None:
        self.stats = stats
        self.price = price

    def __rich__(self) -> Panel:
        s = self.stats
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=s.total or None, completed=s.accounted, width=30),
            f"{s.accounted:,}/{_total(s, long=True)}",
            _percent(s),
            f"eta {_duration(s.eta())}",
            f"elapsed {_duration(s.elapsed)}",
        )
        figures = Table.grid(padding=(0, 2))
        figures.add_column()
        figures.add_column(justify="right")
        figures.add_column()
        figures.add_column(justify="right")
        rows = (
            ("in flight", f"{s.in_flight:,}", "requests sent", f"{s.requests:,}"),
            ("requests", _rate(s.rpm, s.rpm_limit), "tokens", _rate(s.tpm, s.tpm_limit)),
            ("prompt tokens", f"{s.prompt_tokens:,}", "completion tokens", f"{s.completion_tokens:,}"),
            ("cost so far", _usd(_spent(s, self.price)), "projected", _usd(_projected(s, self.price))),
            ("valid", f"{s.valid:,}", "invalid", f"{s.invalid:,}"),
            ("failed", f"{s.failed:,}", "rejected", f"{s.rejected:,}"),
            ("skipped (resume)", f"{s.skipped:,}", "re-asks", f"{s.reasks:,}"),
            ("429s", f"{s.http_429:,}", "retries", _retries(s)),
        )
        for a, x, b, y in rows:
            figures.add_row(Text(a, style="dim"), x, Text(b, style="dim"), y)
        return Panel(Group(head, figures), title="llmbatch", subtitle=s.model, expand=False)


class Display:
    """Shows a run's progress in one of three modes; see `choose_mode`.

    live: a rich panel redrawn 4 times a second on stderr. plain: one `progress_line`
    every `progress_every` seconds from a daemon thread. quiet: nothing. `stop()` draws
    the last frame (live) or line (plain). Use as a context manager or call start/stop.
    """

    def __init__(
        self,
        stats: Stats,
        *,
        mode: Mode,
        price: Price | None,
        progress_every: float = DEFAULT_PROGRESS_EVERY,
        console: Console | None = None,
    ) -> None:
        self.stats = stats
        self.mode: Mode = mode
        self.price = price
        self.progress_every = progress_every
        if console is None:
            console = (
                Console(stderr=True)
                if mode == "live"
                else Console(stderr=True, no_color=True, highlight=False, force_terminal=False)
            )
        self.console = console
        self.view = StatsView(stats, price)
        self._live: Live | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()
        self._started = False
        self._stopped = False

    def start(self) -> None:
        """Begin showing progress (does nothing if already started)."""
        if self._started:
            return
        self._started = True
        if self.mode == "live":
            # stdout stays ours to leave alone (pipes); stray stderr writes go above the panel.
            self._live = Live(
                self.view,
                console=self.console,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
            )
            self._live.start(refresh=True)
        elif self.mode == "plain":
            self._ticker = threading.Thread(target=self._tick, name="llmbatch-progress", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        """Stop and show the final state once; later calls do nothing."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._live is not None:
            self._live.stop()
        if self._ticker is not None:
            self._stopping.set()
            self._ticker.join()
            self._write(progress_line(self.stats, self.price))

    def log(self, message: str) -> None:
        """Print a status line on stderr, above the live panel; when quiet, errors only."""
        if self.mode == "live":
            self.console.print(message, markup=False, highlight=False, emoji=False)
        elif self.mode == "plain" or message.lower().startswith("error"):
            self._write(message)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        while not self._stopping.wait(self.progress_every):
            try:
                self._write(progress_line(self.stats, self.price))
            except (OSError, ValueError):
                return  # stderr closed or a broken pipe: progress is not worth a traceback

    def _write(self, line: str) -> None:
        with self._write_lock:
            out = self.console.file
            out.write(line + "\n")
            out.flush()


def _summary_rows(stats: Stats, price: Price | None) -> list[tuple[str, str]]:
    spent = _spent(stats, price)
    rows = [
        ("items total", "unknown" if stats.total is None else _total(stats, long=True)),
        (
            "written",
            f"{stats.done:,} (valid {stats.valid:,} / invalid {stats.invalid:,} / failed {stats.failed:,})",
        ),
        ("rejected", f"{stats.rejected:,}"),
        ("skipped (already done)", f"{stats.skipped:,}"),
        ("requests", f"{stats.requests:,}"),
        ("re-asks", f"{stats.reasks:,}"),
        ("retries", _retries(stats)),
        ("429s", f"{stats.http_429:,}"),
        ("prompt tokens", f"{stats.prompt_tokens:,}"),
        ("completion tokens", f"{stats.completion_tokens:,}"),
        ("cost", _usd(spent) if spent is not None else f"unknown (no price for {stats.model or 'model'})"),
        ("elapsed", _duration(stats.elapsed)),
        ("requests/min", f"{stats.rpm:,.1f}"),
        ("tokens/min", f"{stats.tpm:,.1f}"),
    ]
    if stats.stopped:
        rows.append(("stopped", stats.stop_reason or "yes"))
    return rows


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
    summary["cost_usd"] = _spent(stats, price)
    summary["price"] = (
        None if price is None else {"input_per_mtok": price.input, "output_per_mtok": price.output}
    )
    return summary


def choose_mode(*, no_live: bool, quiet: bool, stream: TextIO | None = None) -> Mode:
    """quiet if asked; plain without a terminal (`stream`, default stderr) or when asked
    (--no-live) or when TERM=dumb; live otherwise."""
    if quiet:
        return "quiet"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if no_live or not (isatty and isatty()) or os.environ.get("TERM") == "dumb":
        return "plain"
    return "live"
