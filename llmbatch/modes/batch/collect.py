"""Collecting an ended batch, and the live follow-ups of ``--then live``.

Every answer of a batch's result files is judged by the same `Outcomes` as a live
answer (`llmbatch.modes.outcome`) and written as the same output line, or moved into a
follow-up round; an item the batch never ran (expired, cancelled, in neither file)
goes on as it is. A chunk is marked collected only when each of its items is written
or moved on: a run stopped halfway (a broken validator, an auth error in a result
line, a full disk) leaves it running, and the next run collects it again from the
provider's files, which costs nothing (what was written is written again and
compaction keeps one line per id; what was moved on is not looked at twice).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import PermanentError, ProviderError, TransientError
from llmbatch.core.http import error_for_status
from llmbatch.core.stats import Stats
from llmbatch.core.values import Completion, Finished, State, Usage
from llmbatch.cost.spend import SpendingCap
from llmbatch.files.idset import IdSet
from llmbatch.modes.batch.chunks import Chunker, FollowUp
from llmbatch.modes.batch.state import BatchState, Chunk, ChunkState
from llmbatch.modes.live.job import Job
from llmbatch.modes.outcome import Outcomes, Output, Verdict
from llmbatch.providers.openai_batches import BatchAPI, Remote

__all__ = ["NOT_RUN", "Collector", "LiveRun"]

# Lines of the error file that were never run: asked again, without counting as an answer.
NOT_RUN = frozenset({"batch_expired", "batch_cancelled"})

# Runs a live follow-up: the jobs (items with what they have used) through a live
# engine that writes with the given judge; returns when each is written or released.
LiveRun = Callable[[Outcomes, Iterator[Job]], Awaitable[None]]


class Collector:
    """Turns ended batches into output lines and follow-up rounds."""

    def __init__(
        self,
        *,
        state: BatchState,
        remote: BatchAPI,
        outcomes: Outcomes,
        chunker: Callable[[int], Chunker | None],
        cap: SpendingCap | None,
        reserved: dict[int, float],
        live: LiveRun | None,
        log: Callable[[str], None],
    ) -> None:
        self.state = state
        self.remote = remote
        self.outcomes = outcomes
        self.chunker = chunker  # the chunker of a follow-up round, None: none goes on (--cancel)
        self.cap = cap
        self.reserved = reserved  # USD reserved per chunk in this run (--max-cost)
        self.live = live
        self.log = log

    @property
    def stats(self) -> Stats:
        return self.outcomes.stats

    async def collect(self, chunk: Chunk, remote: Remote) -> None:
        """Every answer of an ended batch: written or sent on to another round; then
        the chunk is collected. Streams: the result files are read a line at a time."""
        if remote.status == "failed" and remote.output_file_id is None:
            self._failed_batch(chunk, remote)
            return
        stats = self.stats
        before = Usage(stats.prompt_tokens, stats.completion_tokens, stats.cached_tokens)
        seen = IdSet(chunk.items)
        done: list[str] = []
        follow = FollowUp(self.chunker(chunk.round + 1), self.state)
        whole = True
        async for rec in self._results(remote):
            cid = rec.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                continue
            item = self.state.item(cid)
            if item is None or item.chunk != chunk.id:
                continue
            seen.add(cid)
            tally = item.tally()
            tally.batch_id = remote.id
            verdict = self._judge(tally, rec)
            if verdict is Verdict.FINISH:
                done.append(cid)
            elif verdict is Verdict.RELEASE:
                whole = False  # the run stops: the next one collects this batch again
                break
            else:
                follow.add(tally, verdict)
        if whole:
            for item in self.state.items(chunk.id):
                if item.request.custom_id not in seen:  # in neither file: not run
                    follow.add(item.tally(), Verdict.RETRY)
        output = self.outcomes.output
        output.sync()
        follow.seal(chunk, self.log)
        self.state.mark_done(done)
        if self.cap is not None:
            used = Usage(
                stats.prompt_tokens - before.prompt_tokens,
                stats.completion_tokens - before.completion_tokens,
                stats.cached_tokens - before.cached_tokens,
            )
            self.cap.settle(self.reserved.pop(chunk.id, 0.0), used)
        if not whole or output.error is not None:
            return
        self.state.update(chunk.id, state=ChunkState.COLLECTED, status=remote.status, completed=time.time())
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

    def _judge(self, tally: Finished, rec: dict[str, Any]) -> Verdict:
        """One result line, judged as a live attempt's outcome is."""
        error = rec.get("error")
        response = rec.get("response")
        if isinstance(error, dict) and error.get("code") in NOT_RUN:
            return Verdict.RETRY  # never run: asked again, nothing counted
        self.stats.requests += 1
        outcomes = self.outcomes
        if not isinstance(response, dict):
            message = error.get("message") if isinstance(error, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            err = TransientError(
                f"{code or 'error'}: {message or 'no response'}", code=str(code or "batch_error")
            )
            return outcomes.failed(tally, err, via="batch")[0]
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        if status >= 300 or status == 0:
            return outcomes.failed(tally, error_for_status(status, orjson.dumps(body), {}), via="batch")[0]
        endpoint = endpoint_of(tally.request.url)
        completion = Completion(
            body=body,
            status_code=status,
            usage=endpoint.usage(body) if isinstance(body, dict) else Usage(),
            request_id=response.get("request_id"),
            endpoint=endpoint,
        )
        return outcomes.answered(tally, completion, via="batch")

    def _failed_batch(self, chunk: Chunk, remote: Remote) -> None:
        """A batch refused as a whole. Over the enqueued-token limit: held, and created
        again once the batches before it are done. Anything else: its items fail with
        the reason."""
        message = remote.error or remote.error_code or "the batch failed"
        if self.cap is not None:  # refused whole: nothing was run, nothing billed
            self.cap.settle(self.reserved.pop(chunk.id, 0.0), TransientError("refused"))
        if remote.queue_full:
            self.state.update(chunk.id, state=ChunkState.UPLOADED, held=True, error=message, batch_id=None)
            self.log(
                f"batch {remote.id} refused for the enqueued-token limit; "
                "submitting it again when the others are done"
            )
            return
        err: ProviderError = PermanentError(
            f"batch {remote.id} failed: {message}", code=remote.error_code or "batch_failed"
        )
        done = []
        for item in self.state.items(chunk.id):
            self.outcomes.finish(item.tally(), State.FAILED, err, via="batch", batch_id=remote.id)
            done.append(item.request.custom_id)
        self.outcomes.output.sync()
        self.state.mark_done(done)
        self.state.update(
            chunk.id, state=ChunkState.COLLECTED, status="failed", error=message, completed=time.time()
        )
        self.log(f"batch {remote.id} failed: {message}")

    # --- --then live ---------------------------------------------------------------

    async def run_live(self) -> None:
        """Follow-up chunks for the live API, each through a live engine of its own
        writing to the same output. A chunk is collected once each of its items is
        written; what a stop left stays in it for the next run."""
        if self.live is None:
            return
        for chunk in self.state.chunks(ChunkState.SEALED):
            if not chunk.live or self.outcomes.control.stopping:
                continue
            recorder = _Recording(self.outcomes.output)
            items = (Job.carrying(item.tally()) for item in list(self.state.items(chunk.id)))
            await self.live(self.outcomes.with_output(recorder), items)
            self.state.mark_done(recorder.ids)
            left = len(self.state.ids(chunk.id))
            if left == 0:
                self.state.update(chunk.id, state=ChunkState.COLLECTED)
            elif not self.outcomes.control.stopping:
                self.log(f"chunk {chunk.id}: {left:,} live follow-ups not written; a rerun sends them")


class _Recording:
    """An output that also remembers the ids written through it (for the batch record)."""

    def __init__(self, output: Output) -> None:
        self._output = output
        self.ids: list[str] = []

    @property
    def path(self) -> object:
        return self._output.path

    @property
    def error(self) -> OSError | None:
        return self._output.error

    backlog = 0

    def write(self, finished: Finished) -> None:
        self._output.write(finished)
        self.ids.append(finished.request.custom_id)

    def discard(self, order: int) -> None:
        return None

    def sync(self) -> None:
        self._output.sync()
