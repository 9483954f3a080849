"""The live engine: requests in, exactly one finished item per request out.

One dispatcher coroutine takes the next job (a due retry first, else a new item from
the source), waits on the limits for a permit and for a free slot, and starts an
attempt task. When nothing could hold the next job back (no limit known, no pause or
lowered pace, no --max-cost, no cache), a finishing attempt takes that job itself and
goes on in the same task and slot, as a hand-written loop of workers would: no task
and no dispatcher wake-up per request.

What an attempt's outcome means is `llmbatch.modes.outcome`'s to say (the same for the
Batch API mode); the engine acts on the verdict: a finished item is written, a re-ask
goes back at once, a retry waits in the retry heap until its not-before time (holding
no slot), a released item leaves the window unwritten. Every attempt's permit is
settled exactly once, whatever its outcome (see `llmbatch.schedule.permit.Permit`).
Memory is bounded by the window (jobs alive: in flight plus waiting to retry), never by
the input's size; the attachments those jobs hold, by `max_inflight_bytes` (plus one
request's). A stop (`RunControl`) wakes the dispatcher, its wait for a permit and
its retry heap at once. An engine may `run` several item streams one after another
(the Batch API mode's live follow-ups); each run ends when its stream is done.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import CONNECT_CODES, InputError, ProviderError, Stop
from llmbatch.core.stats import Stats
from llmbatch.core.values import Completion, Request, State
from llmbatch.cost.spend import SpendingCap
from llmbatch.files.jsonl import write_failure
from llmbatch.modes.control import RunControl
from llmbatch.modes.live.identical import Identical
from llmbatch.modes.live.job import Job
from llmbatch.modes.outcome import Outcomes, Verdict
from llmbatch.providers.base import DEFAULT_TIMEOUT, Provider
from llmbatch.schedule.limits import Limits
from llmbatch.schedule.permit import Permit

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_GRACE",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "Engine",
    "EngineConfig",
    "Job",
    "Rejects",
]

DEFAULT_CONCURRENCY = 64  # requests in flight at most
# A run in which every attempt fails to connect for this long stops (exit 3): nothing
# is listening, or the name or the certificate is wrong.
DEFAULT_CONNECT_GRACE = 30.0
# Attachments (base64) the jobs alive hold at most: a window of 128 requests with 20 MB
# images each would be gigabytes.
DEFAULT_MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
# The outcome of an attempt that was never sent: its reservation is given back.
_NOT_SENT = ProviderError("not sent", code="not_sent")


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
    timeout: float | None = DEFAULT_TIMEOUT
    window: int | None = None  # jobs alive at once; default 2 x concurrency
    # Bytes of attachments the jobs alive may hold at once (one more request may pass it).
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    connect_grace: float | None = DEFAULT_CONNECT_GRACE

    @property
    def window_size(self) -> int:
        return self.window or max(2 * self.concurrency, self.concurrency + 16)


class Engine:
    def __init__(
        self,
        *,
        provider: Provider,
        limits: Limits,
        outcomes: Outcomes,
        config: EngineConfig = EngineConfig(),
        rejects: Rejects | None = None,
        cap: SpendingCap | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.provider = provider
        self.limits = limits
        self.outcomes = outcomes
        self.output = outcomes.output
        self.stats: Stats = outcomes.stats
        self.control: RunControl = outcomes.control
        self.rejects = rejects
        self.cap = cap
        self.config = config
        self.log = log
        if limits.notify is None:
            limits.notify = log  # a lesson the limits learn (a shorter window) is told once
        cache = outcomes.cache
        self._identical = Identical(cache, outcomes) if cache is not None else None
        self._retry_heap: list[Job] = []
        self._alive = 0
        self._bytes = 0  # attachments held by the jobs alive (Request.attached)
        self._max_bytes = config.max_inflight_bytes
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
        self._items: Iterator[Request | Job | InputError] = iter(())
        self._exhausted = False
        self._window = config.window_size
        self._read_error: Exception | None = None  # reading the input failed in an attempt's task

    # --- control -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stats.stop is not None

    def _on_stop(self) -> None:
        """A stop, from anywhere (a signal, the cap, a full disk, the other mode): the
        dispatcher wakes, and a wait for a permit (a 429's pause, the token budget) is
        given up."""
        self._wake.set()
        if self._acquiring is not None:
            self._acquiring.cancel()

    def _abort(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # --- the loop ----------------------------------------------------------------

    async def run(self, source: Iterable[Request | Job | InputError]) -> Stats:
        """Send every item of `source` and write each once; returns when all are
        written (or released by a stop)."""
        if self._tasks:
            raise RuntimeError("an engine runs one stream at a time")
        self._items, self._exhausted, self._read_error = iter(source), False, None
        forget_stop = self.control.on_stop(self._on_stop)
        forget_abort = self.control.on_abort(self._abort)
        try:
            await self._dispatch()
        finally:
            forget_stop()
            forget_abort()
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        if self._read_error is not None:
            raise self._read_error
        return self.stats

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        conc = self.config.concurrency
        window = self._window
        top = self._max_bytes  # attachments' bytes
        heap = self._retry_heap
        stats = self.stats
        idle_reads = 0
        while not self.stopping:
            if self._read_error is not None:
                break
            if stats.in_flight >= conc:
                await self._sleep(None)
                continue
            job: Job | None = None
            if heap and heap[0].not_before <= loop.time():
                job = heapq.heappop(heap)
            elif not self._exhausted and self._alive + self.output.backlog < window and self._bytes < top:
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
                if self._identical is not None and not self._needs_sending(job):
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
        # Stopped: what waits to be retried (or asked again) is not written this run.
        while heap:
            self._release(heapq.heappop(heap))

    def _check_connected(self) -> None:
        """--connect-grace passed: if no server has answered anything and attempts fail
        to connect, nothing is there; stop rather than spend every retry on every row."""
        if self._responded or not self._connect_failures or self.stopping:
            return
        last = next(
            (text for code, text in reversed(self.stats.last_error.items()) if code in CONNECT_CODES), ""
        )
        grace = self.config.connect_grace
        self.control.stop(
            Stop(f"nothing answered in {grace:g}s ({last}); check --base-url, then rerun to resume")
        )

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
        self.control.stop(Stop(self.cap.reason() + "; a rerun with a higher --max-cost resumes"))
        return False

    def _unreserve(self, job: Job, outcome: Any = _NOT_SENT) -> None:
        if self.cap is not None and job.reserved:
            self.cap.settle(job.reserved, outcome, job.request)
            job.reserved = 0.0

    def _needs_sending(self, job: Job) -> bool:
        assert self._identical is not None
        send, verdict = self._identical.needs_sending(job)
        if verdict is not None:
            self._ended(job, verdict)
        return send

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
                if request.custom_id not in self._oversized:
                    self._oversized.add(request.custom_id)
                    self.log(
                        f"line {request.line}: ~{tokens:,} tokens, more than --tpm {limits.tpm:,.0f} "
                        "allows in a minute; sent alone"
                    )
                while self.stats.in_flight and not self.stopping:
                    await self._sleep(None)
                if self.stopping:
                    return None
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
        outcomes = self.outcomes
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
                self._responded = True
                try:
                    self._ended(job, outcomes.answered(job, completion, hold=self.stats.stop is not None))
                except Exception as exc:
                    outcomes.internal_error(job, exc)
                    self._ended(job, Verdict.FINISH)
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
        if (
            self.stats.stop is not None
            or self.cap is not None
            or self._identical is not None
            or limits.may_wait
        ):
            return None
        heap = self._retry_heap
        if heap and heap[0].not_before <= asyncio.get_running_loop().time():
            job = heapq.heappop(heap)
        elif (
            not self._exhausted
            and self._alive + self.output.backlog < self._window
            and self._bytes < self._max_bytes
        ):
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

    def _read(self) -> Request | Job | InputError | None:
        """The next item of the input (the dispatcher's and chained attempts' alike), or
        None once it is exhausted."""
        nxt = next(self._items, None)
        if nxt is None:
            self._exhausted = True
        return nxt

    def _new_job(self, item: Request | Job) -> Job:
        """A job for an item just read (or a job carried in: see `Job.carrying`): it is
        alive (in the window) until it ends."""
        self._alive += 1
        if isinstance(item, Job):  # carried in (rare): a Request is not a Job
            item.order = next(self._orders)
            self._bytes += item.request.attached
            return item
        self._bytes += item.attached
        return Job(request=item, order=next(self._orders))

    def _gone(self, job: Job | None) -> None:
        """A job leaves the window (written, released, or never sent)."""
        self._alive -= 1
        if job is not None:
            self._bytes -= job.request.attached

    def _failed(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, ProviderError):
            if exc.code in CONNECT_CODES:
                self._connect_failures += 1
            else:
                self._responded = self._responded or exc.status_code is not None
        verdict, delay = self.outcomes.failed(job, exc, hold=self.stopping)
        if verdict is Verdict.RETRY:
            job.last_delay = delay
            job.not_before = asyncio.get_running_loop().time() + delay
        self._ended(job, verdict)

    def _ended(self, job: Job, verdict: Verdict) -> None:
        """Act on an attempt's verdict."""
        if verdict is Verdict.FINISH:
            self._gone(job)
            if self._identical is not None and job.via == "live":
                self._lead_done(job, job.last if job.state is State.VALID else None)
        elif verdict is Verdict.RELEASE or self.stopping:
            self._release(job)  # not written: a rerun asks again
        else:  # REASK (at once) or RETRY (not_before set)
            if verdict is Verdict.REASK:
                job.not_before = 0.0
            job.seq = next(self._seq)
            heapq.heappush(self._retry_heap, job)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        # A callback, not a `finally`: a task cancelled before it ever ran (a second
        # Ctrl-C) has no frame to run one, and must still give its slot (and its
        # permit) back.
        self._tasks.discard(task)
        permit = self._permits.pop(task)
        job = self._jobs.pop(task, None)
        if not permit.settled:  # never ran: nothing was sent
            permit.settle(asyncio.CancelledError())
            self._gone(job)
            if job is not None:
                self._unreserve(job)
        self.stats.in_flight -= 1
        self._wake.set()

    def _release(self, job: Job) -> None:
        """The job leaves the window unwritten: a rerun does it."""
        self._gone(job)
        self.output.discard(job.order)
        self._lead_done(job, None)

    def _lead_done(self, job: Job, answer: Completion | None) -> None:
        if self._identical is not None:
            self._identical.lead_done(
                job, answer, stopping=self.stopping, finished=self._ended, again=self._send_again
            )

    def _send_again(self, job: Job) -> None:
        job.not_before = 0.0
        job.seq = next(self._seq)
        heapq.heappush(self._retry_heap, job)
        self._wake.set()

    # --- rejects -----------------------------------------------------------------

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
                self.control.stop(Stop(write_failure(w.path, w.error)))
