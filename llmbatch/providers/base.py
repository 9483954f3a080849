"""The one seam to the outside: a `Provider` turns a `Request` into a `Completion` or
raises one of :mod:`llmbatch.core.errors`' `ProviderError`s."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import orjson

from llmbatch.core.endpoints import Endpoint
from llmbatch.core.http import error_for_status
from llmbatch.core.values import Completion, Request, Usage

__all__ = ["DEFAULT_TIMEOUT", "Provider", "completion_of"]

# Seconds to wait for one answer.
DEFAULT_TIMEOUT = 120.0


@runtime_checkable
class Provider(Protocol):
    """Anything that can answer a request: OpenAI-compatible HTTP, the fake, a test double."""

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion: ...

    async def aclose(self) -> None: ...


def completion_of(
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    started: float,
    endpoint: Endpoint,
    *,
    request_id: str = "x-request-id",
) -> Completion:
    """The `Completion` of one HTTP answer begun at `started` (perf_counter), or the error
    its status means; `request_id` names the header the provider puts its request id in."""
    latency = (time.perf_counter() - started) * 1000
    if status >= 300:
        raise error_for_status(status, raw, headers)
    body: Any
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Not an answer; the validate stage says so and the item is asked again.
        body = raw[:2000].decode("utf-8", "replace")
    usage = endpoint.usage(body) if isinstance(body, dict) else Usage()
    # body, status_code, usage, headers, request_id, latency_ms, endpoint (positional:
    # once per answer)
    return Completion(body, status, usage, headers, headers.get(request_id), latency, endpoint)
