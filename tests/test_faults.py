"""Faults over real loopback HTTP, through the CLI: rate limits, server errors, hangs,
dropped connections, refused requests, exhausted retries. Whatever happens, every item
ends up written exactly once: answered, or with the error that stopped it.

Backoff is zero here (`no_backoff`); delays the server asks for are still honoured."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_jsonl, write_jsonl

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")


def item(cid: str, script: dict[str, Any] | None = None) -> dict[str, Any]:
    """A bare request body; `script` is the fake model's @fake directive for it."""
    text = f"Say hello to {cid}."
    if script is not None:
        text += "\n@fake " + orjson.dumps(script).decode()
    return {"id": cid, "messages": [{"role": "user", "content": text}]}


def run(
    run_cli: Callable[..., Any], server: Any, tmp_path: Path, items: list[dict[str, Any]], *flags: object
) -> tuple[Any, dict[str, dict[str, Any]], dict[str, Any]]:
    """`llmbatch run` on `items` against `server`: (result, output rows by id, summary).
    Asserts the promise every test here shares: each item written exactly once."""
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out, "--provider", "openai", "--base-url", server.base_url,
        "--model", "m", "--quiet", "--summary-json", summary, *flags,
    )  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    rows = read_jsonl(out)
    written = Counter(r["custom_id"] for r in rows)
    assert written == Counter(i["id"] for i in items), "every item written exactly once"
    return result, {r["custom_id"]: r for r in rows}, orjson.loads(summary.read_bytes())


def answered(row: dict[str, Any]) -> bool:
    return row["error"] is None and row["llmbatch"]["valid"] is True


def attempts_for(server: Any, cid: str) -> int:
    """How many requests the server received for item `cid`."""
    first_line = f"Say hello to {cid}."
    return sum(1 for body in server.bodies if body["messages"][0]["content"].split("\n", 1)[0] == first_line)


# --- rate limits -----------------------------------------------------------------------


def test_client_rpm_equal_to_the_servers_limit_gets_few_429s(run_cli, fake_server, tmp_path):
    """Server limit 3,000/min, --rpm 3000: 200 items in about 3 s (one second's burst,
    then 50/s) with hardly any 429, and each 429 retried to an answer."""
    server = fake_server(rpm=3000, latency_ms=5)
    items = [item(f"r{i:03d}") for i in range(200)]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--rpm", "3000")
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    assert server.stats.rate_limited <= 10
    assert summary["http_429"] == server.stats.rate_limited
    assert 2.5 < summary["elapsed_s"] < 10


def test_no_rpm_learns_the_servers_limit_and_finishes(run_cli, fake_server, tmp_path):
    """No --rpm against a 3,000/min server: the first burst meets 429s, then the run
    paces itself at the announced limit; every item is answered."""
    server = fake_server(rpm=3000, latency_ms=5)
    items = [item(f"r{i:03d}") for i in range(200)]
    result, rows, summary = run(run_cli, server, tmp_path, items, "-c", "32")
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    assert server.stats.rate_limited <= 40  # the unpaced first burst, not a storm
    assert summary["retries"].get("rate_limited", 0) == server.stats.rate_limited


def test_a_server_that_announces_no_limit_is_found_by_its_429s(run_cli, fake_server, tmp_path):
    """No --rpm, and a 3,000/min server that sends no x-ratelimit headers: the 429s of
    the first burst slow the run to about the limit; every item is answered."""
    server = fake_server(rpm=3000, latency_ms=5, limit_headers=False)
    items = [item(f"r{i:03d}") for i in range(300)]
    result, rows, summary = run(run_cli, server, tmp_path, items, "-c", "32")
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    # The first burst and the cut that finds the pace: a few dozen (up to ~70 seen on a
    # loaded machine), not a storm of hundreds.
    assert server.stats.rate_limited <= 90
    assert summary["elapsed_s"] < 300 / 50 * 2  # at least half the server's limit


def test_scripted_429s_are_retried_and_counted(run_cli, fake_server, tmp_path):
    """Items whose first attempt gets a 429 succeed on the retry; their output line says
    one retry; the summary counts the 429s and the retries by cause."""
    server = fake_server()
    items = [item(f"ok{i}") for i in range(6)] + [item(f"limited{i}", {"fail": [429]}) for i in range(4)]
    result, rows, summary = run(run_cli, server, tmp_path, items)
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    for i in range(4):
        assert rows[f"limited{i}"]["llmbatch"]["retries"] == 1
        assert attempts_for(server, f"limited{i}") == 2
    assert all(rows[f"ok{i}"]["llmbatch"]["retries"] == 0 for i in range(6))
    assert summary["http_429"] == 4
    assert summary["retries"] == {"rate_limited": 4}


def test_retry_after_is_honoured(run_cli, fake_server, tmp_path):
    """A 60/min server refuses the second of two simultaneous requests with a Retry-After
    of about a second. With our own backoff at zero, only honouring it keeps the retry
    from hammering the server: one 429, then the answer a second later."""
    server = fake_server(rpm=60)
    result, rows, summary = run(run_cli, server, tmp_path, [item("a"), item("b")], "-c", "2")
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    assert server.stats.rate_limited == 1
    assert summary["http_429"] == 1
    assert summary["elapsed_s"] >= 0.9


# --- server errors, hangs, drops -------------------------------------------------------


def test_bursts_of_500_and_503_are_ridden_out(run_cli, fake_server, tmp_path):
    """Items failing with 500, 503, 500 before answering are retried to an answer; the
    summary counts the retries by status."""
    server = fake_server()
    items = [item(f"flaky{i}", {"fail": [500, 503, 500]}) for i in range(5)] + [item("fine")]
    result, rows, summary = run(run_cli, server, tmp_path, items)
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    assert all(rows[f"flaky{i}"]["llmbatch"]["retries"] == 3 for i in range(5))
    assert summary["retries"] == {"http_500": 10, "http_503": 5}


