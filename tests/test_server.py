"""The fake OpenAI-compatible server, over real HTTP on loopback: its rate limits and
their headers, its usage totals, its faults, its extension hook and its command line."""

from __future__ import annotations

import http.client
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import PYTHON

from llmbatch.core.http import parse_duration
from llmbatch.testing.server import FakeServer, new_event_loop

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Answer = tuple[int, dict[str, str], Any]


def call(server: FakeServer, path: str, body: Any = None, *, raw: bytes | None = None) -> Answer:
    """(status, lower-cased headers, parsed body or the raw bytes) of one request."""
    data = raw if raw is not None else orjson.dumps(body) if body is not None else None
    url = server.base_url.removesuffix("/v1") + path
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=10) as resp:
            status, headers, content = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, headers, content = err.code, err.headers, err.read()
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        parsed = content
    return status, {k.lower(): v for k, v in headers.items()}, parsed


def chat(text: str = "Say hello.", **params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **params}


def seconds(headers: dict[str, str], name: str) -> float:
    value = parse_duration(headers[name])
    assert value is not None, headers[name]
    return value


# --- tokens per minute -----------------------------------------------------------------


def test_over_tpm_is_a_429_with_the_token_headers(fake_server: Callable[..., FakeServer]) -> None:
    """60 tokens/min, a minute's worth in the bucket: each request costs its prompt plus
    max_tokens, every answer says what is left, and the one that does not fit is refused
    with a token 429, Retry-After and the same headers."""
    server = fake_server(tpm=60, bucket_seconds=60)
    status, headers, answer = call(server, "/v1/chat/completions", chat(max_tokens=18))
    assert status == 200
    cost = answer["usage"]["prompt_tokens"] + 18
    assert headers["x-ratelimit-limit-tokens"] == "60"
    assert int(headers["x-ratelimit-remaining-tokens"]) in (60 - cost, 60 - cost + 1)
    assert "x-ratelimit-limit-requests" not in headers  # no rpm given

    call(server, "/v1/chat/completions", chat(max_tokens=18))
    status, headers, error = call(server, "/v1/chat/completions", chat(max_tokens=18))
    assert status == 429
    assert error["error"]["type"] == "tokens" and error["error"]["code"] == "rate_limit_exceeded"
    left = int(headers["x-ratelimit-remaining-tokens"])
    assert left in (60 - 2 * cost, 60 - 2 * cost + 1)
    assert headers["x-ratelimit-limit-tokens"] == "60"
    assert "x-ratelimit-reset-tokens" in headers
    assert (cost - left - 1) * 1000 <= int(headers["retry-after-ms"]) <= (cost - left + 1) * 1000
    assert server.stats.rate_limited == 1 and server.stats.by_status == {200: 2, 429: 1}


def test_without_max_tokens_the_answer_itself_is_charged(fake_server: Callable[..., FakeServer]) -> None:
    """No max_tokens: a request costs its prompt and the answer it got, no more."""
    server = fake_server(tpm=600, bucket_seconds=60)
    status, headers, answer = call(server, "/v1/chat/completions", chat())
    assert status == 200
    assert int(headers["x-ratelimit-remaining-tokens"]) in (
        600 - answer["usage"]["total_tokens"] + d for d in (0, 1)
    )


def test_a_request_larger_than_the_tpm_limit_is_refused_with_no_wait(
    fake_server: Callable[..., FakeServer],
) -> None:
    """A request asking for more tokens than a minute allows gets a 429 that asks for no
    wait (waiting would not help), as OpenAI's 'Request too large' does."""
    server = fake_server(tpm=100, bucket_seconds=60)
    status, headers, error = call(server, "/v1/chat/completions", chat(max_completion_tokens=500))
    assert status == 429
    assert "Request too large" in error["error"]["message"]
    assert "retry-after" not in headers and "retry-after-ms" not in headers
    assert headers["x-ratelimit-remaining-tokens"] == "100"  # nothing was taken


def test_requests_and_tokens_are_announced_together(fake_server: Callable[..., FakeServer]) -> None:
    """With both limits, every answer carries both sets of headers."""
    server = fake_server(rpm=600, tpm=60_000)
    _, headers, _ = call(server, "/v1/chat/completions", chat())
    for kind in ("requests", "tokens"):
        for what in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{what}-{kind}" in headers
    assert headers["x-ratelimit-limit-requests"] == "600"


# --- bucket size, start, and the meaning of reset -------------------------------------


def test_the_default_bucket_holds_one_seconds_worth(fake_server: Callable[..., FakeServer]) -> None:
    """120/min by default holds 2 requests: the third at once is refused."""
    server = fake_server(rpm=120)
    assert [call(server, "/v1/chat/completions", chat())[0] for _ in range(3)] == [200, 200, 429]


