"""The live panel, plain progress lines, and the final summary."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console

from llmbatch.app.display import Display, StatsView, choose_mode, progress_line
from llmbatch.app.summary import render_summary, summary_dict
from llmbatch.core.errors import Stop
from llmbatch.core.stats import Stats
from llmbatch.cost.prices import Price

PRICE = Price(input=2.0, output=8.0)


def make_stats() -> Stats:
    stats = Stats()
    stats.total = 10_000
    stats.done = 1_204
    stats.valid = 1_200
    stats.invalid = 3
    stats.failed = 1
    stats.rejected = 30
    stats.requests = 1_300
    stats.reasks = 7
    stats.retries.update({"rate_limited": 5, "timeout": 2})
    stats.http_429 = 5
    stats.prompt_tokens = 150_000
    stats.completion_tokens = 40_000
    stats.model = "gpt-4.1"
    return stats


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100), out


def test_plain_line_has_the_figures_and_no_escape_codes() -> None:
    """A plain progress line shows done/total, outcomes, rates, cost and eta, uncoloured."""
    line = progress_line(make_stats(), PRICE)
    assert line.startswith("llmbatch: 1,234/10,000 (12.3%)")
    for figure in ("valid 1,200", "invalid 3", "failed 1", "rejected 30", "req/min", "tok/min", "$0.62"):
        assert figure in line
    assert "eta " in line
    assert "\x1b" not in line


def test_plain_line_says_cost_unknown_without_a_price() -> None:
    """Without a price the cost is 'unknown', never $0."""
    line = progress_line(make_stats(), None)
    assert "cost unknown" in line
    assert "$" not in line


def test_plain_display_prints_periodic_lines_without_escape_codes() -> None:
    """Plain mode prints progress lines on its own timer, and a final line at stop."""
    stats = make_stats()
    out = io.StringIO()
    display = Display(stats, mode="plain", price=PRICE, progress_every=0.05, console=Console(file=out))
    with display:
        time.sleep(0.2)
        stats.done += 100
        stats.valid += 100
    display.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert lines[-1].startswith("llmbatch: 1,334/10,000")
    assert "\x1b" not in out.getvalue()


def test_quiet_display_prints_only_errors() -> None:
    """Quiet mode shows no progress and no status lines, but still shows errors."""
    out = io.StringIO()
    with Display(
        make_stats(), mode="quiet", price=PRICE, progress_every=0.01, console=Console(file=out)
    ) as d:
        time.sleep(0.05)
        d.log("resuming: 1,000 done")
        d.error("error: quota exceeded")
    assert out.getvalue() == "error: quota exceeded\n"


def test_live_view_changes_between_refreshes() -> None:
    """The live panel reads the counters each time it is drawn."""
    stats = make_stats()
    console, out = terminal()
    view = StatsView(stats, PRICE)
    console.print(view)
    first = out.getvalue()
    assert "llmbatch" in first and "1,234/10,000" in first and "12.3%" in first
    stats.done += 766
    stats.valid += 766
    stats.in_flight = 42
    out.truncate(0)
    out.seek(0)
    console.print(view)
    second = out.getvalue()
    assert "2,000/10,000" in second and "20.0%" in second and "42" in second
    assert "1,234/10,000" not in second


def test_live_view_shows_limits_retries_cost_and_projection() -> None:
    """The panel shows rates against limits, retries by cause, cost so far and projected."""
    stats = make_stats()
    stats.rpm_limit = 10_000
    stats.tpm_limit = 2_000_000
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(StatsView(stats, PRICE))
    text = console.export_text()
    assert "of 10.0k" in text and "of 2.0M" in text
    assert "7 (rate_limited 5, timeout 2)" in text
    assert "$0.62" in text
    # 0.62 spent on 1,204 written items; 8,766 items left at the same cost each.
    assert "$5.13" in text


def test_live_view_marks_an_estimated_total_and_unknown_cost() -> None:
    """An estimated total says so, and an unpriced model shows cost as unknown."""
    stats = make_stats()
    stats.total_exact = False
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(StatsView(stats, None))
    text = console.export_text()
    assert "~10,000 (estimated from file size)" in text
    assert "unknown" in text and "$" not in text


def test_live_display_draws_final_frame_and_logs_above() -> None:
    """Live mode draws the panel, shows log lines, and stop() draws the latest counters."""
    stats = make_stats()
    console, out = terminal()
    display = Display(stats, mode="live", price=PRICE, console=console)
    display.start()
    display.log("resuming: 120 already done")
    stats.done = 9_970
    stats.valid = 9_966
    display.stop()
    display.stop()
    text = out.getvalue()
    assert "resuming: 120 already done" in text
    assert "10,000/10,000" in text and "100.0%" in text


def test_summary_plain_lines() -> None:
    """Without a terminal the summary is uncoloured key: value lines, stop reason included."""
    stats = make_stats()
    stats.stop = Stop("interrupted")
    out = io.StringIO()
    render_summary(stats, PRICE, console=Console(file=out), rich_table=False)
    text = out.getvalue()
    assert "written: 1,204 (valid 1,200 / invalid 3 / failed 1)\n" in text
    assert "retries: 7 (rate_limited 5, timeout 2)\n" in text
    assert "cost: $0.62\n" in text
    assert "stopped: interrupted\n" in text
    assert "\x1b" not in text


def test_summary_table_on_a_terminal() -> None:
    """On a terminal the summary is a table with the same figures; no price shows unknown."""
    console = Console(width=100, record=True, file=io.StringIO(), force_terminal=True)
    render_summary(make_stats(), None, console=console, rich_table=True)
    text = console.export_text()
    assert "llmbatch summary" in text
    assert "429s" in text and "1,300" in text
    assert "unknown (no price for gpt-4.1)" in text
    assert "stopped" not in text


def test_summary_dict_cost_is_tokens_times_price() -> None:
    """The JSON summary's cost equals tokens times price, and it serialises."""
    summary = summary_dict(make_stats(), PRICE)
    assert summary["cost_usd"] == pytest.approx((150_000 * 2.0 + 40_000 * 8.0) / 1e6)
    assert summary["price"] == {
        "input_per_mtok": 2.0,
        "output_per_mtok": 8.0,
        "cached_input_per_mtok": None,
        "source": "",
    }
    assert summary["valid"] == 1_200
    json.dumps(summary)