def test_random_server_faults_lose_nothing(run_cli, fake_server, tmp_path):
    """A server failing one request in four at random (429, 500, 502, 503, dropped
    connections): 150 items, every one answered, once."""
    server = fake_server(fault_rate=0.25, faults=(429, 500, 502, 503, "drop"), seed=4)
    items = [item(f"r{i:03d}") for i in range(150)]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--max-retries", "20")
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    assert sum(server.stats.faults.values()) > 10
    assert sum(summary["retries"].values()) == sum(server.stats.faults.values())


def test_a_hang_past_the_timeout_is_retried(run_cli, fake_server, tmp_path):
    """A server that never answers one request: --timeout 0.5 gives up on it and the
    retry is answered; the retry is counted as a timeout."""
    server = fake_server(hang_seconds=10)
    items = [item("stuck", {"fail": ["hang"]}), item("fine")]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--timeout", "0.5")
    assert 0.5 <= summary["elapsed_s"] < 5
    assert result.exit_code == 0, result.output
    assert answered(rows["stuck"]) and answered(rows["fine"])
    assert rows["stuck"]["llmbatch"]["retries"] == 1
    assert summary["retries"] == {"timeout": 1}


def test_a_dropped_connection_is_retried(run_cli, fake_server, tmp_path):
    """Headers and half a body, then the connection closes: retried, answered."""
    server = fake_server()
    items = [item("torn", {"fail": ["drop", "drop"]}), item("fine")]
    result, rows, summary = run(run_cli, server, tmp_path, items)
    assert result.exit_code == 0, result.output
    assert answered(rows["torn"])
    assert rows["torn"]["llmbatch"]["retries"] == 2
    assert summary["retries"] == {"connection": 2}


# --- the request's own fault, and giving up -----------------------------------------


def test_a_400_fails_at_once_without_a_retry(run_cli, fake_server, tmp_path):
    """400 means the request is wrong: written with the error after one attempt; the
    rest of the run goes on; exit 1."""
    server = fake_server()
    items = [item("bad", {"fail": [400]}), item("good")]
    result, rows, summary = run(run_cli, server, tmp_path, items)
    assert result.exit_code == 1, result.output
    bad = rows["bad"]
    assert bad["response"] is None
    assert "HTTP 400" in bad["error"]["message"]
    assert bad["llmbatch"]["retries"] == 0
    assert attempts_for(server, "bad") == 1
    assert answered(rows["good"])
    assert summary["failed"] == 1
    assert summary["retries"] == {}


def test_exhausted_retries_are_written_with_the_last_error(run_cli, fake_server, tmp_path):
    """--max-retries 1 against three 500s in a row: two attempts, then the item is
    written with the 500; exit 1."""
    server = fake_server()
    items = [item("doomed", {"fail": [500, 500, 500]}), item("fine")]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--max-retries", "1")
    assert result.exit_code == 1, result.output
    doomed = rows["doomed"]
    assert doomed["error"]["code"] == "http_500"
    assert "HTTP 500" in doomed["error"]["message"]
    assert doomed["llmbatch"]["valid"] is False
    assert attempts_for(server, "doomed") == 2
    assert answered(rows["fine"])
    assert summary["failed"] == 1
    assert summary["retries"] == {"http_500": 1}


def test_exhausted_retries_report_the_retries_actually_made(run_cli, fake_server, tmp_path):
    """--max-retries 1: the output line says 1 retry, as many as were sent."""
    server = fake_server()
    _, rows, _ = run(run_cli, server, tmp_path, [item("doomed", {"fail": [500, 500]})], "--max-retries", "1")
    assert attempts_for(server, "doomed") == 2
    assert rows["doomed"]["llmbatch"]["retries"] == 1


def test_a_request_bigger_than_the_tpm_budget_completes(run_cli, fake_server, tmp_path):
    """--tpm 600 holds 10 tokens a second; a ~1,300-token request is charged what the
    bucket can hold and goes through instead of waiting forever."""
    server = fake_server()
    big = {"id": "big", "messages": [{"role": "user", "content": "word " * 800}], "max_tokens": 100}
    outcome: dict[str, Any] = {}

    def go() -> None:
        outcome["run"] = run(run_cli, server, tmp_path, [big], "--tpm", "600")

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "the run hung on a request bigger than the token bucket"
    result, rows, _ = outcome["run"]
    assert result.exit_code == 0, result.output
    assert answered(rows["big"])


def test_retries_by_cause_in_the_summary_json(run_cli, fake_server, tmp_path):
    """One run with every kind of fault: --summary-json names each cause and its count,
    and the 429 count."""
    server = fake_server(hang_seconds=10)
    items = [
        item("limited", {"fail": [429]}),
        item("err500", {"fail": [500]}),
        item("err502", {"fail": [502, 502]}),
        item("err503", {"fail": [503]}),
        item("torn", {"fail": ["drop"]}),
        item("stuck", {"fail": ["hang"]}),
        item("fine"),
    ]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--timeout", "0.5")
    assert result.exit_code == 0, result.output
    assert all(answered(r) for r in rows.values())
    assert summary["retries"] == {
        "rate_limited": 1,
        "http_500": 1,
        "http_502": 2,
        "http_503": 1,
        "connection": 1,
        "timeout": 1,
    }
    assert summary["http_429"] == 1
    assert summary["requests"] == len(items) + 7
