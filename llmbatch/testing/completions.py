"""The fake model's endpoints: ``POST /chat/completions``, ``/embeddings``,
``/responses``, ``/completions`` and ``/moderations``.

What one model request meets on the fake server (:class:`~llmbatch.testing.server.FakeServer`,
whose base this is), in order: the ``@fake`` script of its body
(:mod:`llmbatch.providers.script`) and the attempt it is on; the rate limits
(:mod:`llmbatch.testing.buckets`), which refuse it with a 429 and OpenAI's headers; for a
``service_tier: flex`` request, a share refused with flex's capacity 429 ("Resource
unavailable"); a random injected fault (an HTTP error, a hang, a dropped connection, a body that is not
JSON, an answer without choices); the latency; then the answer, counted in the stats.
The settings it reads (``latency``, ``fault_rate``, ``retry_after``...) are the server's
constructor arguments, kept on the server so a test may change them while it runs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from llmbatch.core.endpoints import CHAT, EMBEDDINGS, ENDPOINTS, MODERATIONS
from llmbatch.providers import answers, script
from llmbatch.testing.api import JSON, Reply, error_body, injected_error
from llmbatch.testing.buckets import KeyLimit, RateLimits
from llmbatch.testing.counts import Attempts, ServerStats, request_digest
from llmbatch.testing.parts import bad_part
from llmbatch.testing.promptcache import PromptCache
from llmbatch.testing.quality import Quality

__all__ = ["FAULT_KINDS", "MODEL_PATHS", "ModelEndpoints"]

MODEL_PATHS = tuple(ENDPOINTS)  # the model endpoints served, /v1 paths

FAULT_KINDS = (429, 500, 502, 503, "hang", "drop", "garbage", "nochoices")
TORN_BODY = b'{"id": "chatcmpl-torn", "object": "chat.completion", "choices": [{"ind'
NO_SCRIPT = script.Script()
# What OpenAI's flex tier answers, with a 429, when it has no capacity for a request.
CAPACITY_BODY = error_body(
    "Resource unavailable: flex processing has no capacity for this request right now. "
    "Retry later, or send it on the default tier.",
    "rate_limit_error",
    "resource_unavailable",
)
# A body holding neither the directive nor a JSON escape (which could spell it) has no
# script: a bytes search is far cheaper than looking through its messages.
DIRECTIVE = script.DIRECTIVE.encode()


class ModelEndpoints:
    """The model endpoints (the base of ``FakeServer``): chat completions, embeddings,
    the Responses API, completions and moderations."""

    # The server's settings and counters (see ``FakeServer``), read on every request.
    latency: float
    jitter: float
    fault_rate: float
    flex_capacity_429: float  # the share of flex requests refused for want of capacity
    faults: tuple[int | str, ...]
    retry_after: bool
    limit_headers: bool
    hang_seconds: float
    rng: random.Random
    stats: ServerStats
    attempts: Attempts
    limits: RateLimits | None
    key_limit: KeyLimit | None  # a LiteLLM-style key limit in front of the model
    quality: Quality | None  # a share of each model's answers spoiled
    prompt_cache: PromptCache | None  # cached_tokens for prefixes sent before
    reply: Reply
    _seq: int

    def _limit_headers(self) -> list[tuple[str, str]]:
        if not self.limit_headers:
            return []
        out = self.limits.headers() if self.limits is not None else []
        if self.key_limit is not None:
            out += self.key_limit.headers()
        return out

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._model(request, CHAT)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._model(request, EMBEDDINGS)

    def model_handler(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The handler of the model endpoint at `path` (a /v1 path)."""
        if path == CHAT:
            return self._chat
        if path == EMBEDDINGS:
            return self._embeddings

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._model(request, path)

        return handler

    async def _model(self, request: web.Request, path: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except (orjson.JSONDecodeError, ValueError) as exc:
            return self.reply(400, error_body(f"Invalid JSON body: {exc}", "invalid_request_error", None))

        # Images and PDFs are checked as OpenAI checks them (a body without any: not looked at).
        if (b"image" in raw or b"file" in raw) and (problem := bad_part(path, body)) is not None:
            return self.reply(400, error_body(problem, "invalid_request_error", "invalid_image_format"))
        plan = script.parse_script(body) if DIRECTIVE in raw or b"\\u" in raw else NO_SCRIPT
        # Only a script's outcome depends on the attempt, and only a body seen in a batch
        # has a custom_id to count its answers under: the others need no count.
        attempts = self.attempts
        key = attempts.key(request_digest(path, raw, body)) if plan is not NO_SCRIPT or attempts.ids else None
        attempt = attempts.count(key) if key is not None else 0
        outcome = script.step(plan, attempt, body)
        payload = answers.answer_body(path, body, outcome, "")
        prompt, completion = answers.billed(payload)

        if self.key_limit is not None and not self.key_limit.admit():
            self.stats.rate_limited += 1
            hdrs = [*self._limit_headers(), ("retry-after", self.key_limit.retry_after)]
            return self.reply(429, error_body(self.key_limit.refusal(), "rate_limit_error", "429"), hdrs)
        if self.limits is not None:
            refused = self.limits.admit(_charge(path, body, prompt, completion))
            if refused is not None:
                self.stats.rate_limited += 1
                hdrs = self._limit_headers()
                if self.retry_after and refused.wait is not None:
                    hdrs.append(("retry-after-ms", str(int(refused.wait * 1000) + 1)))
                    hdrs.append(("retry-after", str(max(1, round(refused.wait)))))
                return self.reply(429, error_body(refused.message, refused.kind, "rate_limit_exceeded"), hdrs)
        limit_headers = self._limit_headers()
        if self.prompt_cache is not None:  # at arrival: the prefix is held from now
            self.prompt_cache.serve(path, body, payload)
        tier = body.get("service_tier")
        if tier == "flex" and self.flex_capacity_429 and self.rng.random() < self.flex_capacity_429:
            self.stats.faults["capacity_429"] = self.stats.faults.get("capacity_429", 0) + 1
            return self.reply(429, CAPACITY_BODY, limit_headers)
        if tier is not None and path not in (EMBEDDINGS, MODERATIONS):
            payload["service_tier"] = "default" if tier == "auto" else tier  # the tier that answered

        fault = outcome.fault
        if fault is None and self.fault_rate and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(self.faults)  # a random fault is not the script's attempt
        elif key is not None:
            attempts.answered(key)

        delay = self.latency if plan.latency_ms is None else plan.latency_ms / 1000
        if self.jitter:
            delay += self.rng.random() * self.jitter

        stats = self.stats
        if fault is not None:
            stats.faults[str(fault)] = stats.faults.get(str(fault), 0) + 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if fault == "hang":  # held from arrival, whatever the latency
                return await self._hang(request)
            if delay > 0:
                await asyncio.sleep(delay)
            if fault is not None:
                return await self._fault(request, fault, path)
            self._seq += 1
            if path != EMBEDDINGS:
                payload["id"] = f"{answers.id_prefix(path)}{self._seq}"
            stats.prompt_tokens += prompt
            stats.completion_tokens += completion
            spoiled = self.quality is not None and self.quality.spoil(path, body, payload)
            stats.answered("live", body.get("model"), prompt, completion, answers.cached(payload), spoiled)
            hdrs = [("x-request-id", f"req_{self._seq:08d}"), *limit_headers]
            return self.reply(200, orjson.dumps(payload), hdrs)
        finally:
            stats.in_flight -= 1

    async def _fault(self, request: web.Request, fault: int | str, path: str = CHAT) -> web.StreamResponse:
        if isinstance(fault, int) or fault == "quota":
            status, error = injected_error(fault)
            hdrs = [("retry-after-ms", "20")] if fault == 429 and self.retry_after else []
            return self.reply(status, orjson.dumps({"error": error}), hdrs)
        if fault == "garbage":
            return self.reply(200, b"<html><body>502 upstream hiccup</body></html>")
        if fault == "nochoices":
            return self.reply(200, orjson.dumps(answers.empty_body(path)))
        return await self._torn(request)

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.hang_seconds)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=504)  # never sent: the connection is gone

    async def _torn(self, request: web.Request) -> web.StreamResponse:
        """Headers and half a body, then the connection goes away ("drop")."""
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        response.content_length = len(TORN_BODY) * 3
        await response.prepare(request)
        await response.write(TORN_BODY)
        if request.transport is not None:
            request.transport.close()  # after what was written has gone out
        return response


def _charge(path: str, body: dict[str, Any], prompt: int, completion: int) -> int:
    """The tokens a request costs against the tokens-per-minute limit: its prompt and
    its answer's ceiling (what OpenAI counts before answering), else the answer's
    tokens."""
    endpoint = ENDPOINTS[path]
    if not endpoint.answers:
        return prompt
    for name in endpoint.ceiling_keys:
        ceiling = body.get(name)
        if isinstance(ceiling, int) and not isinstance(ceiling, bool) and ceiling > 0:
            return prompt + ceiling
    return prompt + completion