def test_summary_dict_unknown_cost_is_null() -> None:
    """Without a price the JSON summary's cost is null, not 0."""
    summary = summary_dict(make_stats(), None)
    assert summary["cost_usd"] is None and summary["price"] is None


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_choose_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live only on a capable terminal; plain for pipes, --no-live and TERM=dumb; quiet wins."""
    monkeypatch.setenv("TERM", "xterm-256color")
    assert choose_mode(no_live=False, quiet=False, stream=FakeStream(True)) == "live"
    assert choose_mode(no_live=False, quiet=False, stream=FakeStream(False)) == "plain"
    assert choose_mode(no_live=True, quiet=False, stream=FakeStream(True)) == "plain"
    assert choose_mode(no_live=True, quiet=True, stream=FakeStream(True)) == "quiet"
    monkeypatch.setenv("TERM", "dumb")
    assert choose_mode(no_live=False, quiet=False, stream=FakeStream(True)) == "plain"


def test_live_rates_follow_the_last_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a minute has passed, the panel's req/min is the recent pace, not the run's average."""
    now = [1_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    stats = Stats()
    stats.total = 10_000
    view = StatsView(stats, PRICE)
    console = Console(width=100, record=True, file=io.StringIO())
    for _ in range(20):  # ten minutes at 600 requests a minute, drawn every 30 s
        now[0] += 30
        stats.requests += 300
        stats.done += 300
        console.print(view)
    for _ in range(4):  # then two minutes at 60 a minute
        now[0] += 30
        stats.requests += 30
        stats.done += 30
        console.print(view)
    console.export_text()
    console.print(view)
    text = console.export_text()
    assert re.search(r"req/min\s+60\b", text), text  # the whole-run average would say 510
    # 3,880 items left at 60 a minute.
    assert "eta 1h04m" in text


def test_live_panel_keeps_its_width_and_says_when_stopping() -> None:
    """The frame does not jump as figures grow, and a stopping run says why."""
    stats = make_stats()
    view = StatsView(stats, PRICE)
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(view)
    small = console.export_text().splitlines()
    stats.done = stats.valid = 9_999_999
    stats.prompt_tokens = 123_456_789_012
    stats.stop = Stop("SIGINT received")
    console.print(view)
    big = console.export_text().splitlines()
    assert {len(line) for line in small} == {len(line) for line in big}
    assert "stopping: SIGINT received" in big[-1]


def test_refusals_and_truncations_are_counted_on_the_panel_lines_and_summary() -> None:
    """Two of the invalid items refused, five answers cut: the panel shows refused 2,
    the plain line refused 2 and truncated 5, the summary both (text and JSON); a run
    with neither keeps its plain line and summary as they were."""
    plain = make_stats()
    assert "refused" not in progress_line(plain, PRICE) and "truncated" not in progress_line(plain, PRICE)
    stats = make_stats()
    stats.refused, stats.truncated = 2, 5
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(StatsView(stats, PRICE))
    assert re.search(r"refused\s+2\b", console.export_text())
    line = progress_line(stats, PRICE)
    assert "invalid 3" in line and "refused 2" in line and "truncated 5" in line
    out = io.StringIO()
    render_summary(stats, PRICE, console=Console(file=out, width=200), rich_table=False)
    assert "refused / truncated: 2 / 5" in out.getvalue()
    assert (summary_dict(stats, PRICE)["refused"], summary_dict(stats, PRICE)["truncated"]) == (2, 5)
    out = io.StringIO()
    render_summary(plain, PRICE, console=Console(file=out, width=200), rich_table=False)
    assert "refused" not in out.getvalue()
