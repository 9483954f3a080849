"""The scheduler: requests in, exactly one finished item per request out.

One dispatcher coroutine takes the next job (a due retry first, else a new item from
the source), waits on the limits for a permit and for a free slot, and starts an
attempt task. When nothing could hold the next job back (no limit known, no pause or
lowered pace, no --max-cost, no cache), a finishing attempt takes that job itself and
goes on in the same task and slot, as a hand-written loop of workers would: no task
and no dispatcher wake-up per request. An attempt ends in one of four ways:

- a valid answer, or the last allowed invalid one: the item is finished;
- an invalid answer with requests left: the job goes back to be asked again at once;
- a transient fault with retries left: the job waits in the retry heap until its
  not-before time, holding no slot;
- a permanent fault, or retries exhausted: the item is finished with the error.

Every attempt's permit is settled exactly once, whatever its outcome (see
`llmbatch.schedule.limits.Permit`). Memory is bounded by the window (jobs alive: in flight plus
waiting to retry), never by the input's size. Counters live in `Stats`; finished items
go to an `Output`; nothing here formats or displays.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import (
    CONNECT_CODES,
    AuthError,
    ConfigError,
    ExitCode,
    InputError,
    PermanentError,
    ProviderError,
    RateLimited,
    Stop,
    worst,
)
from llmbatch.core.retry import DEFAULT_MAX_RETRIES, BackoffStrategy, RetryConfig
from llmbatch.core.stats import Stats
from llmbatch.core.values import Completion, Finished, Request, State
from llmbatch.cost.spend import SpendingCap
from llmbatch.files.jsonl import write_failure
from llmbatch.providers.base import DEFAULT_TIMEOUT, Provider
from llmbatch.schedule.limits import Limits, Permit

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_GRACE",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_RETRY",
    "Engine",
    "EngineConfig",
    "Job",
    "Output",
    "Rejects",
]

DEFAULT_CONCURRENCY = 64  # requests in flight at most
DEFAULT_MAX_REQUESTS = 4  # answered requests per item, re-asks included
# A run in which every attempt fails to connect for this long stops.
DEFAULT_CONNECT_GRACE = 30.0

# Transport retries: quick first, capped, jittered so a crowd of retries spreads out.
DEFAULT_RETRY = RetryConfig(
    max_attempts=DEFAULT_MAX_RETRIES + 1,
    backoff_strategy=BackoffStrategy.JITTER,
    initial_delay=0.5,
    max_delay=30.0,
)

Validator = Callable[[Request, Completion], "str | None"]
# The outcome of an attempt that was never sent: its reservation is given back.
_NOT_SENT = ProviderError("not sent", code="not_sent")


class Output(Protocol):
    """Where finished items go. `error` is a write that failed (a full disk): the
    engine stops the run, and a rerun redoes what did not reach the file."""

    @property
    def path(self) -> object: ...

    @property
    def error(self) -> OSError | None: ...

    @property
    def backlog(self) -> int:
        """Finished items held back, not yet written: they count in the window."""
        ...

    def write(self, finished: Finished) -> None: ...

    def discard(self, order: int) -> None:
        """The item taken `order`-th will not be written (a stop left it)."""
        ...


class Cache(Protocol):
    """Valid answers by request fingerprint (see `llmbatch.rerun.cache.ResponseCache`)."""

    def get(self, fp: int) -> Completion | None: ...

    def put(self, fp: int, completion: Completion) -> None: ...


class Rejects(Protocol):
    """Where bad input lines go."""

    @property
    def path(self) -> object: ...

    @property
    def error(self) -> OSError | None: ...

    def write(self, err: InputError) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    concurrency: int = DEFAULT_CONCURRENCY
    max_requests: int = DEFAULT_MAX_REQUESTS  # answered requests per item, re-asks included
    max_retries: int = DEFAULT_MAX_RETRIES  # transport retries per item; do not use up max_requests
    timeout: float | None = DEFAULT_TIMEOUT
    retry: RetryConfig = DEFAULT_RETRY
    window: int | None = None  # jobs alive at once; default 2 x concurrency
    # A run in which every attempt fails to connect for this long stops (exit 3):
    # nothing is listening, or the name or the certificate is wrong.
    connect_grace: float | None = DEFAULT_CONNECT_GRACE

    @property
    def window_size(self) -> int:
        return self.window or max(2 * self.concurrency, self.concurrency + 16)


@dataclass(slots=True, eq=False, kw_only=True)
class Job(Finished):
    """An item on its way. Its outcome (the `Finished` fields: answers, usage, the last
    answer) builds up on it as attempts end, and when it ends the job itself is
    written: no copy per item."""

    state: State = State.FAILED  # set when it ends
    chars: int | None = None  # prompt characters, for the token estimate (once known)
    last_delay: float = 0.0
    not_before: float = 0.0
    seq: int = field(default=0)
    live: bool = False  # asked of the provider, not the cache (a re-ask, a bad cached answer)
    reserved: float = 0.0  # USD reserved under --max-cost for the attempt in flight

    __eq__ = object.__eq__  # one job is one item: compared by identity
    __hash__ = object.__hash__

    def __lt__(self, other: Job) -> bool:  # heap order: due time, then arrival
        return (self.not_before, self.seq) < (other.not_before, other.seq)


class Engine:
    def __init__(
        self,
        *,
        provider: Provider,
        limits: Limits,
        validator: Validator,
        output: Output,
        stats: Stats,
        config: EngineConfig,
        rejects: Rejects | None = None,
        cache: Cache | None = None,
        cap: SpendingCap | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.provider = provider
        self.limits = limits
        self.validator = validator
        self.output = output
        self.rejects = rejects
        self.cache = cache
        self.cap = cap
        # With a cache, identical requests in one run are sent once: the first is the
        # leader, the others wait here for its answer (holding no slot).
        self._followers: dict[int, list[Job]] = {}
        self.stats = stats
        self.config = config
        self.log = log
        self._retry_heap: list[Job] = []
        self._alive = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._permits: dict[asyncio.Task[None], Permit] = {}
        self._jobs: dict[asyncio.Task[None], Job] = {}
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        self._orders = itertools.count()
        self._acquiring: asyncio.Task[Permit] | None = None
        self._oversized: set[str] = set()  # ids already told about, once each
        self._responded = False  # a server has answered anything, an error included
        self._connect_failures = 0
        self._grace: asyncio.TimerHandle | None = None
        self._items: Iterator[Request | InputError] = iter(())
        self._exhausted = False
        self._window = config.window_size
        self._read_error: Exception | None = None  # reading the input failed in an attempt's task

    # --- control -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stats.stop is not None

    def stop(self, stop: Stop) -> None:
        """Stop dispatching; attempts in flight finish. Unwritten items resume later.
        Of several stops, the one whose exit code wins is kept."""
        current = self.stats.stop
        if current is None:
            self.stats.stop = stop
            self.log(f"stopping: {stop.reason}")
        elif worst(current.exit_code, stop.exit_code) != current.exit_code:
            self.stats.stop = stop
        self._wake.set()
        if self._acquiring is not None:
            self._acquiring.cancel()

    def abort(self) -> None:
        """Cancel attempts in flight now (a second Ctrl-C). Written lines stay whole."""
        if self.stats.stop is None:
            self.stop(Stop("aborted"))
        for task in list(self._tasks):
            task.cancel()

    # --- the loop ----------------------------------------------------------------

    async def run(self, source: Iterable[Request | InputError]) -> Stats:
        loop = asyncio.get_running_loop()
        self._items = iter(source)
        conc = self.config.concurrency
        window = self._window
        heap = self._retry_heap
        stats = self.stats
        idle_reads = 0
        while not self.stopping:
            if self._read_error is not None:
                raise self._read_error
            if stats.in_flight >= conc:
                await self._sleep(None)
                continue
            job: Job | None = None
            if heap and heap[0].not_before <= loop.time():
                job = heapq.heappop(heap)
            elif not self._exhausted and self._alive + self.output.backlog < window:
                nxt = self._read()
                if nxt is None:
                    continue
                if isinstance(nxt, InputError):
                    self.reject(nxt)
                    idle_reads += 1
                    if idle_reads % 1000 == 0:
                        await asyncio.sleep(0)  # a long run of rejects must not starve the loop
                    continue
                job = self._new_job(nxt)
                if self.cache is not None and not self._sent_live(job):
                    continue  # answered from the cache, or waiting for an identical request
            if job is None:
                if self._exhausted and self._alive == 0:
                    break
                await self._sleep(heap[0].not_before if heap else None)
                continue
            if self.cap is not None and not self._reserve(job):
                continue
            # No limit known and no pushback: a permit at once, without a coroutine.
            permit = self.limits.admit_now(job.chars) or await self._admit(job)
            if permit is None:
                self._unreserve(job)
                self._release(job)
                break
            if self._grace is None and self.config.connect_grace is not None and not self._responded:
                self._grace = loop.call_later(self.config.connect_grace, self._check_connected)
            # Counted here, not when the task starts: admit() may not yield, and the
            # loop must see this slot taken before it dispatches the next job.
            stats.in_flight += 1
            stats.requests += 1
            task = loop.create_task(self._attempt(job, permit))
            self._tasks.add(task)
            self._permits[task] = permit
            self._jobs[task] = job
            task.add_done_callback(self._attempt_done)
            idle_reads = 0
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._grace is not None:
            self._grace.cancel()
        if self._read_error is not None:
            raise self._read_error
        return stats

    def _check_connected(self) -> None:
        """--connect-grace passed: if no server has answered anything and attempts fail
        to connect, nothing is there; stop rather than spend every retry on every row."""
        if self._responded or not self._connect_failures or self.stopping:
            return
        last = next(
            (text for code, text in reversed(self.stats.last_error.items()) if code in CONNECT_CODES), ""
        )
        grace = self.config.connect_grace
        self.stop(Stop(f"nothing answered in {grace:g}s ({last}); check --base-url, then rerun to resume"))

    def _reserve(self, job: Job) -> bool:
        """--max-cost: reserve the attempt's worst case, or stop (the cap is reached) or
        reject the item (nothing bounds its answer). False when it is not sent."""
        assert self.cap is not None
        try:
            job.reserved = self.cap.worst_case(job.request)
        except InputError as err:
            self._release(job)
            self.reject(err)
            return False
        if self.cap.reserve(job.reserved):
            return True
        job.reserved = 0.0
        self._release(job)
        self.stop(Stop(self.cap.reason() + "; a rerun with a higher --max-cost resumes"))
        return False

    def _unreserve(self, job: Job, outcome: Any = _NOT_SENT) -> None:
        if self.cap is not None and job.reserved:
            self.cap.settle(job.reserved, outcome)
            job.reserved = 0.0

    def _sent_live(self, job: Job) -> bool:
        """With a cache: False when the job needs no request of its own (a valid cached
        answer finished it, or an identical request in flight will answer it)."""
        assert self.cache is not None
        fp = job.request.fp
        cached = self.cache.get(fp)
        if cached is not None and self._from_cache(job, cached):
            return False
        followers = self._followers.get(fp)
        if followers is not None:
            followers.append(job)
            return False
        self._followers[fp] = []
        return True

    def _from_cache(self, job: Job, completion: Completion) -> bool:
        """Finish the job with an answer it did not ask for, if that answer is valid for
        it (validators may look at the item, not only the request)."""
        try:
            reason = self.validator(job.request, completion)
        except ConfigError as exc:
            self.stop(Stop(f"the validator is broken: {exc}", exit_code=ExitCode.USAGE))
            self._release(job)
            return True
        if reason is not None:
            job.live = True
            return False
        job.last = completion
        self.stats.cached += 1
        self._finish(job, State.VALID, via="cached")
        return True

    def _lead_done(self, job: Job, answer: Completion | None) -> None:
        """The leader of identical requests is done: a valid `answer` answers the
        requests that waited for it; otherwise each is sent on its own."""
        if job.live or self.cache is None:
            return
        followers = self._followers.pop(job.request.fp, None)
        if not followers:
            return
        for follower in followers:
            follower.live = True
            if self.stopping:
                self._release(follower)
            elif answer is None or not self._from_cache(follower, answer):
                follower.not_before = 0.0
                follower.seq = next(self._seq)
                heapq.heappush(self._retry_heap, follower)
        self._wake.set()

    async def _admit(self, job: Job) -> Permit | None:
        """A permit for the job's next attempt, or None when the run stopped meanwhile
        (a long pause after a 429 must not delay a stop). A request bigger than a
        minute of the token limit waits until nothing else is in flight: it is sent
        alone."""
        limits = self.limits
        request = job.request
        if limits.tpm is not None:
            if job.chars is None:
                job.chars = endpoint_of(request.url).prompt_chars(request.body)
            if (tokens := limits.oversized(request, job.chars)) and not self.stopping:
                if job.request.custom_id not in self._oversized:
                    self._oversized.add(job.request.custom_id)
                    self.log(
                        f"line {job.request.line}: ~{tokens:,} tokens, more than --tpm {limits.tpm:,.0f} "
                        "allows in a minute; sent alone"
                    )
                while self.stats.in_flight and not self.stopping:
                    await self._sleep(None)
                if self.stopping:
                    return None
        if not limits.may_wait:
            permit = await limits.admit(request, job.chars)
        else:
            self._acquiring = asyncio.get_running_loop().create_task(limits.admit(request, job.chars))
            try:
                permit = await self._acquiring
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                return None
            finally:
                self._acquiring = None
        if self.stopping:
            permit.settle(asyncio.CancelledError())  # granted, never used
            return None
        return permit

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

    async def _attempt(self, job: Job, permit: Permit) -> None:
        """One attempt; then, while the next job can go at once, that one too, in the
        same task and slot (see `_chained`). One coroutine, not one per attempt: every
        resumption passes through each frame awaiting."""
        complete = self.provider.complete
        timeout = self.config.timeout
        while True:
            try:
                completion = await complete(job.request, timeout=timeout)
            except BaseException as exc:
                permit.settle(exc)
                self._unreserve(job, exc)
                self._failed(job, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                permit.settle(completion)
                if job.reserved:
                    self._unreserve(job, completion.usage)
                try:
                    self._answered(job, completion)
                except Exception as exc:
                    self._internal_error(job, exc)
            chained = self._chained()
            if chained is None:
                return
            job, permit = chained

    def _chained(self) -> tuple[Job, Permit] | None:
        """What the dispatcher would send next, when it would send it at once: nothing
        to wait for (no limit, pause or pace), nothing to reserve (no --max-cost) and
        no cache to ask first. The attempt that just finished goes on to it, which
        spares a task and a wake-up of the dispatcher per request (about a tenth of
        the CPU per request at 0 ms latency). Anything else is the dispatcher's."""
        limits = self.limits
        if self.stats.stop is not None or self.cap is not None or self.cache is not None or limits.may_wait:
            return None
        heap = self._retry_heap
        if heap and heap[0].not_before <= asyncio.get_running_loop().time():
            job = heapq.heappop(heap)
        elif not self._exhausted and self._alive + self.output.backlog < self._window:
            try:
                nxt = self._read()
            except Exception as exc:  # the dispatcher raises it, as if it had read
                self._read_error, self._exhausted = exc, True
                self._wake.set()
                return None
            if nxt is None:
                return None
            if isinstance(nxt, InputError):
                self.reject(nxt)
                return None  # this slot goes back; the dispatcher reads on
            job = self._new_job(nxt)
        else:
            return None
        self.stats.requests += 1
        return job, limits.grant(job.chars)

    def _read(self) -> Request | InputError | None:
        """The next item of the input (the dispatcher's and chained attempts' alike), or
        None once it is exhausted."""
        nxt = next(self._items, None)
        if nxt is None:
            self._exhausted = True
        return nxt

    def _new_job(self, request: Request) -> Job:
        """A job for an item just read: it is alive (in the window) until it ends."""
        self._alive += 1
        return Job(request=request, order=next(self._orders))

    def _failed(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, ProviderError):
            self._tell(exc)
        if isinstance(exc, RateLimited):
            self.stats.http_429 += 1
            self._retry(job, exc, "rate_limited")
        elif isinstance(exc, AuthError):
            self.stop(Stop(f"the provider refused the credentials or quota: {exc}"))
            self._release(job)
        elif isinstance(exc, PermanentError):
            self._finish(job, State.FAILED, exc)
        elif isinstance(exc, ProviderError):  # TransientError, or of no known kind
            self._retry(job, exc, exc.code)
        elif isinstance(exc, asyncio.CancelledError):
            self._release(job)
        elif isinstance(exc, Exception):  # a bug must cost one item, never the run or the line
            self._internal_error(job, exc)
        else:  # KeyboardInterrupt, SystemExit: not ours to swallow
            self._release(job)

    def _tell(self, exc: ProviderError) -> None:
        """The first error of each cause is told, with its text; later ones are counted."""
        last = self.stats.last_error
        if exc.code not in last and not isinstance(exc, RateLimited):  # 429s: on the panel
            self.log(f"error: {exc.code}: {exc} (told once; later ones are counted)")
        last.pop(exc.code, None)
        last[exc.code] = str(exc)  # the newest cause last
        if exc.code in CONNECT_CODES:
            self._connect_failures += 1
        else:
            self._responded = self._responded or exc.status_code is not None

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        # A callback, not a `finally`: a task cancelled before it ever ran (a second
        # Ctrl-C) has no frame to run one, and must still give its slot (and its
        # permit) back.
        self._tasks.discard(task)
        permit = self._permits.pop(task)
        if not permit.settled:  # never ran: nothing was sent
            permit.settle(asyncio.CancelledError())
            self._alive -= 1
            job = self._jobs.pop(task, None)
            if job is not None:
                self._unreserve(job)
        else:
            self._jobs.pop(task, None)
        self.stats.in_flight -= 1
        self._wake.set()

    def _answered(self, job: Job, completion: Completion) -> None:
        stats = self.stats
        stats.answers += 1
        self._responded = True
        usage = completion.usage
        stats.prompt_tokens += usage.prompt_tokens
        stats.completion_tokens += usage.completion_tokens
        stats.cached_tokens += usage.cached_tokens
        job.requests += 1
        job.prompt_tokens += usage.prompt_tokens
        job.completion_tokens += usage.completion_tokens
        job.cached_tokens += usage.cached_tokens
        job.last = completion
        job.latency_ms = completion.latency_ms
        try:
            reason = self.validator(job.request, completion)
        except ConfigError as exc:
            self.stop(Stop(f"the validator is broken: {exc}", exit_code=ExitCode.USAGE))
            self._release(job)
            return
        if reason is None:
            if self.cache is not None:
                self.cache.put(job.request.fp, completion)
            self._finish(job, State.VALID)
            return
        job.reason = reason
        if job.requests >= self.config.max_requests:
            self._finish(job, State.INVALID)
        elif self.stopping:
            self._release(job)  # not written: a rerun asks again
        else:
            stats.reasks += 1
            job.not_before = 0.0
            job.seq = next(self._seq)
            heapq.heappush(self._retry_heap, job)

    def _retry(self, job: Job, exc: ProviderError, cause: str) -> None:
        if self.stopping:
            self._release(job)
            return
        if job.retries >= self.config.max_retries:
            self._finish(job, State.FAILED, exc)
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
        error = ProviderError(f"{type(exc).__name__}: {exc}", code="internal_error")
        self._finish(job, State.FAILED, error)

    def _release(self, job: Job) -> None:
        """The job leaves the window unwritten: a rerun does it."""
        self._alive -= 1
        self.output.discard(job.order)
        self._lead_done(job, None)

    # --- output ------------------------------------------------------------------

    def reject(self, err: InputError) -> None:
        self.stats.rejected += 1
        if self.rejects is not None:
            self.rejects.write(err)
            self.check_writers()

    def check_writers(self) -> None:
        """A write that failed (disk full) stops the run: exit 3, and the rerun redoes
        what did not reach the file."""
        for w in (self.output, self.rejects):
            if w is not None and w.error is not None and self.stats.stop is None:
                self.stop(Stop(write_failure(w.path, w.error)))

    def _finish(self, job: Job, state: State, error: ProviderError | None = None, via: str = "live") -> None:
        self._alive -= 1
        stats = self.stats
        stats.done += 1
        if state is State.VALID:
            stats.valid += 1
        elif state is State.INVALID:
            stats.invalid += 1
        else:
            stats.failed += 1
        job.state, job.error, job.via = state, error, via
        output = self.output
        output.write(job)
        if output.error is not None:
            self.check_writers()
        if via == "live" and self.cache is not None:
            self._lead_done(job, job.last if state is State.VALID else None)
