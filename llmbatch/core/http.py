"""HTTP status and delay maths: what a non-2xx answer means in our error tree, and how
long a server asks us to wait (Retry-After, retry-after-ms, the x-ratelimit resets)."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from llmbatch.core.errors import (
    AuthError,
    CapacityError,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)

__all__ = [
    "CAPACITY_CODE",
    "MAX_SERVER_DELAY",
    "error_for_status",
    "parse_duration",
    "reset_seconds",
    "server_delay",
]

# A server asking us to wait longer than this is more likely confused than right.
MAX_SERVER_DELAY = 600.0

# OpenAI's flex tier refuses a request it has no capacity for with a 429 "Resource
# Unavailable" (its flex processing guide): the code, else the message, says which 429.
CAPACITY_CODE = "resource_unavailable"
_CAPACITY_MESSAGE = re.compile(r"\s*resource[ _]unavailable", re.IGNORECASE)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds in OpenAI's reset format: '1s', '6m0s', '20ms', '1h2m3.5s', or a number."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # 'nan', 'inf' and negative numbers are not delays
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def reset_seconds(text: str) -> float | None:
    """Seconds until a rate-limit reset: OpenAI's duration ('6m0s', '20ms') or
    Anthropic's RFC 3339 time ('2026-12-03T12:00:30Z'; 0 when past); None for neither."""
    seconds = parse_duration(text)
    if seconds is not None or "T" not in text:
        return seconds
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0), MAX_SERVER_DELAY)


def _seconds(value: str, scale: float = 1.0) -> float | None:
    """A finite, non-negative number of seconds (capped), or None."""
    try:
        seconds = float(value) * scale
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_SERVER_DELAY)


def _http_date(value: str) -> float | None:
    """Seconds until an HTTP-date (RFC 9110's other Retry-After form); 0 when past."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT, whether or not it says so
        when = when.replace(tzinfo=dt.UTC)
    return min(max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0), MAX_SERVER_DELAY)


def server_delay(headers: Mapping[str, str]) -> float | None:
    """The delay a response asks for: retry-after-ms, Retry-After (seconds or an
    HTTP-date), or the reset of an exhausted x-ratelimit budget; the same under the
    `llm_provider-` names the LiteLLM proxy forwards an upstream's headers by, when the
    response's own say nothing. None when it asks for nothing. Header names are matched
    without regard to case, as HTTP says."""
    if isinstance(headers, dict):  # HTTP clients' header maps already ignore case
        headers = {k.lower(): v for k, v in headers.items()}
    for prefix in _DELAY_PREFIXES:
        seconds = _delay_named(headers, prefix)
        if seconds is not None:
            return seconds
    return None


# The response's own headers, then an upstream's as the LiteLLM proxy relays them.
_DELAY_PREFIXES = ("", "llm_provider-")


def _delay_named(headers: Mapping[str, str], prefix: str) -> float | None:
    get = headers.get
    value = get(prefix + "retry-after-ms")
    if value and (seconds := _seconds(value, 0.001)) is not None:
        return seconds
    value = get(prefix + "retry-after")
    if value:
        seconds = _seconds(value)
        if seconds is None:
            seconds = _http_date(value)
        if seconds is not None:
            return seconds
    for kind in ("requests", "tokens"):
        if get(f"{prefix}x-ratelimit-remaining-{kind}") == "0":
            reset = get(f"{prefix}x-ratelimit-reset-{kind}")
            seconds = parse_duration(reset) if reset else None
            if seconds is not None:
                return min(seconds, MAX_SERVER_DELAY)
    return None


def _error_fields(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, type) of an error body: OpenAI's ``{"error": {...}}``, the flat
    ``{"message", "type", "code"}`` some servers (vLLM) send, ``{"detail": ...}``, a
    bare string, or not JSON at all (a proxy's HTML page). A numeric code (vLLM repeats
    the status) is no code."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)", None, None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, str):
        return err, None, None
    if isinstance(err, dict) and isinstance(err.get("detail"), str):  # FastAPI-based servers
        return err["detail"], None, None
    if not isinstance(err, dict) or not ("message" in err or "code" in err or "type" in err):
        return str(data)[:200], None, None
    code, kind = err.get("code"), err.get("type")
    code = code if isinstance(code, str) and code else None
    kind = kind if isinstance(kind, str) and kind else None
    return str(err.get("message") or code or kind or "error"), code, kind


def error_for_status(status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
    """Translate a non-2xx response into our error tree, as the design's table says."""
    message, code, kind = _error_fields(body)
    text = f"HTTP {status}: {message}"
    if status == 429:
        if "insufficient_quota" in (code, kind):  # out of credit: no wait will help
            return AuthError(text, status_code=status, code="insufficient_quota", headers=headers)
        if CAPACITY_CODE in (code, kind) or _CAPACITY_MESSAGE.match(message):
            return CapacityError(text, retry_after=server_delay(headers), status_code=status, headers=headers)
        return RateLimited(text, retry_after=server_delay(headers), status_code=status, headers=headers)
    if status in (401, 403):
        return AuthError(text, status_code=status, code=code or kind or "auth", headers=headers)
    if status in (408, 409) or status >= 500:  # a 503's Retry-After is honoured as a 429's
        return TransientError(
            text,
            retry_after=server_delay(headers),
            status_code=status,
            code=f"http_{status}",
            headers=headers,
        )
    return PermanentError(text, status_code=status, code=code or kind or f"http_{status}", headers=headers)
