"""A fake OpenAI-compatible HTTP server for tests, benchmarks and trying llmbatch out.

Built on :mod:`aiohttp.web`, it serves ``POST /v1/chat/completions``, ``/v1/embeddings``,
``/v1/responses``, ``/v1/completions`` and ``/v1/moderations`` (also without the
``/v1``) quickly from one core, and answers by
the fake model's rules (:mod:`llmbatch.providers.script`), including the ``@fake``
scripts. It also serves the Files and Batch APIs (:mod:`llmbatch.testing.files`,
:mod:`llmbatch.testing.batches`): batches run in the background, their lines answered by
the same model with the same attempt counts as live requests. On top it can add latency,
enforce requests and tokens per minute the way providers do (smoothly, with OpenAI's
rate-limit headers: :mod:`llmbatch.testing.buckets`), inject random faults, and require
an API key. It counts what it saw: ``GET /_stats`` or :attr:`FakeServer.stats`.

Its event loop is uvloop's when uvloop is installed (the ``dev`` extra has it): on Python
3.11 aiohttp.web costs about a third less CPU per request there, which is what lets one core
of this server outpace the clients it measures. Without uvloop it runs on asyncio's loop.

Tests extend it by overriding :meth:`FakeServer.handle`, which sees every request;
new endpoints are rows added to :meth:`FakeServer.routes`.

The model endpoints live in :mod:`llmbatch.testing.completions`; this module owns the
server itself: its settings, the route table and the one handler every request passes
(the API key, the 404, the answer to an :class:`~llmbatch.testing.api.ApiError`), the
counters route, and running it in a thread or a loop of its own.

Run it alone with ``python -m llmbatch.testing.server --port 8900 --latency-ms 50``
(its flags: :mod:`llmbatch.testing.cli`).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Mapping
from typing import cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from llmbatch.testing.api import JSON, ApiError, error_body
from llmbatch.testing.batches import BatchBehaviour, BatchQueue
from llmbatch.testing.buckets import RESET_MEANINGS, KeyLimit, RateLimits, ResetMeaning
from llmbatch.testing.completions import FAULT_KINDS, MODEL_PATHS, ModelEndpoints
from llmbatch.testing.counts import Attempts, ServerStats
from llmbatch.testing.files import FileStore
from llmbatch.testing.promptcache import PromptCache
from llmbatch.testing.quality import Quality
from llmbatch.testing.threaded import LOOP_KINDS, InThread, LoopKind, new_event_loop

__all__ = ["LOOP_KINDS", "FakeServer", "LoopKind", "ServerStats", "error_body", "new_event_loop"]


STATS_PATH = "/_stats"
# Long enough for requests in flight to see their answer out, short enough that
# stopping a server with hung requests does not hold up a test suite.
SHUTDOWN_GRACE_S = 0.1


class FakeServer(ModelEndpoints, InThread):
    """An OpenAI-compatible server on loopback; start it in a thread or serve it in a loop.

    ``rpm`` and ``tpm`` are enforced by buckets holding ``bucket_seconds`` of their rate,
    full at the start unless ``start_spent``; with ``enforce_seconds``, they are also
    enforced over that shorter window, which their headers do not announce. ``key_rpm``
    puts a LiteLLM-style key limit in front (a fixed window of ``key_window`` seconds,
    ``x-ratelimit-api_key-*`` headers, ``retry-after: 60`` on its 429s: see
    :class:`~llmbatch.testing.buckets.KeyLimit`). A request is charged its prompt tokens plus
    its answer's ceiling, ``max_completion_tokens`` or ``max_tokens`` (``max_output_tokens``
    on the Responses API: what OpenAI counts against the limit before answering), else
    the tokens of the answer it gets; an embedding request its input tokens, a
    moderation nothing. ``reset_means`` says what
    ``x-ratelimit-reset-*`` counts down to (see :data:`~llmbatch.testing.buckets.ResetMeaning`).
    ``loop`` is the event loop :meth:`start` runs it on (:meth:`serve` uses the running one).

    ``flex_capacity_429`` is the share of ``service_tier: flex`` requests refused with
    the 429 OpenAI's flex tier sends when it has no capacity (``resource_unavailable``);
    an answer says which tier served it (``service_tier``) when the request named one.

    The Batch API: a batch stays ``validating`` for ``batch_start_delay`` seconds, then
    runs ``batch_lines_per_second`` lines a second (None: unpaced) and stays in progress at
    least ``batch_min_seconds`` from its start; it expires after
    ``batch_expire_after`` lines; it fails with ``token_limit_exceeded`` when its input
    tokens and those of its model's batches still validating or in progress pass
    ``enqueued_token_limit``; the first ``lose_create_answers`` creates make their batch
    and drop the connection unanswered; the first ``fail_creates`` creates are refused
    with ``fail_create_status``, quoting the caller's Authorization header (see
    :class:`~llmbatch.testing.batches.BatchBehaviour`).

    ``quality`` spoils a share of each named model's answers, live and in batches (see
    :mod:`llmbatch.testing.quality`); ``prompt_cache`` reports ``cached_tokens`` for
    prefixes sent before (see :mod:`llmbatch.testing.promptcache`).
    """

    thread_name = "fake-openai-server"

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        rpm: float | None = None,
        tpm: float | None = None,
        bucket_seconds: float = 1.0,
        enforce_seconds: float | None = None,
        key_rpm: float | None = None,
        key_window: float = 60.0,
        start_spent: bool = False,
        reset_means: ResetMeaning = "next",
        fault_rate: float = 0.0,
        faults: tuple[int | str, ...] = FAULT_KINDS,
        flex_capacity_429: float = 0.0,
        retry_after: bool = True,
        limit_headers: bool = True,
        api_key: str | None = None,
        hang_seconds: float = 30.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        loop: LoopKind = "auto",
        batch_start_delay: float = 0.0,
        batch_lines_per_second: float | None = None,
        batch_min_seconds: float = 0.0,
        batch_expire_after: int | None = None,
        enqueued_token_limit: int | None = None,
        lose_create_answers: int = 0,
        fail_creates: int = 0,
        fail_create_status: int = 500,
        quality: Mapping[str, float] | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        if reset_means not in RESET_MEANINGS:
            raise ValueError(f"reset_means must be one of {', '.join(RESET_MEANINGS)}")
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be positive")
        if loop not in LOOP_KINDS:
            raise ValueError(f"loop must be one of {', '.join(LOOP_KINDS)}")
        self.latency = latency_ms / 1000
        self.jitter = jitter_ms / 1000
        self.rpm = rpm
        self.tpm = tpm
        self.bucket_seconds = bucket_seconds
        self.enforce_seconds = enforce_seconds
        self.key_rpm = key_rpm
        self.key_window = key_window
        self.start_spent = start_spent
        self.reset_means: ResetMeaning = reset_means
        self.fault_rate = fault_rate
        self.faults = faults
        self.flex_capacity_429 = flex_capacity_429
        self.retry_after = retry_after
        self.limit_headers = limit_headers  # x-ratelimit-*: off for servers that announce nothing
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self.rng = random.Random(seed)
        self.host = host
        self.port = port
        self.loop_kind: LoopKind = loop
        self.stats = ServerStats()
        self.quality = Quality(quality, seed=seed) if quality else None
        self.prompt_cache = prompt_cache
        self.attempts = Attempts(self.stats.answers)
        self.files = FileStore(self.stats, self.reply)
        behaviour = BatchBehaviour(
            start_delay=batch_start_delay,
            lines_per_second=batch_lines_per_second,
            min_seconds=batch_min_seconds,
            expire_after=batch_expire_after,
            enqueued_token_limit=enqueued_token_limit,
            lose_create_answers=lose_create_answers,
            fail_creates=fail_creates,
            fail_status=fail_create_status,
        )
        self.batches = BatchQueue(
            behaviour,
            files=self.files,
            attempts=self.attempts,
            stats=self.stats,
            reply=self.reply,
            seed=seed,
            quality=self.quality,
        )
        self.limits: RateLimits | None = None
        self.key_limit: KeyLimit | None = None
        self._auth = f"Bearer {api_key}"
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._handlers: dict[Handler, Handler] = {}  # a route's entry -> its own handler

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # --- running -----------------------------------------------------------------

    def application(self) -> web.Application:
        """The aiohttp application: :meth:`routes`, every request through :meth:`handle`
        (an unknown route too, which :meth:`handle` answers with a 404)."""
        stats = self.stats
        handlers = self._handlers

        # Each route's handler is an entry that counts the request and calls handle(),
        # which finds the route's own handler by its entry. No middleware: aiohttp's
        # middleware chain cost this server about 8% of its requests a second.
        def entry_for(handler: Handler | None) -> Handler:
            async def entry(request: web.Request) -> web.StreamResponse:
                stats.requests += 1
                stats.authorizations.add(request.headers.get("Authorization", ""))
                return await self.handle(request)

            if handler is not None:
                handlers[entry] = handler
            return entry

        # client_max_size=0: no limit on bodies (a test may refuse big ones itself).
        app = web.Application(client_max_size=0)
        for row in self.routes():
            handler = cast(Handler, row.handler)
            web.RouteDef(row.method, row.path, entry_for(handler), row.kwargs).register(app.router)
        app.router.add_route("*", "/{path:.*}", entry_for(None))
        return app

    async def serve(self) -> None:
        """Start listening in the running loop (returns once bound)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.rpm or self.tpm:
            self.limits = RateLimits(
                rpm=self.rpm,
                tpm=self.tpm,
                seconds=self.bucket_seconds,
                spent=self.start_spent,
                reset_means=self.reset_means,
                clock=loop.time,
                enforce_seconds=self.enforce_seconds,
            )
        if self.key_rpm:
            self.key_limit = KeyLimit(self.key_rpm, clock=loop.time, window=self.key_window)
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def close(self) -> None:
        """Stop listening, close the connections, and end the requests still in flight
        and the batches still running."""
        await self.batches.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --- the extension points ----------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The route table. Endpoints of their own (files, batches) add rows here."""
        table = [web.get(STATS_PATH, self._stats)]
        for prefix in ("/v1", ""):
            for path in MODEL_PATHS:
                table.append(web.post(prefix + path.removeprefix("/v1"), self.model_handler(path)))
            table += self.files.routes(prefix)
            table += self.batches.routes(prefix)
        return table

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request. Every request comes through here, counted in
        :attr:`stats` and matched against :meth:`routes` (``request.match_info``: an
        unknown route matches nothing in it and is answered with a 404).

        This is the hook for tests: override it to record, refuse or replace answers,
        and ``return await super().handle(request)`` for the usual one. The body is
        ``await request.read()``, as often as needed (it is read once). Answers made
        with :meth:`reply` are counted in ``stats.by_status``; plain ``web.Response``
        objects are not. An endpoint refuses a request by raising
        :class:`~llmbatch.testing.api.ApiError`: it is answered here."""
        if (
            self.api_key is not None
            and request.path != STATS_PATH
            and request.headers.get("Authorization", "") != self._auth
        ):
            message = "Incorrect API key provided."
            return self.reply(401, error_body(message, "invalid_request_error", "invalid_api_key"))
        handler = self._handlers.get(request.match_info.handler)
        if handler is None:
            message = f"Unknown route {request.method} {request.path_qs}"
            return self.reply(404, error_body(message, "invalid_request_error", None))
        try:
            return await handler(request)
        except ApiError as err:
            return self.reply(err.status, err.body())

    def reply(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        *,
        content_type: str = JSON,
    ) -> web.Response:
        """A JSON answer (or of that content type), counted in ``stats.by_status``."""
        by_status = self.stats.by_status
        by_status[status] = by_status.get(status, 0) + 1
        return web.Response(body=body, status=status, headers=headers, content_type=content_type)

    # --- the counters (GET /_stats) ------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        loop = type(asyncio.get_running_loop())
        counters = {**self.stats.as_dict(), "loop": f"{loop.__module__}.{loop.__qualname__}"}
        return web.Response(body=orjson.dumps(counters), content_type=JSON)


if __name__ == "__main__":
    from llmbatch.testing.cli import main

    main()
