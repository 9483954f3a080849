"""Showing a run while it goes: a rich live panel on a terminal, one plain line every few
seconds elsewhere (cron, CI, pipes), nothing when quiet, and the final summary.

The display only reads `Stats`, from its own thread (rich's refresh thread or our ticker),
a few times a second. The engine never calls in, so showing costs the hot path nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from types import TracebackType
from typing import Literal, Self, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmbatch.app.format import duration, si, usd
from llmbatch.app.split import by_model_usd, deadline_text, saved_usd, ways_usd
from llmbatch.core.stats import Stats
from llmbatch.cost.prices import Price, cost

__all__ = [
    "DEFAULT_PROGRESS_EVERY",
    "Display",
    "Mode",
    "StatsView",
    "choose_mode",
    "progress_line",
    "retries_text",
    "spent_usd",
    "total_text",
]

Mode = Literal["live", "plain", "quiet"]
DEFAULT_PROGRESS_EVERY = 10.0  # seconds between plain progress lines


def total_text(stats: Stats, *, long: bool = False) -> str:
    if stats.total is None:
        return "?"
    if stats.total_exact:
        return f"{stats.total:,}"
    return f"~{stats.total:,} (estimated from file size)" if long else f"~{stats.total:,}"


def _percent(stats: Stats) -> str:
    if not stats.total:
        return ""
    return f"{min(stats.accounted / stats.total, 1.0):.1%}"


def spent_usd(stats: Stats, price: Price | None) -> float | None:
    if price is not None and price.escalation and stats.by_model:
        return by_model_usd(stats, price)
    if price is not None and price.live is not None and stats.by_way:
        return ways_usd(stats, price)[0]
    fallback = price.fallback if price is not None else None
    prompt, completion, cached = stats.fallback_tokens
    if fallback is None or not (prompt or completion):
        return cost(
            price, stats.prompt_tokens, stats.completion_tokens, stats.cached_tokens, stats.cache_write_tokens
        )
    # A flex run's answers on the default tier (--flex-fallback) cost that tier's price.
    flex = cost(
        price,
        stats.prompt_tokens - prompt,
        stats.completion_tokens - completion,
        stats.cached_tokens - cached,
    )
    default = cost(fallback, prompt, completion, cached)
    return None if flex is None or default is None else flex + default


def _projected(stats: Stats, price: Price | None) -> float | None:
    """This run's cost when it finishes: spent so far, plus the items still to do at the
    cost per written item so far. Skipped and rejected lines cost nothing."""
    spent = spent_usd(stats, price)
    if spent is None or stats.total is None or stats.done == 0:
        return None
    return spent + spent / stats.done * max(stats.total - stats.accounted, 0)


def _saved(stats: Stats, price: Price | None) -> str:
    saved = saved_usd(stats, price)
    return usd(saved) if saved is not None else "-"


def retries_text(stats: Stats) -> str:
    # dict() copies a Counter in one step under the GIL; iterating it directly from this
    # thread could fail if the engine adds a new cause meanwhile.
    causes = dict(stats.retries)
    if not causes:
        return "0"
    detail = ", ".join(f"{cause} {n:,}" for cause, n in sorted(causes.items()))
    return f"{sum(causes.values()):,} ({detail})"


def _rate(achieved: float, limit: float | None) -> str:
    return si(achieved) + (f" of {si(limit)}" if limit else "")


def progress_line(stats: Stats, price: Price | None, pace: _RecentPace | None = None) -> str:
    """One plain progress line (no colour, no escape codes) for logs: rates over the
    last minute when `pace` keeps the history, and what holds requests back."""
    head = f"llmbatch: {stats.accounted:,}/{total_text(stats)}"
    if stats.total:
        head += f" ({_percent(stats)})"
    counts = (
        f"valid {stats.valid:,} invalid {stats.invalid:,} failed {stats.failed:,} rejected {stats.rejected:,}"
    )
    if stats.refused:
        counts += f" refused {stats.refused:,}"
    if stats.truncated:
        counts += f" truncated {stats.truncated:,}"
    if stats.skipped:
        counts += f" skipped {stats.skipped:,}"
    if stats.cached:
        counts += f" cached {stats.cached:,}"
    rpm, tpm, eta = pace.rates(stats) if pace is not None else (stats.rpm, stats.tpm, stats.eta())
    rates = f"{si(rpm)} req/min {si(tpm)} tok/min in flight {stats.in_flight:,}"
    if stats.retries or stats.http_429:
        rates += f" retries {sum(dict(stats.retries).values()):,} 429s {stats.http_429:,}"
    cost_part = usd(spent_usd(stats, price))
    if cost_part == "unknown":
        cost_part = "cost unknown"
    parts = [
        f"{head} {counts}",
        rates,
        cost_part,
        f"eta {duration(eta)} elapsed {duration(stats.elapsed)}",
    ]
    if (waiting := stats.waiting()) is not None:
        parts.append(waiting)
    if stats.batches:
        parts.append(batches_line(stats))
    return " | ".join(parts)


def batches_line(stats: Stats) -> str:
    """The batches of a Batch API run, each with its status, counts and age."""
    now = time.time()
    views = []
    for batch_id, (status, completed, failed, total, since) in list(stats.batches.items())[-6:]:
        view = f"{batch_id} {status} {completed:,}/{total:,}"
        if failed:
            view += f" ({failed:,} failed)"
        views.append(view + f", {duration(now - since)} old")
    more = len(stats.batches) - len(views)
    return "batches: " + ", ".join(views) + (f" and {more} more" if more > 0 else "")


# Rates against --rpm/--tpm are read over the last minute, the span the limits count in;
# a whole-run average lags behind a run that slowed for a 429 or sped up after one.
RATE_WINDOW = 60.0
# Below this much history the recent rates are noise: show the whole-run averages.
MIN_RATE_WINDOW = 5.0
PANEL_WIDTH = 78  # fixed so the frame does not jump as figures grow; a narrow terminal shrinks it


class _RecentPace:
    """Rates over the last `RATE_WINDOW` seconds, from a sample taken at each draw."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def rates(self, s: Stats) -> tuple[float, float, float | None]:
        """(attempts/min, tokens/min, eta seconds) at the recent pace. The ETA is the
        items left at the rate items finished lately, never faster than the limits
        allow now (a run paced at --rpm 0.5 is not done in seconds)."""
        if s.finished is not None:
            return s.rpm, s.tpm, s.eta()
        now = time.monotonic()
        samples = self._samples
        samples.append((now, s.requests, s.prompt_tokens + s.completion_tokens, s.done))
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        then, requests, tokens, done = samples[0]
        span = now - then
        limit = s.paced_rpm()
        cap = limit / 60 if limit else None
        if span < MIN_RATE_WINDOW:  # too soon for a recent rate: the run's so far
            rpm, tpm = s.rpm, s.tpm
            if limit:
                rpm = min(rpm, limit)
            items = s.done / s.elapsed if s.done else None
        else:
            rpm = (s.requests - requests) / span * 60
            tpm = (s.prompt_tokens + s.completion_tokens - tokens) / span * 60
            items = (s.done - done) / span if s.done > done else None
        if cap is not None:
            items = min(items, cap) if items else cap
        eta = None
        if s.total is not None and items:
            eta = max(s.total - s.accounted, 0) / items
        return rpm, tpm, eta


