"""Pace requests to the provider's limits and adapt when the server pushes back.

Three gates, passed in order before each request:

1. a *pause*: after a 429 (or an exhausted ``x-ratelimit-remaining-*``) nothing is
   sent until the time the server asked for has passed;
2. an *adaptive pace*: after a 429 the whole run slows to a fraction of the rate it was
   achieving, then climbs back a little with each success (AIMD, like TCP). A limit the
   server announces (``x-ratelimit-limit-requests``) becomes the ceiling when the user
   gave none, so a run with no ``--rpm`` still settles near the server's real limit;
3. ``aiolimiter.AsyncLimiter`` buckets for ``--rpm`` and ``--tpm``, each holding one
   second's worth so a minute's budget is never spent in a burst. The token bucket is
   charged an estimate up front and corrected by the real usage afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiolimiter import AsyncLimiter

__all__ = ["Limits", "TokenEstimator", "bucket"]

# After a 429, pace at this fraction of the rate achieved just before it.
BACKOFF_FACTOR = 0.7
# Each success raises the adaptive pace by this fraction of its ceiling's distance.
RECOVERY_STEP = 0.002
# Default answer length charged to --tpm when the request sets no max_tokens and no
# answer has been seen yet.
DEFAULT_ANSWER_TOKENS = 256


def bucket(per_minute: float) -> AsyncLimiter:
    """A limiter pacing `per_minute` smoothly: capacity of one second's worth (>= 1)."""
    capacity = max(1.0, per_minute / 60.0)
    return AsyncLimiter(capacity, capacity * 60.0 / per_minute)


class TokenEstimator:
    """Tokens a request will cost, before it is sent, without a tokenizer download.

    Characters / 4 is a fair first guess for English; the ratio is then calibrated from
    the real `usage.prompt_tokens` the server reports, and the answer length from the
    real completions seen so far.
    """

    __slots__ = ("_answered", "_answers", "_seen_chars", "_seen_tokens", "answer_tokens", "chars_per_token")

    def __init__(self) -> None:
        self.chars_per_token = 4.0
        self.answer_tokens = float(DEFAULT_ANSWER_TOKENS)
        self._seen_chars = 0
        self._seen_tokens = 0
        self._answers = 0
        self._answered = 0

    @staticmethod
    def prompt_chars(body: Mapping[str, Any]) -> int:
        n = 0
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                c = m.get("content") if isinstance(m, dict) else None
                if isinstance(c, str):
                    n += len(c) + 16  # role and framing tokens
                elif isinstance(c, list):
                    n += sum(len(p.get("text", "")) for p in c if isinstance(p, dict)) + 16
        inp = body.get("input")
        if isinstance(inp, str):
            n += len(inp)
        elif isinstance(inp, list):
            n += sum(len(x) for x in inp if isinstance(x, str))
        return n

    def estimate(self, body: Mapping[str, Any], chars: int | None = None) -> int:
        if chars is None:
            chars = self.prompt_chars(body)
        prompt = chars / self.chars_per_token
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        answer = float(cap) if isinstance(cap, int | float) else self.answer_tokens
        if "input" in body and "messages" not in body:
            answer = 0.0  # embeddings have no answer
        return int(prompt + answer) + 1

    def observe(self, chars: int, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens > 0 and chars > 0:
            self._seen_chars += chars
            self._seen_tokens += prompt_tokens
            self.chars_per_token = max(self._seen_chars / self._seen_tokens, 0.5)
        if completion_tokens > 0:
            self._answers += completion_tokens
            self._answered += 1
            self.answer_tokens = self._answers / self._answered


class Limits:
    """The gates in front of every request. One instance per run (per event loop)."""

    def __init__(self, *, rpm: float | None = None, tpm: float | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._requests = bucket(rpm) if rpm else None
        self._tokens = bucket(tpm) if tpm else None
        self._paused_until = 0.0
        # Adaptive pace in requests/second; None while no 429 has been seen.
        self._pace: float | None = None
        self._ceiling: float | None = rpm / 60.0 if rpm else None
        self._next_slot = 0.0
        self._recent: list[float] = []  # send times, to measure the achieved rate
        self.estimator = TokenEstimator()

    @property
    def may_wait(self) -> bool:
        """Whether `acquire` can block at all (no limits and no pushback: never)."""
        return bool(self._requests or self._tokens or self._pace or self._paused_until)

    @property
    def pace_rpm(self) -> float | None:
        """The adaptive pace in requests/minute, when the server has pushed back."""
        return self._pace * 60 if self._pace else None

    def clamp(self, tokens: int) -> int:
        """A token charge the bucket can grant: an oversized request must not hang."""
        if self._tokens is None:
            return tokens
        return min(tokens, int(self._tokens.max_rate))

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request costing `tokens` (an estimate) may be sent."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._paused_until:
            await asyncio.sleep(self._paused_until - now)
            now = loop.time()
        if self._pace is not None:
            slot = max(self._next_slot, now)
            self._next_slot = slot + 1.0 / self._pace
            if slot > now:
                await asyncio.sleep(slot - now)
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None and tokens > 0:
            await self._tokens.acquire(self.clamp(tokens))
        recent = self._recent
        recent.append(loop.time())
        if len(recent) > 512:
            del recent[:256]

    def settle(self, charged: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known. The bucket's level is
        aiolimiter's own accounting; moving it is how a refund (or a debt) is booked."""
        if self._tokens is None or charged == actual:
            return
        t = self._tokens
        t._level = max(0.0, t._level + (actual - charged))

    def achieved_rate(self, window: float = 5.0) -> float:
        """Requests/second sent over the last `window` seconds."""
        recent = self._recent
        if len(recent) < 2:
            return 0.0
        now = asyncio.get_running_loop().time()
        start = now - window
        n = 0
        first = now
        for t in reversed(recent):
            if t < start:
                break
            n += 1
            first = t
        return n / max(now - first, 0.05) if n > 1 else 0.0

    def pushed_back(self, delay: float | None) -> None:
        """The server said 429 (or a budget is exhausted): pause, then pace lower."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if delay is not None and delay > 0:
            self._paused_until = max(self._paused_until, now + delay)
        achieved = self.achieved_rate()
        current = self._pace or achieved or (self._ceiling or 1.0)
        floor = 1.0 / 60.0  # one request a minute: never stop entirely
        self._pace = max(floor, min(current, achieved or current) * BACKOFF_FACTOR)
        self._next_slot = max(self._next_slot, self._paused_until)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn the server's announced request limit, when it sends one."""
        limit = headers.get("x-ratelimit-limit-requests")
        if limit and self.rpm is None:
            try:
                per_sec = float(limit) / 60.0
            except ValueError:
                return
            if per_sec > 0 and self._ceiling != per_sec:
                self._ceiling = per_sec
                self._requests = bucket(float(limit))

    def succeeded(self) -> None:
        """One success: let the adaptive pace climb back toward its ceiling."""
        pace = self._pace
        if pace is None:
            return
        ceiling = self._ceiling
        if ceiling is None:
            self._pace = pace * (1 + RECOVERY_STEP * 5)
            if self._pace > 10_000:
                self._pace = None
        else:
            self._pace = pace + max(ceiling - pace, ceiling * 0.05) * RECOVERY_STEP
            if self._pace >= ceiling:
                self._pace = None  # the bucket alone paces at the ceiling
