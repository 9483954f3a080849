"""`llmbatch run --batch-api`: the same run, through the provider's Batch API at half
price.

`BatchMode` splits the items that need work into chunks (`llmbatch.modes.batch.chunks`),
uploads and creates a batch for each (within `--batch-max-tokens` and the enqueued-token
limit), polls them, and collects every ended one (`llmbatch.modes.batch.collect`): each
answer is judged as a live one is and written as the same output line; what comes back
invalid, failed for a retryable cause, expired or cancelled goes into a follow-up round
(or, with ``--then live``, through a live engine at once). Everything it asks of the
provider is recorded first in `llmbatch.modes.batch.state`, so a killed run reattaches to
what it made. It stops through the run's one `RunControl`, as the live engine does.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llmbatch.core.errors import AuthError, ExitCode, InputError, PermanentError, Stop, TransientError
from llmbatch.core.values import Request
from llmbatch.cost.spend import SpendingCap
from llmbatch.modes.batch.chunks import Chunker, split
from llmbatch.modes.batch.collect import Collector, LiveRun
from llmbatch.modes.batch.golive import LiveLimits, LiveSwitch
from llmbatch.modes.batch.state import BatchState, Chunk, ChunkState
from llmbatch.modes.deadline import Deadline
from llmbatch.modes.outcome import Outcomes
from llmbatch.providers.openai_batches import BatchAPI, Remote

__all__ = ["DEFAULT_BATCH_BYTES", "DEFAULT_BATCH_REQUESTS", "DEFAULT_POLL_EVERY", "BatchConfig", "BatchMode"]

# OpenAI's limits for one Batch API input file, and how often to look at a batch.
DEFAULT_BATCH_REQUESTS = 50_000
DEFAULT_BATCH_BYTES = 200_000_000
DEFAULT_POLL_EVERY = 30.0
TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})
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


class BatchMode:
    """One `llmbatch run --batch-api`: submit what needs work, wait, collect, follow up."""

    def __init__(
        self,
        *,
        remote: BatchAPI,
        state: BatchState,
        outcomes: Outcomes,
        config: BatchConfig,
        cap: SpendingCap | None = None,
        live: LiveRun | None = None,
        log: Callable[[str], None] = lambda _: None,
        label: str = "",
    ) -> None:
        self.remote = remote
        self.state = state
        self.outcomes = outcomes
        self.stats = outcomes.stats
        self.control = outcomes.control
        self.config = config
        self.cap = cap
        self._reserved: dict[int, float] = {}  # chunk -> USD reserved for it in this run
        self.live = live  # also runs live chunks an earlier --then live run left
        self.log = log
        self.label = label
        self.collector = Collector(
            state=state,
            remote=remote,
            outcomes=outcomes,
            chunker=self._follow_up_chunker,
            cap=cap,
            reserved=self._reserved,
            live=self.live,
            log=log,
        )
        # --deadline: when to stop waiting for the batches and send the rest live.
        self.switch: LiveSwitch | None = None

    def set_deadline(self, deadline: Deadline, limits: LiveLimits) -> None:
        """--deadline: go live (cancel, collect, send the rest live) when the live time
        for what is left would pass it (`llmbatch.modes.batch.golive`)."""
        assert self.live is not None
        self.switch = LiveSwitch(
            deadline,
            state=self.state,
            remote=self.remote,
            outcomes=self.outcomes,
            live=self.live,
            chunker=lambda round_: self._chunker(round_, live=True),
            limits=limits,
            log=self.log,
        )

    @property
    def stopping(self) -> bool:
        return self.control.stopping

    def _chunker(self, round_: int, *, live: bool = False) -> Chunker:
        return Chunker(
            self.state,
            round_=round_,
            live=live,
            requests_per_file=self.config.requests_per_file,
            bytes_per_file=self.config.bytes_per_file,
            cap=self.cap,
        )

    def _follow_up_chunker(self, round_: int) -> Chunker | None:
        if self.config.cancel:
            return None  # --cancel: what a cancelled batch did not finish is left for a later run
        if self.switch is not None and self.switch.gone:
            return self._chunker(round_, live=True)  # past the point of going live: all live
        return self._chunker(round_, live=self.config.then_live and self.live is not None)

    # --- the run -----------------------------------------------------------------

    async def run(
        self, requests: Iterable[Request | InputError], reject: Callable[[InputError], None]
    ) -> ExitCode:
        """Returns PENDING (--no-wait, batches still running) or OK; the caller judges
        the rest from the stats (a stop is in them)."""
        try:
            await self._reconcile()
            if self.config.cancel:
                await self._cancel_all()
            else:
                if self.switch is not None:
                    requests = await self.switch.probe(requests)
                split(requests, self._chunker(0), reject=reject, outcomes=self.outcomes)
                if self.switch is not None:
                    self.switch.set_rate()
            return await self._loop()
        except AuthError as exc:
            self.control.stop(Stop(f"the provider refused the credentials or quota: {exc}"))
        except PermanentError as exc:
            self.control.stop(Stop(f"the Batch API refused: {exc}", exit_code=ExitCode.STOPPED))
        except TransientError as exc:
            self.control.stop(Stop(f"the Batch API is unreachable: {exc}; rerun to resume"))
        return ExitCode.STOPPED

    async def _loop(self) -> ExitCode:
        delay = self.config.poll_every
        while not self.stopping:
            await self.collector.run_live()
            await self._submit_ready()
            changed = await self._poll()
            if self.switch is not None:
                await self.switch.check(self.config.poll_every)
            open_ = self.state.open_batches()
            sealed = self.state.chunks(ChunkState.SEALED)
            if not open_ and not sealed:
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
            if any(c.state is ChunkState.RUNNING for c in open_) and not self._live_pending(sealed):
                if self.switch is not None:
                    delay = self.switch.wait(delay, self.config.poll_every)
                await self.control.sleep(delay)
        return ExitCode.STOPPED

    def _live_pending(self, sealed: list[Chunk]) -> bool:
        """Live follow-ups waiting to be sent (the next turn of the loop sends them)."""
        return self.live is not None and any(c.live for c in sealed)

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
            held=False,
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
            if chunk.held and running:
                continue  # refused for the enqueued-token limit: again once the others are done
            budget = self.config.max_tokens
            if budget is not None and running and enqueued + chunk.tokens > budget:
                continue
            if self.cap is not None:
                if not self.cap.reserve(chunk.worst):
                    self.control.stop(Stop(self.cap.reason() + "; a rerun with a higher --max-cost resumes"))
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
                await self.collector.collect(self.state.chunk(chunk.id), remote)
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
