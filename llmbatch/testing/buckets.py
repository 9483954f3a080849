"""The fake server's rate limits: token buckets for requests and tokens per minute, the
way providers enforce them, and the ``x-ratelimit-*`` headers that announce them.

A limit of R per minute refills continuously at R/60 a second. The bucket holds a few
seconds' worth (one second by default: a 60,000/min limit enforced as 1,000/s, so a
minute's budget cannot go out in a burst; a provider that lets a minute's worth pile up
is ``seconds=60``). It may start spent, as if another client had just used the key.

A request is admitted when its bucket holds what it costs, or is full when it costs
more than the bucket holds (it then runs the bucket into debt, paid back at the same
rate, so a large request is slow but never refused for ever). A request that costs
more than the whole per-minute limit is refused outright, as OpenAI refuses a request
too large for its tokens-per-minute limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Bucket", "KeyLimit", "RateLimits", "Refusal", "ResetMeaning", "format_duration"]

ResetMeaning = Literal["next", "full"]
"""What ``x-ratelimit-reset-*`` counts down to: ``"next"``, the time until the bucket
holds one more unit than it says remain; ``"full"``, OpenAI's documented meaning, the
time until the bucket is back to full."""

RESET_MEANINGS: tuple[ResetMeaning, ...] = ("next", "full")


class Bucket:
    """``limit`` units per minute, holding ``seconds`` of them (at least one unit)."""

    __slots__ = ("capacity", "last", "level", "limit", "rate")

    def __init__(self, limit: float, *, seconds: float, spent: bool, now: float) -> None:
        if limit <= 0 or seconds <= 0:
            raise ValueError("a bucket needs a positive limit and size")
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(1.0, self.rate * seconds)
        self.level = 0.0 if spent else self.capacity
        self.last = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` would be admitted (0: now), as of the last refill."""
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    @property
    def remaining(self) -> int:
        return max(0, int(self.level))

    def reset(self, means: ResetMeaning) -> float:
        """Seconds until the reset that ``x-ratelimit-reset-*`` announces."""
        to_full = (self.capacity - self.level) / self.rate
        if means == "full":
            return max(0.0, to_full)
        to_next = (self.remaining + 1 - self.level) / self.rate
        return max(0.0, min(to_full, to_next))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted: which limit, and how long to wait (None: a wait
    will not help, the request is larger than the limit)."""

    kind: Literal["requests", "tokens"]
    wait: float | None
    message: str


class RateLimits:
    """The requests and tokens buckets of one API key, admitted and announced together."""

    __slots__ = ("clock", "enforced", "requests", "reset_means", "tokens")

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        seconds: float,
        spent: bool,
        reset_means: ResetMeaning,
        clock: Callable[[], float],
        enforce_seconds: float | None = None,
    ) -> None:
        now = clock()
        self.requests = Bucket(rpm, seconds=seconds, spent=spent, now=now) if rpm else None
        self.tokens = Bucket(tpm, seconds=seconds, spent=spent, now=now) if tpm else None
        # A shorter window enforced behind the announced one (OpenAI may enforce 60,000 a
        # minute as 1,000 a second): buckets of `enforce_seconds` of the same rates, which
        # refuse what the announced buckets (and their headers) would let through.
        self.enforced: list[tuple[Bucket, Literal["requests", "tokens"]]] = []
        if enforce_seconds is not None:
            for kind, limit in (("requests", rpm), ("tokens", tpm)):
                if limit:
                    bucket = Bucket(limit, seconds=enforce_seconds, spent=False, now=now)
                    self.enforced.append((bucket, kind))  # type: ignore[arg-type]
        self.reset_means = reset_means
        self.clock = clock

    def admit(self, tokens: int) -> Refusal | None:
        """Charge one request of ``tokens`` to both buckets, or to neither and say why not."""
        now = self.clock()
        charges: list[tuple[Bucket, Literal["requests", "tokens"], float]] = []
        if self.requests is not None:
            charges.append((self.requests, "requests", 1))
        if self.tokens is not None:
            charges.append((self.tokens, "tokens", tokens))
        for bucket, kind in self.enforced:
            charges.append((bucket, kind, 1 if kind == "requests" else tokens))
        for bucket, _, _ in charges:
            bucket.refill(now)
        if self.tokens is not None and tokens > self.tokens.limit:
            return Refusal(
                "tokens",
                None,
                f"Request too large for tokens per min (TPM): Limit {self.tokens.limit:.0f}, "
                f"Requested {tokens}. The input or output tokens must be reduced.",
            )
        for bucket, kind, amount in charges:
            wait = bucket.wait(amount)
            if wait > 0:
                short = "RPM" if kind == "requests" else "TPM"
                return Refusal(
                    kind,
                    max(wait, *(b.wait(a) for b, _, a in charges)),
                    f"Rate limit reached for {kind} per min ({short}): Limit {bucket.limit:.0f}, "
                    f"Remaining {bucket.remaining}, Requested {amount:.0f}. "
                    f"Please try again in {format_duration(wait)}.",
                )
        for bucket, _, amount in charges:
            bucket.take(amount)
        return None

    def headers(self) -> list[tuple[str, str]]:
        """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, as of now."""
        out: list[tuple[str, str]] = []
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out += [
                    (f"x-ratelimit-limit-{kind}", f"{bucket.limit:.0f}"),
                    (f"x-ratelimit-remaining-{kind}", str(bucket.remaining)),
                    (f"x-ratelimit-reset-{kind}", format_duration(bucket.reset(self.reset_means))),
                ]
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's duration format: ``20ms``, ``1.5s``, ``6m0s``. Rounded up to the
    millisecond, so a client that waits exactly this long is not early."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


class KeyLimit:
    """The LiteLLM proxy's own limit on a virtual key: ``rpm`` requests in each fixed
    window of ``window`` seconds (the first starts at the first request), announced as
    ``x-ratelimit-api_key-{limit,remaining}-requests`` with no reset header; every 429
    says ``retry-after`` the whole window (LiteLLM's 60), whatever is left of it."""

    __slots__ = ("clock", "limit", "start", "used", "window")

    def __init__(self, rpm: float, *, clock: Callable[[], float], window: float = 60.0) -> None:
        if rpm <= 0 or window <= 0:
            raise ValueError("a key limit needs a positive limit and window")
        self.limit = int(rpm)
        self.window = window
        self.clock = clock
        self.start: float | None = None
        self.used = 0

    def admit(self) -> bool:
        """Count one request in the current window, or refuse it (the window is spent)."""
        now = self.clock()
        if self.start is None:
            self.start = now
        elif now - self.start >= self.window:
            self.start += (now - self.start) // self.window * self.window
            self.used = 0
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-api_key-limit-requests", str(self.limit)),
            ("x-ratelimit-api_key-remaining-requests", str(max(0, self.limit - self.used))),
        ]

    @property
    def retry_after(self) -> str:
        return f"{self.window:g}"

    def refusal(self) -> str:
        return (
            "LiteLLM Rate Limit Handler for rate limit type = key. Crossed TPM / RPM / Max Parallel "
            f"Request Limit. current rpm: {self.used}, rpm limit: {self.limit}"
        )
