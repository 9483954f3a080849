"""When to try again and how long to wait: one backoff policy for the CLI engine and the
library's executor."""

from __future__ import annotations

import contextlib
import enum
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_RETRIES", "BackoffStrategy", "RetryConfig", "no_backoff"]

# Transport retries per item (429, 5xx, timeouts): they do not use up its answers.
DEFAULT_MAX_RETRIES = 10

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

    def _exponential(self, attempt: int) -> float:
        """initial_delay * multiplier ** (attempt - 1), saturating at max_delay instead
        of overflowing: "retry for a long time" policies reach attempts past 1,000."""
        try:
            return float(self.initial_delay * self.multiplier ** max(attempt - 1, 0))
        except OverflowError:
            return self.max_delay


@contextlib.contextmanager
def no_backoff() -> Iterator[None]:
    """Make every backoff zero (for tests); server delays are still honoured."""
    global _testing_no_backoff
    old, _testing_no_backoff = _testing_no_backoff, True
    try:
        yield
    finally:
        _testing_no_backoff = old
