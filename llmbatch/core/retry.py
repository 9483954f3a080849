"""When to try again and how long to wait: one retry policy (`RetryPolicy`, in the
manner of urllib3's `Retry`) for the live engine, the Batch API mode's calls and the
library's executor.

The policy's rule: a transient error is tried again while retries are left; the wait is
the server's delay when it gave one (Retry-After, retry-after-ms, an exhausted budget's
reset, on a 429 or a 5xx; a delay of 0 is a delay), else the backoff; a server delay
longer than `max_wait` waits `max_wait`, and the wait says it was capped. `RetryConfig`
(the library's public face) describes the backoff and builds the policy."""

from __future__ import annotations

import contextlib
import enum
import random
from collections.abc import Iterator
from dataclasses import dataclass

from llmbatch.core.errors import TransientError

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_WAIT",
    "BackoffStrategy",
    "RetryConfig",
    "RetryPolicy",
    "Wait",
    "no_backoff",
]

# Transport retries per item (429, 5xx, timeouts): they do not use up its answers.
DEFAULT_MAX_RETRIES = 10
# The longest wait a server's delay buys (--max-retry-wait): five minutes.
DEFAULT_MAX_RETRY_WAIT = 300.0

_testing_no_backoff = False


class BackoffStrategy(enum.Enum):
    FIXED = "fixed"  # initial_delay every time
    LINEAR = "linear"  # initial_delay * attempt
    EXPONENTIAL = "exponential"  # initial_delay * multiplier ** (attempt - 1)
    JITTER = "jitter"  # exponential, each wait drawn from its upper half
    DECORRELATED = "decorrelated"  # AWS "decorrelated jitter": up to 3x the last wait


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """How often to try one task and how long to wait between tries.

    `max_attempts` counts the first try: 1 means no retry.
    """

    max_attempts: int = 3
    backoff_strategy: BackoffStrategy = BackoffStrategy.EXPONENTIAL
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0

    def delay(self, attempt: int, previous: float = 0.0, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if _testing_no_backoff:
            return 0.0
        r = (rng or random).random()
        base = self.initial_delay
        s = self.backoff_strategy
        if s is BackoffStrategy.FIXED:
            d = base
        elif s is BackoffStrategy.LINEAR:
            d = base * attempt
        elif s is BackoffStrategy.EXPONENTIAL:
            d = self._exponential(attempt)
        elif s is BackoffStrategy.JITTER:
            top = min(self.max_delay, self._exponential(attempt))
            d = top / 2 + r * top / 2
        else:
            d = base + r * (max(previous, base) * 3 - base)
        return max(0.0, min(d, self.max_delay))

    def policy(self, *, max_wait: float = DEFAULT_MAX_RETRY_WAIT) -> RetryPolicy:
        """The retry policy this configuration describes."""
        return RetryPolicy(retries=max(self.max_attempts, 1) - 1, backoff=self, max_wait=max_wait)

    def _exponential(self, attempt: int) -> float:
        """initial_delay * multiplier ** (attempt - 1), saturating at max_delay instead
        of overflowing: "retry for a long time" policies reach attempts past 1,000."""
        try:
            return float(self.initial_delay * self.multiplier ** max(attempt - 1, 0))
        except OverflowError:
            return self.max_delay


@dataclass(frozen=True, slots=True)
class Wait:
    """How long to wait before the next attempt, and why. `asked` is the server's delay
    when it gave one (longer than `seconds` when the policy capped it)."""

    seconds: float
    asked: float | None = None

    @property
    def capped(self) -> bool:
        return self.asked is not None and self.asked > self.seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Whether to try again after a transient error, and how long to wait first.

    `retries` counts the attempts after the first; `backoff` gives the waits the server
    did not; `max_wait` caps the server's."""

    retries: int = DEFAULT_MAX_RETRIES
    backoff: RetryConfig = RetryConfig()
    max_wait: float = DEFAULT_MAX_RETRY_WAIT

    def allows(self, retried: int) -> bool:
        """Another attempt after `retried` retries?"""
        return retried < self.retries

    def wait(self, error: BaseException, attempt: int, previous: float = 0.0) -> Wait:
        """The wait after failed attempt number `attempt` (1-based) ended in `error`;
        `previous` is the last wait (decorrelated backoff grows from it)."""
        asked = error.retry_after if isinstance(error, TransientError) else None
        if asked is not None:
            return Wait(min(asked, self.max_wait), asked)
        return Wait(self.backoff.delay(attempt, previous))


@contextlib.contextmanager
def no_backoff() -> Iterator[None]:
    """Make every backoff zero (for tests); server delays are still honoured."""
    global _testing_no_backoff
    old, _testing_no_backoff = _testing_no_backoff, True
    try:
        yield
    finally:
        _testing_no_backoff = old