def _count(n: int, style: str) -> Text:
    """A counter, coloured when it is not zero: trouble should catch the eye."""
    return Text(f"{n:,}", style=style if n else "")


class StatsView:
    """A rich renderable that reads `stats` each time it is drawn.

    Rates and the ETA are over the last minute once there is enough history (see
    `RATE_WINDOW`); the summary keeps the whole-run averages.
    """

    def __init__(self, stats: Stats, price: Price | None) -> None:
        self.stats = stats
        self.price = price
        self._pace = _RecentPace()

    def __rich__(self) -> Panel:
        s = self.stats
        rpm, tpm, eta = self._pace.rates(s)
        head = Table.grid(padding=(0, 1), expand=True)
        head.add_column(ratio=1)
        head.add_column(justify="right", no_wrap=True)
        head.add_row(
            ProgressBar(total=s.total or None, completed=s.accounted),
            f"{s.accounted:,}/{total_text(s, long=True)}  {_percent(s) or '':>6}",
        )
        times = Text(f"elapsed {duration(s.elapsed)}   eta {duration(eta)}", style="dim")
        figures = Table.grid(padding=(0, 1), expand=True)
        figures.add_column(style="dim", no_wrap=True)
        figures.add_column(justify="right", ratio=3, no_wrap=True)
        figures.add_column(ratio=1)
        figures.add_column(style="dim", no_wrap=True)
        figures.add_column(justify="right", ratio=3, no_wrap=True)
        rpm_limit, tpm_limit = s.limits()
        rows: tuple[tuple[str, str | Text, str, str | Text], ...] = (
            ("in flight", f"{s.in_flight:,}", "valid", f"{s.valid:,}"),
            ("req/min", _rate(rpm, rpm_limit), "invalid", _count(s.invalid, "yellow")),
            ("tok/min", _rate(tpm, tpm_limit), "failed", _count(s.failed, "bold red")),
            ("attempts", f"{s.requests:,}", "rejected", _count(s.rejected, "yellow")),
            ("answers", f"{s.answers:,}", "re-asks", _count(s.reasks, "yellow")),
            ("tokens in", f"{s.prompt_tokens:,}", "429s", _count(s.http_429, "yellow")),
            ("tokens out", f"{s.completion_tokens:,}", "skipped", f"{s.skipped:,}"),
            ("cost so far", usd(spent_usd(s, self.price)), "cached", f"{s.cached:,}"),
            ("cache saved", _saved(s, self.price), "cached tokens", f"{s.cached_tokens:,}"),
            ("projected", usd(_projected(s, self.price)), "refused", _count(s.refused, "yellow")),
        )
        for a, x, b, y in rows:
            figures.add_row(a, x, "", b, y)
        retries = Text.assemble(("retries  ", "dim"), (retries_text(s), "yellow" if s.retries else ""))
        if (waiting := s.waiting()) is not None:
            retries.append("\nwaiting  ", style="dim")
            retries.append(waiting, style="yellow")
        if s.last_error:
            cause, text = list(s.last_error.items())[-1]
            retries.append("\nlast error  ", style="dim")
            retries.append(f"{cause}: {text}"[: PANEL_WIDTH - 16], style="red")
        if s.batches:
            retries.append("\n" + batches_line(s).replace(", ", "\n  "), style="dim")
        if s.deadline is not None:
            retries.append("\ndeadline  ", style="dim")
            retries.append(deadline_text(s)[: PANEL_WIDTH * 2])
        title = "llmbatch" + (f" · {s.model}" if s.model else "")
        subtitle = Text(f"stopping: {s.stop_reason}", style="yellow") if s.stopped else None
        return Panel(
            Group(head, times, Text(""), figures, retries),
            title=title,
            subtitle=subtitle,
            width=PANEL_WIDTH,
        )


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
        self._recent = _RecentPace()  # for the plain lines' rates
        self._live: Live | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()
        self._started = False
        self._stopped = False

    def set_price(self, price: Price | None) -> None:
        """The price, once it is known (it is looked up while the run starts)."""
        self.price = price
        self.view.price = price

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
            self._write(progress_line(self.stats, self.price, self._recent))

    def log(self, message: str) -> None:
        """Print a status line on stderr, above the live panel; nothing when quiet."""
        if self.mode == "live":
            self.console.print(message, markup=False, highlight=False, emoji=False)
        elif self.mode == "plain":
            self._write(message)

    def error(self, message: str) -> None:
        """Print an error line on stderr, as `log` does, and also when quiet."""
        if self.mode == "live":
            self.console.print(message, markup=False, highlight=False, emoji=False)
        else:
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
                self._write(progress_line(self.stats, self.price, self._recent))
            except (OSError, ValueError):
                return  # stderr closed or a broken pipe: progress is not worth a traceback

    def _write(self, line: str) -> None:
        with self._write_lock:
            out = self.console.file
            out.write(line + "\n")
            out.flush()


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
