"""The fake server's Batch API: ``POST /v1/batches`` (create), ``GET /v1/batches/{id}``,
``GET /v1/batches`` (newest first, ``limit`` and ``after``) and ``POST
/v1/batches/{id}/cancel``, with batch objects as OpenAI returns them.

A batch runs in the background on the server's loop: ``validating`` (for
``start_delay`` seconds), then ``in_progress`` (its lines answered by the fake model at
``lines_per_second``, as fast as the loop allows by default), ``finalizing``, and
``completed`` with an output file of the answers and an error file of the failures
(:mod:`llmbatch.testing.batchlines`). Or ``failed`` (a bad input file, the enqueued-token
limit), ``expired`` (after ``expire_after`` lines: the rest ``batch_expired``), or
``cancelling`` and shortly after ``cancelled`` (the rest ``batch_cancelled``). A result
file lists its lines in no particular order, as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from llmbatch.testing.api import ApiError, Reply, new_id, page, query_int
from llmbatch.testing.batchlines import ENDPOINTS, InputFile, Result, answer, not_run, read_input
from llmbatch.testing.counts import Attempts, ServerStats
from llmbatch.testing.files import OUTPUT_PURPOSE, FileStore
from llmbatch.testing.quality import Quality

__all__ = ["Batch", "BatchBehaviour", "BatchQueue"]

ACTIVE = frozenset({"validating", "in_progress", "finalizing"})  # what a cancel stops
ENQUEUED = frozenset({"validating", "in_progress"})  # what counts against the enqueued-token limit
STAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
COMPLETION_WINDOW_S = 24 * 3600
CANCELLING_S = 0.02  # how long a cancelled batch shows "cancelling" before "cancelled"
YIELD_EVERY = 64  # lines run between two turns of the loop when unpaced: the server stays responsive
MAX_METADATA = 16
LIST_LIMIT = (20, 1, 100)  # default, least, most


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchBehaviour:
    """How the fake Batch API behaves; the defaults finish a small batch at once.

    ``start_delay``: seconds a batch stays ``validating``. ``lines_per_second``: the pace
    of ``in_progress`` (None: unpaced). ``expire_after``: the batch expires after that
    many lines. ``enqueued_token_limit``: a batch whose input tokens, with those of the
    batches of its model still validating or in progress, pass it fails with
    ``token_limit_exceeded``. ``lose_create_answers``: the first k creates make their
    batch and then drop the connection without an answer. ``fail_creates``: the first k
    creates are refused with ``fail_status``, the message quoting the request's
    Authorization header back (as a badly behaved gateway does). ``min_seconds``: a batch
    stays ``in_progress`` at least this long after it starts, its lines run or not (a
    batch that would take ten minutes whose answers are all in after two: they are only
    out when it ends, or is cancelled)."""

    start_delay: float = 0.0
    min_seconds: float = 0.0
    lines_per_second: float | None = None
    expire_after: int | None = None
    enqueued_token_limit: int | None = None
    lose_create_answers: int = 0
    fail_creates: int = 0
    fail_status: int = 500

    def __post_init__(self) -> None:
        if self.start_delay < 0:
            raise ValueError("batch_start_delay must not be negative")
        if self.lines_per_second is not None and self.lines_per_second <= 0:
            raise ValueError("batch_lines_per_second must be positive")
        if self.expire_after is not None and self.expire_after < 0:
            raise ValueError("batch_expire_after must not be negative")


class Batch:
    """One batch: what OpenAI shows of it, and its lines and results so far."""

    __slots__ = (
        "cancel",
        "created_at",
        "endpoint",
        "error_file_id",
        "errors",
        "failures",
        "id",
        "input",
        "input_file_id",
        "metadata",
        "output_file_id",
        "run",
        "stamps",
        "status",
        "successes",
        "usage",
    )

    def __init__(
        self,
        *,
        endpoint: str,
        input_file_id: str,
        metadata: dict[str, str] | None,
        input: InputFile,
        errors: list[dict[str, Any]],
    ) -> None:
        self.id = new_id("batch_")
        self.endpoint = endpoint
        self.input_file_id = input_file_id
        self.metadata = metadata
        self.input = input
        self.errors = errors  # not empty: the batch fails once it has validated
        self.status = "validating"
        self.created_at = int(time.time())
        self.stamps: dict[str, int | None] = dict.fromkeys(STAMPS)
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.successes: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.run = 0  # lines run so far
        self.usage = [0, 0]  # prompt, completion tokens of the answers
        self.cancel = asyncio.Event()

    def become(self, status: str) -> None:
        self.status = status
        self.stamps[f"{status}_at"] = int(time.time())

    def add(self, result: Result) -> None:
        (self.successes if result.ok else self.failures).append(result.record)
        self.usage[0] += result.prompt_tokens
        self.usage[1] += result.completion_tokens

    async def cancelled_within(self, seconds: float) -> bool:
        """Wait up to that long; True when a cancel came."""
        if seconds > 0 and not self.cancel.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancel.wait(), seconds)
        return self.cancel.is_set()

    def as_object(self) -> dict[str, Any]:
        """The batch object as OpenAI returns it."""
        prompt, completion = self.usage
        started = self.stamps["in_progress_at"] is not None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.input.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + COMPLETION_WINDOW_S,
            **self.stamps,
            "request_counts": {
                "total": len(self.input.lines) if started else 0,
                "completed": len(self.successes),
                "failed": len(self.failures),
            },
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
            "metadata": self.metadata,
        }


class BatchQueue:
    """The batches, newest last, the tasks that run them, and their endpoints."""

    def __init__(
        self,
        behaviour: BatchBehaviour,
        *,
        files: FileStore,
        attempts: Attempts,
        stats: ServerStats,
        reply: Reply,
        seed: int = 0,
        quality: Quality | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.quality = quality  # a share of each model's answers spoiled
        self.files = files
        self.attempts = attempts
        self.stats = stats
        self.reply = reply
        self.rng = random.Random(seed)  # the order of the result files' lines
        self.batches: dict[str, Batch] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.refused = 0  # creates refused so far (fail_creates)

    def routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/batches", self._create),
            web.get(f"{prefix}/batches", self._list),
            web.get(f"{prefix}/batches/{{batch_id}}", self._retrieve),
            web.post(f"{prefix}/batches/{{batch_id}}/cancel", self._cancel),
        ]

    async def close(self) -> None:
        """Stop the batches still running (they stay as they are)."""
        tasks, self.tasks = self.tasks, set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    def _json(self, obj: dict[str, Any]) -> web.Response:
        return self.reply(200, orjson.dumps(obj))

    # --- the endpoints -----------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        if self.refused < self.behaviour.fail_creates:
            self.refused += 1
            quoted = (
                f"upstream refused the request with Authorization: {request.headers.get('Authorization')}"
            )
            raise ApiError(self.behaviour.fail_status, quoted, kind="server_error")
        params = _params(await request.read())
        file_id, endpoint = params.get("input_file_id"), params.get("endpoint")
        if endpoint not in ENDPOINTS:
            message = f"Invalid 'endpoint': this server runs batches for {', '.join(ENDPOINTS)}."
            raise ApiError(400, message, param="endpoint")
        if params.get("completion_window") != "24h":
            raise ApiError(
                400, "Invalid 'completion_window': only '24h' is supported.", param="completion_window"
            )
        if not isinstance(file_id, str) or file_id not in self.files.files:
            raise ApiError(400, f"Invalid 'input_file_id': no such file '{file_id}'.", param="input_file_id")
        stored = self.files.files[file_id]
        if stored.purpose != "batch":
            message = f"The file {file_id} has purpose '{stored.purpose}'; a batch needs purpose 'batch'."
            raise ApiError(400, message, param="input_file_id")
        metadata = _metadata(params.get("metadata"))

        parsed = read_input(stored.content, endpoint)
        errors = list(parsed.errors) or self._over_token_limit(parsed)
        batch = Batch(
            endpoint=endpoint, input_file_id=file_id, metadata=metadata, input=parsed, errors=errors
        )
        self.batches[batch.id] = batch
        self.stats.creates += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if self.stats.creates <= self.behaviour.lose_create_answers and request.transport is not None:
            request.transport.abort()  # made, and the answer lost on the way
            return web.Response(status=502)  # never sent: the connection is gone
        return self._json(batch.as_object())

    def _over_token_limit(self, parsed: InputFile) -> list[dict[str, Any]]:
        limit = self.behaviour.enqueued_token_limit
        if limit is None:
            return []
        enqueued = sum(
            b.input.tokens
            for b in self.batches.values()
            if b.status in ENQUEUED and not b.errors and b.input.model == parsed.model
        )
        if enqueued + parsed.tokens <= limit:
            return []
        message = (
            f"Enqueued token limit reached for {parsed.model} in organization org-fake. "
            f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress batches "
            "have been completed."
        )
        return [{"code": "token_limit_exceeded", "message": message, "param": None, "line": None}]

    async def _retrieve(self, request: web.Request) -> web.Response:
        return self._json(self.get(request.match_info["batch_id"]).as_object())

    async def _list(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", *LIST_LIMIT)
        newest_first = [b.as_object() for b in reversed(self.batches.values())]
        return self._json(page(newest_first, limit=limit, after=request.query.get("after")))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.get(request.match_info["batch_id"])
        self.stats.cancels += 1
        if batch.status in ACTIVE:
            batch.become("cancelling")
            batch.cancel.set()
        elif batch.status not in ("cancelling", "cancelled"):
            raise ApiError(400, f"Cannot cancel a batch with status '{batch.status}'.", param="batch_id")
        return self._json(batch.as_object())

    # --- running -----------------------------------------------------------------

    async def _run(self, batch: Batch) -> None:
        behaviour = self.behaviour
        if await batch.cancelled_within(behaviour.start_delay):
            return await self._cancelled(batch)
        if batch.errors:
            batch.become("failed")
            return None
        batch.become("in_progress")
        loop = asyncio.get_running_loop()
        started = loop.time()
        pace = behaviour.lines_per_second
        for line in batch.input.lines:
            if batch.cancel.is_set():
                break
            if behaviour.expire_after is not None and batch.run >= behaviour.expire_after:
                self._finish(batch, "expired", "batch_expired")
                return None
            result = answer(line, batch.endpoint, self.attempts, self.stats, self.quality)
            batch.add(result)
            batch.run += 1
            if result.fault is not None:
                faults = self.stats.faults
                faults[result.fault] = faults.get(result.fault, 0) + 1
            if pace is not None:
                if await batch.cancelled_within(started + batch.run / pace - loop.time()):
                    break
            elif batch.run % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if batch.cancel.is_set():
            return await self._cancelled(batch)
        if await batch.cancelled_within(started + behaviour.min_seconds - loop.time()):
            return await self._cancelled(batch)
        batch.become("finalizing")
        await asyncio.sleep(0)
        if batch.cancel.is_set():
            return await self._cancelled(batch)
        self._finish(batch, "completed", None)
        return None

    async def _cancelled(self, batch: Batch) -> None:
        await asyncio.sleep(CANCELLING_S)
        self._finish(batch, "cancelled", "batch_cancelled" if not batch.errors else None)

    def _finish(self, batch: Batch, status: str, rest: str | None) -> None:
        """The result files (the lines not run, if any, as ``rest``), then the status."""
        if rest is not None:
            for line in batch.input.lines[batch.run :]:
                batch.add(not_run(line, rest))
        for records, attr, kind in (
            (batch.successes, "output_file_id", "output"),
            (batch.failures, "error_file_id", "error"),
        ):
            if records:
                lines = [orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records]
                self.rng.shuffle(lines)
                stored = self.files.add(f"{batch.id}_{kind}.jsonl", OUTPUT_PURPOSE, b"".join(lines))
                setattr(batch, attr, stored.id)
        batch.become(status)


def _params(raw: bytes) -> dict[str, Any]:
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError:
        params = None
    if not isinstance(params, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return params


def _metadata(value: Any) -> dict[str, str] | None:
    """Up to 16 pairs of strings: keys of at most 64 characters, values of at most 512."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
    ):
        message = "Invalid 'metadata': at most 16 string pairs, keys up to 64 characters, values up to 512."
        raise ApiError(400, message, param="metadata")
    return dict(value)
