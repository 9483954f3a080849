"""One core for both modes, tried as a user would: several expired batches finished
live write every item once; a failed live follow-up is reported and redone by a rerun;
a Ctrl-C while everything waits out a 429 stops at once, in --then live as in a live
run; a Batch API run counts its cached prompt tokens as a live run does."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import RecordingServer, by_id, write_jsonl

from llmbatch.cost.prices import cost, price_for
from llmbatch.testing.api import error_body

pytestmark = pytest.mark.usefixtures("no_backoff")

POLL = ("--poll-every", "0.05")
KEY = "sk-one-core-test-5e6f7a8b9c0d"


def rows(n: int, scripts: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Data items asking for JSON; `scripts` gives some of them an @fake script."""
    out = []
    for i in range(n):
        script = {"answer": {"n": i}, **(scripts or {}).get(i, {})}
        out.append({"id": f"r{i}", "text": "@fake " + orjson.dumps(script).decode()})
    return out


def batch_flags(server: Any, *extra: object) -> list[object]:
    return ["--batch-api", "--base-url", server.base_url, "--prompt", "{text}", "--id-field", "id",
            "-m", "gpt-4o-mini", "--validate", "json", "--no-live", *POLL, *extra]  # fmt: skip


def test_several_expired_batches_finished_live_write_every_item_once(run_cli, fake_server, api_key, tmp_path):
    """40 items in 4 batches of 10, each expiring after 5 lines, --then live: the 20
    that never ran go live in 4 follow-ups, all of them; 40 lines, each id once, exit
    0, and a rerun finds nothing to do."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(40))
    server = fake_server(batch_expire_after=5)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *batch_flags(server, "--batch-requests", "10", "--then", "live"))
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert len(records) == 40
    assert Counter(r["llmbatch"]["via"] for r in records.values()) == {"batch": 20, "live": 20}
    assert all(r["llmbatch"]["valid"] for r in records.values())
    assert server.stats.creates == 4
    again = run_cli("run", src, "-o", out, *batch_flags(server, "--batch-requests", "10", "--then", "live"))
    assert again.exit_code == 0, again.output
    assert len(by_id(out)) == 40
    assert server.stats.creates == 4


def test_a_live_follow_up_that_fails_some_items_exits_1_naming_them_and_a_rerun_redoes_those(
    run_cli, fake_server, api_key, tmp_path
):
    """Two items of the expired halves meet four 500s in a row live, more than
    --max-retries 2 allows: they are written failed, the run exits 1 and names them; a
    rerun redoes exactly those two (the server's fifth answer is good) and exits 0."""
    failing = {7: {"fail": [500, 500, 500, 500]}, 17: {"fail": [500, 500, 500, 500]}}
    src = write_jsonl(tmp_path / "in.jsonl", rows(40, failing))
    server = fake_server(batch_expire_after=5)
    out = tmp_path / "out.jsonl"
    args = batch_flags(server, "--batch-requests", "10", "--then", "live", "--max-retries", "2")
    result = run_cli("run", src, "-o", out, *args)
    assert result.exit_code == 1, result.output
    records = by_id(out)
    assert len(records) == 40
    failed = sorted(cid for cid, r in records.items() if r["llmbatch"]["state"] == "failed")
    assert failed == ["r17", "r7"]
    assert "r7" in result.stderr and "r17" in result.stderr
    answered = {cid: r["response"]["request_id"] for cid, r in records.items() if cid not in failed}

    rerun = run_cli("run", src, "-o", out, *args)
    assert rerun.exit_code == 0, rerun.output
    records = by_id(out)
    assert all(r["llmbatch"]["valid"] for r in records.values())
    assert {cid: r["response"]["request_id"] for cid, r in records.items() if cid not in failed} == answered
    assert "redone: 2 (transient 2)" in rerun.stderr


class Refusing(RecordingServer):
    """Answers every live chat request 429 with `Retry-After: 30` (the Batch API's own
    lines are answered as usual)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/chat/completions"):
            self.refused += 1
            body = error_body("Rate limit reached", "requests", "rate_limit_exceeded")
            return web.Response(
                status=429, body=body, content_type="application/json", headers={"retry-after": "30"}
            )
        return await super().handle(request)

    refused = 0


@pytest.fixture
def refusing(serve: Callable[..., Any]) -> Callable[..., Refusing]:
    return lambda **kwargs: serve(Refusing, **kwargs)


@pytest.fixture
def run_proc(spawn: Callable[..., subprocess.Popen[bytes]]) -> Callable[..., subprocess.Popen[bytes]]:
    """`run_proc(*args)`: `llmbatch run ARGS` as a process of its own, with KEY."""
    return lambda *args: spawn(*args, key=KEY)


def _interrupt_while_paused(proc: subprocess.Popen[bytes], server: Refusing) -> tuple[float, str]:
    """Wait until the run has met its 429s and waits out the pause, then Ctrl-C it;
    returns how long it took to exit, and its stderr."""
    deadline = time.monotonic() + 60
    while server.refused < 4 and proc.poll() is None:
        assert time.monotonic() < deadline, "no 429 in 60 s"
        time.sleep(0.01)
    time.sleep(0.5)  # everything is waiting now: the pause, or a retry 30 s away
    assert proc.poll() is None
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return time.monotonic() - sent, err.decode()


def test_ctrl_c_during_a_live_run_waiting_out_a_429_stops_at_once(run_proc, refusing, fake_server, tmp_path):
    """Every request is refused with Retry-After: 30; a Ctrl-C while the run waits it
    out stops it within 2 s, exit 3, nothing written; a rerun writes every item."""
    write_jsonl(tmp_path / "in.jsonl", rows(8))
    server = refusing()
    template = ("--prompt", "{text}", "--id-field", "id", "-m", "gpt-4o-mini", "--no-live", "-c", "4")
    proc = run_proc("in.jsonl", "-o", "out.jsonl", "--base-url", server.base_url, *template)
    took, err = _interrupt_while_paused(proc, server)
    assert proc.returncode == 3, err
    assert took < 2.0, (took, err)
    assert "SIGINT received" in err
    good = fake_server()
    rerun = run_proc("in.jsonl", "-o", "out.jsonl", "--base-url", good.base_url, *template)
    _, err2 = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err2.decode()
    assert len(by_id(tmp_path / "out.jsonl")) == 8


def test_ctrl_c_during_a_then_live_follow_up_waiting_out_a_429_stops_at_once(
    run_proc, refusing, fake_server, tmp_path
):
    """A batch that expires before running anything sends all 8 items live, where every
    request meets a 429 with Retry-After: 30: a Ctrl-C then stops the run within 2 s,
    exit 3; the follow-up is not lost: a rerun writes every item once."""
    write_jsonl(tmp_path / "in.jsonl", rows(8))
    server = refusing(batch_expire_after=0)
    proc = run_proc("in.jsonl", "-o", "out.jsonl", *batch_flags(server, "--then", "live", "-c", "4"))
    took, err = _interrupt_while_paused(proc, server)
    assert proc.returncode == 3, err
    assert took < 2.0, (took, err)
    good = fake_server()
    rerun = run_proc("in.jsonl", "-o", "out.jsonl", *batch_flags(good, "--then", "live"))
    _, err2 = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err2.decode()
    records = by_id(tmp_path / "out.jsonl")
    assert len(records) == 8
    assert {r["llmbatch"]["via"] for r in records.values()} == {"live"}


def test_a_batch_api_run_counts_cached_prompt_tokens_as_a_live_run_does(
    run_cli, fake_server, api_key, tmp_path
):
    """Answers that report 8 cached prompt tokens each: the Batch API run's summary, its
    output lines and its cost count them as a live run of the same items does, at the
    cached price (the Batch API's, there)."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(6, {i: {"cached": 8} for i in range(6)}))
    live_flags = [
        "--prompt",
        "{text}",
        "--id-field",
        "id",
        "-m",
        "gpt-4o-mini",
        "--validate",
        "json",
        "--no-live",
    ]
    for mode in ("live", "batch"):
        server = fake_server()
        out = tmp_path / f"{mode}.jsonl"
        summary_file = tmp_path / f"{mode}.summary.json"
        extra = batch_flags(server) if mode == "batch" else ["--base-url", server.base_url, *live_flags]
        result = run_cli("run", src, "-o", out, *extra, "--summary-json", summary_file)
        assert result.exit_code == 0, result.output
        summary = orjson.loads(summary_file.read_bytes())
        lines = by_id(out).values()
        assert all(r["llmbatch"]["usage"]["cached_tokens"] == 8 for r in lines)
        assert summary["cached_tokens"] == 48
        price = price_for("gpt-4o-mini", batch=mode == "batch")
        assert price is not None and price.cached_input is not None
        expected = cost(price, summary["prompt_tokens"], summary["completion_tokens"], 48)
        assert summary["cost_usd"] == pytest.approx(expected)
        if price.cached_input < price.input:  # the database's batch price has no discount of its own
            assert summary["cost_usd"] < cost(price, summary["prompt_tokens"], summary["completion_tokens"])
