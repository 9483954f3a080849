"""The fake Anthropic API's Message Batches (``/v1/messages/batches``): create with the
requests inline, list (newest first), retrieve, cancel, results as JSONL; the base of
:class:`~llmbatch.testing.anthropic.AnthropicServer`, whose settings it reads (see its
docstring: ``batch_seconds``, ``errored_share``, ``expired_share``, ``read_delay``,
``results_delay``, ``lose_create_answers``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llmbatch.core.endpoints import MESSAGES
from llmbatch.providers import script
from llmbatch.testing.anthropic_wire import FAULT_KINDS as _FAULT_KINDS
from llmbatch.testing.anthropic_wire import AnthropicStats, Fault
from llmbatch.testing.anthropic_wire import error as _error
from llmbatch.testing.anthropic_wire import rfc3339 as _rfc3339
from llmbatch.testing.parts import bad_part

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "MessageBatches"]

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# Anthropic's limits on one batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256_000_000


@dataclass(slots=True)
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created: dt.datetime
    ends: float  # the loop time it ends
    results: list[bytes] = field(default_factory=list)
    canceled: bool = False
    ended: dt.datetime | None = None


class MessageBatches:
    """The Message Batches endpoints (the base of ``AnthropicServer``)."""

    # The server's settings and state (see ``AnthropicServer``).
    stats: AnthropicStats
    batches: dict[str, _Batch]
    batch_seconds: float
    errored_share: float
    expired_share: float
    read_delay: float
    results_delay: float
    lose_create_answers: int
    _ids: itertools.count[int]
    _seen: set[str]

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    def _authorized(self, request: web.Request) -> bool:
        raise NotImplementedError

    def _answer(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        raise NotImplementedError

    def _batch_object(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.ended is not None
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if ended:
            for line in batch.results:
                counts[orjson.loads(line)["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        status = "ended" if ended else ("canceling" if batch.canceled else "in_progress")
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _rfc3339(batch.created),
            "ended_at": _rfc3339(batch.ended) if batch.ended else None,
            "expires_at": _rfc3339(batch.created + dt.timedelta(hours=24)),
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"{self.base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _end_due(self) -> None:
        """End the batches whose time has come: each request answered, errored,
        expired, or (cancelled) canceled."""
        now = self._now()
        for batch in self.batches.values():
            if batch.ended is None and (batch.canceled or now >= batch.ends):
                batch.results = [self._result(r, batch.canceled) for r in batch.requests]
                batch.ended = dt.datetime.now(dt.UTC)

    def _result(self, req: dict[str, Any], canceled: bool) -> bytes:
        cid = req["custom_id"]
        first = cid not in self._seen
        self._seen.add(cid)
        share = script.digest(cid) % 10_000 / 10_000
        result: dict[str, Any]
        if canceled:
            result = {"type": "canceled"}
        elif first and share < self.errored_share:
            result = {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "api_error", "message": "Internal server error"},
                },
            }
        elif first and share < self.errored_share + self.expired_share:
            result = {"type": "expired"}
        elif (problem := bad_part(MESSAGES, req.get("params") or {})) is not None:
            self.stats.bad_blocks.append(problem)
            error = {"type": "invalid_request_error", "message": problem}
            result = {"type": "errored", "error": {"type": "error", "error": error}}
        else:
            try:
                result = {"type": "succeeded", "message": self._answer(req["params"], f"{cid}\0batch")}
            except Fault as fault:
                error = {
                    "type": _FAULT_KINDS.get(fault.status, "api_error"),
                    "message": f"simulated {fault.status}",
                }
                result = {"type": "errored", "error": {"type": "error", "error": error}}
        return orjson.dumps({"custom_id": cid, "result": result})

    async def _create_batch(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=401, body=_error("authentication_error", "invalid x-api-key"))
        self.stats.creates_started += 1
        if self.read_delay:
            await asyncio.sleep(self.read_delay)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the client went away mid-create: no batch
        raw = await request.read()
        if len(raw) > MAX_BATCH_BYTES:
            return web.Response(status=413, body=_error("request_too_large", "batch over 256 MB"))
        requests = orjson.loads(raw).get("requests")
        if not isinstance(requests, list) or not 0 < len(requests) <= MAX_BATCH_REQUESTS:
            return web.Response(status=400, body=_error("invalid_request_error", "requests: 1 to 100,000"))
        seen: set[str] = set()
        for i, req in enumerate(requests):
            cid = req.get("custom_id") if isinstance(req, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.fullmatch(cid) or cid in seen:
                message = f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$ and be unique"
                return web.Response(status=400, body=_error("invalid_request_error", message))
            seen.add(cid)
        batch = _Batch(
            id=f"msgbatch_fake{next(self._ids):06d}",
            requests=requests,
            created=dt.datetime.now(dt.UTC),
            ends=self._now() + self.batch_seconds,
        )
        self.batches[batch.id] = batch
        self.stats.batches_created += 1
        self.stats.batch_requests += len(requests)
        self.stats.batch_sizes.append(len(requests))
        self.stats.batch_ids.append(frozenset(seen))
        if self.lose_create_answers > 0:
            self.lose_create_answers -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return web.json_response(self._batch_object(batch))

    def _found(self, request: web.Request) -> _Batch:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            raise web.HTTPNotFound(body=_error("not_found_error", "no such batch"))
        self._end_due()
        return batch

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self._end_due()
        newest = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        after = request.query.get("after_id")
        if after:
            newest = [b for b in newest if b.id < after]
        limit = int(request.query.get("limit", "20"))
        page = newest[:limit]
        data = [self._batch_object(b) for b in page]
        return web.json_response(
            {
                "data": data,
                "has_more": len(newest) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        self.stats.retrieves += 1
        return web.json_response(self._batch_object(self._found(request)))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self._found(request)
        if batch.ended is None:
            batch.canceled = True
        return web.json_response(self._batch_object(batch))

    async def _results(self, request: web.Request) -> web.StreamResponse:
        batch = self._found(request)
        if batch.ended is None:
            return web.Response(status=400, body=_error("invalid_request_error", "batch has not ended"))
        self.stats.results_started += 1
        resp = web.StreamResponse(headers={"content-type": "application/binary"})
        await resp.prepare(request)
        half = len(batch.results) // 2
        await resp.write(b"".join(line + b"\n" for line in batch.results[:half]))
        if self.results_delay:
            await asyncio.sleep(self.results_delay)
        await resp.write(b"".join(line + b"\n" for line in batch.results[half:]))
        await resp.write_eof()
        return resp
