"""Nothing lost under fire: thousands of items through the real CLI and real HTTP
against a loopback server that fails about a third of all attempts in every way it can,
and an API key that never shows up anywhere a user or a log can see it."""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from typer.testing import CliRunner, Result

from llmbatch.app.cli import app
from llmbatch.core.retry import no_backoff
from llmbatch.files.jsonl import JsonlWriter
from llmbatch.testing.server import FakeServer

KEY = "sk-chaos-DO-NOT-LEAK-4b1d9e7a2c6f8035"


def chat_line(i: int, text: str | None = None) -> dict[str, Any]:
    body = {"model": "chaos-model", "messages": [{"role": "user", "content": text or f"item {i}"}]}
    return {"custom_id": f"item-{i:05d}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> list[str]:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return [r["custom_id"] for r in rows]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line parsed: a torn or half-written line fails the test here."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def server(fake_server: Callable[..., FakeServer]) -> Callable[..., FakeServer]:
    """`server(**kwargs)`: conftest's loopback FakeServer factory, stopped at teardown."""
    return fake_server


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`cli(*args, key=KEY)`: `llmbatch run ...` in-process, with backoff made zero."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args: object, key: str | None = KEY) -> Result:
        env = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": None}
        with no_backoff():
            return CliRunner().invoke(app, ["run", *map(os.fspath, args)], env=env, catch_exceptions=False)

    return invoke


def run_chaos(cli: Any, tmp_path: Path, srv: FakeServer, ids_rows: list[dict[str, Any]], tag: str) -> Any:
    src, out, summary = tmp_path / f"{tag}.in.jsonl", tmp_path / f"{tag}.out.jsonl", tmp_path / f"{tag}.json"
    ids = write_jsonl(src, ids_rows)
    result = cli(
        src,
        "-o", out,
        "--provider", "openai",
        "--base-url", srv.base_url,
        "--timeout", "0.5",
        "--max-retries", "60",
        "--max-requests", "30",
        "--concurrency", "64",
        "--no-live",
        "--summary-json", summary,
    )  # fmt: skip
    return ids, result, read_jsonl(out), orjson.loads(summary.read_bytes())


def assert_every_item_once(ids: list[str], records: list[dict[str, Any]]) -> None:
    got = [r["custom_id"] for r in records]
    dupes = [cid for cid, n in Counter(got).items() if n > 1]
    assert not dupes, f"{len(dupes)} items written twice, e.g. {dupes[:5]}"
    missing = set(ids) - set(got)
    assert not missing, f"{len(missing)} items lost, e.g. {sorted(missing)[:5]}"
    assert sorted(got) == sorted(ids)


# Every fault but 429 is drawn at random. 429s come from the server's own rate limit,
# as a provider's do: they answer a pace that is too high, and stop when llmbatch slows
# down. (Random 429s at a fixed share of attempts, whatever the pace, are tested on a
# small run below: the adaptive pace reads each one as "too fast".)
OTHER_FAULTS = (500, 502, 503, "hang", "drop", "garbage", "nochoices")


class UnannouncedLimitServer(FakeServer):
    """Enforces its rpm without announcing it (no x-ratelimit-* headers), like a gateway
    in front of vLLM: llmbatch can only learn the limit from the 429s themselves."""

    def _limit_headers(self) -> list[tuple[str, str]]:
        return []


def test_chaos_every_item_ends_once_and_valid(cli, tmp_path):
    """2,000 items, ~30% of attempts failing in every way (5xx, hangs past --timeout,
    dropped connections, non-JSON and choice-less 200s) and 429s with Retry-After from a
    rate limit: every item is written exactly once and valid, re-asks and retries are
    counted where they belong, and the summary adds up to what the server saw."""
    n = 2000
    srv = UnannouncedLimitServer(
        latency_ms=2, jitter_ms=4, rpm=18000, retry_after=True, fault_rate=0.3, faults=OTHER_FAULTS,
        hang_seconds=3.0, seed=6,
    ).start()  # fmt: skip
    try:
        ids, result, records, summary = run_chaos(cli, tmp_path, srv, [chat_line(i) for i in range(n)], "ra")
    finally:
        srv.stop()

    assert result.exit_code == 0, result.output
    assert_every_item_once(ids, records)
    assert all(r["llmbatch"]["valid"] and r["error"] is None for r in records)
    assert all(r["response"]["status_code"] == 200 for r in records)

    stats = srv.stats
    faults = dict(stats.faults)
    assert set(faults) == {str(k) for k in OTHER_FAULTS}, faults  # every kind happened
    assert 0.2 < sum(faults.values()) / (stats.requests - stats.rate_limited) < 0.4
    assert stats.rate_limited > 0
    # Non-JSON and choice-less 200s are invalid answers: asked again, never written.
    assert summary["reasks"] == faults["garbage"] + faults["nochoices"]
    assert max(r["llmbatch"]["requests"] for r in records) > 1
    assert sum(r["llmbatch"]["requests"] - 1 for r in records) == summary["reasks"]
    # Transport faults are retried, each under its own cause, and cost no answer.
    assert summary["retries"] == {
        "rate_limited": stats.rate_limited,
        "http_500": faults["500"],
        "http_502": faults["502"],
        "http_503": faults["503"],
        "timeout": faults["hang"],
        "connection": faults["drop"],
    }
    assert sum(r["llmbatch"]["retries"] for r in records) == sum(summary["retries"].values())
    assert summary["http_429"] == stats.by_status[429] == stats.rate_limited

    # The summary adds up, and matches what the server saw.
    assert summary["total"] == n
    assert summary["done"] + summary["rejected"] + summary["skipped"] == n
    assert summary["valid"] + summary["invalid"] + summary["failed"] == summary["done"] == n
    assert summary["requests"] == stats.requests
    assert summary["requests"] == n + summary["reasks"] + sum(summary["retries"].values())
    assert summary["stopped"] is False
    print(f"\nchaos: {n} items, {stats.requests} requests, {summary['elapsed_s']} s, faults {faults}, "
          f"429 (rate limit) {stats.rate_limited}")  # fmt: skip


def test_chaos_429s_without_retry_after(cli, tmp_path):
    """A rate limit that answers 429 with no Retry-After and no x-ratelimit headers,
    plus 5xx: llmbatch finds the pace on its own and writes every item once, valid."""
    n = 600
    srv = UnannouncedLimitServer(
        latency_ms=2, rpm=9000, retry_after=False, fault_rate=0.2, faults=(500, 503), seed=7
    ).start()
    try:
        ids, result, records, summary = run_chaos(cli, tmp_path, srv, [chat_line(i) for i in range(n)], "nra")
    finally:
        srv.stop()

    assert result.exit_code == 0, result.output
    assert_every_item_once(ids, records)
    assert all(r["llmbatch"]["valid"] for r in records)
    stats = srv.stats
    assert stats.rate_limited > 0
    assert summary["retries"]["rate_limited"] == summary["http_429"] == stats.rate_limited
    assert summary["done"] == summary["valid"] == n
    assert summary["requests"] == stats.requests == n + sum(summary["retries"].values())
    print(f"\nno Retry-After: {n} items, {stats.requests} requests, {summary['elapsed_s']} s, "
          f"429 {stats.rate_limited}, {dict(stats.faults)}")  # fmt: skip


def test_random_429s_and_5xx_on_half_the_attempts(cli, server, tmp_path):
    """429s (without Retry-After) and 5xx at random on half of all attempts: every item
    is still written once, valid."""
    n = 100
    srv = server(fault_rate=0.5, faults=(429, 500, 503), retry_after=False, seed=7)
    ids, result, records, summary = run_chaos(cli, tmp_path, srv, [chat_line(i) for i in range(n)], "r429")

    assert result.exit_code == 0, result.output
    assert_every_item_once(ids, records)
    assert all(r["llmbatch"]["valid"] for r in records)
    faults = srv.stats.faults
    assert faults["429"] > 10
    assert summary["retries"]["rate_limited"] == summary["http_429"] == faults["429"]
    assert summary["requests"] == srv.stats.requests == n + sum(summary["retries"].values())


def test_chaos_with_a_tiny_retry_budget_still_writes_every_item_once(cli, server, tmp_path):
    """When retries and re-asks run out, items are written failed or invalid (exit 1),
    but still each exactly once: nothing is lost, nothing doubled."""
    n = 400
    srv = server(fault_rate=0.6, faults=OTHER_FAULTS, hang_seconds=3.0, seed=8)
    src, out, summary_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "s.json"
    ids = write_jsonl(src, [chat_line(i) for i in range(n)])
    result = cli(
        src, "-o", out, "--base-url", srv.base_url, "--timeout", "0.5", "--max-retries", "1",
        "--max-requests", "1", "--no-live", "--summary-json", summary_path,
    )  # fmt: skip
    records = read_jsonl(out)
    summary = orjson.loads(summary_path.read_bytes())

    assert result.exit_code == 1, result.output
    assert_every_item_once(ids, records)
    failed = [r for r in records if r["error"] is not None and r["error"]["code"] != "invalid_answer"]
    invalid = [r for r in records if r["error"] is not None and r["error"]["code"] == "invalid_answer"]
    valid = [r for r in records if r["llmbatch"]["valid"]]
    assert failed and invalid and valid
    assert (len(valid), len(invalid), len(failed)) == (
        summary["valid"],
        summary["invalid"],
        summary["failed"],
    )
    assert all(not r["llmbatch"]["valid"] and r["error"]["message"] for r in failed + invalid)
    assert {r["error"]["code"] for r in failed} <= {
        "http_500",
        "http_502",
        "http_503",
        "timeout",
        "connection",
    }
    assert summary["valid"] + summary["invalid"] + summary["failed"] == summary["done"] == n


# --- secrets --------------------------------------------------------------------------


class EchoingServer(FakeServer):
    """A badly behaved gateway: every answer quotes the request's headers and body."""

    def __init__(self, status: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.status = status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        quoted = f"rejected {request.method} {request.path_qs} headers={headers} body={raw.decode()}"
        if self.status == 200:
            body = {"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": quoted}, "finish_reason": "stop"}
            ]}  # fmt: skip
        else:
            body = {"error": {"message": quoted, "type": "invalid_request_error", "code": None}}
        echo = {"x-echo": headers.get("authorization", ""), "Content-Type": "application/json"}
        return web.Response(status=self.status, body=orjson.dumps(body), headers=echo)


