"""One attempt protocol for every caller (the CLI's engine, the library's executor):
``permit = await limits.admit(request)`` before the request, then exactly one
``permit.settle(outcome)`` with the answer or the exception that ended the attempt.
The permit knows what each outcome means for the gates (a refund, a debt, a 429's
pause, a learned limit); callers never touch the gates' accounting themselves."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llmbatch.core.errors import AuthError, RateLimited
from llmbatch.core.values import Completion

if TYPE_CHECKING:
    from llmbatch.schedule.limits import Limits

__all__ = ["Permit"]


class Permit:
    """One attempt's pass through the limits: settled exactly once, whatever the
    outcome, by `settle`.

    What each outcome does: an answer settles the token charge against its real usage,
    teaches the estimator and the header-announced limits, and counts as a success; a
    429 refunds the charge and pushes the pace back (a capacity 429, `CapacityError`,
    does not: the tier was full, not our rate too high); a refused request (4xx, auth) or a
    failed connection refunds the charge, since the server did no work; a timeout or a
    cancelled attempt keeps its charge, since the server may have done the work (and
    counted it) all the same.
    """

    __slots__ = ("_limits", "charged", "charged_out", "chars", "settled")

    def __init__(self, limits: Limits, charged: int, chars: int, charged_out: int = 0) -> None:
        self._limits = limits
        self.charged = charged  # tokens charged to the budget up front (0 without --tpm)
        self.chars = chars  # the prompt's characters, to calibrate the estimator
        self.charged_out = charged_out  # output tokens charged (input and output limited apart)
        self.settled = False

    def settle(self, outcome: Completion | BaseException) -> None:
        if self.settled:
            raise RuntimeError("a permit was settled twice")
        self.settled = True
        limits = self._limits
        if isinstance(outcome, Completion):
            usage = outcome.usage
            if limits.split_tokens:
                # Anthropic counts input tokens less cache reads against the input limit.
                limits.settle(self.charged, usage.prompt_tokens - usage.cached_tokens)
                limits.settle_output(self.charged_out, usage.completion_tokens)
                limits.estimator.observe(self.chars, usage.prompt_tokens, usage.completion_tokens)
            elif limits.tpm is not None:
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
            if self.charged_out:
                limits.settle_output(self.charged_out, 0)
        if isinstance(outcome, RateLimited):
            limits.pushed_back(outcome.retry_after, outcome.headers or None)
        elif not isinstance(outcome, AuthError):
            limits.failed()
