"""Budgets that refill at a steady rate: what `--rpm` and `--tpm` are paced by.

`Bucket` is the interface the limits use; `LocalBucket` keeps the budget in this
process (an `aiolimiter.AsyncLimiter`); a bucket shared by several processes can
implement the same interface. Every touch of aiolimiter's internals lives in
`LocalBucket`, so an aiolimiter upgrade has one place to look.
"""

from __future__ import annotations

from typing import Protocol

from aiolimiter import AsyncLimiter

__all__ = ["Bucket", "LocalBucket"]


class Bucket(Protocol):
    """A budget of units (requests or tokens) refilling at `rate` per second, holding
    at most `capacity` (one second's worth: without word from the server, a minute's
    budget is never spent in a burst; what the server says is left may be, `offer`).
    Spending more than it has (a debt) is allowed up to one minute's budget:
    a request that turned out bigger than its estimate costs at most the wait a
    provider's one-minute window would impose."""

    @property
    def rate(self) -> float: ...

    @property
    def capacity(self) -> float: ...

    @property
    def level(self) -> float:
        """How much of the capacity is spent now (above `capacity`: a debt)."""
        ...

    async def acquire(self, amount: float) -> None:
        """Wait until `amount` (at most `capacity`) may be spent, and spend it."""
        ...

    def adjust(self, delta: float) -> None:
        """Correct a spend once the truth is known: a positive `delta` is a debt (the
        bucket waits it off), a negative one a refund."""
        ...

    def cap_available(self, available: float) -> None:
        """The server says only `available` is left: never offer more than that now
        (0 drains the bucket: the next unit waits for the refill)."""
        ...

    def set_rate(self, per_minute: float) -> None:
        """Pace at another rate from now on, keeping what is spent."""
        ...

    def offer(self, available: float) -> None:
        """The server says `available` more may be sent now (what it has left, less what
        is on its way to it): spend up to that at once, then pace at the refill rate from
        now (the bucket's own second counts as spent). 0 withdraws an offer."""
        ...

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` could be spent, at the current level."""
        ...


class LocalBucket:
    """A `Bucket` in this process, for `per_minute` units a minute.

    `spent` is how much of one second's capacity is already used at birth: a bucket
    made mid-run (a limit just learned from a server) must not grant a second's burst
    on top of what the server has just counted."""

    __slots__ = ("_credit", "_limiter", "per_minute")

    def __init__(self, per_minute: float, *, spent: float = 0.0) -> None:
        self.per_minute = per_minute
        self._credit = 0.0  # what the server offered beyond the bucket (`offer`), spent first
        capacity = max(1.0, per_minute / 60.0)
        self._limiter = AsyncLimiter(capacity, capacity * 60.0 / per_minute)
        if spent:
            lim = self._limiter
            lim._level = min(float(spent), capacity)
            lim._last_check = lim._loop.time()

    @property
    def rate(self) -> float:
        lim = self._limiter
        return float(lim.max_rate / lim.time_period)

    @property
    def capacity(self) -> float:
        return float(self._limiter.max_rate)

    @property
    def level(self) -> float:
        lim = self._limiter
        lim._leak()
        return float(lim._level)

    async def acquire(self, amount: float) -> None:
        if self._credit >= amount:
            self._credit -= amount
            return
        await self._limiter.acquire(min(amount, self.capacity))

    def offer(self, available: float) -> None:
        self._credit = max(0.0, available)
        if available > 0:
            lim = self._limiter
            lim._leak()
            lim._level = max(lim._level, lim.max_rate)

    def adjust(self, delta: float) -> None:
        # The level is drained up to now first, or a debt would be forgiven for the
        # time that passed before it was booked; waiters then see the new level.
        if not delta:
            return
        lim = self._limiter
        lim._leak()
        ceiling = lim.max_rate + self.per_minute  # a debt of one minute's budget at most
        lim._level = min(max(0.0, lim._level + delta), max(ceiling, lim._level))
        lim._wake_next()

    def cap_available(self, available: float) -> None:
        self._credit = min(self._credit, max(0.0, available))
        lim = self._limiter
        lim._leak()
        lim._level = max(lim._level, lim.max_rate - max(0.0, available))
        lim._wake_next()

    def set_rate(self, per_minute: float) -> None:
        lim = self._limiter
        lim._leak()
        capacity = max(1.0, per_minute / 60.0)
        lim.max_rate = capacity
        lim.time_period = capacity * 60.0 / per_minute
        lim._rate_per_sec = capacity / lim.time_period
        lim._level = min(lim._level, capacity + self.per_minute)
        lim._wake_next()

    def wait_for(self, amount: float) -> float:
        # Read-only (the display asks from its own thread): the level leaked up to now
        # is computed, not stored.
        if self._credit >= amount:
            return 0.0
        lim = self._limiter
        elapsed = lim._loop.time() - lim._last_check if lim._level else 0.0
        level = max(lim._level - elapsed * lim._rate_per_sec, 0.0)
        return max(0.0, (level + min(amount, lim.max_rate) - lim.max_rate) / lim._rate_per_sec)
