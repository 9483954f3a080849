"""Anthropic's Messages API (``--provider anthropic``), over plain HTTP on the same kind of
keep-alive aiohttp session the OpenAI-compatible provider sends on.

Plain HTTP rather than the ``anthropic`` SDK: llmbatch already has the session, the
pacing, the retries and the learning of rate-limit headers; what the SDK would add is a
second HTTP stack (httpx) with retries of its own to turn off, and per-request model
building that costs more CPU than the rest of the pipeline (as the openai SDK's does).
A request is ``POST {base}/v1/messages`` with ``x-api-key``, ``anthropic-version`` and
the body as given; the answer is kept as parsed JSON.

Errors are read as every provider's are (:func:`llmbatch.core.http.error_for_status`):
Anthropic's ``{"type": "error", "error": {"type", "message"}}`` gives the message and
code; 429 is a rate limit (``retry-after`` honoured), 529 ``overloaded_error`` is a
transient 5xx, retried with backoff without touching the pace (it is Anthropic's load,
not our rate). The Message Batches calls go through `call` (see
:mod:`llmbatch.providers.anthropic_batches`).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from llmbatch.core.endpoints import MESSAGES, endpoint_of
from llmbatch.core.errors import PermanentError, TransientError
from llmbatch.core.values import Completion, Request
from llmbatch.providers.aio import Timeouts, open_session
from llmbatch.providers.base import DEFAULT_TIMEOUT, completion_of
from llmbatch.providers.openai_errors import connection_error, redact, secret_of

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_ANTHROPIC_URL", "AnthropicProvider", "anthropic_root"]

DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
# The API version every request names (Anthropic's only stable one to date).
ANTHROPIC_VERSION = "2023-06-01"
_LARGE_BODY = 1 << 20


def anthropic_root(base_url: str | None) -> str:
    """The API's root: --base-url (or ANTHROPIC_BASE_URL, else Anthropic's), without a
    trailing ``/v1`` (both forms are accepted: paths here carry their own ``/v1``)."""
    url = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_URL).rstrip("/")
    return url.removesuffix("/v1")


class AnthropicProvider:
    """Sends Messages requests to Anthropic (or a proxy at `base_url`)."""

    endpoint = MESSAGES  # what it speaks (the library's executor builds its requests for it)

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        concurrency: int = 64,
        timeout: float | None = DEFAULT_TIMEOUT,
        version: str = ANTHROPIC_VERSION,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.root = anthropic_root(base_url)
        self.timeout = timeout
        # A proxy may quote our headers back in a body: the key never reaches the output.
        self._secret = secret_of(api_key)
        self._headers = {
            "x-api-key": api_key,
            "anthropic-version": version,
            "content-type": "application/json",
        }
        self._timeout = Timeouts()
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return self.root

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self.concurrency, self._headers)
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange with the API (`path` from the root, ``/v1/...``): its status,
        body (the key taken out) and headers; a failed connection is a TransientError."""
        try:
            async with self.session.request(
                method,
                self.root + path,
                data=data,
                headers=headers,
                timeout=self._timeout(timeout if timeout is not None else self.timeout),
            ) as resp:
                raw = await resp.read()
                return resp.status, redact(raw, self._secret), resp.headers
        except TimeoutError:
            raise TransientError(f"no answer within {timeout or self.timeout:g}s", code="timeout") from None
        except aiohttp.ClientError as exc:
            raise connection_error(exc, self._secret) from None

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion:
        if request.url != MESSAGES:
            raise PermanentError(
                f"--provider anthropic speaks {MESSAGES}, not {request.url}", code="unsupported_endpoint"
            )
        data = orjson.dumps(request.body)
        payload: bytes | io.BytesIO = io.BytesIO(data) if len(data) > _LARGE_BODY else data
        started = time.perf_counter()
        status, raw, headers = await self.call("POST", MESSAGES, data=payload, timeout=timeout)
        return completion_of(status, raw, headers, started, endpoint_of(MESSAGES), request_id="request-id")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
