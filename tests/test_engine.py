"""The scheduler on in-process providers: re-asks, the window, stops, a full disk, a bug
that costs one item, and the attempt protocol (every permit settled exactly once)."""

from __future__ import annotations

import asyncio
import errno
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import virtual

from llmbatch.core.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    InputError,
    PermanentError,
    RateLimited,
    Stop,
    TransientError,
)
from llmbatch.core.retry import no_backoff
from llmbatch.core.stats import Stats
from llmbatch.core.values import Cause, Completion, Finished, Request, State
from llmbatch.modes.control import RunControl
from llmbatch.modes.live.engine import Engine, EngineConfig
from llmbatch.modes.outcome import DEFAULT_RETRY, Outcomes, Verdict
from llmbatch.providers.echo import text_response
from llmbatch.schedule.limits import Limits
from llmbatch.schedule.permit import Permit


class ListOutput:
    """Finished items kept in a list; `fail_after` makes every later write fail (ENOSPC)."""

    path = "memory"

    def __init__(self, fail_after: int | None = None) -> None:
        self.items: list[Finished] = []
        self.error: OSError | None = None
        self.fail_after = fail_after

    backlog = 0

    def discard(self, order: int) -> None:
        return None

    def sync(self) -> None:
        return None

    def write(self, finished: Finished) -> None:
        if self.fail_after is not None and len(self.items) >= self.fail_after:
            self.error = OSError(errno.ENOSPC, "No space left on device")
            return
        self.items.append(finished)


class ListRejects:
    path = "memory"
    error = None

    def __init__(self) -> None:
        self.items: list[InputError] = []

    def write(self, err: InputError) -> None:
        self.items.append(err)


Script = Callable[[Request, int], Completion | BaseException]


