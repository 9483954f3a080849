"""The seam between the limits of one process and the other processes on its API key.

Several llmbatch processes on one key (``--redis``) share its budgets, a 429's pause and
a lowered pace: :class:`llmbatch.scale.budget.SharedBudget` implements `Shared` in Redis,
and `llmbatch.schedule.limits.Limits` and its adaptive pace (:mod:`llmbatch.schedule.pace`)
use it when there is one. Without one, nothing in the limits changes.
"""

from __future__ import annotations

from typing import Protocol

from llmbatch.schedule.buckets import Bucket

__all__ = ["Shared"]


class Shared(Protocol):
    """What the processes on one API key share beyond one run (see
    :class:`llmbatch.scale.budget.SharedBudget`)."""

    @property
    def peers(self) -> int:
        """Processes on the key, this one included (at least 1)."""
        ...

    def bucket(self, kind: str, per_minute: float, *, spent: float = 0.0) -> Bucket:
        """The key's budget of `kind` (requests or tokens)."""
        ...

    def publish_pause(self, seconds: float, cause: str) -> None:
        """This process pauses after a 429: so must the others."""
        ...

    def publish_cut(self) -> None:
        """This process lowered its pace after 429s: so must the others."""
        ...

    def pause_left(self) -> tuple[float, str]:
        """Seconds left of a pause the key is under, and its cause."""
        ...

    def take_cut(self) -> bool:
        """Whether another process cut its pace since the last look (once each)."""
        ...
