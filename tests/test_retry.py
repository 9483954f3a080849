"""Backoff delays, the server's own delay headers, and what each HTTP status means."""

from __future__ import annotations

import datetime as dt
import random
from email.utils import format_datetime

import orjson
import pytest

from llmbatch.core.errors import AuthError, PermanentError, RateLimited, TransientError
from llmbatch.core.http import MAX_SERVER_DELAY, error_for_status, parse_duration, server_delay
from llmbatch.core.retry import BackoffStrategy, RetryConfig, no_backoff


def delays(config: RetryConfig, attempts: int, seed: int = 7) -> list[float]:
    """The waits after attempts 1..n, each fed the previous one (as the engine does)."""
    rng = random.Random(seed)
    out: list[float] = []
    previous = 0.0
    for attempt in range(1, attempts + 1):
        previous = config.delay(attempt, previous, rng)
        out.append(previous)
    return out


# --- backoff -----------------------------------------------------------------------


def test_fixed_waits_the_same_every_time():
    """FIXED: initial_delay after every failed attempt."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.FIXED, initial_delay=0.5)
    assert delays(config, 5) == [0.5] * 5


def test_linear_grows_by_initial_delay():
    """LINEAR: 1x, 2x, 3x ... initial_delay."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.LINEAR, initial_delay=0.5)
    assert delays(config, 4) == [0.5, 1.0, 1.5, 2.0]


def test_exponential_multiplies():
    """EXPONENTIAL: initial_delay * multiplier ** (attempt - 1)."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.EXPONENTIAL, initial_delay=0.25, multiplier=3.0)
    assert delays(config, 4) == [0.25, 0.75, 2.25, 6.75]


def test_jitter_draws_from_the_upper_half_of_the_exponential():
    """JITTER: each wait lies in [top/2, top] of the exponential, and differs run to run
    only by the random source (a seeded one repeats exactly)."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.JITTER, initial_delay=1.0, max_delay=1000.0)
    got = delays(config, 8)
    for attempt, d in enumerate(got, start=1):
        top = 2.0 ** (attempt - 1)
        assert top / 2 <= d <= top
    assert got == delays(config, 8)  # same seed, same waits
    assert got != delays(config, 8, seed=8)  # the jitter is real: crowds spread out


def test_decorrelated_stays_between_initial_and_three_times_the_last():
    """DECORRELATED (AWS): each wait in [initial, 3 x previous wait]."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.DECORRELATED, initial_delay=0.5, max_delay=1000.0)
    got = delays(config, 10)
    previous = 0.0
    for d in got:
        assert 0.5 <= d <= max(previous, 0.5) * 3
        previous = d
    assert got == delays(config, 10)


@pytest.mark.parametrize("strategy", list(BackoffStrategy))
def test_every_strategy_is_capped_at_max_delay(strategy):
    """No strategy ever waits longer than max_delay, even after thousands of attempts
    (an exponential policy must saturate, not overflow)."""
    config = RetryConfig(backoff_strategy=strategy, initial_delay=1.0, max_delay=5.0)
    got = delays(config, 40)
    assert all(0.0 <= d <= 5.0 for d in got)
    assert config.delay(5000, 5.0, random.Random(1)) <= 5.0


def test_exponential_reaches_the_cap_and_stays():
    """Once the exponential passes max_delay the wait is exactly max_delay."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.EXPONENTIAL, initial_delay=1.0, max_delay=10.0)
    assert delays(config, 6) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert config.delay(2000) == 10.0


def test_no_backoff_makes_every_wait_zero_and_restores():
    """Inside `no_backoff()` every strategy waits 0; outside, waits come back."""
    config = RetryConfig(backoff_strategy=BackoffStrategy.FIXED, initial_delay=3.0)
    with no_backoff():
        assert [config.delay(a) for a in (1, 2, 10)] == [0.0, 0.0, 0.0]
        jitter = RetryConfig(backoff_strategy=BackoffStrategy.DECORRELATED, initial_delay=3.0)
        assert jitter.delay(3, 9.0) == 0.0
    assert config.delay(1) == 3.0


def test_no_backoff_leaves_server_delays_alone():
    """A server's Retry-After is still read under `no_backoff()` (it is honoured, not
    invented)."""
    with no_backoff():
        assert server_delay({"retry-after": "2"}) == 2.0


# --- the server's delay --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("17", 17.0),
        ("  2s ", 2.0),
        ("1m30.25s", 90.25),
        ("0s", 0.0),
    ],
)
def test_parse_duration_reads_openai_reset_formats(text, seconds):
    """x-ratelimit-reset-* values in OpenAI's Go-style format, or plain seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1d", "5 s", "1s later", "s", "1.2.3s", "nan", "inf", "-3"])
def test_parse_duration_rejects_junk(text):
    """Anything that is not a finite, non-negative duration is None, never a guess."""
    assert parse_duration(text) is None


def test_retry_after_ms_wins_and_is_in_milliseconds():
    """OpenAI's retry-after-ms is the most precise: it is used before Retry-After."""
    assert server_delay({"retry-after-ms": "250", "retry-after": "1"}) == pytest.approx(0.25)


