"""The scheduler: requests in, exactly one output line per item out.

One dispatcher coroutine takes the next job (a due retry first, else a new item from
the source), waits on the limits and for a free slot, and starts an attempt task. An
attempt ends in one of four ways:

- a valid answer, or the last allowed invalid one: the item is written;
- an invalid answer with requests left: the job goes back to be asked again at once;
- a transient fault with retries left: the job waits in the retry heap until its
  not-before time, holding no slot;
- a permanent fault, or retries exhausted: the item is written with the error.

Memory is bounded by the window (jobs alive: in flight plus waiting to retry), never
by the input's size. Counters live in `Stats`; nothing here formats or displays.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from llmbatch.errors import (
    AuthError,
    ConfigError,
    InputError,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)
from llmbatch.jsonl import JsonlWriter
from llmbatch.limits import Limits
from llmbatch.providers.base import Completion, Provider, Request
from llmbatch.retry import BackoffStrategy, RetryConfig
from llmbatch.stats import Stats

__all__ = ["DEFAULT_RETRY", "Engine", "EngineConfig", "Job"]

# Transport retries: quick first, capped, jittered so a crowd of retries spreads out.
DEFAULT_RETRY = RetryConfig(
    max_attempts=11, backoff_strategy=BackoffStrategy.JITTER, initial_delay=0.5, max_delay=30.0
)

Validator = Callable[[Request, Completion], "str | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    concurrency: int = 64
    max_requests: int = 4  # answered requests per item, re-asks included
    max_retries: int = 10  # transport retries per item; do not use up max_requests
    timeout: float | None = 120.0
    retry: RetryConfig = DEFAULT_RETRY
    output_format: Literal["batch", "merged"] = "batch"
    window: int | None = None  # jobs alive at once; default 2 x concurrency

    @property
    def window_size(self) -> int:
        return self.window or max(2 * self.concurrency, self.concurrency + 16)


@dataclass(slots=True, eq=False)
class Job:
    request: Request
    chars: int = 0  # prompt characters, for the token estimate
    requests: int = 0  # answered requests so far
    retries: int = 0  # transport retries so far
    last_delay: float = 0.0
    latency_ms: float = 0.0
    # Usage summed over every answered request of the item, re-asks included: what the
    # provider bills, so the output file adds up to the summary's totals.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last: Completion | None = None
    reason: str | None = None
    not_before: float = 0.0
    seq: int = field(default=0)

    def __lt__(self, other: Job) -> bool:  # heap order: due time, then arrival
        return (self.not_before, self.seq) < (other.not_before, other.seq)


class Engine:
    def __init__(
        self,
        *,
        provider: Provider,
        limits: Limits,
        validator: Validator,
        writer: JsonlWriter,
        stats: Stats,
        config: EngineConfig,
        rejects: JsonlWriter | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.provider = provider
        self.limits = limits
        self.validator = validator
        self.writer = writer
        self.rejects = rejects
        self.stats = stats
        self.config = config
        self.log = log
        self.fatal: LLMBatchStop | None = None
        self._stopping = False
        self._retry_heap: list[Job] = []
        self._alive = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        self._acquiring: asyncio.Task[None] | None = None

    # --- control -----------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Stop dispatching; attempts in flight finish. Unwritten items resume later."""
        if not self._stopping:
            self._stopping = True
            self.stats.stopped = True
            self.stats.stop_reason = reason
            self.log(f"stopping: {reason}")
        self._wake.set()
        if self._acquiring is not None:
            self._acquiring.cancel()

    def abort(self) -> None:
        """Cancel attempts in flight now (a second Ctrl-C). Written lines stay whole."""
        self.stop(self.stats.stop_reason or "aborted")
        for task in list(self._tasks):
            task.cancel()

    # --- the loop ----------------------------------------------------------------

    async def run(self, source: Iterable[Request | InputError]) -> Stats:
        loop = asyncio.get_running_loop()
        it: Iterator[Request | InputError] = iter(source)
        exhausted = False
        conc = self.config.concurrency
        window = self.config.window_size
        heap = self._retry_heap
        stats = self.stats
        estimator = self.limits.estimator
        need_tokens = self.limits.tpm is not None
        idle_reads = 0
        while not self._stopping:
            if stats.in_flight >= conc:
                await self._sleep(None)
                continue
            job: Job | None = None
            if heap and heap[0].not_before <= loop.time():
                job = heapq.heappop(heap)
            elif not exhausted and self._alive < window:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    continue
                if isinstance(nxt, InputError):
                    self.reject(nxt)
                    idle_reads += 1
                    if idle_reads % 1000 == 0:
                        await asyncio.sleep(0)  # a long run of rejects must not starve the loop
                    continue
                job = Job(nxt)
                if need_tokens:
                    job.chars = estimator.prompt_chars(nxt.body)
                self._alive += 1
            if job is None:
                if exhausted and self._alive == 0:
                    break
                await self._sleep(heap[0].not_before if heap else None)
                continue
            tokens = estimator.estimate(job.request.body, job.chars) if need_tokens else 0
            if self.limits.may_wait:
                # A wait on the limits (a long pause after a 429) must not delay a stop.
                self._acquiring = loop.create_task(self.limits.acquire(tokens))
                try:
                    await self._acquiring
                except asyncio.CancelledError:
                    if not self._stopping:
                        raise
                finally:
                    self._acquiring = None
            else:
                await self.limits.acquire(tokens)
            if self._stopping:
                break
            # Counted here, not when the task starts: acquire() may not yield, and the
            # loop must see this slot taken before it dispatches the next job.
            stats.in_flight += 1
            stats.requests += 1
            task = loop.create_task(self._attempt(job, self.limits.clamp(tokens)))
            self._tasks.add(task)
            task.add_done_callback(self._attempt_done)
            idle_reads = 0
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return stats

    async def _sleep(self, until: float | None) -> None:
        """Wait for an attempt to finish, a stop, or the next retry to fall due."""
        self._wake.clear()
        handle = None
        if until is not None:
            handle = asyncio.get_running_loop().call_at(until, self._wake.set)
        await self._wake.wait()
        if handle is not None:
            handle.cancel()

    # --- one attempt -------------------------------------------------------------

    async def _attempt(self, job: Job, charged: int) -> None:
        stats = self.stats
        try:
            completion = await self.provider.complete(job.request, timeout=self.config.timeout)
        except RateLimited as exc:
            stats.http_429 += 1
            self.limits.settle(charged, 0)
            self.limits.pushed_back(exc.retry_after)
            self._retry(job, exc, "rate_limited")
        except TransientError as exc:
            self.limits.settle(charged, 0)
            self.limits.failed()
            self._retry(job, exc, exc.code)
        except AuthError as exc:
            self.fatal = LLMBatchStop(str(exc), exit_code=3)
            self.stop(f"the provider refused the credentials or quota: {exc}")
            self._release(job)
        except PermanentError as exc:
            self.limits.failed()
            self._finish(job, error=exc)
        except ProviderError as exc:
            self.limits.failed()
            self._retry(job, exc, exc.code)
        except asyncio.CancelledError:
            self._release(job)
            raise
        except Exception as exc:  # a bug must cost one item, never the run or the line
            self._internal_error(job, exc)
        else:
            try:
                self._answered(job, completion, charged)
            except Exception as exc:
                self._internal_error(job, exc)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        # A callback, not a `finally`: a task cancelled before it ever ran (a second
        # Ctrl-C) has no frame to run one, and must still give its slot back.
        self._tasks.discard(task)
        self.stats.in_flight -= 1
        self._wake.set()

    def _answered(self, job: Job, completion: Completion, charged: int) -> None:
        stats = self.stats
        usage = completion.usage
        stats.prompt_tokens += usage.prompt_tokens
        stats.completion_tokens += usage.completion_tokens
        limits = self.limits
        if limits.tpm is not None:
            limits.settle(charged, usage.total_tokens)
            limits.estimator.observe(job.chars, usage.prompt_tokens, usage.completion_tokens)
        headers = completion.headers
        if headers:
            limits.observe_headers(headers)  # learns the limit; pauses on a spent budget
        limits.succeeded()
        job.requests += 1
        job.prompt_tokens += usage.prompt_tokens
        job.completion_tokens += usage.completion_tokens
        job.last = completion
        job.latency_ms = completion.latency_ms
        try:
            reason = self.validator(job.request, completion)
        except ConfigError as exc:
            self.fatal = LLMBatchStop(str(exc), exit_code=2)
            self.stop(f"the validator is broken: {exc}")
            self._release(job)
            return
        if reason is None:
            self._finish(job, valid=True)
        elif job.requests >= self.config.max_requests or self._stopping:
            job.reason = reason
            if self._stopping and job.requests < self.config.max_requests:
                self._release(job)  # not written: a rerun asks again
                return
            self._finish(job, valid=False)
        else:
            job.reason = reason
            stats.reasks += 1
            job.not_before = 0.0
            job.seq = next(self._seq)
            heapq.heappush(self._retry_heap, job)

    def _retry(self, job: Job, exc: ProviderError, cause: str) -> None:
        if self._stopping:
            self._release(job)
            return
        if job.retries >= self.config.max_retries:
            self._finish(job, error=exc)
            return
        job.retries += 1
        self.stats.retries[cause] += 1
        delay = exc.retry_after if isinstance(exc, RateLimited) and exc.retry_after is not None else None
        if delay is None:
            delay = self.config.retry.delay(job.retries, job.last_delay)
        job.last_delay = delay
        job.not_before = asyncio.get_running_loop().time() + delay
        job.seq = next(self._seq)
        heapq.heappush(self._retry_heap, job)

    def _internal_error(self, job: Job, exc: Exception) -> None:
        self.log(f"error: line {job.request.line}: unexpected {type(exc).__name__}: {exc}")
        self._finish(job, error=ProviderError(f"{type(exc).__name__}: {exc}", code="internal_error"))

    def _release(self, job: Job) -> None:
        self._alive -= 1

    # --- output ------------------------------------------------------------------

    def reject(self, err: InputError) -> None:
        self.stats.rejected += 1
        if self.rejects is not None:
            self.rejects.write({"line": err.line, "error": str(err)})
            self.check_writers()

    def check_writers(self) -> None:
        """A write that failed (disk full) stops the run: exit 3, and the rerun redoes
        what did not reach the file."""
        for w in (self.writer, self.rejects):
            if w is not None and w.error is not None and self.fatal is None:
                message = f"cannot write {w.path}: {w.error.strerror or w.error}"
                self.fatal = LLMBatchStop(message, exit_code=3)
                self.stop(f"{message}; make room and rerun to resume")

    def _finish(self, job: Job, *, valid: bool = False, error: ProviderError | None = None) -> None:
        self._alive -= 1
        stats = self.stats
        stats.done += 1
        if error is not None:
            stats.failed += 1
        elif valid:
            stats.valid += 1
        else:
            stats.invalid += 1
        if self.config.output_format == "merged":
            record = merged_record(job, valid, error)
        else:
            record = batch_record(job, valid, error)
        self.writer.write(record)
        self.check_writers()


