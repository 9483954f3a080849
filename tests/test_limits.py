"""Pacing and adaptation in virtual time: the loop's clock only moves when every task
is waiting, and then jumps straight to the next timer (aiolimiter's own tests patch the
loop clock the same way). Nothing here really sleeps, and every figure is exact to
a microsecond."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from conftest import virtual

from llmbatch.core.endpoints import CHAT, EMBEDDINGS, endpoint_of
from llmbatch.core.values import Request
from llmbatch.schedule.buckets import LocalBucket
from llmbatch.schedule.limits import Limits
from llmbatch.schedule.pace import BACKOFF_FACTOR, CUT_HOLD
from llmbatch.schedule.tokens import TokenEstimator


def now() -> float:
    return asyncio.get_running_loop().time()


async def send_times(limits: Limits, n: int, tokens: int = 0) -> list[float]:
    """Acquire n times in a row (as the engine's dispatcher does); the clock at each."""
    out = []
    for _ in range(n):
        await limits.acquire(tokens)
        out.append(now())
    return out


def most_in_any_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of sends within any `window` seconds (what a server counts)."""
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_virtual_clock_really_is_virtual():
    """A 100-second sleep takes no real time and moves the clock exactly 100 s."""

    async def main() -> float:
        start = now()
        await asyncio.sleep(100)
        return now() - start

    assert virtual(main) == pytest.approx(100.0, abs=1e-6)


# --- the request bucket --------------------------------------------------------------


def test_bucket_holds_one_seconds_worth():
    """--rpm 6000 is a bucket of 100 refilled at 100/s; --rpm 30 still holds one."""
    b = LocalBucket(6000)
    assert b.capacity == 100
    assert b.rate == pytest.approx(100.0)
    small = LocalBucket(30)
    assert small.capacity == 1
    assert 1 / small.rate == pytest.approx(2.0)


def test_rpm_paces_smoothly_never_a_minutes_budget_at_once():
    """--rpm 6000: 1,000 requests take 9 s (one second's worth up front, then 100/s).
    The first second sees at most two seconds' worth (the burst, then the refill) and
    every later one at most one: never the minute's 6,000 at once."""

    async def main() -> list[float]:
        return await send_times(Limits(rpm=6000), 1000)

    times = virtual(main)
    start = times[0]
    assert sum(1 for t in times if t - start < 1e-6) == 100
    assert times[-1] - start == pytest.approx(9.0, abs=0.02)
    assert most_in_any_window(times) <= 200
    assert most_in_any_window(times[100:]) <= 101


def test_slow_rpm_spaces_every_request():
    """--rpm 60: one request a second, from the first one."""

    async def main() -> list[float]:
        return await send_times(Limits(rpm=60), 10)

    times = virtual(main)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1.0] * 9, abs=1e-6)


def test_no_limits_never_wait():
    """Without --rpm/--tpm and before any pushback, acquire never waits."""

    async def main() -> list[float]:
        limits = Limits()
        assert not limits.may_wait
        return await send_times(limits, 500)

    times = virtual(main)
    assert times[-1] - times[0] < 1e-6


# --- the token bucket ----------------------------------------------------------------


def test_tpm_charges_the_estimate():
    """--tpm 6000 (100 tokens/s): two 50-token requests go at once, the third waits
    half a second."""

    async def main() -> list[float]:
        return await send_times(Limits(tpm=6000), 4, tokens=50)

    t = virtual(main)
    assert [x - t[0] for x in t] == pytest.approx([0.0, 0.0, 0.5, 1.0], abs=1e-6)


def test_an_oversized_request_is_clamped_and_never_hangs():
    """A request estimated at 10x the bucket's capacity is charged the capacity: it
    goes through (aiolimiter alone would refuse it outright)."""

    async def main() -> float:
        limits = Limits(tpm=600)  # 10 tokens/s, capacity 10
        assert limits.clamp(100_000) == 10
        assert limits.clamp(7) == 7
        start = now()
        await asyncio.wait_for(limits.acquire(100_000), timeout=5)
        await asyncio.wait_for(limits.acquire(100_000), timeout=5)
        return now() - start

    assert virtual(main) == pytest.approx(1.0, abs=1e-6)


def test_settle_refunds_an_overestimate():
    """Charged 100, used 20: the 80 left are available again at once."""

    async def main() -> float:
        limits = Limits(tpm=6000)
        await limits.acquire(100)
        limits.settle(100, 20)
        start = now()
        await limits.acquire(80)
        return now() - start

    assert virtual(main) < 1e-6


