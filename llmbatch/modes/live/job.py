"""A job: one item on its way through the live engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmbatch.core.values import Finished, State

__all__ = ["Job"]


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

    @classmethod
    def carrying(cls, tally: Finished) -> Job:
        """A job for an item that has been asked before (a Batch API follow-up sent
        live): it goes on with what it has used, answers and usage alike."""
        return cls(
            request=tally.request,
            requests=tally.requests,
            retries=tally.retries,
            capacity_429s=tally.capacity_429s,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            cached_tokens=tally.cached_tokens,
            reasoning_tokens=tally.reasoning_tokens,
            rung=tally.rung,
            cache_write_tokens=tally.cache_write_tokens,
        )
