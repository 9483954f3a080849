"""The provider's Batch API, as llmbatch uses it: files up, batches created, polled,
their result files down; and the driver that runs `llmbatch run --batch-api` on it.

`RemoteBatches` is the edge: the openai SDK's files and batches calls, with foreign
exceptions translated into ours and transient ones retried; a create or an upload whose
answer is lost is looked for (by the batch's metadata, the file's name) before it is
tried again. `BatchMode` is the run: it splits the items that need work into chunks
(per endpoint and model, at most `--batch-requests` and `--batch-bytes` each), submits
them, waits, and turns every answer into the same output line as the live mode, with
the same validators; what comes back invalid, failed for a retryable cause, expired or
cancelled goes into a follow-up round (or, with ``--then live``, to the live API).
Everything it asks of the provider is recorded first in `llmbatch.modes.batch.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    InputError,
    PermanentError,
    ProviderError,
    Stop,
    TransientError,
)
from llmbatch.core.http import error_for_status
from llmbatch.core.retry import DEFAULT_MAX_RETRIES
from llmbatch.core.stats import Stats
from llmbatch.core.values import Completion, Finished, Request, State, Usage
from llmbatch.cost.spend import SpendingCap
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import write_failure
from llmbatch.modes.batch.state import BatchState, Chunk, ChunkState, Item
from llmbatch.modes.live.engine import DEFAULT_MAX_REQUESTS
from llmbatch.providers.openai_batches import Remote, RemoteBatches

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_REQUESTS",
    "BatchConfig",
    "BatchMode",
]

# OpenAI's limits for one Batch API input file, and how often to look at a batch.
DEFAULT_BATCH_REQUESTS = 50_000
DEFAULT_BATCH_BYTES = 200_000_000
DEFAULT_POLL_EVERY = 30.0
TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})
# Lines of the error file that were never run: asked again, without counting as an answer.
NOT_RUN = frozenset({"batch_expired", "batch_cancelled"})
# Polls slow down while nothing changes, up to this many times --poll-every.
POLL_BACKOFF = 1.5
POLL_MAX_FACTOR = 8.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    requests_per_file: int = DEFAULT_BATCH_REQUESTS
    bytes_per_file: int = DEFAULT_BATCH_BYTES
    max_tokens: int | None = None  # enqueued input tokens allowed at once (--batch-max-tokens)
    poll_every: float = DEFAULT_POLL_EVERY
    no_wait: bool = False
    cancel: bool = False
    then_live: bool = False
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES


Validator = Callable[[Request, Completion], "str | None"]


@dataclass(slots=True)
class _Answer:
    """What one result line says of an item."""

    finished: Finished | None = None  # final: written
    again: bool = False  # another round: invalid with requests left, retryable, not run
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BatchMode:
    """One `llmbatch run --batch-api`: submit what needs work, wait, collect, follow up."""

    def __init__(
        self,
        *,
        remote: RemoteBatches,
        state: BatchState,
        output: Any,
        validator: Validator,
        stats: Stats,
        config: BatchConfig,
        cache: Any = None,
        cap: SpendingCap | None = None,
        live: Callable[[Iterator[Request]], Awaitable[list[str]]] | None = None,
        log: Callable[[str], None] = lambda _: None,
        label: str = "",
    ) -> None:
        self.remote = remote
        self.state = state
        self.output = output
        self.validator = validator
        self.stats = stats
        self.config = config
        self.cache = cache
        self.cap = cap
        self._reserved: dict[int, float] = {}  # chunk -> USD reserved for it in this run
        self.live = live
        self.log = log
        self.label = label
        self._wake = asyncio.Event()

    # --- control -----------------------------------------------------------------

    def stop(self, stop: Stop) -> None:
        if self.stats.stop is None:
            self.stats.stop = stop
            self.log(f"stopping: {stop.reason}")
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self.stats.stop is not None

    async def _nap(self, seconds: float) -> None:
        """Sleep until the next poll, or a stop."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # --- the run -----------------------------------------------------------------

    async def run(
        self, requests: Iterable[Request | InputError], reject: Callable[[InputError], None]
    ) -> ExitCode:
        """Returns PENDING (--no-wait, batches still running) or OK; the caller judges
        the rest from the stats."""
        try:
            await self._reconcile()
            if self.config.cancel:
                await self._cancel_all()
            else:
                self._split(requests, reject, round_=0)
            return await self._loop()
        except AuthError as exc:
            self.stop(Stop(f"the provider refused the credentials or quota: {exc}"))
        except PermanentError as exc:
            self.stop(Stop(f"the Batch API refused: {exc}", exit_code=ExitCode.STOPPED))
        except TransientError as exc:
            self.stop(Stop(f"the Batch API is unreachable: {exc}; rerun to resume"))
        return ExitCode.STOPPED

    async def _loop(self) -> ExitCode:
        delay = self.config.poll_every
        while not self.stopping:
            await self._run_live()
            await self._submit_ready()
            changed = await self._poll()
            open_ = self.state.open_batches()
            sealed = [c for c in self.state.chunks(ChunkState.SEALED)]
            if not open_ and not sealed:
                await self._run_live()
                return ExitCode.OK
            if self.config.no_wait and not sealed:
                self.log(
                    f"{len(open_)} batch{'es' if len(open_) != 1 else ''} still running; rerun to collect"
                )
                return ExitCode.PENDING
            delay = (
                self.config.poll_every
                if changed
                else min(delay * POLL_BACKOFF, self.config.poll_every * POLL_MAX_FACTOR)
            )
            if any(c.state is ChunkState.RUNNING for c in open_):
                await self._nap(delay)
        return ExitCode.STOPPED

    # --- splitting -----------------------------------------------------------------

    def _split(
        self, requests: Iterable[Request | InputError], reject: Callable[[InputError], None], *, round_: int
    ) -> None:
        """Put each item in the filling chunk of its endpoint and model (left by a killed
        run, or new), sealing a chunk when the next item would pass a file's limits."""
        filling: dict[tuple[str, str, bool], Chunk] = {
            (c.endpoint, c.model, c.live): c
            for c in self.state.chunks(ChunkState.FILLING)
            if c.round == round_ and not c.live
        }
        sizes: dict[int, tuple[int, int]] = {c.id: (c.items, c.bytes) for c in filling.values()}
        for req in requests:
            if isinstance(req, InputError):
                reject(req)
                continue
            if self.cache is not None and self._from_cache(req):
                continue
            try:
                self._place(req, filling, sizes, round_=round_, live=False)
            except InputError as err:  # nothing bounds its answer, under --max-cost
                reject(err)
        for chunk in filling.values():
            self.state.seal(chunk.id)
        self.state.commit()

    def _place(
        self,
        req: Request,
        filling: dict[tuple[str, str, bool], Chunk],
        sizes: dict[int, tuple[int, int]],
        *,
        round_: int,
        live: bool,
        carry: Item | None = None,
    ) -> None:
        line = orjson.dumps({"custom_id": req.custom_id, "method": "POST", "url": req.url, "body": req.body})
        size = len(line) + 1
        model = str(req.body.get("model") or "")
        key = (req.url, model, live)
        chunk = filling.get(key)
        if chunk is not None:
            n, b = sizes[chunk.id]
            if n + 1 > self.config.requests_per_file or b + size > self.config.bytes_per_file:
                self.state.seal(chunk.id)
                chunk = None
        if chunk is None:
            chunk_id = self.state.new_chunk(round_=round_, endpoint=req.url, model=model, live=live)
            chunk = filling[key] = self.state.chunk(chunk_id)
            sizes[chunk_id] = (0, 0)
        tokens = endpoint_of(req.url).prompt_tokens(req.body)
        worst = self.cap.worst_case(req) if self.cap is not None else 0.0
        self.state.add(chunk.id, req, size=size, tokens=tokens, worst=worst, carry=carry)
        n, b = sizes[chunk.id]
        sizes[chunk.id] = (n + 1, b + size)

    def _from_cache(self, req: Request) -> bool:
        completion = self.cache.get(req.fp)
        if completion is None or self.validator(req, completion) is not None:
            return False
        self.stats.cached += 1
        self._write(Finished(request=req, state=State.VALID, last=completion, via="cached"))
        return True

    # --- submitting ----------------------------------------------------------------

    def _name(self, chunk: Chunk) -> str:
        return f"llmbatch-{self.state.run_id}-{chunk.id}.jsonl"

    def _metadata(self, chunk: Chunk) -> dict[str, str]:
        md = {"llmbatch_run": self.state.run_id, "llmbatch_chunk": str(chunk.id)}
        if self.label:
            md["llmbatch_output"] = self.label[-500:]
        return md

    async def _reconcile(self) -> None:
        """Intents a killed run left without results: ask the provider what became of
        them, and carry on from there instead of creating anything twice. Follow-up
        chunks a killed collection left filling are sealed: their items were moved in
        for good."""
        for chunk in self.state.chunks(ChunkState.FILLING):
            if chunk.round > 0 or chunk.live:
                self.state.seal(chunk.id)
        for chunk in self.state.chunks(ChunkState.UPLOADING):
            file_id = await self.remote.find_file(self._name(chunk))
            if file_id is not None:
                self.state.update(chunk.id, state=ChunkState.UPLOADED, file_id=file_id)
            else:
                self.state.update(chunk.id, state=ChunkState.SEALED)
        for chunk in self.state.chunks(ChunkState.CREATING):
            remote = await self.remote.find_batch(self._metadata(chunk))
            if remote is not None:
                self._running(chunk, remote)
            else:
                self.state.update(chunk.id, state=ChunkState.UPLOADED)

    def _running(self, chunk: Chunk, remote: Remote) -> None:
        self.state.update(
            chunk.id,
            state=ChunkState.RUNNING,
            batch_id=remote.id,
            status=remote.status,
            submitted=time.time(),
            error=None,
        )
        self._show(self.state.chunk(chunk.id), remote)

    async def _submit_ready(self) -> None:
        """Upload and create what is sealed (and re-create what waited for the enqueued
        token limit), within --batch-max-tokens."""
        if self.stopping:
            return
        running = [c for c in self.state.chunks(ChunkState.RUNNING, ChunkState.CREATING) if not c.live]
        enqueued = sum(c.tokens for c in running)
        for chunk in self.state.chunks(ChunkState.SEALED, ChunkState.UPLOADED):
            if chunk.live or self.stopping:
                continue
            if chunk.items == 0:  # a follow-up a killed collection left empty
                self.state.update(chunk.id, state=ChunkState.COLLECTED)
                continue
            waited = chunk.error is not None and "enqueued" in chunk.error
            if waited and running:
                continue  # refused for the enqueued-token limit: again once the others are done
            budget = self.config.max_tokens
            if budget is not None and running and enqueued + chunk.tokens > budget:
                continue
            if self.cap is not None:
                if not self.cap.reserve(chunk.worst):
                    self.stop(Stop(self.cap.reason() + "; a rerun with a higher --max-cost resumes"))
                    return
                self._reserved[chunk.id] = chunk.worst
            if chunk.state is ChunkState.SEALED:
                await self._upload(chunk)
                chunk = self.state.chunk(chunk.id)
            await self._create(chunk)
            running.append(chunk)
            enqueued += chunk.tokens

    async def _upload(self, chunk: Chunk) -> None:
        self.state.update(chunk.id, state=ChunkState.UPLOADING)
        with tempfile.TemporaryFile(prefix="llmbatch-upload-") as f:
            for line in self.state.upload_lines(chunk.id):
                f.write(line)
            f.flush()
            file_id = await self.remote.upload(self._name(chunk), f)
        self.state.update(chunk.id, state=ChunkState.UPLOADED, file_id=file_id)
        self.log(
            f"uploaded chunk {chunk.id} ({chunk.items:,} requests, {chunk.bytes / 1e6:.1f} MB) as {file_id}"
        )

    async def _create(self, chunk: Chunk) -> None:
        assert chunk.file_id is not None
        self.state.update(chunk.id, state=ChunkState.CREATING)
        remote = await self.remote.create(chunk.file_id, chunk.endpoint, self._metadata(chunk))
        self._running(chunk, remote)
        self.log(
            f"batch {remote.id}: {chunk.items:,} requests to {chunk.endpoint} ({chunk.model}), "
            f"round {chunk.round}"
        )

    # --- waiting and collecting ----------------------------------------------------

    def _show(self, chunk: Chunk, remote: Remote) -> None:
        since = chunk.submitted or time.time()
        self.stats.batches[remote.id] = (remote.status, remote.completed, remote.failed, remote.total, since)

    async def _poll(self) -> bool:
        """Look at every running batch once; collect those that ended. True when
        anything changed."""
        changed = False
        for chunk in self.state.chunks(ChunkState.RUNNING):
            if chunk.live or self.stopping or chunk.batch_id is None:
                continue
            remote = await self.remote.retrieve(chunk.batch_id)
            counts = {"completed": remote.completed, "failed": remote.failed, "total": remote.total}
            if remote.status != chunk.status or counts != chunk.counts:
                changed = True
                self.state.update(chunk.id, status=remote.status, counts=counts)
            self._show(self.state.chunk(chunk.id), remote)
            if remote.status in TERMINAL:
                await self._collect(self.state.chunk(chunk.id), remote)
                changed = True
        return changed

    async def _cancel_all(self) -> None:
        """--cancel: cancel this output's running batches, collect what they finished,
        and forget the rest (a later run asks for those afresh)."""
        for chunk in self.state.chunks(ChunkState.SEALED, ChunkState.UPLOADED):
            released = self.state.release(chunk.id)
            self.state.update(chunk.id, state=ChunkState.COLLECTED)
            self.log(f"chunk {chunk.id}: not submitted; {released:,} items left for a later run")
        for chunk in self.state.chunks(ChunkState.RUNNING):
            if chunk.batch_id is not None and not chunk.live:
                remote = await self.remote.cancel(chunk.batch_id)
                self.log(f"batch {chunk.batch_id}: {remote.status}")
        self.config = dataclasses.replace(self.config, no_wait=False, cancel=True)

    async def _collect(self, chunk: Chunk, remote: Remote) -> None:
        """Every answer of an ended batch: written (the same line as live mode) or sent
        on to another round; then the chunk is done. Streams: the result files are read
        a line at a time. A run killed halfway collects the chunk again: what it wrote
        then is written again (compaction keeps one line per id), and what it moved on is
        not looked at twice."""
        if remote.status == "failed" and remote.output_file_id is None:
            await self._failed_batch(chunk, remote)
            return
        seen = IdSet(chunk.items)
        before = (self.stats.prompt_tokens, self.stats.completion_tokens)
        done: list[str] = []
        follow = _FollowUp(self, chunk)
        async for rec in self._results(remote):
            cid = rec.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                continue
            item = self.state.item(cid)
            if item is None or item.chunk != chunk.id:
                continue
            seen.add(cid)
            self._settle(item, self._judge(item, rec, remote.id), done, follow)
        for cid in self.state.ids(chunk.id):
            if cid in seen:
                continue
            item = self.state.item(cid)
            if item is not None:  # in neither file: not run
                self._settle(item, _used(item, again=True), done, follow)
        self.output.sync()
        if self.output.error is not None:
            self.stop(Stop(write_failure(self.output.path, self.output.error)))
            return
        follow.seal()
        if self.cap is not None:
            used = Usage(self.stats.prompt_tokens - before[0], self.stats.completion_tokens - before[1])
            self.cap.settle(self._reserved.pop(chunk.id, 0.0), used)
        self.state.mark_done(done)
        self.state.update(chunk.id, state=ChunkState.COLLECTED, status=remote.status)
        self.log(f"batch {remote.id} {remote.status}: {len(done):,} written, {follow.count:,} sent on")

    async def _results(self, remote: Remote) -> AsyncIterator[dict[str, Any]]:
        """The lines of a batch's output and error files, from temporary copies."""
        for file_id in (remote.output_file_id, remote.error_file_id):
            if not file_id:
                continue
            with tempfile.TemporaryFile(prefix="llmbatch-result-") as f:
                await self.remote.download(file_id, f)
                f.seek(0)
                for raw in f:
                    try:
                        rec = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(rec, dict):
                        yield rec

    def _judge(self, item: Item, rec: dict[str, Any], batch_id: str) -> _Answer:
        req = item.request
        used = _used(item)
        error = rec.get("error")
        response = rec.get("response")
        if isinstance(error, dict) and error.get("code") in NOT_RUN:
            used.again = True
            return used
        if not isinstance(response, dict):
            message = error.get("message") if isinstance(error, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            return self._failure(
                req,
                used,
                TransientError(
                    f"{code or 'error'}: {message or 'no response'}", code=str(code or "batch_error")
                ),
                batch_id,
            )
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        headers: dict[str, str] = {}
        if status >= 300 or status == 0:
            return self._failure(req, used, error_for_status(status, orjson.dumps(body), headers), batch_id)
        completion = Completion(
            body=body,
            status_code=status,
            usage=Usage.from_body(body) if isinstance(body, dict) else Usage(),
            request_id=response.get("request_id"),
        )
        used.requests += 1
        used.prompt_tokens += completion.usage.prompt_tokens
        used.completion_tokens += completion.usage.completion_tokens
        self.stats.prompt_tokens += completion.usage.prompt_tokens
        self.stats.completion_tokens += completion.usage.completion_tokens
        self.stats.requests += 1
        self.stats.answers += 1
        try:
            reason = self.validator(req, completion)
        except ConfigError as exc:
            self.stop(Stop(f"the validator is broken: {exc}", exit_code=ExitCode.USAGE))
            used.again = True
            return used
        if reason is None:
            if self.cache is not None:
                self.cache.put(req.fp, completion)
            used.finished = self._finished(req, used, State.VALID, completion, batch_id)
        elif used.requests >= self.config.max_requests:
            used.finished = self._finished(req, used, State.INVALID, completion, batch_id, reason=reason)
        else:
            self.stats.reasks += 1
            used.again = True
        return used

    def _failure(self, req: Request, used: _Answer, err: ProviderError, batch_id: str) -> _Answer:
        if isinstance(err, PermanentError | AuthError) or used.retries >= self.config.max_retries:
            used.finished = self._finished(req, used, State.FAILED, None, batch_id, error=err)
        else:
            used.retries += 1
            self.stats.retries[err.code] += 1
            used.again = True
        return used

    def _finished(
        self,
        req: Request,
        used: _Answer,
        state: State,
        last: Completion | None,
        batch_id: str,
        *,
        reason: str | None = None,
        error: ProviderError | None = None,
    ) -> Finished:
        return Finished(
            request=req,
            state=state,
            requests=used.requests,
            retries=used.retries,
            prompt_tokens=used.prompt_tokens,
            completion_tokens=used.completion_tokens,
            last=last,
            reason=reason,
            error=error,
            via="batch",
            batch_id=batch_id,
        )

    def _settle(self, item: Item, answer: _Answer, done: list[str], follow: _FollowUp) -> None:
        if answer.finished is not None:
            self._write(answer.finished)
            done.append(item.request.custom_id)
        else:
            follow.add(item, answer)

    def _write(self, finished: Finished) -> None:
        stats = self.stats
        stats.done += 1
        if finished.state is State.VALID:
            stats.valid += 1
        elif finished.state is State.INVALID:
            stats.invalid += 1
        else:
            stats.failed += 1
        self.output.write(finished)

    async def _failed_batch(self, chunk: Chunk, remote: Remote) -> None:
        """A batch refused as a whole. Over the enqueued-token limit: tried again once
        the batches before it are done. Anything else: its items fail with the reason."""
        message = remote.error or remote.error_code or "the batch failed"
        if self.cap is not None:  # refused whole: nothing was run, nothing billed
            self.cap.settle(self._reserved.pop(chunk.id, 0.0), TransientError("refused"))
        if _enqueued_limit(remote):
            self.state.update(
                chunk.id, state=ChunkState.UPLOADED, error=f"enqueued token limit: {message}", batch_id=None
            )
            self.log(
                f"batch {remote.id} refused for the enqueued-token limit; "
                "submitting it again when the others are done"
            )
            return
        err = PermanentError(f"batch {remote.id} failed: {message}", code=remote.error_code or "batch_failed")
        done = []
        for item in self.state.items(chunk.id):
            self._write(self._finished(item.request, _used(item), State.FAILED, None, remote.id, error=err))
            done.append(item.request.custom_id)
        self.output.sync()
        self.state.mark_done(done)
        self.state.update(chunk.id, state=ChunkState.COLLECTED, status="failed", error=message)
        self.log(f"batch {remote.id} failed: {message}")

    async def _run_live(self) -> None:
        """--then live: follow-up items go to the live API at once."""
        if self.live is None or self.stopping:
            return
        for chunk in self.state.chunks(ChunkState.SEALED):
            if not chunk.live:
                continue
            requests = (item.request for cid in self.state.ids(chunk.id) if (item := self.state.item(cid)))
            written = await self.live(requests)
            self.state.mark_done(written)
            if not self.stopping:
                self.state.update(chunk.id, state=ChunkState.COLLECTED)


def _enqueued_limit(remote: Remote) -> bool:
    text = f"{remote.error_code or ''} {remote.error or ''}".lower()
    return "token_limit" in text or "enqueued" in text


def _used(item: Item, *, again: bool = False) -> _Answer:
    """What an item has used before this answer, carried into it."""
    return _Answer(
        again=again,
        requests=item.requests,
        retries=item.retries,
        prompt_tokens=item.prompt_tokens,
        completion_tokens=item.completion_tokens,
    )


class _FollowUp:
    """Items of one collected chunk that need another round: moved into new chunks of
    the next round (or the live API's, with --then live) as they come."""

    def __init__(self, mode: BatchMode, chunk: Chunk) -> None:
        self.mode = mode
        self.round = chunk.round + 1
        self.chunk = chunk
        self.live = mode.config.then_live and mode.live is not None
        self.filling: dict[tuple[str, str, bool], Chunk] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        self.count = 0

    def add(self, item: Item, used: _Answer) -> None:
        state = self.mode.state
        cid = item.request.custom_id
        state.record_use(
            cid,
            requests=used.requests,
            retries=used.retries,
            prompt=used.prompt_tokens,
            completion=used.completion_tokens,
        )
        self.count += 1
        if not self.mode.config.cancel:
            self.mode._place(
                item.request, self.filling, self.sizes, round_=self.round, live=self.live, carry=item
            )

    def seal(self) -> None:
        if self.mode.config.cancel:
            released = self.mode.state.release(self.chunk.id)
            if released:
                self.mode.log(f"{released:,} items of a cancelled batch left for a later run")
        for c in self.filling.values():
            self.mode.state.seal(c.id)