def test_settle_books_a_debt_from_now_even_after_an_idle_spell():
    """Charged 50, used 250, reported after 10 idle seconds: the 200 extra tokens are
    owed from now (2 s at 100/s), not forgiven for the time that passed before."""

    async def main() -> float:
        limits = Limits(tpm=6000)
        await limits.acquire(50)
        await asyncio.sleep(10)
        limits.settle(50, 250)
        start = now()
        await limits.acquire(100)
        return now() - start

    assert virtual(main) == pytest.approx(2.0, abs=1e-6)


def test_settle_wakes_a_waiter_with_a_refund():
    """A request waiting on the bucket goes as soon as a refund makes room."""

    async def main() -> float:
        limits = Limits(tpm=6000)
        await limits.acquire(100)
        start = now()
        waiter = asyncio.ensure_future(limits.acquire(100))
        await asyncio.sleep(0.1)
        limits.settle(100, 0)
        await waiter
        return now() - start

    assert virtual(main) == pytest.approx(0.1, abs=1e-6)


# --- pushback and recovery -----------------------------------------------------------


def test_pushed_back_pauses_everything_until_the_delay_has_passed():
    """A 429 with Retry-After 2 s: nothing is sent for 2 s, and the pace drops to
    BACKOFF_FACTOR of the rate the server refused (10/s here)."""

    async def main() -> tuple[float, float | None, list[float]]:
        limits = Limits(rpm=600)
        await send_times(limits, 30)  # running at 10/s
        hit = now()
        limits.pushed_back(2.0)
        times = await send_times(limits, 5)
        return hit, limits.pace_rpm, times

    hit, pace, times = virtual(main)
    assert times[0] >= hit + 2.0
    assert pace is not None
    assert pace == pytest.approx(600 * BACKOFF_FACTOR, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 60 / pace - 1e-6  # the lower pace spaces the requests


def test_a_pause_that_starts_while_waiting_is_honoured():
    """A request already waiting for its slot when a 429 arrives waits for the new
    pause too."""

    async def main() -> tuple[float, float]:
        limits = Limits(rpm=60)
        await send_times(limits, 5)
        limits.pushed_back(None)  # pace now 0.7/s: the next slot is ~1.4 s away
        waiting = asyncio.ensure_future(limits.acquire())
        await asyncio.sleep(0.5)
        pause_end = now() + 5.0
        limits.pushed_back(5.0)
        await waiting
        return now(), pause_end

    sent, pause_end = virtual(main)
    assert sent >= pause_end


def test_a_burst_of_429s_is_one_cut():
    """Twenty 429s from one refused window lower the pace once; once answers at the new
    pace are back and still hold 429s (fewer: the cut helped), it is lowered again."""

    async def main() -> tuple[float | None, float | None, float | None]:
        limits = Limits(rpm=600)
        await send_times(limits, 30)
        for _ in range(20):
            limits.pushed_back(0.01)
        once = limits.pace_rpm
        for _ in range(10):
            limits.succeeded()
        await asyncio.sleep(CUT_HOLD + 0.1)
        await send_times(limits, 20)
        for _ in range(16):
            limits.succeeded()
        for _ in range(4):
            limits.pushed_back(0.01)
        return once, limits.pace_rpm, limits.ceiling_rpm

    once, twice, ceiling = virtual(main)
    assert once == pytest.approx(600 * BACKOFF_FACTOR, rel=0.05)
    assert twice is not None and once is not None
    assert twice <= 600 * BACKOFF_FACTOR * 1.01
    assert ceiling == 600


def test_a_burst_counts_as_what_the_server_saw_in_a_second():
    """Ten requests sent at once, then a 429, with no limit known: the refused rate is
    10/s (ten in one second), not ten in a millisecond."""

    async def main() -> float | None:
        limits = Limits()
        await send_times(limits, 10)
        limits.pushed_back(None)
        return limits.pace_rpm

    assert virtual(main) == pytest.approx(10 * 60 * BACKOFF_FACTOR)


def test_succeeded_climbs_back_to_the_ceiling_then_lets_the_bucket_pace():
    """After a burst of 429s at --rpm 6000, successes at the pace bring the run back:
    past 95 % within two seconds, to the ceiling within six, and then the adaptive pace
    is released (only the bucket paces)."""

    async def main() -> tuple[list[tuple[float, float]], float]:
        limits = Limits(rpm=6000)
        await send_times(limits, 300)
        for _ in range(290):
            limits.succeeded()
        for _ in range(10):  # one in ten refused: a real share, not a stray 429
            limits.pushed_back(None)
        start = now()
        trace = []
        while limits.pace_rpm is not None and now() - start < 60:
            await limits.acquire()
            limits.succeeded()
            trace.append((now() - start, limits.pace_rpm or 6000.0))
        return trace, now() - start

    trace, released_after = virtual(main)
    paces = [p for _, p in trace]
    assert paces[0] == pytest.approx(6000 * BACKOFF_FACTOR, rel=0.02)
    assert paces == sorted(paces)  # never lower on a success
    assert next(t for t, p in trace if p >= 0.95 * 6000) < 2.0
    assert 2.0 < released_after < 6.0


def test_without_a_ceiling_the_pace_probes_ever_higher_but_is_never_released():
    """No --rpm and no announced limit: after a cut the pace returns to the refused
    rate and climbs on past it, each doubling a new reference to climb from; it is
    never released (unpaced, a run storms a server whose limit lies just above the
    rate it refused, and meets hundreds of 429s)."""

    async def main() -> tuple[float | None, list[float | None]]:
        limits = Limits()
        await send_times(limits, 50)  # 50/s
        limits.pushed_back(None)
        first = limits.pace_rpm
        paces = []
        for _ in range(3):
            for _ in range(10_000):
                limits.succeeded()
            paces.append(limits.pace_rpm)
        return first, paces

    first, paces = virtual(main)
    assert first == pytest.approx(50 * 60 * BACKOFF_FACTOR)
    assert all(p is not None for p in paces)
    assert paces == sorted(paces)
    assert (paces[-1] or 0) > 4 * 50 * 60


def test_pace_never_stops_entirely():
    """However many 429s, at least one request a minute is sent."""

    async def main() -> float | None:
        limits = Limits()
        for _ in range(60):
            await limits.acquire()
            limits.pushed_back(None)
            await asyncio.sleep(CUT_HOLD)
        return limits.pace_rpm

    pace = virtual(main)
    assert pace is not None
    assert pace >= 1.0


# --- what the headers teach -----------------------------------------------------------


LIMIT_600 = {
    "x-ratelimit-limit-requests": "600",
    "x-ratelimit-remaining-requests": "599",
    "x-ratelimit-reset-requests": "100ms",
}


# A limit announced without a word of what is left of it.
ONLY_LIMIT_600 = {"x-ratelimit-limit-requests": "600"}


def test_announced_limit_is_learned_when_the_user_gave_none():
    """No --rpm: x-ratelimit-limit-requests 600 (nothing said of what is left) makes the
    run pace at 10/s."""

    async def main() -> tuple[float | None, list[float]]:
        limits = Limits()
        limits.observe_headers(ONLY_LIMIT_600)
        return limits.ceiling_rpm, await send_times(limits, 30)

    ceiling, times = virtual(main)
    assert ceiling == 600
    assert sum(1 for t in times if t - times[0] < 1e-6) == 10  # one second's worth
    gaps = [b - a for a, b in itertools.pairwise(times[10:])]
    assert gaps == pytest.approx([0.1] * 19, abs=1e-6)  # then 10/s


def test_announced_limit_never_overrides_the_users_rpm():
    """--rpm 300 stays 300 whatever the server announces."""

    async def main() -> tuple[float | None, list[float]]:
        limits = Limits(rpm=300)
        limits.observe_headers(ONLY_LIMIT_600)
        return limits.ceiling_rpm, await send_times(limits, 20)

    ceiling, times = virtual(main)
    assert ceiling == 300
    assert times[-1] - times[0] == pytest.approx(3.0, abs=0.21)  # 5/s after the first 5


def test_an_announced_remaining_budget_is_spent_at_once_then_the_refill_rate():
    """600/min with 40 left: those 40 go at once (told the limit or not), then 10/s; a
    budget spent to 0 by the burst keeps the refill pace (just under it, drained)."""

    async def main(rpm: float | None) -> list[float]:
        limits = Limits(rpm=rpm)
        limits.observe_headers({**LIMIT_600, "x-ratelimit-remaining-requests": "40"})
        return await send_times(limits, 60)

    for rpm in (None, 600.0):
        times = virtual(lambda rpm=rpm: main(rpm))
        assert sum(1 for t in times if t - times[0] < 1e-6) == 40
        gaps = [b - a for a, b in itertools.pairwise(times[40:])]
        assert gaps == pytest.approx([0.1] * 19, abs=1e-6)


def test_a_learned_limit_counts_what_was_already_sent():
    """64 requests went out unpaced before the first answer announced a limit of 100/s:
    only the 36 left of that second go at once, not a fresh second's worth."""

    async def main() -> int:
        limits = Limits()
        await send_times(limits, 64)
        limits.observe_headers({"x-ratelimit-limit-requests": "6000"})
        start = now()
        times = await send_times(limits, 100)
        return sum(1 for t in times if t - start < 1e-6)

    assert virtual(main) == 36


def test_an_answer_that_spends_the_budget_pauses_without_slowing_the_run():
    """remaining-requests 0 on a success: wait for the reset, but keep the pace (the run
    is at the limit, where it should be). The caller's pushed_back for the same answer
    (as the engine relays server_delay) must not count as a 429."""

    async def main() -> tuple[float | None, float, float]:
        limits = Limits(rpm=600)
        await send_times(limits, 20)
        headers = {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1.5s",
        }
        answered = now()
        limits.observe_headers(headers)
        limits.pushed_back(1.5)
        pace = limits.pace_rpm
        limits.succeeded()
        await limits.acquire()
        return pace, answered, now()

    pace, answered, sent = virtual(main)
    assert pace is None
    assert sent >= answered + 1.5


def test_a_429_after_a_spent_budget_still_slows_the_run():
    """The spent-budget exemption lasts one answer: the next 429 cuts the pace."""

    async def main() -> float | None:
        limits = Limits(rpm=600)
        await send_times(limits, 20)
        limits.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10ms"})
        limits.succeeded()
        limits.pushed_back(0.01)
        return limits.pace_rpm

    assert virtual(main) == pytest.approx(600 * BACKOFF_FACTOR, rel=0.05)


# --- the token estimator -------------------------------------------------------------


BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
CHAT_EP = endpoint_of(CHAT)
EMBED_EP = endpoint_of(EMBEDDINGS)


def test_estimator_starts_at_four_chars_a_token_plus_a_default_answer():
    est = TokenEstimator()
    chars = CHAT_EP.prompt_chars(BODY)
    assert chars == 416  # content plus framing
    assert est.estimate(CHAT_EP, BODY) == int(416 / 4 + 256) + 1


def test_estimator_charges_max_tokens_when_the_request_caps_the_answer():
    """A request's max_tokens (or max_completion_tokens) is what providers count."""
    est = TokenEstimator()
    assert est.estimate(CHAT_EP, {**BODY, "max_tokens": 10}) == int(416 / 4 + 10) + 1
    assert est.estimate(CHAT_EP, {**BODY, "max_completion_tokens": 20}) == int(416 / 4 + 20) + 1


def test_a_ceiling_that_bounds_nothing_is_charged_as_the_average_answer():
    """True, a negative, 0 or a string is no answer ceiling; a float is one (cut to an
    int): the estimator, the spending cap and `estimate` read the same body alike."""
    est = TokenEstimator()
    for value in (True, -5, 0, "100"):
        assert CHAT_EP.answer_ceiling({**BODY, "max_tokens": value}) is None
        assert est.estimate(CHAT_EP, {**BODY, "max_tokens": value}) == int(416 / 4 + 256) + 1
    assert CHAT_EP.answer_ceiling({**BODY, "max_tokens": 12.7}) == 12
    assert EMBED_EP.answer_ceiling({"input": "x", "max_tokens": 50}) == 0


def test_estimator_calibrates_from_observed_usage():
    """Seen: 416 chars were 208 prompt tokens and answers average 30 tokens. The next
    estimate uses 2 chars/token and a 30-token answer."""
    est = TokenEstimator()
    chars = CHAT_EP.prompt_chars(BODY)
    est.observe(chars, prompt_tokens=208, completion_tokens=20)
    est.observe(chars, prompt_tokens=208, completion_tokens=40)
    assert est.chars_per_token == pytest.approx(2.0)
    assert est.answer_tokens == pytest.approx(30.0)
    assert est.estimate(CHAT_EP, BODY) == 208 + 30 + 1


def test_estimator_ignores_empty_usage():
    """A response without usage (0 tokens) teaches nothing."""
    est = TokenEstimator()
    est.observe(400, prompt_tokens=0, completion_tokens=0)
    assert est.chars_per_token == 4.0
    assert est.answer_tokens == 256.0


def test_estimator_reads_content_parts_and_embeddings_input():
    """Content parts count their text; embeddings count their input and no answer."""
    est = TokenEstimator()
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 100}]}]}
    assert CHAT_EP.prompt_chars(parts) == 116
    emb = {"model": "e", "input": ["a" * 40, "b" * 40]}
    assert EMBED_EP.prompt_chars(emb) == 80
    assert est.estimate(EMBED_EP, emb) == 21  # 80 / 4, no answer


