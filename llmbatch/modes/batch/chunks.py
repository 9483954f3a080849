"""Items into chunks: one Batch API input file each, per endpoint and model, at most
`--batch-requests` requests and `--batch-bytes` bytes; and the follow-up chunks of a
collected batch (its invalid, retryable, expired and cancelled items), which go into
another batch or, with ``--then live``, to the live API."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import InputError
from llmbatch.core.values import Finished, Request, State
from llmbatch.cost.spend import SpendingCap
from llmbatch.modes.batch.state import BatchState, Chunk, ChunkState
from llmbatch.modes.outcome import Outcomes, Verdict

__all__ = ["Chunker", "FollowUp"]

_Key = tuple[str, str, bool]  # endpoint, model, live


class Chunker:
    """Fills chunks of one round, sealing each when the next item would pass a file's
    limits."""

    def __init__(
        self,
        state: BatchState,
        *,
        round_: int,
        live: bool,
        requests_per_file: int,
        bytes_per_file: int,
        cap: SpendingCap | None,
    ) -> None:
        self.state = state
        self.round = round_
        self.live = live
        self.requests_per_file = requests_per_file
        self.bytes_per_file = bytes_per_file
        self.cap = cap
        # Chunks of this round a killed run left filling are filled on.
        self._filling: dict[_Key, Chunk] = {
            (c.endpoint, c.model, c.live): c
            for c in state.chunks(ChunkState.FILLING)
            if c.round == round_ and c.live == live
        }
        self._sizes: dict[int, tuple[int, int]] = {c.id: (c.items, c.bytes) for c in self._filling.values()}

    def place(self, req: Request, *, moving: bool = False) -> None:
        """Put an item in the filling chunk of its endpoint and model (`moving`: an item
        of this record going on to another round, with what it has used). Raises
        InputError when nothing bounds its answer under --max-cost, or when the request
        alone is bigger than a file may be."""
        worst = self.cap.worst_case(req) if self.cap is not None else 0.0
        line = orjson.dumps({"custom_id": req.custom_id, "method": "POST", "url": req.url, "body": req.body})
        size = len(line) + 1
        if size > self.bytes_per_file and not moving:
            # A request its file cannot hold (its attachments, most often) would make a
            # file over the limit: that item is a reject, the others go on.
            raise InputError(
                f"the request is {size:,} bytes (attachments included), more than a batch file holds "
                f"(--batch-bytes {self.bytes_per_file:,})",
                line=req.line,
            )
        model = str(req.body.get("model") or "")
        key = (req.url, model, self.live)
        chunk = self._filling.get(key)
        if chunk is not None:
            n, b = self._sizes[chunk.id]
            if n + 1 > self.requests_per_file or b + size > self.bytes_per_file:
                self.state.seal(chunk.id)
                chunk = None
        if chunk is None:
            chunk_id = self.state.new_chunk(round_=self.round, endpoint=req.url, model=model, live=self.live)
            chunk = self._filling[key] = self.state.chunk(chunk_id)
            self._sizes[chunk_id] = (0, 0)
        tokens = endpoint_of(req.url).prompt_tokens(req.body)
        self.state.add(chunk.id, req, size=size, tokens=tokens, worst=worst, moving=moving)
        n, b = self._sizes[chunk.id]
        self._sizes[chunk.id] = (n + 1, b + size)

    def seal(self) -> None:
        for chunk in self._filling.values():
            self.state.seal(chunk.id)
        self._filling.clear()
        self.state.commit()


def split(
    requests: Iterable[Request | InputError],
    chunker: Chunker,
    *,
    reject: Callable[[InputError], None],
    outcomes: Outcomes,
) -> None:
    """The first round: every item that needs work, answered from the cache when it can
    be (with --cache), else into a chunk."""
    cache = outcomes.cache
    for req in requests:
        if isinstance(req, InputError):
            reject(req)
            continue
        if cache is not None and (cached := cache.get(req.fp, endpoint_of(req.url))) is not None:
            verdict = outcomes.from_cache(Finished(request=req, state=State.FAILED), cached)
            if verdict is not None:
                continue  # written from the cache (or the validator is broken: the run stops)
        if outcomes.control.stopping:
            break
        try:
            chunker.place(req)
        except InputError as err:  # nothing bounds its answer, under --max-cost
            reject(err)
    chunker.seal()


class FollowUp:
    """The items of one collected chunk that need another round: moved into chunks of
    the next round (or the live API's, with --then live) as they come. With --cancel,
    none goes on: they are left for a later run."""

    def __init__(self, chunker: Chunker | None, state: BatchState) -> None:
        self.chunker = chunker
        self.state = state
        self.count = 0

    def add(self, tally: Finished, verdict: Verdict) -> None:
        assert verdict in (Verdict.REASK, Verdict.RETRY)
        self.state.record_use(tally)
        self.count += 1
        if self.chunker is not None:
            self.chunker.place(tally.request, moving=True)

    def seal(self, chunk: Chunk, log: Callable[[str], None]) -> None:
        if self.chunker is not None:
            self.chunker.seal()
            return
        released = self.state.release(chunk.id)
        if released:
            log(f"{released:,} items of a cancelled batch left for a later run")
