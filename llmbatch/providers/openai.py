"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM) through the `openai` SDK.

The SDK decides *what* is sent: base URL (and ``OPENAI_BASE_URL``), the auth header,
organization and project headers, user agent. It prepares one request per endpoint in
full, through its own public pipeline (``AsyncOpenAI.post`` with a capturing
transport); each item then reuses that URL and those headers with its own body, on a
keep-alive aiohttp session sized to the run's concurrency.

Why not ``client.chat.completions.create`` per item: measured here, that path costs
about 3-5 ms of CPU per request (parameter transforms, httpx URL and header models,
pydantic response models), and still 1.1-2 ms with raw responses over the SDK's aiohttp
transport; a bulk client must stay near the ~0.3 ms of a bare HTTP client to reach
thousands of requests per second from one core. ``transport="sdk"`` keeps the SDK's
per-request path (raw response, aiohttp transport) for servers whose auth changes per
request (e.g. refreshing tokens). See docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Mapping
from typing import Literal

import aiohttp
import httpx2
import openai
import orjson
from yarl import URL

from llmbatch.core.endpoints import Endpoint, endpoint_of
from llmbatch.core.errors import ConfigError, TransientError
from llmbatch.core.values import Completion, Request
from llmbatch.providers.aio import Timeouts, open_session
from llmbatch.providers.base import DEFAULT_TIMEOUT, completion_of
from llmbatch.providers.openai_errors import connection_error, redact, secret_of, translate

__all__ = ["OpenAIProvider"]

_LARGE_BODY = 1 << 20
# Headers the SDK sets per request that must not be replayed on every item, and those
# aiohttp sets itself.
_PER_REQUEST_HEADERS = frozenset(
    {"content-length", "idempotency-key", "host", "connection", "accept-encoding"}
)
# The SDK's telemetry (language, OS, runtime versions...): eight headers on every item
# that no server needs to answer it; `--transport sdk` still sends them.
_TELEMETRY_PREFIX = "x-stainless-"


class _Capture(httpx2.AsyncBaseTransport):
    """A transport that records the request the SDK built and answers an empty 200."""

    def __init__(self) -> None:
        self.request: httpx2.Request | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.request = request
        return httpx2.Response(200, content=b"{}", request=request)


# Where an endpoint's requests go, with the SDK's headers, and the endpoint that reads
# their answers.
_Prepared = tuple[URL, dict[str, str], Endpoint]


def _sdk_path(url: str) -> str:
    """'/v1/chat/completions' -> 'chat/completions' (the SDK's base URL ends in /v1)."""
    return url.removeprefix("/v1/").lstrip("/")


class OpenAIProvider:
    """Sends requests to an OpenAI-compatible API. The SDK's own retries are off:
    retries, pacing and error handling belong to llmbatch."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        concurrency: int = 64,
        organization: str | None = None,
        project: str | None = None,
        headers: Mapping[str, str] | None = None,
        transport: Literal["fast", "sdk"] = "fast",
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.transport = transport
        # A server (or proxy) may quote our Authorization header back in a body; the
        # key must not reach the output or the terminal through it.
        self._secret = secret_of(api_key)
        self.client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            default_headers=dict(headers or {}),
            max_retries=0,
            timeout=timeout,
            http_client=self._sdk_http_client() if transport == "sdk" else None,
        )
        self._prepared: dict[str, _Prepared] = {}
        self._session_headers: dict[str, str] | None = None
        self._timeout = Timeouts()
        self._preparing: dict[str, asyncio.Task[_Prepared]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _sdk_http_client(self) -> httpx2.AsyncClient:
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        client: httpx2.AsyncClient = openai.DefaultAioHttpClient(limits=limits)
        return client

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    async def _prepared_for(self, url: str) -> _Prepared:
        """The first requests of a run arrive together: they share one preparation."""
        task = self._preparing.get(url)
        if task is None:
            task = self._preparing[url] = asyncio.ensure_future(self._prepare(url))
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and (task.cancelled() or task.exception() is not None):
                self._preparing.pop(url, None)

    async def _prepare(self, url: str) -> _Prepared:
        capture = _Capture()
        probe = self.client.copy(http_client=httpx2.AsyncClient(transport=capture))
        try:
            await probe.post(
                _sdk_path(url),
                cast_to=httpx2.Response,
                content=b"{}",
                options={"headers": {"Content-Type": "application/json"}},
            )
        finally:
            await probe.close()
        req = capture.request
        if req is None:  # pragma: no cover - the SDK always sends through its client
            raise ConfigError("the openai SDK did not build a request")
        headers = {
            k: v
            for k, v in req.headers.items()
            if k.lower() not in _PER_REQUEST_HEADERS and not k.lower().startswith(_TELEMETRY_PREFIX)
        }
        prepared = (URL(str(req.url), encoded=True), headers, endpoint_of(url))
        self._prepared[url] = prepared
        return prepared

    def _open_session(self, headers: dict[str, str]) -> aiohttp.ClientSession:
        self._session = open_session(self.concurrency, headers)
        self._session_headers = headers
        return self._session

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion:
        if self.transport == "sdk":
            return await self._complete_sdk(request, timeout)
        prepared = self._prepared.get(request.url) or await self._prepared_for(request.url)
        url, headers, endpoint = prepared
        session = self._session or self._open_session(headers)
        data = orjson.dumps(request.body)
        # aiohttp warns about a bytes body over 1 MB (an error under -W error, so the
        # item failed); a BytesIO body goes out in chunks instead.
        payload: bytes | io.BytesIO = io.BytesIO(data) if len(data) > _LARGE_BODY else data
        started = time.perf_counter()
        try:
            async with session.post(
                url,
                data=payload,
                headers=None if headers is self._session_headers else headers,
                timeout=self._timeout(timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers: Mapping[str, str] = resp.headers
        except TimeoutError:
            raise TransientError(f"no answer within {timeout:g}s", code="timeout") from None
        except aiohttp.ClientError as exc:
            raise connection_error(exc, self._secret) from None
        return completion_of(status, self._redact(raw), resp_headers, started, endpoint)

    async def _complete_sdk(self, request: Request, timeout: float | None) -> Completion:
        started = time.perf_counter()
        try:
            resp = await self.client.post(
                _sdk_path(request.url),
                cast_to=httpx2.Response,
                content=orjson.dumps(request.body),
                options={
                    "headers": {"Content-Type": "application/json"},
                    "timeout": timeout or self.client.timeout,
                },
            )
        except openai.APIConnectionError as exc:  # a timeout too: its cause says which
            raise connection_error(exc, self._secret, timeout=timeout) from None
        except openai.OpenAIError as exc:
            raise translate(exc, self._secret) from None
        return completion_of(
            resp.status_code, self._redact(resp.content), resp.headers, started, endpoint_of(request.url)
        )

    def _redact(self, raw: bytes) -> bytes:
        return redact(raw, self._secret)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.client.close()
