"""When to try again and how long to wait: one backoff policy for the CLI engine and the
library's executor, the server's own delay headers, and HTTP status classification."""

from __future__ import annotations

import contextlib
import enum
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from llmbatch.errors import AuthError, PermanentError, ProviderError, RateLimited, TransientError

__all__ = [
    "BackoffStrategy",
    "RetryConfig",
    "error_for_status",
    "no_backoff",
    "parse_duration",
    "server_delay",
]

# A server asking us to wait longer than this is more likely confused than right.
MAX_SERVER_DELAY = 600.0

_testing_no_backoff = False


class BackoffStrategy(enum.Enum):
    FIXED = "fixed"  # initial_delay every time
    LINEAR = "linear"  # initial_delay * attempt
    EXPONENTIAL = "exponential"  # initial_delay * multiplier ** (attempt - 1)
    JITTER = "jitter"  # exponential, each wait drawn from its upper half
    DECORRELATED = "decorrelated"  # AWS "decorrelated jitter": up to 3x the last wait


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """How often to try one task and how long to wait between tries.

    `max_attempts` counts the first try: 1 means no retry.
    """

    max_attempts: int = 3
    backoff_strategy: BackoffStrategy = BackoffStrategy.EXPONENTIAL
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0

    def delay(self, attempt: int, previous: float = 0.0, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if _testing_no_backoff:
            return 0.0
        r = (rng or random).random()
        base = self.initial_delay
        s = self.backoff_strategy
        if s is BackoffStrategy.FIXED:
            d = base
        elif s is BackoffStrategy.LINEAR:
            d = base * attempt
        elif s is BackoffStrategy.EXPONENTIAL:
            d = base * self.multiplier ** (attempt - 1)
        elif s is BackoffStrategy.JITTER:
            top = min(self.max_delay, base * self.multiplier ** (attempt - 1))
            d = top / 2 + r * top / 2
        else:
            d = base + r * (max(previous, base) * 3 - base)
        return min(d, self.max_delay)


@contextlib.contextmanager
def no_backoff() -> Iterator[None]:
    """Make every backoff zero (for tests); server delays are still honoured."""
    global _testing_no_backoff
    old, _testing_no_backoff = _testing_no_backoff, True
    try:
        yield
    finally:
        _testing_no_backoff = old


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds in OpenAI's reset format: '1s', '6m0s', '20ms', '1h2m3.5s', or a number."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def server_delay(headers: Mapping[str, str]) -> float | None:
    """The delay a response asks for: retry-after-ms, Retry-After, or the reset of an
    exhausted x-ratelimit budget. None when it asks for nothing."""
    get = headers.get
    value = get("retry-after-ms")
    if value:
        with contextlib.suppress(ValueError):
            return min(float(value) / 1000, MAX_SERVER_DELAY)
    value = get("retry-after")
    if value:
        try:
            return min(float(value), MAX_SERVER_DELAY)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                import datetime as dt

                when = parsedate_to_datetime(value)
                return min(max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0), MAX_SERVER_DELAY)
    for kind in ("requests", "tokens"):
        if get(f"x-ratelimit-remaining-{kind}") == "0":
            reset = get(f"x-ratelimit-reset-{kind}")
            seconds = parse_duration(reset) if reset else None
            if seconds is not None:
                return min(seconds, MAX_SERVER_DELAY)
    return None


def _error_fields(body: bytes) -> tuple[str, str | None]:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)", None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return str(err.get("message") or code or "error"), (str(code) if code else None)
    if isinstance(err, str):
        return err, None
    return str(data)[:200], None


def error_for_status(status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
    """Translate a non-2xx response into our error tree, as the design's table says."""
    message, code = _error_fields(body)
    text = f"HTTP {status}: {message}"
    if status == 429:
        if code == "insufficient_quota":
            return AuthError(text, status_code=status, code="insufficient_quota", headers=headers)
        return RateLimited(text, retry_after=server_delay(headers), status_code=status, headers=headers)
    if status in (401, 403):
        return AuthError(text, status_code=status, code=code or "auth", headers=headers)
    if status in (408, 409) or status >= 500:
        return TransientError(text, status_code=status, code=f"http_{status}", headers=headers)
    return PermanentError(text, status_code=status, code=code or f"http_{status}", headers=headers)