@pytest.mark.parametrize("status", [200, 400, 401, 500])
def test_api_key_never_leaks_even_when_the_server_quotes_it(cli, tmp_path, status):
    """A server that quotes our Authorization header back (answer, 400, 401, 5xx): the
    key appears in no output line, reject, summary or message."""
    srv = EchoingServer(status).start()
    try:
        src = tmp_path / "in.jsonl"
        src.write_bytes(orjson.dumps(chat_line(1)) + b"\n" + b"not json\n")
        out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
        result = cli(
            src, "-o", out, "--base-url", srv.base_url, "--max-retries", "1", "--no-live",
            "--summary-json", summary,
        )  # fmt: skip
    finally:
        srv.stop()
    assert srv.stats.requests >= 1
    assert result.exit_code == {200: 1, 400: 1, 401: 3, 500: 1}[status], result.output
    seen = result.output + result.stderr + result.stdout
    for path in tmp_path.iterdir():
        seen += path.read_bytes().decode("utf-8", "replace") if path.is_file() else ""
    assert "[redacted]" in seen  # the quote got through, minus the key
    assert KEY not in seen
    assert KEY[8:24] not in seen


def test_api_key_never_leaks_from_a_chaotic_run(cli, server, tmp_path):
    """Faults of every kind, a wrong key (401) and bad lines: the distinctive key is in
    no file and on no stream."""
    srv = server(fault_rate=0.5, hang_seconds=2.0, api_key=KEY, seed=9)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(chat_line(i)) + b"\n" for i in range(50)) + b"[1]\n{bad\n")
    out = tmp_path / "out.jsonl"
    good = cli(
        src, "-o", out, "--base-url", srv.base_url, "--timeout", "0.5", "--max-retries", "2", "--no-live"
    )
    wrong = cli(src, "-o", tmp_path / "o2.jsonl", "--base-url", srv.base_url, "--no-live", key=KEY[::-1])
    assert good.exit_code == 1 and wrong.exit_code == 3
    assert "401" in wrong.stderr
    assert f"Bearer {KEY}" in srv.stats.authorizations  # it was sent, to the server only
    seen = good.output + good.stderr + wrong.output + wrong.stderr
    for path in tmp_path.iterdir():
        seen += path.read_bytes().decode("utf-8", "replace") if path.is_file() else ""
    assert KEY not in seen and KEY[::-1] not in seen


