"""A fake Anthropic API on loopback (aiohttp.web), for tests, benchmarks and trying
``--provider anthropic`` out: ``POST /v1/messages`` and the Message Batches API
(``/v1/messages/batches``: create with the requests inline, list, retrieve, cancel,
results as JSONL), answered by the fake model's rules (:mod:`llmbatch.providers.script`,
the ``@fake`` scripts included) in Anthropic's shapes (`answers.messages_body`).

Its limits are Anthropic's: requests, input tokens and output tokens per minute, each a
token bucket (:class:`~llmbatch.testing.buckets.Bucket`) holding ``bucket_seconds`` of
its rate, announced only in ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-
{limit,remaining,reset}`` (the reset an RFC 3339 time); a request over one is a 429
``rate_limit_error`` with ``retry-after`` (whole seconds, as Anthropic sends). An input
token is what the prompt holds less what the cache read; an output token is what the
answer holds. ``overload_share`` of requests get a 529 ``overloaded_error`` for the first
``overload_seconds`` (None: always), as Anthropic does when it is overloaded.

Batches end ``batch_seconds`` after their create; a request whose custom_id hashes into
``errored_share`` is errored (an ``api_error``) and into ``expired_share`` expired, the
first time the server sees that id only (so a follow-up of it succeeds). ``read_delay``
holds each create before its body is read (a client killed meanwhile made no batch),
``results_delay`` each results download halfway;
the first ``lose_create_answers`` creates make their batch and drop the connection.
With ``prompt_cache`` (:mod:`llmbatch.testing.anthropic_cache`, ``--prompt-cache``) a
prefix up to a ``cache_control`` breakpoint seen before is read from the cache, else
written; text blocks split at a breakpoint are read (and answered) as one text.

Run it alone: ``python -m llmbatch.testing.anthropic --port 8901 --rpm 600 --itpm 40000``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import itertools
import random
import threading
from typing import Any

import orjson
from aiohttp import web

from llmbatch.core.endpoints import MESSAGES
from llmbatch.providers import answers, script
from llmbatch.testing.anthropic_batches import MessageBatches, _Batch
from llmbatch.testing.anthropic_cache import AnthropicPromptCache, readable
from llmbatch.testing.anthropic_wire import FAULT_KINDS as _FAULT_KINDS
from llmbatch.testing.anthropic_wire import AnthropicStats, Fault
from llmbatch.testing.anthropic_wire import error as _error
from llmbatch.testing.anthropic_wire import rfc3339 as _rfc3339
from llmbatch.testing.buckets import Bucket
from llmbatch.testing.parts import bad_part
from llmbatch.testing.threaded import InThread

__all__ = ["AnthropicServer", "AnthropicStats"]

_KINDS = (("requests", "requests"), ("input-tokens", "input"), ("output-tokens", "output"))


class AnthropicServer(MessageBatches, InThread):
    """The fake Anthropic API (see the module docstring)."""

    thread_name = "fake-anthropic-server"

    def __init__(
        self,
        *,
        rpm: float | None = None,
        itpm: float | None = None,
        otpm: float | None = None,
        bucket_seconds: float = 60.0,
        latency_ms: float = 0.0,
        overload_share: float = 0.0,
        overload_seconds: float | None = None,
        api_key: str | None = None,
        batch_seconds: float = 0.5,
        errored_share: float = 0.0,
        expired_share: float = 0.0,
        read_delay: float = 0.0,
        results_delay: float = 0.0,
        lose_create_answers: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        prompt_cache: AnthropicPromptCache | None = None,
    ) -> None:
        self.limits = {"requests": rpm, "input": itpm, "output": otpm}
        self.bucket_seconds = bucket_seconds
        self.latency = latency_ms / 1000
        self.overload_share = overload_share
        self.overload_seconds = overload_seconds
        self.api_key = api_key
        self.batch_seconds = batch_seconds
        self.errored_share = errored_share
        self.expired_share = expired_share
        self.read_delay = read_delay
        self.results_delay = results_delay
        self.lose_create_answers = lose_create_answers
        self.host, self.port = host, port
        self.stats = AnthropicStats()
        self.prompt_cache = prompt_cache
        self.batches: dict[str, _Batch] = {}
        self._buckets: dict[str, Bucket] = {}
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._attempts: dict[str, int] = {}
        self._seen: set[str] = set()  # custom_ids batched before (their second time succeeds)
        self._started: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- the limits -------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _bucket(self, kind: str) -> Bucket | None:
        limit = self.limits[kind]
        if not limit:
            return None
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = Bucket(
                limit, seconds=self.bucket_seconds, spent=False, now=self._now()
            )
        bucket.refill(self._now())
        return bucket

    def _headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        now = dt.datetime.now(dt.UTC)
        for name, kind in _KINDS:
            bucket = self._bucket(kind)
            if bucket is not None:
                full = (bucket.capacity - bucket.level) / bucket.rate
                out[f"anthropic-ratelimit-{name}-limit"] = f"{bucket.limit:.0f}"
                out[f"anthropic-ratelimit-{name}-remaining"] = str(bucket.remaining)
                out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(now + dt.timedelta(seconds=max(full, 0)))
        return out

    def _admit(self, charges: dict[str, float]) -> float | None:
        """Charge the buckets, or charge none and return the seconds to wait."""
        waits = [b.wait(n) for kind, n in charges.items() if (b := self._bucket(kind)) is not None]
        if any(w > 0 for w in waits):
            return max(waits)
        for kind, n in charges.items():
            if (b := self._bucket(kind)) is not None:
                b.take(n)
        return None

    # --- requests -----------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        key = request.headers.get("x-api-key", "")
        self.stats.api_keys.add(key)
        return self.api_key is None or key == self.api_key

    def _answer(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        read = readable(body)  # what the model reads: split text blocks whole again
        plan = script.parse_script(read)
        attempt = self._attempts.get(key, 0) if plan.counted else 0
        if plan.counted:
            self._attempts[key] = attempt + 1
        step = script.step(plan, attempt, read)
        if isinstance(step.fault, int):
            raise Fault(step.fault)
        if self.prompt_cache is not None and not (step.cached or step.written):
            cached, written = self.prompt_cache.serve(body)
            step = dataclasses.replace(step, cached=cached, written=written)
        return answers.messages_body(read, step, f"msg_fake_{next(self._ids)}")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        if not self._authorized(request):
            return web.Response(status=401, body=_error("authentication_error", "invalid x-api-key"))
        if request.headers.get("anthropic-version") is None:
            return web.Response(status=400, body=_error("invalid_request_error", "anthropic-version missing"))
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.Response(status=400, body=_error("invalid_request_error", "body is not JSON"))
        stats.versions.add(request.headers["anthropic-version"])
        stats.bodies.append(body)
        if (
            not isinstance(body, dict)
            or "max_tokens" not in body
            or not isinstance(body.get("messages"), list)
        ):
            return web.Response(
                status=400, body=_error("invalid_request_error", "max_tokens: Field required")
            )
        if (problem := bad_part(MESSAGES, body)) is not None:
            stats.bad_blocks.append(problem)
            return web.Response(status=400, body=_error("invalid_request_error", problem))
        now = self._now()
        if self._started is None:
            self._started = now
        storm = self.overload_seconds is None or now - self._started < self.overload_seconds
        if storm and self.overload_share and self._rng.random() < self.overload_share:
            stats.http_529 += 1
            return web.Response(status=529, body=_error("overloaded_error", "Overloaded"))
        try:
            answer = self._answer(body, script.script_root(body) or "")
        except Fault as fault:
            kind = _FAULT_KINDS.get(fault.status, "api_error")
            stats.http_529 += fault.status == 529
            return web.Response(status=fault.status, body=_error(kind, f"simulated {fault.status}"))
        usage = answer["usage"]
        charges = {
            "requests": 1.0,
            "input": float(usage["input_tokens"] + usage["cache_creation_input_tokens"]),
        }
        charges["output"] = float(usage["output_tokens"])
        wait = self._admit(charges)
        if wait is not None:
            stats.http_429 += 1
            headers = {**self._headers(), "retry-after": str(max(1, int(wait + 0.999)))}
            message = "This request would exceed your organization's rate limit. Please retry later."
            return web.Response(status=429, body=_error("rate_limit_error", message), headers=headers)
        stats.admitted_at.append(now)
        if self.latency:
            await asyncio.sleep(self.latency)
        stats.answered += 1
        stats.usages.append(usage)
        headers = {**self._headers(), "request-id": f"req_{answer['id']}", "content-type": "application/json"}
        return web.Response(body=orjson.dumps(answer), headers=headers)

    # --- running ----------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_post(MESSAGES, self._messages)
        app.router.add_post("/v1/messages/batches", self._create_batch)
        app.router.add_get("/v1/messages/batches", self._list)
        app.router.add_get("/v1/messages/batches/{id}", self._retrieve)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._cancel)
        app.router.add_get("/v1/messages/batches/{id}/results", self._results)
        app.router.add_get("/_stats", self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        """What the server counted, for a client in another process (the benchmarks)."""
        s = self.stats
        started = s.admitted_at[0] if s.admitted_at else 0.0
        counts = {
            "requests": s.requests,
            "answered": s.answered,
            "http_429": s.http_429,
            "http_529": s.http_529,
            "batches_created": s.batches_created,
            "admitted_s": [round(t - started, 3) for t in s.admitted_at],
        }
        return web.json_response(counts)

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def close(self) -> None:
        """Stop listening and close the connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llmbatch.testing.anthropic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--itpm", type=float)
    parser.add_argument("--otpm", type=float)
    parser.add_argument("--bucket-seconds", type=float, default=60.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--overload-share", type=float, default=0.0)
    parser.add_argument("--overload-seconds", type=float)
    parser.add_argument("--batch-seconds", type=float, default=5.0)
    parser.add_argument("--prompt-cache", action="store_true", help="model Anthropic's prompt cache")
    args = parser.parse_args(argv)
    server = AnthropicServer(
        rpm=args.rpm,
        itpm=args.itpm,
        otpm=args.otpm,
        bucket_seconds=args.bucket_seconds,
        latency_ms=args.latency_ms,
        overload_share=args.overload_share,
        overload_seconds=args.overload_seconds,
        batch_seconds=args.batch_seconds,
        port=args.port,
        prompt_cache=AnthropicPromptCache() if args.prompt_cache else None,
    )

    async def run() -> None:
        await server.serve()
        print(f"fake Anthropic API on {server.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover
    main()
