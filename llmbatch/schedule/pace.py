"""The adaptive pace: how fast a run sends once the server has pushed back with 429s.

The second of the gates in front of each request (:mod:`llmbatch.schedule.limits`, after
a 429's pause, before the buckets). When 429s are a real share of recent answers (not a
stray one), the whole run slows to a fraction of the rate the server refused (at most a
little above what it was accepting), once per burst. The new pace is on trial until
answers sent at it come back: if they hold as many 429s as before, slowing did not help
(a flaky server, not a limit) and the cut is undone; otherwise successes climb back,
quickly to just under the refused rate and slowly past it (AIMD, like TCP), until the
pace reaches its ceiling (``--rpm``, or the ``x-ratelimit-limit-requests`` a server
announces when the user gave none) and the bucket alone paces again.

This module owns that state and its maths: the share of 429s among the last answers,
the rates sent and accepted, the cut, the trial and the recovery. `AdaptivePace` is the
base of `Limits`, which decides when a 429 calls for a cut (`Limits.pushed_back`) and
waits out the pace's next slot before each request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from llmbatch.schedule.shared import Shared

__all__ = ["AdaptivePace"]

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


class AdaptivePace:
    """The adaptive pace and the answer counts it is judged by (the base of `Limits`)."""

    # Kept by the other gates of `Limits`, read here: the end of a 429's pause (a cut is
    # on hold until then), whether an answer spent a budget's last unit (a success clears
    # it), and the processes sharing the key (the ceiling is this process's share).
    _paused_until: float
    _spent: bool
    _shared: Shared | None

    def __init__(self, rpm: float | None) -> None:
        # Adaptive pace in requests/second; None while the buckets alone pace.
        self._pace: float | None = None
        self._ceiling: float | None = rpm / 60.0 if rpm else None
        self._refused = 0.0  # the rate the server refused at the last cut
        self._hold_until = float("-inf")  # 429s before this belong to the last cut
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
        self.cuts = 0  # times the pace was lowered in this run (the summary shows it)

    @property
    def pace_rpm(self) -> float | None:
        """The adaptive pace in requests/minute, when the server has pushed back."""
        return self._pace * 60 if self._pace else None

    @property
    def ceiling_rpm(self) -> float | None:
        """The request limit paced at: --rpm, else the one the server announced."""
        return self._ceiling * 60 if self._ceiling else None

    def _sending(self, loop: asyncio.AbstractEventLoop) -> None:
        """A request is let through: counted, and its time kept for the achieved rate."""
        self._sent += 1
        recent = self._recent
        recent.append(loop.time())
        if len(recent) > 1024:
            del recent[:512]

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

    def _mostly_refused(self) -> bool:
        n = len(self._outcomes)
        return n == SHARE_WINDOW and self._limited >= MOSTLY_REFUSED * n

    def _on_trial(self, now: float) -> bool:
        return now < self._hold_until or (self._share_at_cut > 0 and self._after_cut < SHARE_MIN)

    def _cut(self, now: float, share: float) -> None:
        """Lower the pace below the rate the server refused; `share` is the share of
        429s the cut is for."""
        self.cuts += 1
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

    def _share_of(self, rate: float | None) -> float | None:
        """A rate of the whole key's (the ceiling) as this process's share of it."""
        if rate is None or self._shared is None:
            return rate
        return rate / self._shared.peers


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