def test_scattered_429s_that_slowing_does_not_relieve_undo_the_cut():
    """A server that refuses about one answer in seven whatever the pace (flaky, not
    limiting): after one cut that did not make 429s rarer, the run goes back to full
    speed instead of ratcheting down to a crawl."""

    async def main() -> tuple[float | None, float | None]:
        limits = Limits()
        cut: float | None = None
        for i in range(300):
            await limits.acquire()
            await asyncio.sleep(0.01)
            if i % 7 == 3:
                limits.pushed_back(0.02)
                cut = cut or limits.pace_rpm
            else:
                limits.succeeded()
        return cut, limits.pace_rpm

    cut, after = virtual(main)
    assert cut is not None  # the first 429s did slow the run down once
    assert after is None  # and it was given back


def test_429s_that_slowing_relieves_keep_the_run_slowed():
    """A server over its limit refuses fewer answers once the run slows: that cut stays."""

    async def main() -> float | None:
        limits = Limits()
        for _ in range(40):  # a burst far over the limit: most refused
            await limits.acquire()
            limits.pushed_back(0.05)
        for _ in range(60):  # at the new pace almost everything is answered
            await limits.acquire()
            await asyncio.sleep(0.01)
            limits.succeeded()
        await limits.acquire()
        limits.pushed_back(0.05)  # one more at the slowed pace: not a reason to speed up
        return limits.pace_rpm

    assert virtual(main) is not None


