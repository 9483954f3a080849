"""One retry policy, tried over loopback HTTP: a 503 whose Retry-After asks for 3 s is
waited out before the item's next attempt (in a live run and in the library's executor,
where our own backoff alone would wait a fraction of a second), and so is a Batch API
call answered 503 with a delay; a delay longer than --max-retry-wait waits the cap and
says so once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import RecordingServer, read_jsonl, write_jsonl

from llmbatch import LLMMessage, LLMTask, ParallelLLMExecutor, RetryConfig
from llmbatch.core.errors import TransientError
from llmbatch.core.retry import RetryPolicy
from llmbatch.providers.openai import OpenAIProvider
from llmbatch.testing.api import error_body

pytestmark = pytest.mark.usefixtures("no_backoff")


class Busy(RecordingServer):
    """Answers the first POST to a path ending in `suffix` 503 with `Retry-After: after`
    (or `retry-after-ms`), then as usual; `arrivals` holds when each such POST came."""

    def __init__(self, suffix: str, after: dict[str, str], status: int = 503, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suffix = suffix
        self.status = status
        self.after = after
        self.arrivals: list[float] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith(self.suffix):
            self.arrivals.append(time.monotonic())
            if len(self.arrivals) == 1:
                body = error_body("The server is busy", "server_error", None)
                return web.Response(
                    status=503, body=body, content_type="application/json", headers=self.after
                )
        return await super().handle(request)


@pytest.fixture
def busy(serve: Callable[..., Any]) -> Callable[..., Busy]:
    def start(
        suffix: str = "/chat/completions", after: dict[str, str] | None = None, status: int = 503
    ) -> Busy:
        return serve(Busy, suffix, after if after is not None else {"retry-after": "3"}, status)

    return start


def flags(server: Busy, *extra: str) -> list[str]:
    return ["--base-url", server.base_url, "--prompt", "{text}", "--id-field", "id", "-m", "gpt-4o-mini",
            "--no-live", *extra]  # fmt: skip


def gap(server: Busy) -> float:
    assert len(server.arrivals) >= 2, server.arrivals
    return server.arrivals[1] - server.arrivals[0]


def test_a_503_retry_after_is_waited_out_in_a_live_run(run_cli, busy, api_key, tmp_path: Path):
    """The item's second attempt comes about 3 s after the 503 (our backoff is zero here:
    only the server's delay can make it wait), and the item is answered."""
    server = busy()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "hello"}])
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *flags(server))
    assert result.exit_code == 0, result.output
    assert 2.8 <= gap(server) < 6
    (line,) = read_jsonl(out)
    assert line["llmbatch"]["valid"] and line["llmbatch"]["retries"] == 1


@pytest.mark.parametrize("status", [503, 429])
def test_a_server_delay_over_the_cap_waits_the_cap_and_says_so(
    run_cli, busy, api_key, tmp_path: Path, status
):
    """Retry-After: 120 with --max-retry-wait 1: the retry comes after about 1 s (the
    429's pause of the whole run is capped alike), and stderr says once that the wait
    was capped."""
    server = busy(after={"retry-after": "120"}, status=status)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "hello"}])
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *flags(server, "--max-retry-wait", "1"))
    assert result.exit_code == 0, result.output
    assert 0.8 <= gap(server) < 5
    assert result.stderr.count("asked to wait 120s") == 1, result.stderr


async def test_a_503_retry_after_is_waited_out_by_the_executor(busy) -> None:
    """The library face follows the same policy: about 3 s, not its 0-s backoff."""
    server = busy(after={"retry-after-ms": "3000"})
    provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url)
    try:
        executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=3), model="m")
        results = await executor.execute({"q": LLMTask(messages=[LLMMessage(role="user", content="hi")])})
    finally:
        await provider.aclose()
    assert results["q"].success
    assert 2.8 <= gap(server) < 6


def test_a_batch_api_call_answered_503_waits_its_delay(run_cli, busy, api_key, tmp_path: Path):
    """The batch create answered 503 with Retry-After: 2 is tried again about 2 s later,
    and the run ends with every item written."""
    server = busy("/batches", {"retry-after": "2"})
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"hello {i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *flags(server, "--batch-api", "--poll-every", "0.05"))
    assert result.exit_code == 0, result.output
    assert 1.8 <= gap(server) < 5
    assert {r["custom_id"] for r in read_jsonl(out)} == {"r0", "r1", "r2"}


def test_the_policy_waits_the_servers_delay_else_backoff_and_caps_it():
    """Unit rules of the one policy: a server delay (0 included) is the wait; none means
    backoff; longer than max_wait waits max_wait and is marked capped; retries counted."""
    policy = RetryPolicy(retries=2, backoff=RetryConfig(initial_delay=0.5), max_wait=10)
    assert policy.wait(TransientError("x", retry_after=0.0), 1).seconds == 0.0
    assert policy.wait(TransientError("x", retry_after=3.0), 1).seconds == 3.0
    capped = policy.wait(TransientError("x", retry_after=30.0), 1)
    assert (capped.seconds, capped.asked, capped.capped) == (10, 30.0, True)
    assert policy.allows(0) and policy.allows(1) and not policy.allows(2)
    assert RetryConfig(max_attempts=4).policy().retries == 3