# --- a full disk ----------------------------------------------------------------------


class FillsUp:
    """The output file on a disk with `room` bytes left: a short write, then ENOSPC."""

    def __init__(self, f: Any, room: int) -> None:
        self.f = f
        self.room = room

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written: int = self.f.write(bytes(data[: self.room]))
        self.room -= written
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def test_a_full_disk_stops_the_run_cleanly_and_the_rerun_loses_nothing(cli, tmp_path, monkeypatch):
    """The disk fills up mid-run: the run stops with exit 3 and one clear reason (no
    traceback, no hang), the output holds whole lines and at most a torn tail, and once
    there is room the rerun writes every item exactly once."""
    n = 500
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_jsonl(src, [chat_line(i) for i in range(n)])
    args = (src, "-o", out, "--provider", "fake", "--fake-latency-ms", "1", "--no-live")
    original_init = JsonlWriter.__init__

    def init(self: JsonlWriter, path: Path, **kwargs: Any) -> None:
        original_init(self, path, **kwargs)
        if path == out:
            self._f = FillsUp(self._f, room=30_000)  # type: ignore[assignment]

    with monkeypatch.context() as m:
        m.setattr(JsonlWriter, "__init__", init)
        full = cli(*args)
    assert full.exit_code == 3, full.output
    assert "Traceback" not in full.output
    assert f"cannot write {out}: No space left on device" in full.stderr
    data = out.read_bytes()
    assert len(data) == 30_000 and not data.endswith(b"\n")  # a torn tail, as a real disk leaves
    kept = [orjson.loads(line) for line in data.split(b"\n")[:-1]]
    assert 0 < len(kept) < n

    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert f"resuming: {len(kept)} items" in again.stderr
    assert_every_item_once(ids, read_jsonl(out))
