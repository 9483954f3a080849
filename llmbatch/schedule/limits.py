"""Pace requests to the provider's limits and adapt when the server pushes back.

Three gates, passed in order before each request:

1. a *pause*: after a 429, nothing is sent until the time the server asked for has
   passed;
2. an *adaptive pace*: when 429s are a real share of recent answers (not a stray
   one), the whole run slows to a fraction of the rate the server refused (at most a
   little above what it was accepting), once per burst. The new pace is on trial until
   answers sent at it come back: if they hold as many 429s as before, slowing did not
   help (a flaky server, not a limit) and the cut is undone; otherwise successes climb
   back, quickly to just under the refused rate and slowly past it (AIMD, like TCP),
   until the pace reaches its ceiling (``--rpm``, or the
   ``x-ratelimit-limit-requests`` a server announces when the user gave none) and the
   bucket alone paces again;
3. buckets (:mod:`llmbatch.schedule.buckets`) for ``--rpm`` and ``--tpm`` (or the limits a
   server announces in ``x-ratelimit-limit-*`` when none is given), each holding one
   second's worth so a minute's budget is never spent in a burst. The token bucket is
   charged an estimate up front and corrected by the real usage afterwards; a debt is
   capped at one minute's budget.

The server's own budget is followed too: ``x-ratelimit-remaining-*`` caps what the
bucket offers, so a budget spent to 0 (another client used the key, or a burst before
the limit was known) makes the next request wait for the refill of what it needs, at
the known rate: about one request, or its token estimate. (``x-ratelimit-reset-*`` is
only an upper bound: OpenAI's means the time until the budget is *full* again.) While
the server's budget is empty, the bucket paces a little under the limit, so the
requests that follow do not meet a budget refilled a moment too late. A 429 that says
the budget is empty, for a limit already known, pauses without lowering the pace: the
pace is right, the budget was spent.

Several processes on one API key can share all of this (``--redis``,
:mod:`llmbatch.scale.budget`): the buckets live in Redis, and a `Shared` object carries a 429's
pause and a lowered pace from one process to the others. Without one, nothing here
changes.

One attempt protocol for every caller (the CLI's engine, the library's executor):
``permit = await limits.admit(request)`` before the request, then exactly one
``permit.settle(outcome)`` with the answer or the exception that ended the attempt.
The permit knows what each outcome means for the gates (a refund, a debt, a 429's
pause, a learned limit); callers never touch the gates' accounting themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import AuthError, RateLimited
from llmbatch.core.http import parse_duration
from llmbatch.core.values import Completion, Request
from llmbatch.schedule.buckets import Bucket, LocalBucket
from llmbatch.schedule.tokens import TokenEstimator

__all__ = ["Limits", "Permit"]

# After a 429, pace at this fraction of the rate the server refused.
BACKOFF_FACTOR = 0.7
# 429s that arrive within this long of a cut answer requests sent at the old pace: a
# burst of them (a whole window refused at once) is one signal, not one cut each.
CUT_HOLD = 1.0
# Recovery, in fractions of the refused rate per second of successes: fast back to
# RECOVERED of it (only the last of it was too much), then a slow probe above, so a run
# spends its time just under the limit instead of in a sawtooth below it.
RECOVERED = 0.95
FAST_RECOVERY = 0.25
SLOW_RECOVERY = 0.02
# With no ceiling known, a pace this many times the refused rate becomes the new
# reference to climb from: the limit has evidently moved (or was measured low).
RELEASE_FACTOR = 2.0
# A 429 slows (and pauses) the whole run only while 429s are at least this share of
# the last answers: a run over its limit sees many, a flaky server a scattered few,
# and cutting the pace for each of those would ratchet a long run down to a crawl.
# Isolated 429s are retried after their own Retry-After, like any transient fault.
SIGNIFICANT_SHARE = 0.1
SHARE_WINDOW = 100
# Until this many answers are in, any 429 counts (the first burst of a run).
SHARE_MIN = 20
# After a cut, answers to requests sent at the new pace should hold fewer 429s. If they
# hold at least this fraction of the share that caused the cut, the 429s are not about
# our pace (a flaky server, a shared key's other users): the cut is undone.
UNRELIEVED = 0.7
# A server refusing requests is taken to have refused at most this much above the
# rate it was answering at.
OVER_ACCEPTED = 1.05
NEW_OVERLOAD = 1.5
# When most answers are 429s, slowing down is right whatever the cause.
MOSTLY_REFUSED = 0.5
# Never stop entirely: one request a minute.
MIN_PACE = 1.0 / 60.0
# While the server's budget is empty, pace at this share of the limit: at exactly the
# refill rate, network jitter makes every other request arrive a moment too early.
DRAINED_PACE = 0.97
# With no known rate, a spent budget waits at most this long before trying (a 429
# then says how long, exactly).
UNKNOWN_RATE_WAIT = 1.0
KINDS = ("requests", "tokens")
# Per kind, its x-ratelimit-* header names (looked up on every answer).
_HEADER_NAMES = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in KINDS
}
# What a server that announces limits sends on every answer: one is enough to look further.
_ANY_HEADER = tuple(name for names in _HEADER_NAMES.values() for name in names[:2])


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


class Limits:
    """The gates in front of every request. One instance per run (per event loop).

    Callers go through `admit` and `Permit.settle`; the methods those call
    (`pushed_back`, `observe_headers`, `settle`, `succeeded`, `failed`) are public for
    the tests of the pacing maths.
    """

    def __init__(
        self, *, rpm: float | None = None, tpm: float | None = None, shared: Shared | None = None
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._shared = shared  # several processes on one key (--redis), else None
        self._requests: Bucket | None = self._new_bucket("requests", rpm) if rpm else None
        self._tokens: Bucket | None = self._new_bucket("tokens", tpm) if tpm else None
        # The limits per minute, given or learned, by kind; and the kinds whose
        # budget the server last said was empty (paced at DRAINED_PACE meanwhile).
        self._limit: dict[str, float] = {k: v for k, v in (("requests", rpm), ("tokens", tpm)) if v}
        self._given = frozenset(self._limit)
        self._drained: set[str] = set()
        self._paused_until = 0.0
        self._pause_cause = ""
        # What acquire() waits for right now, for the display: (kind, amount).
        self.waiting: tuple[str, float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # whose clock the display reads
        # Adaptive pace in requests/second; None while the buckets alone pace.
        self._pace: float | None = None
        self._ceiling: float | None = rpm / 60.0 if rpm else None
        self._refused = 0.0  # the rate the server refused at the last cut
        self._hold_until = float("-inf")  # 429s before this belong to the last cut
        # Set by observe_headers when an answer spent a budget's last unit: the caller's
        # pushed_back() for that answer then pauses without cutting the pace.
        self._spent = False
        self._next_slot = 0.0
        self._recent: list[float] = []  # send times, to measure the achieved rate
        # The last answers, True for a 429, and how many of them are 429s.
        self._outcomes: deque[bool] = deque(maxlen=SHARE_WINDOW)
        self._limited = 0
        self._accepted: deque[float] = deque(maxlen=4096)  # when answers came back
        self._sent = 0  # requests let through so far
        self._answers = 0  # answers (429s included) recorded so far
        # Answers to requests sent after the last cut, and their 429s; the share of
        # 429s that caused that cut.
        self._count_from = 0
        self._after_cut = 0
        self._after_cut_limited = 0
        self._share_at_cut = 0.0
        self.estimator = TokenEstimator()

    @property
    def may_wait(self) -> bool:
        """Whether `acquire` can block at all (no limits and no pushback: never)."""
        return bool(self._requests or self._tokens or self._pace or self._paused_until or self._shared)

    @property
    def pace_rpm(self) -> float | None:
        """The adaptive pace in requests/minute, when the server has pushed back."""
        return self._pace * 60 if self._pace else None

    @property
    def ceiling_rpm(self) -> float | None:
        """The request limit paced at: --rpm, else the one the server announced."""
        return self._ceiling * 60 if self._ceiling else None

    def clamp(self, tokens: int) -> int:
        """A token charge the bucket can grant: an oversized request must not hang."""
        if self._tokens is None:
            return tokens
        return min(tokens, int(self._tokens.capacity))

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request costing `tokens` (an estimate) may be sent."""
        loop = self._loop = asyncio.get_running_loop()
        await self._wait_pause(loop)
        if self._pace is not None:
            now = loop.time()
            slot = max(self._next_slot, now)
            self._next_slot = slot + 1.0 / self._pace
            if slot > now:
                await asyncio.sleep(slot - now)
        if self._requests is not None:
            self.waiting = ("requests", 1)
            await self._requests.acquire(1)
        if self._tokens is not None and tokens > 0:
            amount = self.clamp(tokens)
            self.waiting = ("tokens", amount)
            await self._tokens.acquire(amount)
        self.waiting = None
        await self._wait_pause(loop)  # a 429 may have come back while this one waited
        self._sending(loop)

    def _sending(self, loop: asyncio.AbstractEventLoop) -> None:
        """A request is let through: counted, and its time kept for the achieved rate."""
        self._sent += 1
        recent = self._recent
        recent.append(loop.time())
        if len(recent) > 1024:
            del recent[:512]

    def admit_now(self, chars: int | None = None) -> Permit | None:
        """A permit at once when nothing can hold the request back (no limit known, no
        pause, no lowered pace: `may_wait` is false), else None: then `admit` waits.
        The common case of a run without limits costs no coroutine."""
        return None if self.may_wait else self.grant(chars)

    def grant(self, chars: int | None = None) -> Permit:
        """`admit_now` for a caller that has just seen `may_wait` false."""
        self._loop = loop = asyncio.get_running_loop()
        self._sending(loop)
        return Permit(self, 0, chars or 0)

    async def admit(self, request: Request, chars: int | None = None) -> Permit:
        """Wait until `request` may be sent; the permit it returns must be settled once
        with the attempt's outcome. `chars` is its prompt size when the caller has it
        already (it does not change between attempts)."""
        charged = 0
        if self._tokens is not None:
            endpoint = endpoint_of(request.url)
            if chars is None:
                chars = endpoint.prompt_chars(request.body)
            charged = self.clamp(self.estimator.estimate(endpoint, request.body, chars))
        await self.acquire(charged)
        return Permit(self, charged, chars or 0)

    def oversized(self, request: Request, chars: int | None = None) -> int:
        """The token estimate of a request bigger than a minute of --tpm allows (0 for
        any other): it is sent alone, and costs at most a minute's wait after it."""
        tpm = self._limit.get("tokens")
        if tpm is None:
            return 0
        tokens = self.estimator.estimate(endpoint_of(request.url), request.body, chars)
        return tokens if tokens > tpm else 0

    def _bucket(self, kind: str) -> Bucket | None:
        return self._requests if kind == "requests" else self._tokens

    async def _wait_pause(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._shared is not None:
            self._adopt_shared(loop)
        while (left := self._paused_until - loop.time()) > 0:
            await asyncio.sleep(left)
            if self._shared is not None:
                self._adopt_shared(loop)

    def settle(self, charged: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known: refund an
        overestimate, book a debt for an underestimate (the bucket then waits it off).

        """
        if self._tokens is not None:
            self._tokens.adjust(actual - charged)

    def achieved_rate(self, window: float = 5.0) -> float:
        """Requests/second sent over the last `window` seconds."""
        return _rate(self._recent, asyncio.get_running_loop().time(), window)

    def accepted_rate(self, window: float = 2.0) -> float:
        """Answers/second received over the last `window` seconds (429s not counted),
        over at least a second. In a run's first second, what came back so far once
        that is a few answers (an underestimate, which errs on the side of fewer 429s:
        the rate a first burst was *sent* at is no measure of what the server takes);
        0 before (too soon to tell)."""
        done = self._accepted
        now = asyncio.get_running_loop().time()
        if not done or (now - done[0] < 1.0 and len(done) < SHARE_MIN):
            return 0.0
        return _rate(done, now, window)

    def pushed_back(self, delay: float | None, headers: Mapping[str, str] | None = None) -> None:
        """The server said 429: pause for `delay`, and lower the pace once per burst.

        Called right after `observe_headers` saw an answer spend a budget's last unit,
        it only pauses: that answer was a success, and the run is at the limit, where
        it should be. So does a 429 whose own headers say the budget of a known limit
        is empty, unless most of the last answers were 429s (then the pace is wrong
        after all: another client shares the key)."""
        drained = self.observe_headers(headers, answer=False) if headers else False
        self._record(True)
        if drained and not self._mostly_refused():
            if delay is not None and delay > 0:
                self._pause(delay, "429, the server's budget is empty")
            return
        if not self._spent and not self.overloaded:
            return
        if not self._spent and self._unrelieved():
            self._pace = None
            self._start_counting(self._share_at_cut)
            return
        now = asyncio.get_running_loop().time()
        if delay is not None and delay > 0:
            self._pause(delay, "429, Retry-After" if headers else "429")
        self._next_slot = max(self._next_slot, self._paused_until)
        if self._spent:
            self._spent = False
            return
        if self._on_trial(now):
            return  # no new cut before answers at the last cut's pace have come back
        self._cut(now, self._limited / max(len(self._outcomes), 1))
        if self._shared is not None:
            self._shared.publish_cut()

    def _on_trial(self, now: float) -> bool:
        return now < self._hold_until or (self._share_at_cut > 0 and self._after_cut < SHARE_MIN)

    def _cut(self, now: float, share: float) -> None:
        """Lower the pace below the rate the server refused; `share` is the share of
        429s the cut is for."""
        # Nothing sent before the pause ends can tell whether the new pace is right.
        self._hold_until = max(now + CUT_HOLD, self._paused_until)
        # The server refused what we sent, but it accepted about its limit: far over a
        # limit, cutting the send rate by a fraction would still be far over it.
        accepted = self.accepted_rate()
        ceiling = self._share_of(self._ceiling)
        rates = [r for r in (self._pace, self.achieved_rate(), ceiling, accepted * OVER_ACCEPTED) if r]
        refused = min(rates) if rates else 1.0
        self._refused = refused
        self._pace = pace = max(MIN_PACE, refused * BACKOFF_FACTOR)
        self._start_counting(share)
        if self._recent:  # the new pace counts from the last request sent
            self._next_slot = max(self._next_slot, self._recent[-1] + 1.0 / pace)

    def _pause(self, seconds: float, cause: str) -> None:
        until = asyncio.get_running_loop().time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pause_cause = cause
            if self._shared is not None:
                self._shared.publish_pause(seconds, cause)

    def _mostly_refused(self) -> bool:
        n = len(self._outcomes)
        return n == SHARE_WINDOW and self._limited >= MOSTLY_REFUSED * n

    def observe_headers(self, headers: Mapping[str, str], *, answer: bool = True) -> bool:
        """Learn from an answer's (or a 429's) rate-limit headers: the limits announced
        (when the user gave none), and what is left of the server's budgets (see the
        module docstring). Returns whether a budget of a known limit is empty."""
        get = headers.get
        a, b, c, d = _ANY_HEADER
        if get(a) is None and get(b) is None and get(c) is None and get(d) is None:
            return False  # a server that announces nothing (looked at on every answer)
        for kind in KINDS:
            limit = get(_HEADER_NAMES[kind][0])
            if limit and kind not in self._given:
                try:
                    per_minute = float(limit)
                except ValueError:
                    per_minute = 0.0
                if per_minute > 0 and self._limit.get(kind) != per_minute:
                    self._learn_limit(kind, per_minute)
        drained = False
        for kind in KINDS:
            left = get(_HEADER_NAMES[kind][1])
            if left is None:
                continue
            try:
                remaining = float(left)
            except ValueError:
                continue
            bucket = self._bucket(kind)
            if remaining <= 0:
                if answer:
                    self._spent = True
                if bucket is None:  # no known rate: the reset is all there is
                    reset = get(_HEADER_NAMES[kind][2])
                    wait = parse_duration(reset) if reset else None
                    if wait:
                        self._pause(min(wait, UNKNOWN_RATE_WAIT), f"the server's {kind} budget is spent")
                    continue
                drained = True
                if kind not in self._drained:
                    self._drained.add(kind)
                    bucket.set_rate(self._limit[kind] * DRAINED_PACE)
            elif bucket is not None and kind in self._drained and remaining >= 2 * bucket.capacity:
                self._drained.discard(kind)  # the server's budget filled up again
                bucket.set_rate(self._limit[kind])
            if bucket is not None:
                bucket.cap_available(remaining)
        return drained

    def _learn_limit(self, kind: str, per_minute: float) -> None:
        self._limit[kind] = per_minute
        if kind == "tokens":
            self.tpm = per_minute
            self._tokens = self._new_bucket(kind, per_minute)
            return
        self._ceiling = per_minute / 60.0
        # Born holding what was sent in the last second: a new bucket must not allow a
        # second's burst on top of what the server has just counted.
        now = asyncio.get_running_loop().time()
        capacity = max(1, int(per_minute / 60.0))
        sent = sum(1 for t in self._recent[-capacity - 1 :] if t > now - 1.0)
        self._requests = self._new_bucket(kind, per_minute, spent=sent)
        self._drained.discard(kind)
        if self._pace is not None and self._pace >= (self._share_of(self._ceiling) or 0.0):
            self._pace = None

    def paced_rpm(self) -> float | None:
        """The requests/minute allowed now: a lowered pace, else the limit, if any."""
        if self._pace is not None:
            return self._pace * 60
        return self._limit.get("requests")

    def known_limits(self) -> tuple[float | None, float | None]:
        return self._limit.get("requests"), self._limit.get("tokens")

    def status(self) -> str | None:
        """What holds requests back right now, in words (for the display), or None."""
        if self._loop is None:
            return None
        loop_time = self._loop.time()  # from the display's thread too: a monotonic clock
        left, cause = self._paused_until - loop_time, self._pause_cause
        if self._shared is not None and (shared := self._shared.pause_left())[0] > left:
            left, cause = shared
        if left > 0.05:
            return f"paused {left:.0f} s ({cause})" if left >= 1 else f"paused ({cause})"
        waiting = self.waiting
        if waiting is not None:
            kind, amount = waiting
            bucket = self._bucket(kind)
            wait = bucket.wait_for(amount) if bucket is not None else 0.0
            if wait >= 1.0:
                return f"waiting for {kind[:-1]} budget (next in {wait:.0f} s)"
        if self._pace is not None:
            limit = f"; limit {self._ceiling * 60:,.0f}/min" if self._ceiling else ""
            return f"pace {self._pace * 60:,.0f}/min (lowered after 429s{limit})"
        if self._drained:
            return (
                f"pacing under the limit: the server's {' and '.join(sorted(self._drained))} budget is empty"
            )
        return None

    def _start_counting(self, share: float) -> None:
        self._share_at_cut = share
        self._count_from = self._sent
        self._after_cut = self._after_cut_limited = 0

    def _unrelieved(self) -> bool:
        """Whether the last cut left 429s about as common as they were (see UNRELIEVED);
        a share well above it is a new overload, which is cut for again."""
        n = self._after_cut
        if not 0 < self._share_at_cut < MOSTLY_REFUSED or n < SHARE_MIN:
            return False
        if self._pace is not None and self._pace >= self._refused:
            # Climbed back to the rate that was refused: 429s there are the limit's,
            # not a flaky server's (undone, the run would storm the server unpaced).
            return False
        share = self._after_cut_limited / n
        return UNRELIEVED * self._share_at_cut <= share <= NEW_OVERLOAD * self._share_at_cut

    def _record(self, limited: bool) -> None:
        self._answers += 1
        if self._answers > self._count_from:  # answers come back in about send order
            self._after_cut += 1
            self._after_cut_limited += limited
        outcomes = self._outcomes
        if len(outcomes) == SHARE_WINDOW and outcomes[0]:
            self._limited -= 1
        outcomes.append(limited)
        self._limited += limited

    @property
    def overloaded(self) -> bool:
        """Whether 429s are a real share of recent answers (see SIGNIFICANT_SHARE)."""
        n = len(self._outcomes)
        return n < SHARE_MIN or self._limited >= SIGNIFICANT_SHARE * n

    def failed(self) -> None:
        """An attempt ended without an answer for another reason (5xx, timeout): it
        counts among the answers that 429s are a share of."""
        self._record(False)

    def succeeded(self) -> None:
        """One success: let the adaptive pace climb back toward its ceiling."""
        self._record(False)
        self._accepted.append(asyncio.get_running_loop().time())
        self._spent = False
        pace = self._pace
        if pace is None or self._after_cut < SHARE_MIN:
            return  # the new pace is on trial: its answers must show whether it helped
        refused = self._refused
        slope = FAST_RECOVERY if pace < RECOVERED * refused else SLOW_RECOVERY
        # One success takes about 1/pace seconds: the pace climbs linearly in time.
        pace += slope * refused / pace
        ceiling = self._share_of(self._ceiling)
        if ceiling is not None and pace >= ceiling:
            self._pace = None  # the bucket alone paces at the ceiling
        elif ceiling is None and pace >= RELEASE_FACTOR * refused:
            # No limit known, and the server takes twice what it refused: the limit
            # moved, or the refused rate was measured low (a first burst). The pace is
            # not released (unpaced, a run storms a server whose limit is just above
            # and meets hundreds of 429s): it goes on climbing from here, the faster
            # for the new reference, until 429s cut it again.
            self._refused = pace
            self._pace = pace
        else:
            self._pace = pace

    # --- shared with other processes on the key (--redis); unused without -------------

    def _new_bucket(self, kind: str, per_minute: float, *, spent: float = 0.0) -> Bucket:
        if self._shared is not None:
            return self._shared.bucket(kind, per_minute, spent=spent)
        return LocalBucket(per_minute, spent=spent)

    def _share_of(self, rate: float | None) -> float | None:
        """A rate of the whole key's (the ceiling) as this process's share of it."""
        if rate is None or self._shared is None:
            return rate
        return rate / self._shared.peers

    def _adopt_shared(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the pause the key is under; and when another process cut its pace, cut
        this one's too, from its own rates (each process's pace is its share of the
        key's), as if the 429s had come here. Then it climbs back on its own."""
        assert self._shared is not None
        left, cause = self._shared.pause_left()
        now = loop.time()
        if left > 0 and now + left > self._paused_until:
            self._paused_until, self._pause_cause = now + left, cause
        if self._shared.take_cut() and self._answers >= SHARE_MIN and not self._on_trial(now):
            # Not before its own rates mean something; and on trial as a cut of its own:
            # no new cut before SHARE_MIN answers at the new pace.
            self._cut(now, max(self._limited / max(len(self._outcomes), 1), SIGNIFICANT_SHARE))


