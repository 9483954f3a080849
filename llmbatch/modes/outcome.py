"""What an attempt's outcome means, decided once for the live engine, the Batch API mode
and the library executor.

    answer ──► validate ──► valid ................................ FINISH (written)
                       └──► invalid, requests left ............... REASK
                       └──► invalid, none left ................... FINISH (invalid)
                       └──► invalid, none left, a model above ..... REASK on that model
                            (--escalate: `llmbatch.modes.escalate`), with a fresh count
                       └──► the validator itself is broken ....... stop the run (exit 2)
           └──► a refusal (valid or not) ......................... FINISH (invalid, cause
                refused); with --reask-refusals as an invalid answer
    error ───► transient (429, 408, 409, 5xx, timeout, reset) .... RETRY after the server's
               delay, else backoff; FINISH (failed) when retries are spent
          └──► no capacity on the flex tier (a capacity 429) ........ RETRY, counted apart;
               after --flex-fallback N of them, on the default tier
          └──► the request's fault (400, 404, 422) ............... FINISH (failed)
          └──► auth or quota (401, 403, insufficient_quota) ...... stop the run (exit 3)

`Outcomes` applies that to an item's tally (a `Finished` that builds up over its
attempts): it counts the answers and their usage (cached tokens included) into the
tally and the run's `Stats`, and writes a finished item to the output. A finished
item's `cause` says its last answer was a refusal or was cut at its ceiling
(`finish_reason` "length": judged by the validators as any answer; `--require-finish
stop` makes it invalid). What a mode does with REASK and RETRY is its own: the engine
puts the job back in its retry heap; the Batch API mode moves the item into a follow-up
round. RELEASE means the item is not written in this run (a stop left it): a rerun
does it.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
from collections.abc import Callable
from typing import Protocol

from llmbatch.core.endpoints import Endpoint
from llmbatch.core.errors import (
    AuthError,
    CapacityError,
    ConfigError,
    ExitCode,
    LLMBatchError,
    PermanentError,
    ProviderError,
    RateLimited,
    Stop,
)
from llmbatch.core.retry import DEFAULT_MAX_RETRIES, BackoffStrategy, RetryConfig, RetryPolicy
from llmbatch.core.stats import NOT_VALID_SHOWN, Stats, add_answer, add_item
from llmbatch.core.tiers import DEFAULT_TIER, FLEX, on_tier, tier_of
from llmbatch.core.values import Cause, Completion, Finished, Request, State, Usage
from llmbatch.files.jsonl import write_failure
from llmbatch.modes.control import RunControl
from llmbatch.modes.escalate import Ladder, model_of

__all__ = [
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_RETRY",
    "Cache",
    "ErrorKind",
    "Outcomes",
    "Output",
    "Validator",
    "Verdict",
    "kind_of",
]

DEFAULT_MAX_REQUESTS = 4  # answered requests per item, re-asks included
# Transport retries: quick first, capped, jittered so a crowd of retries spreads out.
DEFAULT_RETRY = RetryPolicy(
    retries=DEFAULT_MAX_RETRIES,
    backoff=RetryConfig(backoff_strategy=BackoffStrategy.JITTER, initial_delay=0.5, max_delay=30.0),
)

Validator = Callable[[Request, Completion], "str | None"]


class Verdict(enum.Enum):
    FINISH = "finish"  # written (valid, invalid with no requests left, or failed)
    REASK = "reask"  # invalid with requests left: ask again at once
    RETRY = "retry"  # transient: ask again after the delay
    RELEASE = "release"  # not written this run (the run stops): a rerun does it


class ErrorKind(enum.Enum):
    """What an exception that ended an attempt is, whoever made the attempt."""

    TRANSIENT = "transient"  # worth another try
    REQUEST = "request"  # the request itself is wrong: fail the item
    AUTH = "auth"  # credentials or quota: nothing else will succeed either; stop
    FOREIGN = "foreign"  # not one of ours: a bug, or a custom provider's own exception
    CANCELLED = "cancelled"  # the attempt was cancelled (an abort)
    FATAL = "fatal"  # KeyboardInterrupt, SystemExit: not ours to swallow


def kind_of(exc: BaseException) -> ErrorKind:
    """The one classification of an attempt's exception (DESIGN's error table)."""
    if isinstance(exc, AuthError):
        return ErrorKind.AUTH
    if isinstance(exc, PermanentError):
        return ErrorKind.REQUEST
    if isinstance(exc, ProviderError):  # TransientError, RateLimited, or of no known kind
        return ErrorKind.TRANSIENT
    if isinstance(exc, asyncio.CancelledError):
        return ErrorKind.CANCELLED
    if isinstance(exc, LLMBatchError):
        return ErrorKind.REQUEST  # one of ours that is not about the provider: retrying cannot help
    if isinstance(exc, Exception):
        return ErrorKind.FOREIGN
    return ErrorKind.FATAL


class Output(Protocol):
    """Where finished items go. `error` is a write that failed (a full disk): the run
    stops, and a rerun redoes what did not reach the file."""

    @property
    def path(self) -> object: ...

    @property
    def error(self) -> OSError | None: ...

    @property
    def backlog(self) -> int:
        """Finished items held back, not yet written: they count in the live window."""
        ...

    def write(self, finished: Finished) -> None: ...

    def discard(self, order: int) -> None:
        """The item taken `order`-th will not be written (a stop left it)."""
        ...

    def sync(self) -> None:
        """What was written so far, on disk now (before a record says it is)."""
        ...


class Cache(Protocol):
    """Valid answers by request fingerprint (see `llmbatch.rerun.cache.ResponseCache`)."""

    def get(self, fp: int, endpoint: Endpoint = ...) -> Completion | None: ...

    def put(self, fp: int, completion: Completion) -> None: ...


def _silent(_: str) -> None:
    return None


class Outcomes:
    """The judge of one run's attempts (see the module docstring)."""

    def __init__(
        self,
        *,
        validator: Validator,
        output: Output,
        stats: Stats,
        control: RunControl,
        cache: Cache | None = None,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        reask_refusals: bool = False,
        retry: RetryPolicy = DEFAULT_RETRY,
        log: Callable[[str], None] = _silent,
        error: Callable[[str], None] | None = None,
        flex_fallback: int | None = None,
        escalate: tuple[str, ...] = (),
        count_ways: bool = False,
    ) -> None:
        self.validator = validator
        self.output = output
        self.stats = stats
        self.control = control
        self.cache = cache
        self.max_requests = max_requests
        # A refusal is written as it is: asking the same again mostly pays for the same
        # refusal. With this, it is asked again like an invalid answer.
        self.reask_refusals = reask_refusals
        self.retry = retry
        self._capped_told = False
        self.log = log
        self.error = error or log  # errors are shown even when quiet
        # After this many capacity 429s, a flex item is asked on the default tier.
        self.flex_fallback = flex_fallback
        # --escalate: the models an item still invalid after its requests goes on to.
        self.ladder = Ladder(escalate) if escalate else None
        # --deadline: answers and items counted by way (batch, live), priced apart.
        self.count_ways = count_ways

    def with_output(self, output: Output) -> Outcomes:
        """The same judge writing elsewhere (a Batch API follow-up that records what it
        wrote): every other setting and sink kept, so none can be forgotten."""
        judge = copy.copy(self)
        judge.output = output
        return judge

    # --- answers -----------------------------------------------------------------

    def answered(
        self, item: Finished, completion: Completion, *, via: str = "live", hold: bool = False
    ) -> Verdict:
        """A 2xx answer: counted, validated, and either finished or to be asked again.
        With `hold` (the live run is stopping), what would be asked again is released
        instead."""
        stats = self.stats
        stats.answers += 1
        usage = completion.usage
        stats.prompt_tokens += usage.prompt_tokens
        stats.completion_tokens += usage.completion_tokens
        stats.cached_tokens += usage.cached_tokens
        stats.reasoning_tokens += usage.reasoning_tokens
        stats.cache_write_tokens += usage.cache_write_tokens
        item.requests += 1
        item.prompt_tokens += usage.prompt_tokens
        item.completion_tokens += usage.completion_tokens
        item.cached_tokens += usage.cached_tokens
        item.reasoning_tokens += usage.reasoning_tokens
        item.cache_write_tokens += usage.cache_write_tokens
        item.last = completion
        item.latency_ms = completion.latency_ms
        if via == "live":
            stats.answered_in(completion.latency_ms)
        if item.capacity_429s and self.flex_fallback is not None:
            self._fallen_back(item, usage)
        ladder = self.ladder
        if ladder is not None:
            add_answer(
                stats.by_model,
                model_of(item, stats.model),
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
            )
        if self.count_ways:
            add_answer(stats.by_way, via, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        reason = self._validate(item.request, completion)
        if reason is _BROKEN:
            return Verdict.RELEASE
        cause = completion.cause  # refused, truncated, or (most often) None
        refused = cause is _REFUSED
        if refused:
            reason = _short(f"the model refused: {completion.refusal}")
        elif reason is None:
            if self.cache is not None:
                self.cache.put(item.request.fp, completion)
            item.cause = cause
            self.finish(item, State.VALID, via=via)
            return Verdict.FINISH
        item.reason = reason
        kept = refused and not self.reask_refusals
        limit = self.max_requests if ladder is None else ladder.limit(item.rung, self.max_requests)
        if item.requests >= limit or kept:
            if ladder is None or kept or not ladder.above(item):
                item.cause = cause
                self.finish(item, State.INVALID, via=via)
                return Verdict.FINISH
            if hold:
                return Verdict.RELEASE
            stats.escalated += 1
            self._reask(item, completion, reason)
            ladder.climb(item)
            return Verdict.REASK  # on the next model, with a fresh count
        if hold:
            return Verdict.RELEASE
        stats.reasks += 1
        self._reask(item, completion, reason)
        return Verdict.REASK

    @staticmethod
    def _reask(item: Finished, completion: Completion, reason: str) -> None:
        """What the re-ask sends, by the endpoint: the same request (chat), or one that
        carries the answer and the reason (Responses, completions). It keeps the first
        request's fingerprint: it is still that request's answer."""
        body = completion.endpoint.reask_after(item.request.body, completion.body, completion.text, reason)
        if body is not None:
            item.request = dataclasses.replace(item.request, body=body)

    def from_cache(self, item: Finished, completion: Completion) -> Verdict | None:
        """An answer the item did not ask for (the cache's, or an identical request's):
        FINISH when it is valid for this item (validators may look at the item, not
        only the request), None when the item must be asked itself, RELEASE when the
        validator is broken (the run stops)."""
        reason = self._validate(item.request, completion)
        if reason is _BROKEN:
            return Verdict.RELEASE
        cause = completion.cause
        if reason is not None or cause is _REFUSED:
            return None
        item.last = completion
        item.cause = cause
        self.stats.cached += 1
        self.finish(item, State.VALID, via="cached")
        return Verdict.FINISH

    def _validate(self, request: Request, completion: Completion) -> str | None:
        try:
            return self.validator(request, completion)
        except ConfigError as exc:
            self.control.stop(Stop(f"the validator is broken: {exc}", exit_code=ExitCode.USAGE))
            return _BROKEN

    # --- errors ------------------------------------------------------------------

    def failed(
        self, item: Finished, exc: BaseException, *, via: str = "live", hold: bool = False
    ) -> tuple[Verdict, float]:
        """An attempt that ended without an answer; with RETRY, the seconds to wait
        before the next attempt (the server's delay, else backoff). With `hold`, what
        would be retried is released instead."""
        kind = kind_of(exc)
        if isinstance(exc, ProviderError):
            self.tell(exc)
        if kind is ErrorKind.TRANSIENT:
            assert isinstance(exc, ProviderError)
            if isinstance(exc, RateLimited):
                self.stats.http_429 += 1
            elif isinstance(exc, CapacityError):
                self.stats.capacity_429 += 1
                item.capacity_429s += 1
            if hold:
                return Verdict.RELEASE, 0.0
            if not self.retry.allows(item.retries):
                self.finish(item, State.FAILED, exc, via=via)
                return Verdict.FINISH, 0.0
            item.retries += 1
            self.stats.retries["rate_limited" if isinstance(exc, RateLimited) else exc.code] += 1
            if isinstance(exc, CapacityError) and self._falls_back(item):
                return Verdict.RETRY, 0.0  # another tier: no reason to wait
            return Verdict.RETRY, self._delay(item, exc)
        if kind is ErrorKind.REQUEST:
            error = exc if isinstance(exc, ProviderError) else ProviderError(str(exc), code="invalid_request")
            self.finish(item, State.FAILED, error, via=via)
            return Verdict.FINISH, 0.0
        if kind is ErrorKind.AUTH:
            self.control.stop(Stop(f"the provider refused the credentials or quota: {exc}"))
            return Verdict.RELEASE, 0.0
        if kind is ErrorKind.FOREIGN:  # a bug must cost one item, never the run or the line
            assert isinstance(exc, Exception)
            self.internal_error(item, exc)
            return Verdict.FINISH, 0.0
        return Verdict.RELEASE, 0.0  # cancelled, or not ours to swallow

    def _falls_back(self, item: Finished) -> bool:
        """--flex-fallback N: the N-th capacity 429 of a flex item sends it on the default
        tier from its next attempt on (its fingerprint kept). True when it does."""
        limit = self.flex_fallback
        if limit is None or item.capacity_429s < limit or tier_of(item.request.body) != FLEX:
            return False
        item.request = on_tier(item.request, DEFAULT_TIER)
        self.stats.fallbacks += 1
        return True

    def _fallen_back(self, item: Finished, usage: Usage) -> None:
        """An answer on the default tier after a fallback: its tokens counted apart (they
        cost the default tier's price, not flex's)."""
        if tier_of(item.request.body) == DEFAULT_TIER:
            tokens = self.stats.fallback_tokens
            tokens[0] += usage.prompt_tokens
            tokens[1] += usage.completion_tokens
            tokens[2] += usage.cached_tokens

    def _delay(self, item: Finished, exc: ProviderError) -> float:
        wait = self.retry.wait(exc, item.retries)
        if wait.capped and not self._capped_told:
            self._capped_told = True
            self.error(
                f"note: the server asked to wait {wait.asked:.0f}s before retrying; waiting"
                f" {wait.seconds:.0f}s (--max-retry-wait; told once)"
            )
        return wait.seconds

    def tell(self, exc: ProviderError) -> None:
        """The first error of each cause is told, with its text; later ones are counted
        (and the newest of each is on the panel)."""
        last = self.stats.last_error
        if exc.code not in last and not isinstance(exc, RateLimited):  # 429s: on the panel
            self.error(f"error: {exc.code}: {exc} (told once; later ones are counted)")
        last.pop(exc.code, None)
        last[exc.code] = str(exc)  # the newest cause last

    def internal_error(self, item: Finished, exc: Exception) -> None:
        """Our own bug met while handling an item: the item fails with it, the run goes on."""
        self.error(f"error: line {item.request.line}: unexpected {type(exc).__name__}: {exc}")
        self.finish(item, State.FAILED, ProviderError(f"{type(exc).__name__}: {exc}", code="internal_error"))

    # --- the end of an item --------------------------------------------------------

    def finish(
        self,
        item: Finished,
        state: State,
        error: ProviderError | None = None,
        *,
        via: str = "live",
        batch_id: str | None = None,
    ) -> None:
        """Count the item as finished and write it. A write that failed stops the run."""
        stats = self.stats
        stats.done += 1
        cause = item.cause
        if state is State.VALID:
            stats.valid += 1
        else:
            if state is State.INVALID:
                stats.invalid += 1
            else:
                stats.failed += 1
                item.cause = cause = None  # a failure's error says what happened
            if len(stats.not_valid) < NOT_VALID_SHOWN:
                why = error.code if error is not None else cause or "invalid_answer"
                stats.not_valid.append(f"{item.request.custom_id} ({state}: {why})")
        if cause is not None:
            if cause is _REFUSED:
                stats.refused += 1
            else:
                stats.truncated += 1
        item.state, item.error, item.via = state, error, via
        if self.ladder is not None:
            item.model = model = model_of(item, stats.model)
            add_item(stats.by_model, model)
        if self.count_ways:
            add_item(stats.by_way, via)
        if batch_id is not None:
            item.batch_id = batch_id
        output = self.output
        output.write(item)
        if output.error is not None and not self.control.stopping:
            self.control.stop(Stop(write_failure(output.path, output.error)))


# `_validate`'s answer when the validator raised: not a reason, not valid.
_BROKEN = "\0broken"
_REFUSED = Cause.REFUSED
# A reason lands in every output line; a refusal can be a paragraph.
MAX_REASON = 300


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