class ScriptedProvider:
    """Answers by `script(request, attempt)`: a Completion is returned, an exception
    raised. `latency` seconds per request; `in_flight`/`max_in_flight` are counted."""

    def __init__(self, script: Script, *, latency: float = 0.0) -> None:
        self.script = script
        self.latency = latency
        self.attempts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion:
        n = self.attempts[request.custom_id]
        self.attempts[request.custom_id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            outcome = self.script(request, n)
        finally:
            self.in_flight -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        return None


class CountingPermit(Permit):
    __slots__ = ("counts",)

    def settle(self, outcome: Completion | BaseException) -> None:
        super().settle(outcome)  # raises if settled twice
        self.counts[type(outcome).__name__] += 1


class RecordingLimits(Limits):
    """Limits that keep every permit they grant, and count how each was settled."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.permits: list[Permit] = []
        self.outcomes: Counter[str] = Counter()

    async def admit(self, request: Request, chars: int | None = None) -> Permit:
        return self._recorded(await super().admit(request, chars))

    def grant(self, chars: int | None = None) -> Permit:  # admit_now's, and the engine's chained attempts'
        return self._recorded(super().grant(chars))

    def _recorded(self, granted: Permit) -> Permit:
        permit = CountingPermit(self, granted.charged, granted.chars)
        permit.counts = self.outcomes
        self.permits.append(permit)
        return permit


def requests(n: int, prefix: str = "r") -> Iterator[Request]:
    for i in range(n):
        yield Request(
            f"{prefix}{i}", {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}, line=i + 1
        )


def valid_unless_bad(request: Request, completion: Completion) -> str | None:
    return "not good" if completion.text == "bad" else None


def make_engine(
    provider: ScriptedProvider,
    *,
    limits: Limits | None = None,
    validator: Callable[[Request, Completion], str | None] = valid_unless_bad,
    output: ListOutput | None = None,
    **config: Any,
) -> tuple[Engine, ListOutput, Stats]:
    out = output or ListOutput()
    stats = Stats()
    judged = {
        "max_requests": config.pop("max_requests", 3),
        "retry": replace(DEFAULT_RETRY, retries=config.pop("max_retries", 3)),
        "reask_refusals": config.pop("reask_refusals", False),
    }
    outcomes = Outcomes(validator=validator, output=out, stats=stats, control=RunControl(stats), **judged)
    engine = Engine(
        provider=provider,
        limits=limits or RecordingLimits(),
        outcomes=outcomes,
        rejects=ListRejects(),
        config=EngineConfig(**{"concurrency": 4, **config}),
    )
    return engine, out, stats


def states(out: ListOutput) -> dict[str, State]:
    return {f.request.custom_id: f.state for f in out.items}


async def test_an_invalid_answer_is_asked_again_until_the_cap():
    """Answers bad k times: valid with k+1 requests while k+1 <= cap, else written
    invalid after exactly `max_requests` answers; each item written once."""

    def script(req: Request, n: int) -> Completion:
        k = int(req.custom_id[1:])
        return text_response("bad" if n < k else "good")

    provider = ScriptedProvider(script)
    engine, out, stats = make_engine(provider, max_requests=3)
    await engine.run(requests(5))
    got = {f.request.custom_id: (f.state, f.requests) for f in out.items}
    assert got == {
        "r0": (State.VALID, 1),
        "r1": (State.VALID, 2),
        "r2": (State.VALID, 3),
        "r3": (State.INVALID, 3),
        "r4": (State.INVALID, 3),
    }
    assert stats.reasks == 0 + 1 + 2 + 2 + 2
    assert out.items[-1].reason == "not good" or any(f.reason == "not good" for f in out.items)


async def test_the_window_bounds_what_is_read_ahead():
    """A slow provider and a million-line source: the engine pulls no more than the
    window (in flight plus waiting), never the whole input."""
    pulled = 0

    def source() -> Iterator[Request]:
        nonlocal pulled
        for req in requests(1_000_000):
            pulled += 1
            yield req

    provider = ScriptedProvider(lambda r, n: text_response("good"), latency=0.05)
    engine, out, _ = make_engine(provider, concurrency=4, window=10)
    task = asyncio.ensure_future(engine.run(source()))
    await asyncio.sleep(0.3)
    assert provider.max_in_flight <= 4
    assert pulled <= 10 + len(out.items) + 1
    engine.control.stop(Stop("enough"))
    await task
    assert len(out.items) < 100


async def test_a_stop_interrupts_a_long_wait_on_the_limits():
    """A 429 asking for an hour's pause: a stop ends the run at once, with what was
    written kept and the rest left for a rerun."""

    def script(req: Request, n: int) -> Completion | BaseException:
        if req.custom_id == "r0":
            return RateLimited("HTTP 429: slow down", retry_after=3600.0)
        return text_response("good")

    limits = RecordingLimits()
    provider = ScriptedProvider(script)
    engine, out, stats = make_engine(provider, limits=limits, concurrency=1)
    task = asyncio.ensure_future(engine.run(requests(50)))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    engine.control.stop(Stop("SIGINT received", interrupt=True))
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 1.0
    assert stats.stop is not None and stats.stop.exit_code is ExitCode.STOPPED
    assert "r0" not in states(out)  # not written: a rerun asks again
    assert all(p.settled for p in limits.permits)


async def test_a_full_disk_stops_the_run_with_exit_3():
    """The output's write fails (ENOSPC): dispatching stops, the stop says what to do,
    and its exit code is 3 (a rerun resumes)."""
    provider = ScriptedProvider(lambda r, n: text_response("good"))
    engine, out, stats = make_engine(provider, output=ListOutput(fail_after=5))
    await engine.run(requests(1000))
    assert stats.stop is not None
    assert stats.stop.exit_code is ExitCode.STOPPED
    assert "No space left on device" in stats.stop.reason and "rerun" in stats.stop.reason
    assert len(out.items) == 5
    assert provider.attempts.total() < 100


async def test_a_bug_costs_one_item_never_the_run():
    """A validator that crashes (not a ConfigError) on one answer: that item is written
    failed with internal_error, every other item is valid."""

    def validator(request: Request, completion: Completion) -> str | None:
        if request.custom_id == "r3":
            raise ZeroDivisionError("division by zero")
        return None

    provider = ScriptedProvider(lambda r, n: text_response("good"))
    engine, out, stats = make_engine(provider, validator=validator)
    await engine.run(requests(10))
    assert len(out.items) == 10
    failed = [f for f in out.items if f.state is State.FAILED]
    assert [f.request.custom_id for f in failed] == ["r3"]
    assert failed[0].error is not None and failed[0].error.code == "internal_error"
    assert stats.stop is None


async def test_a_broken_validator_stops_with_exit_2():
    """A validator that says it is broken (ConfigError): the run stops, exit 2."""

    def validator(request: Request, completion: Completion) -> str | None:
        raise ConfigError("validator python:check is broken: NameError")

    provider = ScriptedProvider(lambda r, n: text_response("good"))
    engine, _, stats = make_engine(provider, validator=validator, concurrency=1)
    await engine.run(requests(10))
    assert stats.stop is not None and stats.stop.exit_code is ExitCode.USAGE


OUTCOMES: dict[str, Callable[[int], Completion | BaseException]] = {
    "answer": lambda n: text_response("good"),
    "invalid": lambda n: text_response("bad"),
    "429": lambda n: RateLimited("HTTP 429", retry_after=0.0) if n == 0 else text_response("good"),
    "transient": lambda n: TransientError("HTTP 503", code="http_503") if n == 0 else text_response("good"),
    "permanent": lambda n: PermanentError("HTTP 400: bad request", code="invalid_request"),
    "auth": lambda n: AuthError("HTTP 401: wrong key", code="invalid_api_key"),
}


@pytest.mark.parametrize("limited", [True, False], ids=["limits", "no-limits"])
@pytest.mark.parametrize("kind", [*OUTCOMES, "cancel"])
def test_every_permit_is_settled_exactly_once(kind, limited):
    """Whatever an attempt ends in (an answer, an invalid answer, a 429, a transient
    fault, a refused request, an auth failure, a cancel), its permit is settled once:
    never twice (settle raises), never left open; with limits (each permit waited for)
    and without (permits granted at once, attempts going on to the next job in their
    task). (In virtual time: a 429 slows the run down for seconds.)"""
    limits_box: list[RecordingLimits] = []
    providers: list[ScriptedProvider] = []

    async def main() -> tuple[ListOutput, Stats]:
        limits = RecordingLimits(rpm=60_000, tpm=6_000_000) if limited else RecordingLimits()
        limits_box.append(limits)
        if kind == "cancel":
            provider = ScriptedProvider(lambda r, n: text_response("good"), latency=10.0)
        else:
            provider = ScriptedProvider(lambda r, n: OUTCOMES[kind](n), latency=0.01)
        providers.append(provider)
        engine, out, stats = make_engine(provider, limits=limits, concurrency=2)
        with no_backoff():
            task = asyncio.ensure_future(engine.run(requests(6)))
            if kind == "cancel":
                await asyncio.sleep(0.1)
                engine.control.abort()
            await task
        return out, stats

    out, stats = virtual(main)
    limits = limits_box[0]
    assert limits.permits, "no attempt was made"
    assert all(p.settled for p in limits.permits)
    assert limits.outcomes.total() == len(limits.permits)
    if providers:  # every attempt sent took a permit of its own
        assert len(limits.permits) >= providers[0].attempts.total()
    expected = {
        "answer": {State.VALID},
        "invalid": {State.INVALID},
        "429": {State.VALID},
        "transient": {State.VALID},
        "permanent": {State.FAILED},
        "auth": set(),  # stops the run: nothing written, a rerun resumes
        "cancel": set(),
    }[kind]
    assert set(states(out).values()) == expected
    if kind in ("auth", "cancel"):
        assert stats.stop is not None and stats.stop.exit_code is ExitCode.STOPPED
    else:
        assert len(out.items) == 6 and stats.stop is None


@pytest.mark.parametrize(
    ("outcome", "refunded"),
    [
        (RateLimited("HTTP 429"), True),
        (PermanentError("HTTP 400"), True),
        (TransientError("connection failed: refused", code="connection"), True),
        (TransientError("no answer within 1s", code="timeout"), False),
        (asyncio.CancelledError(), False),
    ],
    ids=["429", "400", "refused", "timeout", "cancel"],
)
async def test_a_refused_attempt_gives_its_token_charge_back(outcome, refunded):
    """A 429, a 400 or a refused connection did no work: the token budget gets the
    charge back. A timeout or a cancel may have been worked on (and counted) by the
    server: the charge stays."""
    limits = Limits(tpm=600_000)  # 10,000 tokens a second
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 400}
    permit = await limits.admit(Request("r", body))
    assert permit.charged == int(416 / 4 + 400) + 1
    assert limits._tokens is not None
    permit.settle(outcome)
    level = limits._tokens.level
    if refunded:
        assert level < 5  # (what leaked meanwhile aside)
    else:
        assert level > permit.charged - 5


async def test_an_input_that_fails_to_read_mid_run_fails_the_run():
    """Reading the input fails after some items (an I/O error): the run raises that
    error, whichever task was reading, and what was answered before is written."""

    def source() -> Iterator[Request]:
        yield from requests(50)
        raise OSError(errno.EIO, "Input/output error")

    provider = ScriptedProvider(lambda r, n: text_response("good"), latency=0.001)
    engine, out, _ = make_engine(provider, concurrency=4)
    with pytest.raises(OSError, match="Input/output error"):
        await asyncio.wait_for(engine.run(source()), 5)
    assert 0 < len(out.items) <= 50
    assert len(states(out)) == len(out.items)


# --- refusals and truncations ---------------------------------------------------------


def refusal(text: str = "I can't help with that", *, as_part: bool = False) -> Completion:
    """A chat completion in which the model declines: `message.refusal` (content null),
    or a `refusal` content part."""
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": text}
    if as_part:
        message = {"role": "assistant", "content": [{"type": "refusal", "refusal": text}]}
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    return Completion(body=body)


@pytest.mark.parametrize("as_part", [False, True], ids=["message.refusal", "content-part"])
async def test_a_refusal_is_written_invalid_once_and_not_asked_again(as_part):
    """A model that refuses r1 and r3: each is written once, invalid with the cause
    refused and the refusal in its reason, after one request; the others are valid."""

    def script(req: Request, n: int) -> Completion:
        return refusal(as_part=as_part) if req.custom_id in ("r1", "r3") else text_response("good")

    provider = ScriptedProvider(script)
    engine, out, stats = make_engine(provider, max_requests=3)
    await engine.run(requests(5))
    refused = {f.request.custom_id: f for f in out.items if f.cause is Cause.REFUSED}
    assert sorted(refused) == ["r1", "r3"]
    for f in refused.values():
        assert f.state is State.INVALID and f.requests == 1
        assert f.reason == "the model refused: I can't help with that"
    assert provider.attempts == Counter({f"r{i}": 1 for i in range(5)})
    assert (stats.valid, stats.invalid, stats.refused, stats.reasks) == (3, 2, 2, 0)


async def test_a_refusal_beside_content_the_validators_accept_is_still_a_refusal():
    """An answer carrying both content and `message.refusal`: judged a refusal, and not
    put in the response cache."""
    answer = text_response("good")
    answer.body["choices"][0]["message"]["refusal"] = "no"
    cache: dict[int, Completion] = {}

    class DictCache:
        def get(self, fp: int) -> Completion | None:
            return cache.get(fp)

        def put(self, fp: int, completion: Completion) -> None:
            cache[fp] = completion

    out, stats = ListOutput(), Stats()
    outcomes = Outcomes(
        validator=valid_unless_bad, output=out, stats=stats, control=RunControl(stats), cache=DictCache()
    )
    item = Finished(request=next(requests(1)), state=State.FAILED)
    assert outcomes.answered(item, answer) is Verdict.FINISH
    assert (item.state, item.cause, stats.refused, cache) == (State.INVALID, Cause.REFUSED, 1, {})


async def test_with_reask_refusals_a_refusal_is_asked_again_up_to_the_cap():
    """--reask-refusals: r0 refuses every time (written refused after max_requests), r1
    refuses once and then answers (valid, no cause)."""

    def script(req: Request, n: int) -> Completion:
        if req.custom_id == "r0" or (req.custom_id == "r1" and n == 0):
            return refusal()
        return text_response("good")

    provider = ScriptedProvider(script)
    engine, out, stats = make_engine(provider, max_requests=3, reask_refusals=True)
    await engine.run(requests(3))
    got = {f.request.custom_id: (f.state, f.requests, f.cause) for f in out.items}
    assert got == {
        "r0": (State.INVALID, 3, Cause.REFUSED),
        "r1": (State.VALID, 2, None),
        "r2": (State.VALID, 1, None),
    }
    assert (stats.refused, stats.reasks) == (1, 3)


async def test_a_truncated_answer_is_judged_as_any_and_carries_the_cause_truncated():
    """finish_reason "length": a valid cut answer is written valid with the cause
    truncated; an invalid one is asked again, and written with the cause of its last
    answer; both are counted truncated."""

    def script(req: Request, n: int) -> Completion:
        if req.custom_id == "r0":
            return text_response("good", finish_reason="length")
        if req.custom_id == "r1":
            return text_response("bad", finish_reason="length")
        return text_response("good")

    provider = ScriptedProvider(script)
    engine, out, stats = make_engine(provider, max_requests=2)
    await engine.run(requests(3))
    got = {f.request.custom_id: (f.state, f.requests, f.cause) for f in out.items}
    assert got == {
        "r0": (State.VALID, 1, Cause.TRUNCATED),
        "r1": (State.INVALID, 2, Cause.TRUNCATED),
        "r2": (State.VALID, 1, None),
    }
    assert (stats.truncated, stats.refused) == (2, 0)


async def test_a_failure_after_a_truncated_answer_has_no_cause():
    """A cut answer re-asked, then a 400: the item fails with the error, no cause."""

    def script(req: Request, n: int) -> Completion | BaseException:
        if n == 0:
            return text_response("bad", finish_reason="length")
        return PermanentError("HTTP 400: bad request", code="invalid_request")

    engine, out, stats = make_engine(ScriptedProvider(script), max_requests=3)
    await engine.run(requests(1))
    (f,) = out.items
    assert (f.state, f.cause, stats.truncated) == (State.FAILED, None, 0)