# --- following the server's budget (issue 15) -------------------------------------------


def test_a_spent_budget_waits_for_one_refill_not_the_full_reset():
    """remaining-requests 0 with OpenAI's reset (time until *full*: a minute) at a known
    600/min: the next request waits for one request's refill (~0.1 s), not a minute."""

    async def main() -> tuple[float, float | None]:
        limits = Limits(rpm=600)
        await send_times(limits, 10)  # the second's capacity, spent
        await asyncio.sleep(5)  # the bucket refills meanwhile
        limits.observe_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
                                "x-ratelimit-reset-requests": "59.9s"})  # fmt: skip
        limits.succeeded()
        start = now()
        await limits.acquire()
        return now() - start, limits.pace_rpm

    waited, pace = virtual(main)
    assert 0.09 < waited < 0.2
    assert pace is None  # not slowed: the run is at the limit


def test_a_429_on_an_empty_budget_of_a_known_limit_pauses_without_cutting():
    """A 429 whose headers say the budget is empty, for a limit already known (another
    client spent it): pause for its Retry-After, keep the pace at the limit."""

    async def main() -> tuple[float | None, float]:
        limits = Limits()
        headers = {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": "60s"}  # fmt: skip
        for _ in range(30):  # the first burst meets the spent bucket
            await limits.acquire()
        for _ in range(30):
            limits.pushed_back(0.05, headers)
        start = now()
        times = await send_times(limits, 40)
        return limits.pace_rpm, times[-1] - start

    pace, took = virtual(main)
    assert pace is None
    assert 40 / took == pytest.approx(20 * 0.97, rel=0.1)  # just under 1,200/min


def test_token_limits_are_learned_from_headers():
    """With no --tpm, a server's x-ratelimit-limit-tokens becomes the token budget."""

    async def main() -> tuple[float | None, int]:
        limits = Limits()
        limits.observe_headers({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "6000"})
        permit = await limits.admit(
            _req({"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 10})
        )
        return limits.tpm, permit.charged

    tpm, charged = virtual(main)
    assert tpm == 6000
    assert charged == 100  # the bucket's one second (6000/60) caps the estimate of 115


def test_a_request_bigger_than_a_minute_of_tpm_costs_at_most_a_minutes_wait():
    """--tpm 1000 and a request that used 10,000 tokens: the next small request waits
    about a minute (the provider's window), not the ten minutes the debt would take."""

    async def main() -> float:
        limits = Limits(tpm=1000)
        big = _req({"messages": [{"role": "user", "content": "x" * 20_000}], "max_tokens": 5000})
        assert limits.oversized(big) > 1000
        permit = await limits.admit(big)
        permit.settle(_answer(prompt=5000, completion=5000))
        start = now()
        await limits.admit(_req({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        return now() - start

    waited = virtual(main)
    assert 55 < waited < 70


def test_the_status_says_what_holds_requests_back():
    """A pause names its cause; a lowered pace says so with the limit."""

    async def main() -> list[str | None]:
        limits = Limits(rpm=600)
        said = [limits.status()]
        await send_times(limits, 20)
        limits.pushed_back(12.0)
        said.append(limits.status())
        await asyncio.sleep(13)
        said.append(limits.status())
        return said

    idle, paused, slowed = virtual(main)
    assert idle is None
    assert paused == "paused 12 s (429)"
    assert slowed is not None and slowed.startswith("pace ") and "lowered after 429s; limit 600/min" in slowed


def _answer(*, prompt: int, completion: int) -> Any:
    from llmbatch.core.values import Completion, Usage

    return Completion(body={}, usage=Usage(prompt, completion))


def _req(body: dict[str, Any]) -> Request:
    return Request("r", body)


def test_the_status_says_which_mode_the_pacer_is_in():
    """An announced budget being spent at once says so; a 429 in that burst (its headers
    still saying budget is left) turns the pacing smooth, said once, and the status says
    why; the run pauses for the 429 without a cut of the pace."""

    async def main() -> tuple[str | None, str | None, list[str], int, list[float]]:
        limits = Limits(rpm=600)
        told: list[str] = []
        limits.notify = told.append
        limits.observe_headers({**LIMIT_600, "x-ratelimit-remaining-requests": "500"})
        await send_times(limits, 1)
        spending = limits.status()
        limits.pushed_back(0.5, {**LIMIT_600, "x-ratelimit-remaining-requests": "480"})
        limits.pushed_back(0.5, {**LIMIT_600, "x-ratelimit-remaining-requests": "479"})
        await asyncio.sleep(1)
        times = await send_times(limits, 21)
        return spending, limits.status(), told, limits.cuts, times

    spending, smooth, told, cuts, times = virtual(main)
    assert spending == "spending the budget the server announced, at once"
    assert smooth == "pacing smoothly: the server enforces its limit over a shorter window"
    assert len(told) == 1 and "shorter window" in told[0]
    assert cuts == 0
    assert times[-1] - times[0] == pytest.approx(1.0, abs=0.21)  # 10/s, one second's worth at most


def test_a_given_rpm_below_the_servers_limit_keeps_smooth_pacing():
    """--rpm 300 against a server announcing 600 with 500 left: the user's share is
    paced smoothly (5/s after the first second's 5), not spent from the server's budget."""

    async def main() -> list[float]:
        limits = Limits(rpm=300)
        limits.observe_headers({**LIMIT_600, "x-ratelimit-remaining-requests": "500"})
        return await send_times(limits, 20)

    times = virtual(main)
    assert times[-1] - times[0] == pytest.approx(3.0, abs=0.21)


@pytest.mark.parametrize(
    "prefix", ["x-ratelimit-api_key-", "llm_provider-x-ratelimit-"], ids=["litellm key", "forwarded"]
)
def test_a_gateways_header_names_teach_the_limit_from_the_first_answer(prefix):
    """Behind the LiteLLM proxy (its key limit's names, or an upstream's forwarded), the
    first answer teaches the limit and what is left of it, as OpenAI's names do."""

    async def main() -> tuple[float | None, list[float]]:
        limits = Limits()
        limits.observe_headers({f"{prefix}limit-requests": "600", f"{prefix}remaining-requests": "20"})
        return limits.ceiling_rpm, await send_times(limits, 30)

    ceiling, times = virtual(main)
    assert ceiling == 600
    assert sum(1 for t in times if t - times[0] < 1e-6) == 20
    assert times[-1] - times[0] == pytest.approx(1.0, abs=1e-6)  # then 10/s
