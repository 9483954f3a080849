"""Going live before a ``--deadline`` (`llmbatch.modes.deadline`): the Batch API mode's
side of it.

`LiveSwitch` watches the open batches: the items left are those of the chunks not yet
collected, less what the provider says each running batch has completed. The first
time the live time for them (at the live rate, with the margin) reaches the deadline,
it goes live: the chunks not yet submitted are moved into live chunks at once, the
running batches are cancelled, and from then on every follow-up (the items a cancelled
batch did not run, what came back invalid or retryable) goes to the live API. What a
cancelled batch finished is collected as any ended batch's: written, never sent again.

Before the batches are made, with no ``--rpm`` or ``--tpm``, the first `PROBES` items
are sent live: their answers' headers say the limits (else their latency and the
concurrency give a rate). They are written like any live answer and never go into a
batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from llmbatch.core.endpoints import DEFAULT_ANSWER_TOKENS, endpoint_of
from llmbatch.core.errors import InputError, PermanentError
from llmbatch.core.values import Request
from llmbatch.modes.batch.chunks import Chunker
from llmbatch.modes.batch.collect import LiveRun
from llmbatch.modes.batch.state import BatchState, ChunkState
from llmbatch.modes.deadline import PROBES, Deadline, LiveRate, rate_from_latency, rate_from_limits
from llmbatch.modes.live.job import Job
from llmbatch.modes.outcome import Outcomes
from llmbatch.providers.openai_batches import BatchAPI

__all__ = ["LiveLimits", "LiveSwitch"]

MIN_SLEEP = 0.05  # seconds between looks at the batches near the deadline, at least


@dataclass(frozen=True, slots=True)
class LiveLimits:
    """What the live rate is told from: the limits given, the concurrency, and the
    limits the live answers' headers announced (a callable: learned as the run goes)."""

    rpm: float | None
    tpm: float | None
    concurrency: int
    learned: Callable[[], tuple[float | None, float | None]]


