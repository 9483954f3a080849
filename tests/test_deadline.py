"""`--deadline` with `--batch-api` through the CLI against the loopback server's Batch API:
the run goes live in time (running batches cancelled, what they finished collected, the
rest sent live, nothing paid twice), says what live rate it assumes (the flags, the
limits the first live answers announce, else their latency), prices each way apart
against all-live and all-batch, and refuses a deadline it cannot keep before sending
anything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, write_jsonl

from llmbatch.core.errors import ConfigError
from llmbatch.cost.prices import cost, price_for
from llmbatch.modes.deadline import parse_deadline

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

MODEL = "gpt-4o-mini"


def run(
    run_cli: Callable[..., Any], server: Any, tmp_path: Path, n: int, *extra: object
) -> tuple[Any, Path, dict[str, Any]]:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"item {i}"} for i in range(n)])
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "-m", MODEL, "--prompt", "Say {text}",
        "--id-field", "id", "--batch-api", "--poll-every", "0.1", "--no-live", "--summary-json", summary,
        *extra,
    )  # fmt: skip
    return result, out, orjson.loads(summary.read_bytes()) if summary.exists() else {}


def test_parse_deadline_reads_durations_and_iso_times():
    """6h and 1h30m are from now, an ISO time with an offset is that moment, a bare
    time is today's; a passed one, or nonsense, is a ConfigError naming it."""
    now = 1_000_000.0
    assert parse_deadline("6h", now) == now + 6 * 3600
    assert parse_deadline("1h30m", now) == now + 5400
    assert parse_deadline("90s", now) == now + 90
    assert (
        parse_deadline("2030-01-01T07:00:00+00:00", now)
        == dt.datetime(2030, 1, 1, 7, tzinfo=dt.UTC).timestamp()
    )
    later = dt.datetime.now().replace(microsecond=0) + dt.timedelta(minutes=5)
    if later.date() == dt.date.today():
        assert parse_deadline(later.strftime("%H:%M:%S")) == pytest.approx(later.astimezone().timestamp())
    with pytest.raises(ConfigError, match="already passed"):
        parse_deadline("2001-01-01T07:00", now + 1e9)
    with pytest.raises(ConfigError, match="ISO time"):
        parse_deadline("tomorrow-ish", now)


def test_a_deadline_it_cannot_keep_is_exit_2_before_anything_is_sent(run_cli, fake_server, tmp_path):
    """A passed deadline, --deadline with --no-wait, and --deadline without --batch-api
    are exit 2 with the reason, and nothing reaches the server."""
    server = fake_server()
    result, _, _ = run(run_cli, server, tmp_path, 3, "--deadline", "2001-01-01T07:00")
    assert result.exit_code == 2 and "already passed" in result.output
    result, _, _ = run(run_cli, server, tmp_path, 3, "--deadline", "1h", "--no-wait")
    assert result.exit_code == 2 and "--no-wait" in result.output
    src = write_jsonl(tmp_path / "live.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    result = run_cli(
        "run", src, "-o", tmp_path / "o.jsonl", "--base-url", server.base_url, "-m", MODEL, "--deadline", "1h"
    )
    assert result.exit_code == 2 and "--batch-api" in result.output
    assert server.stats.by_way == {}