def test_a_minute_sized_bucket_lets_a_minutes_worth_through_at_once(
    fake_server: Callable[..., FakeServer],
) -> None:
    """120/min with bucket_seconds=60: 20 requests at once all pass, and remaining counts down."""
    server = fake_server(rpm=120, bucket_seconds=60)
    answers = [call(server, "/v1/chat/completions", chat()) for _ in range(20)]
    assert {status for status, _, _ in answers} == {200}
    assert int(answers[-1][1]["x-ratelimit-remaining-requests"]) in (100, 101)


@pytest.mark.parametrize("limit", [{"rpm": 60}, {"tpm": 6000}])
def test_a_spent_bucket_refuses_the_first_request(
    fake_server: Callable[..., FakeServer], limit: dict[str, int]
) -> None:
    """start_spent: as if another client had just used the key, the very first request
    gets a 429 with Retry-After and nothing remaining."""
    server = fake_server(start_spent=True, **limit)
    status, headers, error = call(server, "/v1/chat/completions", chat())
    assert status == 429
    kind = "requests" if "rpm" in limit else "tokens"
    assert error["error"]["type"] == kind
    # Nothing left, or (tokens) the few that refilled while the request was on its way
    # on a loaded machine (6,000 a minute is 100 a second): far from the full 6,000.
    left = int(headers[f"x-ratelimit-remaining-{kind}"])
    assert left == 0 if kind == "requests" else left < 600
    assert int(headers["retry-after-ms"]) > 0 and int(headers["retry-after"]) >= 1
    assert server.stats.rate_limited == 1


@pytest.mark.parametrize(
    ("means", "requests_reset", "tokens_reset"), [("next", 1.0, 0.01), ("full", 3.0, None)]
)
def test_reset_headers_count_down_to_the_next_unit_or_to_full(
    fake_server: Callable[..., FakeServer], means: str, requests_reset: float, tokens_reset: float | None
) -> None:
    """60 requests/min and 6,000 tokens/min, a minute's worth each, three requests spent:
    "next" (the default) says one request is back in 1 s and one token in 10 ms; "full"
    (OpenAI's meaning) says the requests bucket is full in 3 s and the tokens bucket
    once the tokens spent (at 100 a second) are back."""
    server = fake_server(rpm=60, tpm=6000, bucket_seconds=60, reset_means=means)
    spent = 0
    for _ in range(3):
        status, headers, answer = call(server, "/v1/chat/completions", chat(max_tokens=50))
        assert status == 200
        spent += answer["usage"]["prompt_tokens"] + 50
    assert seconds(headers, "x-ratelimit-reset-requests") == pytest.approx(requests_reset, abs=0.2)
    expected_tokens = tokens_reset if tokens_reset is not None else spent / 100
    assert seconds(headers, "x-ratelimit-reset-tokens") == pytest.approx(expected_tokens, abs=0.2)


# --- usage totals ----------------------------------------------------------------------


def test_stats_usage_totals_are_the_sum_of_the_answers_usage(fake_server: Callable[..., FakeServer]) -> None:
    """/_stats and ServerStats add up the usage of every answer sent: chat and
    embeddings; a garbage 200 and a 400 add nothing."""
    server = fake_server()
    usages = []
    for i in range(5):
        usages.append(
            call(server, "/v1/chat/completions", chat(f"Tell me about {'x' * 10 * i}."))[2]["usage"]
        )
    usages.append(
        call(server, "/v1/embeddings", {"model": "e", "input": ["one text", "and another"]})[2]["usage"]
    )
    assert call(server, "/v1/chat/completions", chat('@fake {"fail": ["garbage"]}'))[0] == 200
    assert call(server, "/v1/chat/completions", raw=b"not json")[0] == 400

    status, _, stats = call(server, "/_stats")
    assert status == 200
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages) > 0
    assert stats["completion_tokens"] == sum(u.get("completion_tokens", 0) for u in usages) > 0
    assert (server.stats.prompt_tokens, server.stats.completion_tokens) == (
        stats["prompt_tokens"],
        stats["completion_tokens"],
    )


# --- errors and faults -----------------------------------------------------------------


def test_errors_are_openai_shaped_and_counted(fake_server: Callable[..., FakeServer]) -> None:
    """Unknown route 404, a body that is not JSON 400, a wrong key 401 (before anything
    else); /_stats needs no key."""
    open_server = fake_server()
    assert call(open_server, "/v1/nowhere", chat())[0] == 404
    assert call(open_server, "/v1/chat/completions", raw=b"[1, 2]")[0] == 400
    status, _, error = call(fake_server(api_key="sk-right"), "/v1/chat/completions", chat())
    assert (status, error["error"]["code"]) == (401, "invalid_api_key")
    assert open_server.stats.by_status == {404: 1, 400: 1}