def test_retry_after_seconds():
    """Retry-After in seconds, whatever the case of the header's name."""
    assert server_delay({"retry-after": "3"}) == 3.0
    assert server_delay({"Retry-After": "1.5"}) == 1.5


def test_retry_after_http_date():
    """Retry-After as an HTTP-date: the seconds from now until then (0 when past)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    got = server_delay({"retry-after": format_datetime(when, usegmt=True)})
    assert got is not None
    assert 28.0 <= got <= 30.0
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    assert server_delay({"retry-after": format_datetime(past, usegmt=True)}) == 0.0


def test_absurd_server_delays_are_capped_or_ignored():
    """A delay of a day is capped; a negative or non-numeric one is not a delay."""
    assert server_delay({"retry-after": "86400"}) == MAX_SERVER_DELAY
    assert server_delay({"retry-after-ms": "-50"}) == 0.0
    assert server_delay({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0
    assert server_delay({"retry-after": "whenever"}) is None


def test_ratelimit_reset_counts_only_when_the_budget_is_spent():
    """x-ratelimit-reset-* is a delay only when its x-ratelimit-remaining-* is 0."""
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
    assert server_delay(spent) == 1.5
    left = {"x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "1.5s"}
    assert server_delay(left) is None
    tokens = {
        "x-ratelimit-remaining-requests": "40",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert server_delay(tokens) == 360.0


def test_no_delay_headers_means_none():
    """Nothing asked for: None (the caller's own backoff applies)."""
    assert server_delay({}) is None
    assert server_delay({"content-type": "application/json", "x-ratelimit-limit-requests": "500"}) is None


# --- statuses ------------------------------------------------------------------------


def body(message: str, *, code: str | None = None, kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def test_429_is_rate_limited_with_the_servers_delay():
    """429: RateLimited (retried), carrying the delay the server asked for."""
    err = error_for_status(
        429, body("Rate limit reached", code="rate_limit_exceeded"), {"retry-after-ms": "1500"}
    )
    assert isinstance(err, RateLimited)
    assert isinstance(err, TransientError)
    assert err.retry_after == pytest.approx(1.5)
    assert err.status_code == 429
    assert "Rate limit reached" in str(err)


def test_429_without_a_delay_header_still_retries():
    """A bare 429: RateLimited with no delay (our own backoff applies)."""
    err = error_for_status(429, b"", {})
    assert isinstance(err, RateLimited)
    assert err.retry_after is None


@pytest.mark.parametrize(
    "payload",
    [
        body("You exceeded your current quota.", code="insufficient_quota", kind="insufficient_quota"),
        body("You exceeded your current quota.", kind="insufficient_quota"),
        body("You exceeded your current quota.", code="insufficient_quota"),
    ],
)
def test_429_insufficient_quota_stops_the_run(payload):
    """429 insufficient_quota is not a rate limit: no wait will help, so AuthError."""
    err = error_for_status(429, payload, {"retry-after": "1"})
    assert isinstance(err, AuthError)
    assert err.code == "insufficient_quota"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_statuses(status):
    """401 / 403: AuthError with the server's code."""
    err = error_for_status(status, body("Incorrect API key provided.", code="invalid_api_key"), {})
    assert isinstance(err, AuthError)
    assert err.code == "invalid_api_key"
    assert "Incorrect API key" in str(err)


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504, 529])
def test_transient_statuses(status):
    """408, 409 and 5xx: TransientError coded by status (the retries-by-cause key)."""
    err = error_for_status(status, body("The server had an error", kind="server_error"), {})
    assert type(err) is TransientError
    assert err.code == f"http_{status}"
    assert err.status_code == status


@pytest.mark.parametrize("status", [400, 404, 422])
def test_permanent_statuses(status):
    """400, 404, 422: the request itself is wrong, PermanentError (never retried)."""
    err = error_for_status(status, body("Invalid 'messages'", code="invalid_value"), {})
    assert isinstance(err, PermanentError)
    assert err.code == "invalid_value"
    assert "Invalid 'messages'" in str(err)


def test_permanent_without_a_code_is_named_by_status():
    err = error_for_status(404, orjson.dumps({"error": {"message": "no such model"}}), {})
    assert isinstance(err, PermanentError)
    assert err.code == "http_404"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "502 Bad Gateway"),
        (b"", "(empty body)"),
        (b"upstream connect error", "upstream connect error"),
        (b'"just a string"', "just a string"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400}',
         "max_tokens is too large"),
        (b"\xff\xfe not utf-8", "not utf-8"),
    ],
)  # fmt: skip
def test_error_bodies_that_are_not_openai_json(raw, shown):
    """Proxies' HTML pages, empty bodies, vLLM's flat errors, FastAPI's `detail`: the
    status decides the class, and the message still says what the server said."""
    assert isinstance(error_for_status(503, raw, {}), TransientError)
    err = error_for_status(400, raw, {})
    assert isinstance(err, PermanentError)
    assert shown in str(err)
    assert str(err).startswith("HTTP 400: ")


def test_vllm_numeric_code_is_not_taken_as_the_code():
    """vLLM repeats the status as a numeric `code`: the type names the error instead."""
    raw = b'{"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}'
    assert error_for_status(400, raw, {}).code == "BadRequestError"