def test_the_rest_goes_live_in_time_and_nothing_is_paid_twice(run_cli, fake_server, tmp_path):
    """300 items in 3 batches that answer 15 lines a second each and would end only after
    60 s, a deadline in 6 s, --rpm 6000: the run goes live, every item is written once and
    valid, the server answered each custom_id once (the batch answers and the live ones
    add up to the items), both ways did a good share, and the summary's cost is each
    way's tokens at its price, against all-live and all-batch."""
    server = fake_server(batch_lines_per_second=15, batch_min_seconds=60)
    result, out, summary = run(
        run_cli, server, tmp_path, 300, "--batch-requests", "100", "--rpm", "6000", "--deadline", "6s"
    )
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert len(records) == 300 and all(r["llmbatch"]["valid"] for r in records.values())
    # the server counts a batch line's answers by custom_id, live ones of its body too:
    # every line a batch ran was answered once, and none of them again live
    answers = server.stats.answers
    ways = server.stats.by_way
    assert set(answers.values()) == {1} and len(answers) == ways["batch"]
    assert ways["batch"] + ways["live"] == 300
    assert ways["batch"] >= 60 and ways["live"] >= 30, ways
    written = {way: [r for r in records.values() if r["llmbatch"]["via"] == way] for way in ("batch", "live")}
    assert {w: len(rs) for w, rs in written.items()} == ways
    assert summary["ways"]["batch"]["items"] == ways["batch"]
    assert summary["deadline"]["went_live_s"] is not None
    assert "6,000 requests/min (--rpm/--tpm)" in summary["deadline"]["assumed"]
    assert "cancelling the running batches" in result.output
    assert "MISSED" not in result.output and "before it" in result.output

    def tokens(rows: list[dict[str, Any]]) -> tuple[int, int]:
        usage = [r["llmbatch"]["usage"] for r in rows]
        return sum(u["prompt_tokens"] for u in usage), sum(u["completion_tokens"] for u in usage)

    batch_price, live_price = price_for(MODEL, batch=True), price_for(MODEL)
    spent = cost(batch_price, *tokens(written["batch"])) + cost(live_price, *tokens(written["live"]))  # type: ignore[operator]
    everything = tokens(list(records.values()))
    assert summary["cost_usd"] == pytest.approx(spent)
    assert summary["cost_all_live_usd"] == pytest.approx(cost(live_price, *everything))
    assert summary["cost_all_batch_usd"] == pytest.approx(cost(batch_price, *everything))
    assert summary["cost_all_batch_usd"] < summary["cost_usd"] < summary["cost_all_live_usd"]
    assert "by way: batch" in result.output and "all live $" in result.output


def test_without_limits_given_three_live_requests_tell_the_rate(run_cli, fake_server, tmp_path):
    """No --rpm/--tpm: three items go live first and the limits their headers announce
    set the rate (said in a line); the batches end in time, so the rest goes by batch."""
    server = fake_server(rpm=30_000)
    result, out, summary = run(run_cli, server, tmp_path, 20, "--deadline", "1h")
    assert result.exit_code == 0, result.output
    assert "30,000 requests/min (announced by the server to 3 live requests)" in result.output
    assert server.stats.by_way == {"live": 3, "batch": 17}
    assert summary["deadline"]["went_live_s"] is None
    assert "the batches finished in time" in result.output
    assert len(by_id(out)) == 20


def test_without_any_limit_the_probes_latency_tells_the_rate(run_cli, fake_server, tmp_path):
    """A server that announces no limits: the rate is the concurrency over the probes'
    latency, and the run says it measured it."""
    server = fake_server(limit_headers=False, latency_ms=20)
    result, _, _ = run(run_cli, server, tmp_path, 5, "--deadline", "1h", "-c", "8")
    assert result.exit_code == 0, result.output
    assert "no limits announced: 8 in flight at" in result.output


def test_the_panel_shows_the_deadline_and_the_cache_saving():
    """The live panel names the deadline, the rate it assumes and when it went live, and
    what the prompt cache saved."""
    from rich.console import Console

    from llmbatch.app.display import StatsView
    from llmbatch.core.stats import Stats
    from llmbatch.cost.prices import Price

    stats = Stats()
    stats.prompt_tokens, stats.cached_tokens = 10_000, 8_000
    stats.deadline = {
        "at": "2030-01-01 07:00:00 UTC", "at_unix": 1.9e9, "margin": 0.2, "rate_per_s": 83.3,
        "assumed": "5,000 requests/min (--rpm/--tpm)", "went_live_s": 54.5, "left_then": 2_100,
    }  # fmt: skip
    console = Console(record=True, width=100)
    console.print(StatsView(stats, Price(1.0, 4.0, cached_input=0.5)))
    text = console.export_text()
    assert "went live at 54.5s with 2,100 left" in text
    assert "cache saved" in text and "$0.0040" in text


def test_chunks_not_yet_submitted_go_live_without_a_batch(run_cli, fake_server, tmp_path):
    """With --batch-max-tokens room for one batch at a time, the chunks still waiting when
    the run goes live are sent live without ever being made into batches."""
    server = fake_server(batch_lines_per_second=15, batch_min_seconds=60)
    result, out, _ = run(
        run_cli, server, tmp_path, 300, "--batch-requests", "100", "--batch-max-tokens", "1000",
        "--rpm", "6000", "--deadline", "5s",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "200 items not yet submitted go live" in result.output
    assert server.stats.creates == 1
    ways = server.stats.by_way
    assert ways["batch"] + ways["live"] == 300 and ways["live"] >= 200
    assert len(by_id(out)) == 300
