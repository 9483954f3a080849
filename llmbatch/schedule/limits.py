"""The gates in front of each request, and the one attempt protocol that passes them.

Three gates, passed in order before each request:

1. a *pause*: after a 429, nothing is sent until the time the server asked for has
   passed;
2. an *adaptive pace* (:mod:`llmbatch.schedule.pace`): when 429s are a real share of
   recent answers, the whole run slows below the rate the server refused, then climbs
   back to its ceiling;
3. buckets (:mod:`llmbatch.schedule.buckets`) for ``--rpm`` and ``--tpm`` (or the limits a
   server announces in ``x-ratelimit-limit-*`` when none is given), each holding one
   second's worth: without word from the server, a minute's budget is never spent in a
   burst. What the server says is left of its requests budget
   (``x-ratelimit-remaining-requests``, less the requests on their way to it) is offered
   to the bucket at once, then the refill rate paces; a 429 in such a burst while the
   headers still said budget was left means the server enforces a shorter window than
   it announces (OpenAI may enforce 60,000 a minute as 1,000 a second): that pacing
   turns smooth for the rest of the run, said once. The token bucket is charged an
   estimate up front and corrected by the real usage afterwards; a debt is capped at
   one minute's budget.

This module owns the pause, the admission through the gates, the buckets and what the
server's rate-limit headers teach them, and the status line the display shows. The
server's own budget is followed too: ``x-ratelimit-remaining-*`` caps what the
bucket offers, so a budget spent to 0 (another client used the key, or a burst before
the limit was known) makes the next request wait for the refill of what it needs, at
the known rate: about one request, or its token estimate. (``x-ratelimit-reset-*`` is
only an upper bound: OpenAI's means the time until the budget is *full* again.) While
the server's budget is empty, the bucket paces a little under the limit, so the
requests that follow do not meet a budget refilled a moment too late. A 429 that says
the budget is empty, for a limit already known, pauses without lowering the pace: the
pace is right, the budget was spent.

Several processes on one API key can share all of this (``--redis``,
:mod:`llmbatch.scale.budget`): the buckets live in Redis, and a
:class:`~llmbatch.schedule.shared.Shared` object carries a 429's pause and a lowered
pace from one process to the others. Without one, nothing here changes.

Each attempt passes the gates by a :class:`~llmbatch.schedule.permit.Permit`, settled
once with its outcome; the header names are :mod:`llmbatch.schedule.headers`'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.http import reset_seconds
from llmbatch.core.retry import DEFAULT_MAX_RETRY_WAIT
from llmbatch.core.values import Request
from llmbatch.schedule.buckets import Bucket, LocalBucket
from llmbatch.schedule.headers import ANY_NAMES, FAMILIES, FAMILY_PROBES, OUTPUT
from llmbatch.schedule.pace import CUT_HOLD, SHARE_MIN, SIGNIFICANT_SHARE, AdaptivePace
from llmbatch.schedule.permit import Permit
from llmbatch.schedule.shared import Shared
from llmbatch.schedule.tokens import TokenEstimator

__all__ = ["PACER_STATES", "Limits"]

# The words `Limits.condition` says the pacer's state in.
PACER_STATES = ("free", "paused", "waiting", "lowered", "drained", "burst", "smooth")
# While the server's budget is empty, pace at this share of the limit: at exactly the
# refill rate, network jitter makes every other request arrive a moment too early.
DRAINED_PACE = 0.97
# With no known rate, a spent budget waits at most this long before trying (a 429
# then says how long, exactly).
UNKNOWN_RATE_WAIT = 1.0


class Limits(AdaptivePace):
    """The gates in front of every request. One instance per run (per event loop).

    Callers go through `admit` and `Permit.settle`; the methods those call
    (`pushed_back`, `observe_headers`, `settle`, and the pace's `succeeded` and
    `failed`) are public for the tests of the pacing maths.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        shared: Shared | None = None,
        max_pause: float = DEFAULT_MAX_RETRY_WAIT,
        output_tpm: float | None = None,
        split_tokens: bool = False,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        # Input and output tokens limited apart (Anthropic's): the token bucket is then
        # charged the prompt only (less what the cache read), and the output bucket
        # (--output-tpm, or learned) the answer expected, settled against the real
        # output tokens.
        self.split_tokens = split_tokens
        self._output: Bucket | None = self._new_bucket(OUTPUT, output_tpm) if output_tpm else None
        self.max_pause = max_pause  # a server's delay pauses the run this long at most
        self._shared = shared  # several processes on one key (--redis), else None
        self._requests: Bucket | None = self._new_bucket("requests", rpm) if rpm else None
        self._tokens: Bucket | None = self._new_bucket("tokens", tpm) if tpm else None
        # The limits per minute, given or learned, by kind; and the kinds whose
        # budget the server last said was empty (paced at DRAINED_PACE meanwhile).
        self._limit: dict[str, float] = {
            k: v for k, v in (("requests", rpm), ("tokens", tpm), (OUTPUT, output_tpm)) if v
        }
        self._given = frozenset(self._limit)
        self._drained: set[str] = set()
        # The header family the server announces by (see FAMILIES), and how many more
        # answers may look for another one.
        self._names = FAMILIES[0]
        self._any = ANY_NAMES[0]
        self._probes = FAMILY_PROBES
        # Kinds whose last answer said budget was left beyond what is in flight (offered
        # to the bucket at once); kinds paced smoothly for the rest of the run, since a
        # 429 came in the middle of such a burst (the server enforces a shorter window).
        self._offered: set[str] = set()
        self._smooth: set[str] = set()
        # The last token charge of a request, by kind (split tokens: what one request on
        # its way may still cost of an offered token budget).
        self._charges: dict[str, int] = {}
        self._announced: str | None = None  # the requests limit announced beside a given --rpm
        # Where a lesson the run learned is told once (the engine's log), else nowhere.
        self.notify: Callable[[str], None] | None = None
        self._paused_until = 0.0
        self._pause_cause = ""
        # What acquire() waits for right now, for the display: (kind, amount).
        self.waiting: tuple[str, float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # whose clock the display reads
        super().__init__(rpm)
        # Set by observe_headers when an answer spent a budget's last unit: the caller's
        # pushed_back() for that answer then pauses without cutting the pace.
        self._spent = False
        self.estimator = TokenEstimator()

    @property
    def may_wait(self) -> bool:
        """Whether `acquire` can block at all (no limits and no pushback: never)."""
        return bool(
            self._requests or self._tokens or self._output or self._pace or self._paused_until or self._shared
        )

    def clamp(self, tokens: int) -> int:
        """A token charge the bucket can grant: an oversized request must not hang."""
        if self._tokens is None:
            return tokens
        return min(tokens, int(self._tokens.capacity))

    async def acquire(self, tokens: int = 0, output: int = 0) -> None:
        """Wait until a request costing `tokens` (an estimate; with `split_tokens`, of
        its prompt, and `output` of its answer) may be sent."""
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
        if self._output is not None and output > 0:
            amount = min(output, int(self._output.capacity))
            self.waiting = (OUTPUT, amount)
            await self._output.acquire(amount)
        self.waiting = None
        await self._wait_pause(loop)  # a 429 may have come back while this one waited
        self._sending(loop)

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
        charged = charged_out = 0
        if self._tokens is not None or self._output is not None:
            endpoint = endpoint_of(request.url)
            if chars is None:
                chars = endpoint.prompt_chars(request.body)
            if self.split_tokens:
                prompt, answer = self.estimator.split(endpoint, request.body, chars)
                charged = self.clamp(prompt) if self._tokens is not None else 0
                # The answer expected (the average so far, within its ceiling), not the
                # ceiling: a max_tokens of 1,024 is often more than a second of the
                # output limit, and most answers are far shorter. Anthropic reserves
                # max_tokens on its side while a request runs; what that leaves is in
                # its headers' remaining, which caps this bucket as any budget does.
                answer = min(answer, int(self.estimator.answer_tokens) + 1)
                charged_out = answer if self._output is not None else 0
                self._charges["tokens"], self._charges[OUTPUT] = prompt, answer
            elif self._tokens is not None:
                charged = self.clamp(self.estimator.estimate(endpoint, request.body, chars))
        await self.acquire(charged, charged_out)
        return Permit(self, charged, chars or 0, charged_out)

    def oversized(self, request: Request, chars: int | None = None) -> int:
        """The token estimate of a request bigger than a minute of --tpm allows (0 for
        any other): it is sent alone, and costs at most a minute's wait after it."""
        tpm = self._limit.get("tokens")
        if tpm is None:
            return 0
        tokens = self.estimator.estimate(endpoint_of(request.url), request.body, chars)
        return tokens if tokens > tpm else 0

    def _bucket(self, kind: str) -> Bucket | None:
        if kind == OUTPUT:
            return self._output
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

    def settle_output(self, charged: int, actual: int) -> None:
        """`settle` for the output tokens' bucket (split tokens only)."""
        if self._output is not None:
            self._output.adjust(actual - min(charged, int(self._output.capacity)))

    def pushed_back(self, delay: float | None, headers: Mapping[str, str] | None = None) -> None:
        """The server said 429: pause for `delay`, and lower the pace once per burst.

        Called right after `observe_headers` saw an answer spend a budget's last unit,
        it only pauses: that answer was a success, and the run is at the limit, where
        it should be. So does a 429 whose own headers say the budget of a known limit
        is empty, unless most of the last answers were 429s (then the pace is wrong
        after all: another client shares the key)."""
        drained = self.observe_headers(headers, answer=False) if headers else False
        self._record(True)
        if self._offered and headers and self._budget_left(headers):
            self._go_smooth(delay)
            return
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

    def _pause(self, seconds: float, cause: str) -> None:
        seconds = min(seconds, self.max_pause)  # as the retry policy caps the retry's wait
        until = asyncio.get_running_loop().time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pause_cause = cause
            if self._shared is not None:
                self._shared.publish_pause(seconds, cause)

    def observe_headers(self, headers: Mapping[str, str], *, answer: bool = True) -> bool:
        """Learn from an answer's (or a 429's) rate-limit headers: the limits announced
        (when the user gave none), and what is left of the server's budgets (see the
        module docstring). Returns whether a budget of a known limit is empty."""
        get = headers.get
        a, b, c, d = self._any
        # A server that announces nothing (looked at on every answer), or by a gateway's
        # names (looked for in the first answers only).
        if (
            get(a) is None
            and get(b) is None
            and get(c) is None
            and get(d) is None
            and (self._probes <= 0 or not self._find_family(headers))
        ):
            return False
        names = self._names
        for kind in names:
            limit = get(names[kind][0])
            if limit and kind in self._given:
                if kind == "requests":
                    self._announced = limit
            elif limit:
                try:
                    per_minute = float(limit)
                except ValueError:
                    per_minute = 0.0
                if per_minute > 0 and self._limit.get(kind) != per_minute:
                    self._learn_limit(kind, per_minute)
        drained = False
        for kind in names:
            _, left_name, reset_name = names[kind]
            left = get(left_name)
            if left is None:
                continue
            try:
                remaining = float(left)
            except ValueError:
                continue
            bucket = self._bucket(kind)
            if remaining <= 0:
                self._offered.discard(kind)
                if answer:
                    self._spent = True
                if bucket is None:  # no known rate: the reset is all there is
                    reset = get(reset_name) if reset_name else None
                    wait = reset_seconds(reset) if reset else None
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
                if answer and kind == "requests" and kind not in self._smooth:
                    self._offer(bucket, remaining)
                elif answer and self.split_tokens and kind not in self._smooth:
                    self._offer_tokens(kind, bucket, remaining)
        return drained

    def _find_family(self, headers: Mapping[str, str]) -> bool:
        """Look for a gateway's header names (one answer of the first FAMILY_PROBES);
        read by them from now on when found."""
        self._probes -= 1
        get = headers.get
        for family, names in zip(FAMILIES, ANY_NAMES, strict=True):
            if any(get(name) is not None for name in names):
                self._names, self._any, self._probes = family, names, 0
                return True
        return False

    def _offer(self, bucket: Bucket, remaining: float) -> None:
        """Offer the bucket what the server says is left, less the requests on their way
        to it (sent, not answered: some may not be counted yet), to spend at once."""
        if self._shared is not None or (self._announced is not None and self._above_given()):
            return  # a shared budget is paced smoothly; so is a --rpm below the server's limit
        spare = remaining - max(0, self._sent - self._answers - 1)  # this answer: not recorded yet
        if spare >= 1:
            bucket.offer(spare)
            self._offered.add("requests")
        elif "requests" in self._offered:
            bucket.offer(0)
            self._offered.discard("requests")

    def _offer_tokens(self, kind: str, bucket: Bucket, remaining: float) -> None:
        """`_offer` for a token budget (input or output, limited apart: Anthropic's
        buckets refill continuously up to a minute's worth): what is left less what the
        requests on their way may cost, at the last charge each."""
        if self._shared is not None or kind in self._given:
            return
        charge = self._charges.get(kind, 0)
        spare = remaining - max(0, self._sent - self._answers - 1) * charge
        if charge and spare >= charge:
            bucket.offer(spare)
            self._offered.add(kind)
        elif kind in self._offered:
            bucket.offer(0)
            self._offered.discard(kind)

    def _above_given(self) -> bool:
        """Whether the server announces a higher request limit than the --rpm given (the
        user's share of the key, say): its budget is not the run's to spend at once."""
        try:
            return float(self._announced or 0) > self._limit["requests"]
        except ValueError:
            return False

    def _budget_left(self, headers: Mapping[str, str]) -> bool:
        """Whether a 429's headers say the requests budget was not spent (no budget of
        theirs is empty): the server refused a burst its headers allowed."""
        get = headers.get
        said = False
        for kind in self._names:
            left = get(self._names[kind][1])
            if left is None:
                continue
            try:
                if float(left) <= 0:
                    return False
            except ValueError:
                return False
            said = True
        return said

    def _go_smooth(self, delay: float | None) -> None:
        """A 429 in the middle of a burst the headers allowed: the server enforces its
        limit over a shorter window than a minute. Pace smoothly (one second's worth at
        a time) for the rest of the run, say so once; the burst's other 429s, on their way
        already, pause but do not cut the pace."""
        for kind in self._offered - {"requests"}:  # token budgets offered: smooth too
            if (tokens := self._bucket(kind)) is not None:
                tokens.offer(0)
            self._smooth.add(kind)
        self._offered.clear()
        self._smooth.add("requests")
        bucket = self._requests
        if bucket is not None:
            bucket.offer(0)
            bucket.cap_available(0)  # the burst overshot: the next request waits a refill
        loop = asyncio.get_running_loop()
        if delay is not None and delay > 0:
            self._pause(delay, "429 in a burst the headers allowed")
        self._hold_until = max(self._hold_until, loop.time() + CUT_HOLD, self._paused_until)
        if self.notify is not None:
            limit = self._limit.get("requests")
            rate = f" ({limit:,.0f}/min)" if limit else ""
            self.notify(
                f"the server refused a burst its headers allowed: it enforces its limit{rate} over "
                "a shorter window; pacing smoothly from now on"
            )

    def _learn_limit(self, kind: str, per_minute: float) -> None:
        self._limit[kind] = per_minute
        if kind == OUTPUT:
            self._output = self._new_bucket(kind, per_minute)
            return
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
        """What holds requests back right now, or the mode the pacer is in, in words (for
        the display), or None: see `condition`."""
        return self.condition()[1]

    def condition(self) -> tuple[str, str | None]:
        """The pacer's state, as one word (for the metrics) and in words (None when
        nothing holds requests back): `paused`, `waiting` for a budget, `lowered` pace,
        `drained` (pacing at the refill rate, the server's budget spent), `burst`
        (spending an announced budget at once), `smooth` (a shorter window learned), or
        `free`."""
        if self._loop is None:
            return "free", None
        loop_time = self._loop.time()  # from the display's thread too: a monotonic clock
        left, cause = self._paused_until - loop_time, self._pause_cause
        if self._shared is not None and (shared := self._shared.pause_left())[0] > left:
            left, cause = shared
        if left > 0.05:
            return "paused", f"paused {left:.0f} s ({cause})" if left >= 1 else f"paused ({cause})"
        waiting = self.waiting
        if waiting is not None:
            kind, amount = waiting
            bucket = self._bucket(kind)
            wait = bucket.wait_for(amount) if bucket is not None else 0.0
            if wait >= 1.0:
                what = "output token" if kind == OUTPUT else kind[:-1]
                return "waiting", f"waiting for {what} budget (next in {wait:.0f} s)"
        if self._pace is not None:
            limit = f"; limit {self._ceiling * 60:,.0f}/min" if self._ceiling else ""
            return "lowered", f"pace {self._pace * 60:,.0f}/min (lowered after 429s{limit})"
        if self._drained:
            return "drained", (
                "pacing at the refill rate: the server's "
                f"{' and '.join(sorted(self._drained))} budget is empty"
            )
        if self._offered:
            return "burst", "spending the budget the server announced, at once"
        if self._smooth:
            return "smooth", "pacing smoothly: the server enforces its limit over a shorter window"
        return "free", None

    # --- shared with other processes on the key (--redis); unused without -------------

    def _new_bucket(self, kind: str, per_minute: float, *, spent: float = 0.0) -> Bucket:
        if self._shared is not None:
            return self._shared.bucket(kind, per_minute, spent=spent)
        return LocalBucket(per_minute, spent=spent)

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