class LiveSwitch:
    """When and how a Batch API run goes live for its deadline."""

    def __init__(
        self,
        deadline: Deadline,
        *,
        state: BatchState,
        remote: BatchAPI,
        outcomes: Outcomes,
        live: LiveRun,
        chunker: Callable[[int], Chunker],
        limits: LiveLimits,
        log: Callable[[str], None],
    ) -> None:
        self.deadline = deadline
        self.state = state
        self.remote = remote
        self.outcomes = outcomes
        self.live = live
        self.chunker = chunker  # a live chunker of the given round
        self.rpm, self.tpm = limits.rpm, limits.tpm
        self.concurrency = limits.concurrency
        self.learned = limits.learned
        self.log = log
        self.gone = False
        self._probe_seconds: float | None = None
        self._report()

    # --- the live rate -------------------------------------------------------------

    async def probe(self, requests: Iterable[Request | InputError]) -> Iterator[Request | InputError]:
        """Without --rpm/--tpm: send the first few items live and time them; returns the
        rest of `requests`."""
        it = iter(requests)
        if self.rpm or self.tpm:
            return it
        first: list[Request | InputError] = list(islice(it, PROBES))
        jobs = [Job(request=r) for r in first if isinstance(r, Request)]
        if jobs:
            started = time.monotonic()
            await self.live(self.outcomes, iter(jobs))
            self._probe_seconds = time.monotonic() - started
        rejects = (r for r in first if isinstance(r, InputError))
        return _chain(rejects, it)

    def set_rate(self) -> None:
        """The live rate, from the limits given or learned, else the probes' latency;
        said in one line."""
        tokens = self._tokens_per_item()
        rate: LiveRate | None = rate_from_limits(self.rpm, self.tpm, tokens, source="--rpm/--tpm")
        if rate is None:
            rpm, tpm = self.learned()
            source = f"announced by the server to {PROBES} live requests"
            rate = rate_from_limits(rpm, tpm, tokens, source=source)
        if rate is None:
            rate = rate_from_latency(self.concurrency, self._probe_seconds or 1.0)
        self.deadline.rate = rate
        d = self.deadline
        left = d.at - d.clock()
        self.log(
            f"deadline {d.when()} (in {left:,.0f}s): live rate ~{rate.per_second:,.1f} items/s from "
            f"{rate.why}, margin {d.margin:.0%}"
        )
        self._report()

    def _tokens_per_item(self) -> float:
        chunks = [c for c in self.state.chunks(ChunkState.SEALED, ChunkState.UPLOADED) if not c.live]
        items = sum(c.items for c in chunks)
        if not items:
            return float(DEFAULT_ANSWER_TOKENS)
        ceiling = None
        for chunk in chunks:
            for item in self.state.items(chunk.id):
                ceiling = endpoint_of(item.request.url).answer_ceiling(item.request.body)
                break
            break
        return sum(c.tokens for c in chunks) / items + (ceiling or DEFAULT_ANSWER_TOKENS)

    # --- watching and switching -----------------------------------------------------

    def left(self) -> int:
        """Items not yet answered by a batch: the open chunks' less the completed."""
        n = 0
        for chunk in self.state.chunks(ChunkState.SEALED, ChunkState.UPLOADED, ChunkState.RUNNING):
            if chunk.live:
                continue
            n += max(chunk.items - chunk.counts.get("completed", 0), 0)
        return n

    def wait(self, delay: float, poll: float) -> float:
        """Seconds the batch loop may sleep (`delay` at most) before looking again."""
        if self.gone or self.deadline.rate is None:
            return delay
        return min(delay, max(self.deadline.wait(self.left(), poll), MIN_SLEEP))

    async def check(self, poll: float) -> None:
        """Go live when it is time."""
        if self.gone or self.deadline.rate is None:
            return
        left = self.left()
        if self._open() and self.deadline.due(left, poll):
            await self.go(left, poll)

    def _open(self) -> bool:
        return any(
            not c.live for c in self.state.chunks(ChunkState.SEALED, ChunkState.UPLOADED, ChunkState.RUNNING)
        )

    async def go(self, left: int, poll: float) -> None:
        d = self.deadline
        self.gone = True
        d.went_live = d.clock() - d.started
        d.left_then = left
        self.log(
            f"deadline {d.when()}: {left:,} items left would take ~{d.live_seconds(left, poll):,.0f}s live; "
            "cancelling the running batches, sending the rest live"
        )
        moved = 0
        for chunk in self.state.chunks(ChunkState.SEALED, ChunkState.UPLOADED):
            if chunk.live:
                continue
            live = self.chunker(chunk.round)
            for item in list(self.state.items(chunk.id)):
                live.place(item.request, moving=True)
                moved += 1
            live.seal()
            self.state.update(chunk.id, state=ChunkState.COLLECTED)
        if moved:
            self.log(f"{moved:,} items not yet submitted go live")
        for chunk in self.state.chunks(ChunkState.RUNNING):
            if chunk.live or chunk.batch_id is None:
                continue
            try:
                remote = await self.remote.cancel(chunk.batch_id)
            except PermanentError as exc:  # it ended meanwhile: collected as it is
                self.log(f"batch {chunk.batch_id}: not cancelled ({exc})")
                continue
            self.log(f"batch {chunk.batch_id}: {remote.status}")
        self._report()

    def _report(self) -> None:
        """What the panel and the summary say of the deadline (`Stats.deadline`)."""
        d = self.deadline
        self.outcomes.stats.deadline = {
            "at": d.when(),
            "at_unix": d.at,
            "margin": d.margin,
            "rate_per_s": d.rate.per_second if d.rate is not None else None,
            "assumed": d.rate.why if d.rate is not None else None,
            "went_live_s": d.went_live,
            "left_then": d.left_then if d.went_live is not None else None,
        }


def _chain(*parts: Iterable[Request | InputError]) -> Iterator[Request | InputError]:
    for part in parts:
        yield from part