def test_a_drop_sends_headers_and_half_a_body_then_closes(fake_server: Callable[..., FakeServer]) -> None:
    """The "drop" fault: a 200 whose body stops short of its Content-Length."""
    server = fake_server()
    data = orjson.dumps(chat('@fake {"fail": ["drop"]}'))
    request = urllib.request.Request(server.base_url + "/chat/completions", data=data)
    with OPENER.open(request, timeout=10) as resp:
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    assert server.stats.faults == {"drop": 1}


def test_a_hang_ends_with_the_connection_gone(fake_server: Callable[..., FakeServer]) -> None:
    """The "hang" fault: no answer at all, then the connection is aborted."""
    server = fake_server(hang_seconds=0.2)
    data = orjson.dumps(chat('@fake {"fail": ["hang"]}'))
    request = urllib.request.Request(server.base_url + "/chat/completions", data=data)
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        OPENER.open(request, timeout=10)
    assert server.stats.faults == {"hang": 1}
    assert 200 not in server.stats.by_status


# --- the extension hook ----------------------------------------------------------------


class TeapotForGets(FakeServer):
    """Answers every GET but /_stats itself; everything else the usual way."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path != "/_stats":
            return web.Response(status=418, text="short and stout")
        return await super().handle(request)


def test_a_subclass_hook_sees_every_request_and_the_server_still_counts() -> None:
    """Overriding handle() replaces the answers it wants, super() gives the usual ones,
    and the server's counters still see every request and its key."""
    with TeapotForGets() as server:
        assert call(server, "/v1/models")[0] == 418
        assert call(server, "/v1/chat/completions", chat())[0] == 200
        assert server.stats.requests == 2
        assert server.stats.by_status == {200: 1}  # the subclass's own answer is its own business


# --- the event loop -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["auto", "asyncio"])
def test_the_server_answers_on_either_event_loop(kind: str) -> None:
    """uvloop when it is installed (auto), asyncio's own loop when asked: the same answers."""
    with FakeServer(loop=kind) as server:  # type: ignore[arg-type]
        status, headers, answer = call(server, "/v1/chat/completions", chat("Say hi."))
    assert status == 200 and answer["choices"][0]["message"]["content"] == "echo: Say hi."
    assert headers["x-request-id"].startswith("req_")


def test_without_uvloop_auto_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where uvloop is missing, auto runs on asyncio's loop and asking for uvloop says so."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    loop = new_event_loop("auto")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    with pytest.raises(ImportError):
        new_event_loop("uvloop")
    with pytest.raises(ImportError), FakeServer(loop="uvloop"):
        pass
    with FakeServer() as server:
        assert call(server, "/v1/chat/completions", chat())[0] == 200


# --- the command line ------------------------------------------------------------------


def test_the_command_line_takes_the_new_limit_options() -> None:
    """`python -m llmbatch.testing.server --tpm --bucket-seconds --start-spent
    --reset-means`: it says where it listens, and its first answer is a spent bucket's 429."""
    argv = [PYTHON, "-m", "llmbatch.testing.server", "--port", "0", "--rpm", "60", "--tpm", "600"]
    argv += ["--bucket-seconds", "60", "--start-spent", "--reset-means", "full"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert line.startswith("listening on http://127.0.0.1:")
            server = FakeServer(port=int(line.rsplit(":", 1)[1].split("/")[0]))
            status, headers, _ = call(server, "/v1/chat/completions", chat())
            assert status == 429
            assert seconds(headers, "x-ratelimit-reset-requests") == pytest.approx(
                60, abs=1
            )  # full: a minute
            assert headers["x-ratelimit-limit-tokens"] == "600"
        finally:
            proc.terminate()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_the_command_line_runs_on_the_loop_asked_for(kind: str) -> None:
    """`--loop asyncio|uvloop`: /_stats names the loop the server runs on."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    argv = [PYTHON, "-m", "llmbatch.testing.server", "--port", "0", "--loop", kind]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            server = FakeServer(port=int(line.rsplit(":", 1)[1].split("/")[0]))
            assert call(server, "/v1/chat/completions", chat())[0] == 200
            status, _, stats = call(server, "/_stats")
            assert status == 200 and stats["loop"].startswith(f"{kind}.")
            assert stats["requests"] == 2
        finally:
            proc.terminate()
