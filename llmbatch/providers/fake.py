"""The offline `fake` provider: answers in-process by the fake model's rules (see
:mod:`llmbatch.providers.script`), with simulated latency and token usage. The demo
runs on it, and so can anyone without an API key."""

from __future__ import annotations

import asyncio
import itertools
import random

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import TransientError
from llmbatch.core.http import error_for_status
from llmbatch.core.values import Completion, Request
from llmbatch.providers import answers, script

__all__ = ["FakeProvider"]

DEFAULT_LATENCY_MS = 40.0


class FakeProvider:
    """A model that needs no network. `latency_ms` +- `jitter_ms` per request."""

    def __init__(
        self, *, latency_ms: float = DEFAULT_LATENCY_MS, jitter_ms: float = 20.0, seed: int = 0
    ) -> None:
        self.latency = latency_ms / 1000
        self.jitter = jitter_ms / 1000
        self._rng = random.Random(seed)
        # Only scripted requests need their attempts counted; plain ones cost nothing.
        self._attempts: dict[str, int] = {}
        self._ids = itertools.count(1)

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion:
        body = request.body
        plan = script.parse_script(body)
        attempt = 0
        if plan.counted:
            attempt = self._attempts.get(request.custom_id, 0)
            self._attempts[request.custom_id] = attempt + 1
        outcome = script.step(plan, attempt, body)
        delay = plan.latency_ms / 1000 if plan.latency_ms is not None else self.latency
        if self.jitter:
            delay = max(0.0, delay + (self._rng.random() * 2 - 1) * self.jitter)
        fault = outcome.fault
        if fault == "hang" or (timeout is not None and delay > timeout):
            await asyncio.sleep(timeout if timeout is not None else 3600)
            raise TransientError(f"no answer within {timeout:g}s", code="timeout")
        if delay:
            await asyncio.sleep(delay)
        n = next(self._ids)
        endpoint = endpoint_of(request.url)
        if isinstance(fault, int):
            code = {429: "rate_limit_exceeded"}.get(fault)
            err = f'{{"error": {{"message": "simulated {fault}", "code": "{code or fault}"}}}}'.encode()
            raise error_for_status(fault, err, {"retry-after-ms": "10"} if fault == 429 else {})
        if fault == "drop":
            raise TransientError("connection failed: the server closed the connection", code="connection")
        if fault == "garbage":
            return Completion(body="<html>upstream hiccup</html>", latency_ms=delay * 1000, endpoint=endpoint)
        if fault == "nochoices":
            empty = answers.empty_body(endpoint.path)
            return Completion(body=empty, latency_ms=delay * 1000, endpoint=endpoint)
        data = answers.answer_body(
            endpoint.path, body, outcome, f"{answers.id_prefix(endpoint.path)}fake-{n}"
        )
        return Completion(
            body=data,
            usage=endpoint.usage(data),
            request_id=f"req_fake_{n}",
            latency_ms=delay * 1000,
            endpoint=endpoint,
        )

    async def aclose(self) -> None:
        return None