class LLMBatchStop(Exception):
    """Why the run stopped early, and the exit code that says so."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _error_block(job: Job, valid: bool, error: ProviderError | None) -> dict[str, Any] | None:
    if error is not None:
        return {"code": error.code, "message": str(error)}
    if not valid:
        return {"code": "invalid_answer", "message": job.reason or "invalid answer"}
    return None


def batch_record(job: Job, valid: bool, error: ProviderError | None) -> dict[str, Any]:
    """An OpenAI Batch API output line, plus our `llmbatch` block."""
    req = job.request
    last = job.last
    response = None
    if last is not None:
        response = {"status_code": last.status_code, "request_id": last.request_id, "body": last.body}
    meta: dict[str, Any] = {
        "line": req.line,
        "requests": job.requests,
        "retries": job.retries,
        "valid": valid and error is None,
        "latency_ms": round(job.latency_ms, 1),
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens},
    }
    if req.metadata is not None:
        meta["metadata"] = req.metadata
    return {
        "id": f"batch_req_{last.request_id}"
        if last is not None and last.request_id
        else f"batch_req_line_{req.line}",
        "custom_id": req.custom_id,
        "response": response,
        "error": _error_block(job, valid, error),
        "llmbatch": meta,
    }


def merged_record(job: Job, valid: bool, error: ProviderError | None) -> dict[str, Any]:
    """The data item itself plus the answer: one flat row for spreadsheets and pandas."""
    req = job.request
    base: dict[str, Any] = dict(req.item) if req.item is not None else {}
    if not base and isinstance(req.metadata, dict):
        base = dict(req.metadata)
    last = job.last
    err = _error_block(job, valid, error)
    base.update(
        {
            "llm_custom_id": req.custom_id,
            "llm_line": req.line,
            "llm_answer": last.text if last is not None else None,
            "llm_valid": valid and error is None,
            "llm_error": err["message"] if err else None,
            "llm_requests": job.requests,
            "llm_prompt_tokens": job.prompt_tokens,
            "llm_completion_tokens": job.completion_tokens,
        }
    )
    return base