def _rate(times: Sequence[float], now: float, window: float) -> float:
    """Events/second among `times` (ascending) in the last `window` seconds, over at
    least one second's span, as servers count: a burst of ten is ten per second, not a
    thousand."""
    start = now - window
    n = 0
    first = now
    for t in reversed(times):
        if t < start:
            break
        n += 1
        first = t
    return n / max(now - first, 1.0)


class Permit:
    """One attempt's pass through the limits: settled exactly once, whatever the
    outcome, by `settle`.

    What each outcome does: an answer settles the token charge against its real usage,
    teaches the estimator and the header-announced limits, and counts as a success; a
    429 refunds the charge and pushes the pace back; a refused request (4xx, auth) or a
    failed connection refunds the charge, since the server did no work; a timeout or a
    cancelled attempt keeps its charge, since the server may have done the work (and
    counted it) all the same.
    """

    __slots__ = ("_limits", "charged", "chars", "settled")

    def __init__(self, limits: Limits, charged: int, chars: int) -> None:
        self._limits = limits
        self.charged = charged  # tokens charged to the budget up front (0 without --tpm)
        self.chars = chars  # the prompt's characters, to calibrate the estimator
        self.settled = False

    def settle(self, outcome: Completion | BaseException) -> None:
        if self.settled:
            raise RuntimeError("a permit was settled twice")
        self.settled = True
        limits = self._limits
        if isinstance(outcome, Completion):
            usage = outcome.usage
            if limits.tpm is not None:
                limits.settle(self.charged, usage.total_tokens)
                limits.estimator.observe(self.chars, usage.prompt_tokens, usage.completion_tokens)
            if outcome.headers:
                limits.observe_headers(outcome.headers)
            limits.succeeded()
            return
        if isinstance(outcome, asyncio.CancelledError):
            return
        if getattr(outcome, "code", None) != "timeout":
            limits.settle(self.charged, 0)
        if isinstance(outcome, RateLimited):
            limits.pushed_back(outcome.retry_after, outcome.headers or None)
        elif not isinstance(outcome, AuthError):
            limits.failed()
